//! The files engine's checks of the tree an extraction made.

use std::fs;
use std::path::Path;

use rehearse_core::plan::FilesSpec;
use rehearse_core::report::CheckReport;

/// The files engine's checks: a DR exercise's path sets, required paths, then the manifest.
pub fn check(root: &Path, spec: &FilesSpec) -> Vec<CheckReport> {
    let mut out = Vec::new();
    for (name, paths) in &spec.consistency {
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| {
                // Paths come from the restored database: data, never a way out of the tree.
                let outside = p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..");
                outside || fs::symlink_metadata(root.join(p.as_str())).is_err()
            })
            .collect();
        let shown: Vec<&str> = missing.iter().take(5).map(|p| p.as_str()).collect();
        out.push(CheckReport {
            name: format!("consistency {name}"),
            sql: String::new(),
            expect: format!("all {} paths present", paths.len()),
            observed: Some(format!(
                "{} of {} present",
                paths.len() - missing.len(),
                paths.len()
            )),
            ok: missing.is_empty(),
            reason: (!missing.is_empty()).then(|| {
                format!(
                    "{} of {} paths are not in the archive: {}{}",
                    missing.len(),
                    paths.len(),
                    shown.join(", "),
                    if missing.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                )
            }),
        });
    }
    for required in &spec.required {
        let present = fs::symlink_metadata(root.join(required)).is_ok();
        out.push(CheckReport {
            name: format!("required {required}"),
            sql: String::new(),
            expect: "present".into(),
            observed: Some(if present { "present" } else { "missing" }.into()),
            ok: present,
            reason: (!present).then(|| format!("{required} is not in the archive")),
        });
    }
    if let Some(manifest) = &spec.manifest {
        let (observed, reason) = match check_manifest(root, manifest) {
            Ok(n) => (Some(format!("{n} files match")), None),
            Err(reason) => (None, Some(reason)),
        };
        out.push(CheckReport {
            name: format!("manifest {manifest}"),
            sql: String::new(),
            expect: "every listed file matches".into(),
            observed,
            ok: reason.is_none(),
            reason,
        });
    }
    out
}

/// Checks each `<blake3>  <path>` line of the manifest; `Ok` is how many files matched.
fn check_manifest(root: &Path, manifest: &str) -> Result<usize, String> {
    let path = root.join(manifest);
    let meta = fs::symlink_metadata(&path)
        .map_err(|_| format!("the manifest {manifest} is not in the archive"))?;
    if !meta.is_file() || meta.len() > 64 << 20 {
        return Err(format!(
            "the manifest {manifest} is not a regular file of sane size"
        ));
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("read manifest {manifest}: {e}"))?;
    let mut matched = 0;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (hex, name) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("manifest line {}: not \"<blake3>  <path>\"", n + 1))?;
        let name = name.trim_start().trim_start_matches('*');
        let want = rehearse_core::plan::Blake3Digest::parse_hex(hex)
            .ok_or_else(|| format!("manifest line {}: {hex:?} is not a blake3 digest", n + 1))?;
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(format!(
                "manifest line {}: {name:?} leaves the archive",
                n + 1
            ));
        }
        let file = root.join(crate::engines::untar::relative(name));
        match fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => {}
            _ => return Err(format!("{name} is listed in the manifest but missing")),
        }
        let (got, _) =
            crate::artifact::checksum::hash_file(&file).map_err(|e| format!("read {name}: {e}"))?;
        if got.as_bytes() != &want.0 {
            return Err(format!(
                "{name}: blake3 {} differs from the manifest's {want}",
                got.to_hex()
            ));
        }
        matched += 1;
    }
    Ok(matched)
}
