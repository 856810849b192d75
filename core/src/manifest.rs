//! Checking a multi-file artifact (a pg_dump directory) against a `b3sum`-format manifest: the
//! `<dir>.blake3` sidecar, as `b3sum dir/*` or `cd dir && b3sum *` writes it.
//!
//! Every file the manifest lists must be in the artifact with that digest, and every file of the
//! artifact must be listed: a file added to a dump after its manifest was made is as suspect as
//! one changed.

use std::collections::BTreeMap;

/// `computed`: (path relative to the artifact's root, lowercase hex blake3) for every file.
/// `dir_name`: the artifact dir's own name, which listed paths may start with. `Ok` is the number
/// of files that matched; `Err` the first discrepancy.
pub fn compare(
    computed: &[(String, String)],
    manifest: &str,
    dir_name: &str,
) -> Result<usize, String> {
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in manifest.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (hex, path) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("manifest line {}: not \"<blake3>  <path>\"", n + 1))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "manifest line {}: {hex:?} is not a blake3 digest",
                n + 1
            ));
        }
        let path = path
            .trim_start()
            .trim_start_matches('*')
            .trim_start_matches("./");
        let path = path
            .strip_prefix(dir_name)
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or(path);
        listed.insert(path.to_owned(), hex.to_ascii_lowercase());
    }
    if listed.is_empty() {
        return Err("the manifest lists no files".into());
    }
    for (path, hex) in computed {
        match listed.remove(path) {
            None => return Err(format!("{path} is in the artifact but not in the manifest")),
            Some(want) if want != *hex => {
                return Err(format!(
                    "{path}: blake3 {hex} differs from the manifest's {want}"
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(path) = listed.keys().next() {
        return Err(format!("{path} is listed in the manifest but missing"));
    }
    Ok(computed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn matches_in_either_path_form() {
        let computed = vec![
            ("toc.dat".to_owned(), h('a')),
            ("3001.dat.gz".to_owned(), h('b')),
        ];
        let plain = format!("{}  toc.dat\n{}  3001.dat.gz\n", h('a'), h('b'));
        assert_eq!(compare(&computed, &plain, "shop.dir"), Ok(2));
        let prefixed = format!(
            "{}  shop.dir/toc.dat\n{}  ./shop.dir/3001.dat.gz\n",
            h('A'),
            h('b')
        );
        assert_eq!(compare(&computed, &prefixed, "shop.dir"), Ok(2));
    }

    #[test]
    fn every_discrepancy_is_a_reason() {
        let computed = vec![
            ("toc.dat".to_owned(), h('a')),
            ("3001.dat.gz".to_owned(), h('b')),
        ];
        let changed = format!("{}  toc.dat\n{}  3001.dat.gz\n", h('a'), h('c'));
        assert!(
            compare(&computed, &changed, "d")
                .unwrap_err()
                .contains("3001.dat.gz: blake3")
        );
        let unlisted = format!("{}  toc.dat\n", h('a'));
        assert!(
            compare(&computed, &unlisted, "d")
                .unwrap_err()
                .contains("not in the manifest")
        );
        let extra = format!(
            "{}  toc.dat\n{}  3001.dat.gz\n{}  gone.dat\n",
            h('a'),
            h('b'),
            h('d')
        );
        assert!(
            compare(&computed, &extra, "d")
                .unwrap_err()
                .contains("gone.dat is listed")
        );
        assert!(
            compare(&computed, "zz  toc.dat\n", "d")
                .unwrap_err()
                .contains("not a blake3")
        );
        assert!(
            compare(&computed, "", "d")
                .unwrap_err()
                .contains("no files")
        );
    }
}
