//! The `files` engine end to end: real tar archives (plain, gzip, zstd) extracted into the
//! sandbox and checked; hostile archives (traversal, absolute paths, symlink escapes, writes
//! through links, device nodes, bombs) fail in `restore` and write nothing outside the sandbox.
//! Headers are written by hand where a well-behaved tar writer would refuse the entry.

mod common;

use std::fs;
use std::io::Write;

use common::*;
use rehearse_core::report::{Phase, Verdict};

/// One raw tar entry: name, type flag, link name, data (the header's size may be overridden).
struct Entry<'a> {
    name: &'a str,
    kind: u8,
    link: &'a str,
    data: &'a [u8],
    declared: Option<u64>,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        name,
        kind: b'0',
        link: "",
        data,
        declared: None,
    }
}

fn special<'a>(name: &'a str, kind: u8, link: &'a str) -> Entry<'a> {
    Entry {
        name,
        kind,
        link,
        data: b"",
        declared: None,
    }
}

/// A ustar archive with exactly these headers (no path checks: the point is hostile input).
fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            old.linkflag[0] = e.kind;
        }
        h.set_mode(if e.kind == b'5' { 0o755 } else { 0o644 });
        h.set_size(e.declared.unwrap_or(e.data.len() as u64));
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

fn files_plan(artifact: &std::path::Path, extra: &str) -> rehearse_core::plan::Plan {
    engine_plan("files", artifact, extra)
}

/// A tree with dirs, files, an inner symlink, a hardlink and a manifest of the files.
fn good_tree() -> Vec<u8> {
    let conf = b"listen = 8080\n";
    let data = vec![7u8; 100_000];
    let manifest = format!(
        "{}  etc/app.conf\n{}  data/blob.bin\n",
        blake3::hash(conf).to_hex(),
        blake3::hash(&data).to_hex()
    );
    tar(&[
        special("etc/", b'5', ""),
        file("etc/app.conf", conf),
        special("data/", b'5', ""),
        file("data/blob.bin", &data),
        special("data/current", b'2', "blob.bin"),
        special("data/again.bin", b'1', "data/blob.bin"),
        file("MANIFEST.blake3", manifest.as_bytes()),
    ])
}

#[tokio::test]
async fn a_file_tree_passes_plain_gzip_and_zstd() {
    let env = env();
    let tree = good_tree();
    let checks = "[files]\nrequired = [\"etc/app.conf\", \"data/current\"]\nmanifest = \"MANIFEST.blake3\"\n";
    for (name, bytes, format) in [
        ("tree.tar", tree.clone(), "tar"),
        ("tree.tar.gz", gzip(&tree), "tar (gzip)"),
        (
            "tree.tar.zst",
            zstd::encode_all(&tree[..], 3).expect("zstd"),
            "tar (zstd)",
        ),
    ] {
        let report = env
            .verify(&files_plan(&env.file(name, &bytes), checks))
            .await;
        assert_passed(&report);
        assert_eq!(report.engine, "files");
        assert_eq!(report.artifact.format.as_deref(), Some(format));
        let files = report.files.as_ref().expect("files reported");
        assert_eq!(
            (files.count, files.dirs, files.symlinks),
            (4, 2, 1),
            "{files:?}"
        );
        assert_eq!(files.bytes, 14 + 100_000 + files_manifest_len(&tree));
        assert_eq!(report.checks.len(), 3);
        assert_eq!(report.checks[2].observed.as_deref(), Some("2 files match"));
    }
}

/// `tar -C dir .`, the usual way to archive a tree, starts with the entry "./": the root itself.
/// It once failed the restore ("empty path"), a false alarm for a good backup.
#[tokio::test]
async fn a_tree_archived_from_its_own_directory_with_dot_passes() {
    let env = env();
    let tree = tempfile::tempdir().expect("tree");
    fs::create_dir_all(tree.path().join("attachments")).expect("dir");
    fs::write(tree.path().join("attachments/a.pdf"), b"%PDF one").expect("file");
    let archive = env.file("dot.tar", b"");
    let out = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(tree.path())
        .arg(".")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = env
        .verify(&files_plan(
            &archive,
            "[files]\nrequired = [\"attachments/a.pdf\"]\n",
        ))
        .await;
    assert_passed(&report);
    let files = report.files.as_ref().expect("files reported");
    assert_eq!((files.count, files.dirs), (1, 1), "{files:?}");
}

fn files_manifest_len(tree: &[u8]) -> u64 {
    // The manifest is the last entry; its size is in its header.
    let mut archive = tar::Archive::new(tree);
    archive
        .entries()
        .expect("entries")
        .flatten()
        .find(|e| e.path().is_ok_and(|p| p.ends_with("MANIFEST.blake3")))
        .map_or(0, |e| e.size())
}

