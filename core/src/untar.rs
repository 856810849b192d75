//! Which entries of a hostile tar archive may be written, and where (pure; the `files` engine of
//! issue 6 will feed it entry headers before writing a byte).
//!
//! Rules, each refusal a reason a person can act on:
//! - a path is relative, has no `..` and no NUL, and is not empty once `.` parts are dropped;
//! - a symlink's target, resolved from the link's own directory, stays inside the root, and no
//!   later entry is written through a symlink the archive made (the classic two-step escape);
//! - a hardlink points at a regular file this archive already wrote;
//! - device nodes, FIFOs and other special files are refused;
//! - the entry count and the total of declared sizes stay within the limits, checked before the
//!   entry is written, so a bomb fails having written little.

use std::collections::BTreeSet;

/// What a tar header says an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    /// Character or block device, FIFO, or anything else: never written.
    Special(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_bytes: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// The running state of one extraction.
#[derive(Debug, Clone, Default)]
pub struct Extraction {
    pub limits: Limits,
    pub entries: u64,
    pub bytes: u64,
    /// Symlinks written so far (normalised paths): nothing may be written through them.
    symlinks: BTreeSet<String>,
    /// Regular files written so far: the only valid hardlink targets.
    files: BTreeSet<String>,
}

/// A path as components, with `.` and empty parts dropped; `None` when it leaves the root.
fn normalise(path: &str) -> Result<Vec<&str>, String> {
    if path.contains('\0') {
        return Err(format!("entry {path:?}: NUL in the path"));
    }
    if path.starts_with('/') {
        return Err(format!("entry {path:?}: absolute path"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("entry {path:?}: \"..\" in the path"));
    }
    if parts.is_empty() {
        return Err(format!("entry {path:?}: empty path"));
    }
    Ok(parts)
}

impl Extraction {
    pub fn new(limits: Limits) -> Extraction {
        Extraction {
            limits,
            ..Extraction::default()
        }
    }

    /// Admits the entry, or says why not. `Ok` is the normalised relative path to write (empty
    /// for the archive's root directory, `.`/`./`, which needs no writing).
    pub fn admit(&mut self, path: &str, kind: &Kind, size: u64) -> Result<String, String> {
        // `tar -C dir .` starts with the root itself ("./"): nothing to write. `Ok("")` says so.
        if matches!(kind, Kind::Dir)
            && !path.starts_with('/')
            && path.split('/').all(|p| p.is_empty() || p == ".")
            && !path.is_empty()
        {
            self.entries += 1;
            return Ok(String::new());
        }
        let parts = normalise(path)?;
        let clean = parts.join("/");
        // Through a symlink the archive made: any proper prefix that is one.
        for i in 1..parts.len() {
            let prefix = parts[..i].join("/");
            if self.symlinks.contains(&prefix) {
                return Err(format!(
                    "entry {path:?}: written through the archive's own symlink {prefix:?}"
                ));
            }
        }
        if self.entries + 1 > self.limits.max_entries {
            return Err(format!(
                "more than {} entries (limit): refused as a possible archive bomb",
                self.limits.max_entries
            ));
        }
        let size = if matches!(kind, Kind::File) { size } else { 0 };
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(format!(
                "entry {path:?} takes the archive past {} bytes (limit): refused as a possible archive bomb",
                self.limits.max_bytes
            ));
        }
        match kind {
            Kind::File => {
                self.symlinks.remove(&clean);
                self.files.insert(clean.clone());
            }
            Kind::Dir => {}
            Kind::Symlink(target) => {
                if target.starts_with('/') {
                    return Err(format!("symlink {path:?} -> {target:?}: absolute target"));
                }
                // Resolve from the link's directory. Lexical resolution is only sound when no
                // step passes through another symlink (`l/..` is not the parent of `l` when `l`
                // is a link), so that is refused too.
                let mut stack: Vec<&str> = parts[..parts.len() - 1].to_vec();
                let parts_of_target: Vec<&str> = target
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .collect();
                for (i, part) in parts_of_target.iter().enumerate() {
                    if *part == ".." {
                        if stack.pop().is_none() {
                            return Err(format!(
                                "symlink {path:?} -> {target:?}: points outside the archive"
                            ));
                        }
                        continue;
                    }
                    stack.push(part);
                    let last = i + 1 == parts_of_target.len();
                    if !last && self.symlinks.contains(&stack.join("/")) {
                        return Err(format!(
                            "symlink {path:?} -> {target:?}: goes through the archive's own symlink"
                        ));
                    }
                }
                self.files.remove(&clean);
                self.symlinks.insert(clean.clone());
            }
            Kind::Hardlink(target) => {
                let target_parts =
                    normalise(target).map_err(|e| format!("hardlink {path:?}: target {e}"))?;
                if !self.files.contains(&target_parts.join("/")) {
                    return Err(format!(
                        "hardlink {path:?} -> {target:?}: not a file this archive wrote"
                    ));
                }
                self.files.insert(clean.clone());
            }
            Kind::Special(what) => {
                return Err(format!("entry {path:?}: {what} refused"));
            }
        }
        self.entries += 1;
        self.bytes += size;
        Ok(clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_root_directory_entry_of_tar_c_dir_dot_is_admitted_and_writes_nothing() {
        let mut x = Extraction::new(Limits::default());
        assert_eq!(ok(&mut x, "./", Kind::Dir), "");
        assert_eq!(ok(&mut x, ".", Kind::Dir), "");
        assert_eq!(
            ok(&mut x, "./attachments/a.pdf", Kind::File),
            "attachments/a.pdf"
        );
        assert!(refused(&mut x, "./", Kind::File).contains("empty path"));
        assert!(refused(&mut x, "", Kind::Dir).contains("empty path"));
    }

    fn ok(x: &mut Extraction, path: &str, kind: Kind) -> String {
        x.admit(path, &kind, 10).expect("admitted")
    }

    fn refused(x: &mut Extraction, path: &str, kind: Kind) -> String {
        x.admit(path, &kind, 10).expect_err("refused")
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let mut x = Extraction::default();
        assert_eq!(ok(&mut x, "./a/./b.txt", Kind::File), "a/b.txt");
        assert!(refused(&mut x, "/etc/passwd", Kind::File).contains("absolute"));
        assert!(refused(&mut x, "a/../../etc/passwd", Kind::File).contains(".."));
        assert!(refused(&mut x, "./", Kind::File).contains("empty"));
        assert!(
            refused(&mut x, "dev/null", Kind::Special("character device".into()))
                .contains("character device")
        );
    }

    #[test]
    fn symlink_escapes_are_refused() {
        let mut x = Extraction::default();
        assert!(refused(&mut x, "a/link", Kind::Symlink("../../etc".into())).contains("outside"));
        assert!(refused(&mut x, "link", Kind::Symlink("/etc".into())).contains("absolute"));
        // A link inside is fine, but nothing is written through it.
        ok(&mut x, "a/up", Kind::Symlink("..".into()));
        assert!(refused(&mut x, "a/up/b/file", Kind::File).contains("through"));
        ok(&mut x, "a/sibling", Kind::Symlink("../b/c".into()));
        // A chain: `deep` -> a/b, then `../..` after it would climb from a/b, not from the root.
        ok(&mut x, "deep", Kind::Symlink("a/b".into()));
        assert!(refused(&mut x, "esc", Kind::Symlink("deep/../..".into())).contains("through"));
    }

    #[test]
    fn hardlinks_only_to_files_of_this_archive() {
        let mut x = Extraction::default();
        assert!(refused(&mut x, "h", Kind::Hardlink("/etc/shadow".into())).contains("absolute"));
        assert!(refused(&mut x, "h", Kind::Hardlink("missing".into())).contains("not a file"));
        ok(&mut x, "f", Kind::File);
        ok(&mut x, "h", Kind::Hardlink("./f".into()));
    }

    #[test]
    fn bombs_stop_before_the_limit_is_passed() {
        let mut x = Extraction::new(Limits {
            max_entries: 3,
            max_bytes: 25,
        });
        ok(&mut x, "a", Kind::File);
        ok(&mut x, "b", Kind::File);
        assert!(refused(&mut x, "c", Kind::File).contains("past 25 bytes"));
        ok(&mut x, "d", Kind::Dir);
        assert!(refused(&mut x, "e", Kind::Dir).contains("more than 3 entries"));
        assert_eq!((x.entries, x.bytes), (3, 20));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            "[a-c]{1,2}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(segment(), 1..5))
            .prop_map(|(abs, s)| format!("{}{}", if abs { "/" } else { "" }, s.join("/")))
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            path().prop_map(Kind::Symlink),
            path().prop_map(Kind::Hardlink),
        ]
    }

    proptest! {
        /// Whatever the archive holds: every admitted path stays inside the root, no admitted
        /// path runs through an admitted symlink, and every admitted symlink resolves inside.
        #[test]
        fn nothing_admitted_leaves_the_root(entries in prop::collection::vec((path(), kind()), 0..30)) {
            let mut x = Extraction::default();
            let mut links: Vec<String> = Vec::new();
            for (p, k) in &entries {
                let Ok(clean) = x.admit(p, k, 1) else { continue };
                if clean.is_empty() {
                    // Only the root directory entry itself ("./") writes nothing.
                    prop_assert!(matches!(k, Kind::Dir));
                    continue;
                }
                prop_assert!(!clean.starts_with('/') && !clean.split('/').any(|c| c == ".." || c.is_empty()));
                for l in &links {
                    prop_assert!(!clean.starts_with(&format!("{l}/")), "{} written through {}", clean, l);
                }
                if let Kind::Symlink(target) = k {
                    // Resolve lexically: the number of components never goes negative.
                    let mut stack: Vec<&str> = clean.split('/').collect();
                    stack.pop();
                    for part in target.split('/').filter(|s| !s.is_empty() && *s != ".") {
                        if part == ".." {
                            prop_assert!(stack.pop().is_some(), "{} -> {} escapes", clean, target);
                        } else {
                            let joined = stack.join("/");
                            prop_assert!(stack.is_empty() || !links.contains(&joined), "{} -> {} resolves through {}", clean, target, joined);
                            stack.push(part);
                        }
                    }
                    links.push(clean.clone());
                } else {
                    links.retain(|l| *l != clean);
                }
            }
        }
    }
}
