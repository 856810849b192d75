//! blake3 of an artifact, in one pass over its bytes.
//!
//! Files are read in large blocks and each block is hashed on all cores (`update_rayon`), which is
//! what makes blake3 fast; reading (rather than mmap, as `b3sum` does) keeps a file truncated under
//! us from killing the process with SIGBUS — an artifact is hostile input, its storage included.
//! A directory artifact (pg_dump directory format) is hashed through a manifest: one line per file
//! (`<blake3>  <size>  <relative path>`, sorted by path), and the digest of that manifest.

use crate::progress::Meter;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Block size for one `update_rayon` call: large enough that both cores get whole chunk trees.
const BLOCK: usize = 8 * 1024 * 1024;

/// Blocks in flight between the reading thread and the hashing one.
const IN_FLIGHT: usize = 3;

/// blake3 and length of a file. One thread reads block N+1 while the others hash block N, so the
/// copy out of the page cache overlaps the hashing instead of adding to it.
///
/// A file that fits in one block (most files of a pg_dump directory) is read and hashed in place:
/// no reading thread and no block buffers, whose start-up cost dwarfed the hashing of a small file.
pub fn hash_file(path: &Path) -> io::Result<(blake3::Hash, u64)> {
    hash_file_metered(path, &Meter::default())
}

/// [`hash_file`], counting the bytes read on `meter` (its total is the file's size).
pub fn hash_file_metered(path: &Path, meter: &Meter) -> io::Result<(blake3::Hash, u64)> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    meter.expect(size);
    if size < BLOCK as u64 {
        // Bounded by BLOCK whatever the metadata said: a file growing under us takes the
        // streaming path for its remainder.
        let mut head = Vec::with_capacity(size as usize + 1);
        (&mut file).take(BLOCK as u64).read_to_end(&mut head)?;
        let mut hasher = blake3::Hasher::new();
        if head.len() >= 128 * 1024 {
            hasher.update_rayon(&head);
        } else {
            hasher.update(&head);
        }
        meter.add(head.len() as u64);
        if head.len() < BLOCK {
            return Ok((hasher.finalize(), head.len() as u64));
        }
        return stream(file, hasher, head.len() as u64, meter);
    }
    stream(file, blake3::Hasher::new(), 0, meter)
}

/// The rest of `file`, read in blocks by one thread while the hasher takes the previous block.
fn stream(
    mut file: File,
    mut hasher: blake3::Hasher,
    mut total: u64,
    meter: &Meter,
) -> io::Result<(blake3::Hash, u64)> {
    let (full_tx, full_rx) =
        std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = empty_tx.send(vec![0u8; BLOCK]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends when the file ends, on an error, or when the hasher stops taking blocks.
            while let Ok(mut buf) = empty_rx.recv() {
                let read = read_full(&mut file, &mut buf);
                let done = !matches!(read, Ok(n) if n > 0);
                if full_tx.send(read.map(|n| (buf, n))).is_err() || done {
                    break;
                }
            }
        });
        loop {
            let (buf, n) = match full_rx.recv() {
                Ok(Ok(block)) => block,
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            hasher.update_rayon(&buf[..n]);
            total += n as u64;
            meter.add(n as u64);
            // The reader may already have finished; a refused buffer is simply dropped.
            let _ = empty_tx.send(buf);
        }
        Ok((hasher.finalize(), total))
    })
}

/// Fills `buf` as far as the reader allows; returns the bytes read (0 at end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// blake3 of a directory's manifest, total bytes of its files, and the manifest itself.
pub fn hash_tree(root: &Path) -> io::Result<(blake3::Hash, u64, String)> {
    let mut files = Vec::new();
    collect_files(root, root, &mut files)?;
    files.sort();
    let mut manifest = String::new();
    let mut total = 0;
    for rel in files {
        let (hash, len) = hash_file(&root.join(&rel))?;
        total += len;
        manifest.push_str(&format!("{hash}  {len}  {}\n", rel.display()));
    }
    Ok((blake3::hash(manifest.as_bytes()), total, manifest))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push(
                path.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or(path),
            );
        }
        // symlinks and special files are not part of a pg_dump directory; they are not followed
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_matches_one_shot_blake3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        // Each side of the small-file path, of its rayon threshold, and of the block.
        for size in [
            0,
            1,
            4096,
            200_000,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            BLOCK * 2 + 12345,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &data).expect("write");
            let (hash, len) = hash_file(&path).expect("hash");
            assert_eq!(hash, blake3::hash(&data), "size {size}");
            assert_eq!(len, data.len() as u64, "size {size}");
        }
    }

    #[test]
    fn tree_hash_depends_on_names_and_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("toc.dat"), b"toc").expect("write");
        std::fs::write(dir.path().join("3001.dat.gz"), b"data").expect("write");
        let (h1, len, manifest) = hash_tree(dir.path()).expect("hash");
        assert_eq!(len, 7);
        assert!(
            manifest
                .lines()
                .next()
                .is_some_and(|l| l.ends_with("3001.dat.gz"))
        );
        std::fs::write(dir.path().join("3001.dat.gz"), b"dat4").expect("write");
        assert_ne!(hash_tree(dir.path()).expect("hash").0, h1);
    }
}