#[tokio::test]
async fn a_changed_file_or_a_missing_path_fails_the_checks() {
    let env = env();
    let conf = b"listen = 8080\n";
    let manifest = format!(
        "{}  etc/app.conf\n",
        blake3::hash(b"something else").to_hex()
    );
    let bytes = tar(&[
        file("etc/app.conf", conf),
        file("MANIFEST.blake3", manifest.as_bytes()),
    ]);
    let artifact = env.file("changed.tar", &bytes);
    let report = env
        .verify(&files_plan(
            &artifact,
            "[files]\nmanifest = \"MANIFEST.blake3\"\n",
        ))
        .await;
    assert_failed_in(&report, Phase::Checks.as_str(), "etc/app.conf: blake3");
    let report = env
        .verify(&files_plan(
            &artifact,
            "[files]\nrequired = [\"etc/missing.conf\"]\n",
        ))
        .await;
    assert_failed_in(
        &report,
        Phase::Checks.as_str(),
        "etc/missing.conf is not in the archive",
    );
}

/// A dir outside the sandbox that hostile archives aim at; it must stay empty.
fn target_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rh-target-")
        .tempdir()
        .expect("dir")
}

#[tokio::test]
async fn hostile_archives_fail_in_restore_and_write_nothing_outside() {
    let env = env();
    let outside = target_dir();
    let out = outside.path().display().to_string();
    let up = "../".repeat(12) + out.trim_start_matches('/');
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            tar(&[file("ok.txt", b"x"), file(&format!("{up}/pwned"), b"x")]),
            "\"..\" in the path",
        ),
        (
            "absolute path",
            tar(&[file(&format!("{out}/pwned"), b"x")]),
            "absolute path",
        ),
        (
            "symlink escape",
            tar(&[special("out", b'2', &up), file("out/pwned", b"x")]),
            "points outside the archive",
        ),
        (
            "absolute symlink",
            tar(&[special("out", b'2', &out), file("out/pwned", b"x")]),
            "absolute target",
        ),
        (
            "write through an inner symlink",
            tar(&[
                special("sub/", b'5', ""),
                special("link", b'2', "sub"),
                file("link/pwned", b"x"),
            ]),
            "written through the archive's own symlink",
        ),
        (
            "hardlink to a host file",
            tar(&[special("passwd", b'1', "/etc/passwd")]),
            "passwd",
        ),
        ("device node", tar(&[special("null", b'3', "")]), "null"),
        ("fifo", tar(&[special("pipe", b'6', "")]), "pipe"),
    ];
    for (name, bytes, reason) in cases {
        let report = env
            .verify(&files_plan(&env.file("hostile.tar.gz", &gzip(&bytes)), ""))
            .await;
        assert_eq!(report.verdict, Verdict::Failed, "{name}: {report:#?}");
        let failure = report.failure.as_ref().expect("failure");
        assert_eq!(failure.phase, "restore", "{name}: {failure:?}");
        assert!(
            failure.reason.contains(reason),
            "{name}: {:?} should mention {reason:?}",
            failure.reason
        );
        let written: Vec<_> = fs::read_dir(outside.path())
            .expect("read")
            .flatten()
            .collect();
        assert!(
            written.is_empty(),
            "{name} wrote outside the sandbox: {written:?}"
        );
    }
}

#[tokio::test]
async fn bombs_fail_before_writing_much() {
    let env = env();
    // One entry declaring 100 GiB (past the default 64 GiB limit), its data never sent.
    let huge = tar(&[Entry {
        declared: Some(100 << 30),
        ..file("huge.bin", b"")
    }]);
    let report = env
        .verify(&files_plan(&env.file("huge.tar.gz", &gzip(&huge)), ""))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "possible archive bomb");

    // 64 MiB of zeros compresses to ~64 KiB; the plan allows 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = gzip(&tar(&[file("a.txt", b"fine"), file("zeros.bin", &zeros)]));
    assert!(bomb.len() < 1 << 20, "the bomb is small: {}", bomb.len());
    let report = env
        .verify(&files_plan(
            &env.file("zeros.tar.gz", &bomb),
            "[files]\nmax_bytes = \"1MiB\"\n",
        ))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "past 1048576 bytes");

    // Too many entries.
    let names: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    let many: Vec<Entry> = names.iter().map(|n| file(n, b"")).collect();
    let report = env
        .verify(&files_plan(
            &env.file("many.tar", &tar(&many)),
            "[files]\nmax_entries = 100\n",
        ))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "more than 100 entries");
}

#[tokio::test]
async fn damaged_and_wrong_format_archives_fail_in_restore() {
    let env = env();
    let good = gzip(&good_tree());
    let report = env
        .verify(&files_plan(
            &env.file("cut.tar.gz", &good[..good.len() / 2]),
            "",
        ))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "corrupt or truncated");
    let fx = fixtures().await;
    let report = env.verify(&files_plan(&fx.join("custom.dump"), "")).await;
    assert_failed_in(&report, Phase::Restore.as_str(), "not a tar archive");
    let report = env
        .verify(&files_plan(&env.file("noise.bin", &[0x5a; 4096]), ""))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "not a tar archive");
}
