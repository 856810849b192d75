//! Restoring a dump into the sandbox cluster.
//!
//! - Custom and directory archives: `pg_restore -j N` straight from the file (parallel restore
//!   needs a seekable archive); tar archives: `pg_restore` from the file (tar cannot restore in
//!   parallel).
//! - Compressed archives and every plain SQL script: streamed in one pass — read, decompressed,
//!   (plain only) filtered through [`ScriptFilter`] — into the tool's stdin, with bounded memory.
//!
//! Archives restore with `--no-owner --no-privileges`: roles live outside a database dump. Plain
//! scripts keep their owners and grants; the filter creates the roles they name.
//! Any restore error fails the verification, with the tool's stderr tail as the reason.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rehearse_core::script::ScriptFilter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::cluster::PgCluster;
use super::{SUPERUSER, TARGET_DB};
use crate::sandbox::ProcessRuntime;
use crate::tail;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub enum Input {
    /// A custom or directory archive pg_restore can seek in: parallel restore.
    SeekableArchive(PathBuf),
    /// A tar archive file: pg_restore reads it, one job.
    TarArchive(PathBuf),
    /// A compressed custom or tar archive, decompressed into pg_restore's stdin.
    ArchiveStream(PathBuf, Compression),
    /// A plain SQL script (optionally compressed), filtered into psql's stdin.
    Plain(PathBuf, Compression),
}

/// The outcome of a successful restore.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The database holding the restored data.
    pub database: String,
    pub notes: Vec<String>,
}

/// Bytes handed to the tool per write; a few of these in flight bound the memory used.
const CHUNK: usize = 256 * 1024;
const IN_FLIGHT: usize = 4;
/// A plain script line longer than this is refused (a hostile file without newlines must not be
/// read into memory whole).
const MAX_LINE: u64 = 256 * 1024 * 1024;

/// Restores `input`; `Err` is the failure reason for phase `restore`.
pub async fn restore(
    cluster: &PgCluster,
    rt: &ProcessRuntime,
    input: Input,
    jobs: usize,
) -> Result<Restored, String> {
    super::inspect::create_database(cluster.socket_dir(), TARGET_DB).await?;
    match input {
        Input::Plain(path, compression) => restore_plain(cluster, rt, path, compression).await,
        // Parallel restore needs a seekable custom or directory archive.
        Input::SeekableArchive(path) => {
            restore_archive(
                cluster,
                rt,
                vec![format!("--jobs={}", jobs.max(1)).into(), path.into()],
                None,
            )
            .await
        }
        Input::TarArchive(path) => restore_archive(cluster, rt, vec![path.into()], None).await,
        Input::ArchiveStream(path, compression) => {
            restore_archive(
                cluster,
                rt,
                Vec::new(),
                Some(Feed {
                    path,
                    compression,
                    filter: None,
                }),
            )
            .await
        }
    }
}

/// psql, fed through the script filter, as the sandbox user.
async fn restore_plain(
    cluster: &PgCluster,
    rt: &ProcessRuntime,
    path: PathBuf,
    compression: Compression,
) -> Result<Restored, String> {
    let mut cmd = rt.command(&cluster.installed.bin("psql"), cluster.dir());
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", TARGET_DB])
        .args(cluster.client_args());
    let nonce = crate::random_token();
    let key = cluster.installed.psql_restrict.then(crate::random_token);
    let mut notes = Vec::new();
    if key.is_none() {
        notes.push(format!(
            "psql {} has no restricted mode: meta-commands are refused only at the start of a line",
            cluster.installed.version
        ));
    }
    let filter = ScriptFilter::new(key, &nonce, &[SUPERUSER]);
    let filter = run_tool(
        "psql",
        cmd,
        Some(Feed {
            path,
            compression,
            filter: Some(filter),
        }),
    )
    .await?;
    let database = filter
        .as_ref()
        .and_then(|f| f.database())
        .unwrap_or(TARGET_DB)
        .to_owned();
    let created: Vec<String> = filter
        .as_ref()
        .map(|f| {
            f.roles()
                .iter()
                .filter(|r| *r != SUPERUSER)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !created.is_empty() {
        notes.push(format!(
            "roles the dump refers to were created empty: {}",
            created.join(", ")
        ));
    }
    Ok(Restored { database, notes })
}

/// pg_restore (it executes nothing from the dump client-side, so it runs as the caller and can
/// read artifacts the sandbox user cannot), from a file in `args` or from the `feed`.
async fn restore_archive(
    cluster: &PgCluster,
    rt: &ProcessRuntime,
    args: Vec<std::ffi::OsString>,
    feed: Option<Feed>,
) -> Result<Restored, String> {
    let mut cmd = rt.client_command(&cluster.installed.bin("pg_restore"), cluster.dir());
    cmd.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "-d",
        TARGET_DB,
    ])
    .args(cluster.client_args())
    .args(args);
    run_tool("pg_restore", cmd, feed).await?;
    let note =
        "archive restored with --no-owner --no-privileges (roles are not part of a database dump)";
    Ok(Restored {
        database: TARGET_DB.to_owned(),
        notes: vec![note.to_owned()],
    })
}

struct Feed {
    path: PathBuf,
    compression: Compression,
    filter: Option<ScriptFilter>,
}

/// Runs a restore tool, feeding its stdin when asked; returns the filter (it knows where a plain
/// script `\connect`ed to). `Err` is the failure reason.
async fn run_tool(
    tool: &str,
    mut cmd: tokio::process::Command,
    feed: Option<Feed>,
) -> Result<Option<ScriptFilter>, String> {
    cmd.stdin(if feed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start {tool}: {e}"))?;
    let stderr_tail = child.stderr.take().map(|s| tokio::spawn(tail::collect(s)));
    let mut feed_error = None;
    let mut filter_back = None;
    if let Some(feed) = feed {
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, String>>(IN_FLIGHT);
        let feeder = tokio::task::spawn_blocking(move || {
            feed_blocking(&feed.path, feed.compression, feed.filter, &tx)
        });
        let mut stdin = child.stdin.take();
        while let Some(message) = rx.recv().await {
            match message {
                Ok(chunk) => {
                    let Some(pipe) = stdin.as_mut() else { break };
                    // A write error means the tool exited; its status and stderr say why.
                    if pipe.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    feed_error = Some(reason);
                    break;
                }
            }
        }
        drop(stdin);
        drop(rx);
        filter_back = feeder.await.ok().flatten();
        if feed_error.is_some() {
            let _ = child.kill().await;
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("wait for {tool}: {e}"))?;
    let stderr = match stderr_tail {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    if let Some(reason) = feed_error {
        return Err(reason);
    }
    if !status.success() {
        let said = tail::last_lines(&stderr, 3);
        return Err(if said.is_empty() {
            format!("{tool} failed ({status})")
        } else {
            format!("{tool} failed ({status}): {said}")
        });
    }
    Ok(filter_back)
}

fn open_stream(path: &Path, compression: Compression) -> io::Result<Box<dyn Read + Send>> {
    let file = File::open(path)?;
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    })
}

/// Reads the decompressed stream (blocking thread), filters plain scripts line by line, and sends
/// chunks. Stops early when the receiver is gone (the tool exited, or the verification ended).
fn feed_blocking(
    path: &Path,
    compression: Compression,
    mut filter: Option<ScriptFilter>,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Option<ScriptFilter> {
    let read_error = |e: io::Error| match compression {
        Compression::None => format!("read artifact: {e}"),
        c => format!("{} stream is corrupt or truncated: {e}", c.as_str()),
    };
    let mut reader = match open_stream(path, compression) {
        Ok(r) => BufReader::with_capacity(1 << 20, r),
        Err(e) => {
            let _ = tx.blocking_send(Err(read_error(e)));
            return filter;
        }
    };
    let mut out = Vec::with_capacity(CHUNK * 2);
    if let Some(f) = &filter {
        out.extend_from_slice(&f.prologue());
    }
    let mut line = Vec::new();
    loop {
        let more = match filter.as_mut() {
            Some(f) => {
                line.clear();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
                    Ok(0) => false,
                    Ok(n) if n as u64 == MAX_LINE && !line.ends_with(b"\n") => {
                        let _ = tx.blocking_send(Err(format!(
                            "a line of the script is longer than {} MiB; refused",
                            MAX_LINE >> 20
                        )));
                        return filter;
                    }
                    Ok(_) => {
                        if let Err(refused) = f.feed(&line, &mut out) {
                            let _ = tx.blocking_send(Err(format!("script refused at {refused}")));
                            return filter;
                        }
                        true
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(read_error(e)));
                        return filter;
                    }
                }
            }
            None => {
                let start = out.len();
                out.resize(start + CHUNK, 0);
                match reader.read(&mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        n > 0
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(read_error(e)));
                        return filter;
                    }
                }
            }
        };
        if out.len() >= CHUNK || (!more && !out.is_empty()) {
            if tx.blocking_send(Ok(std::mem::take(&mut out))).is_err() {
                return filter;
            }
            out.reserve(CHUNK * 2);
        }
        if !more {
            return filter;
        }
    }
}

/// Decompresses the first bytes of a compressed artifact, to learn what is inside.
pub fn decompressed_head(
    path: &Path,
    compression: Compression,
    len: usize,
) -> Result<Vec<u8>, String> {
    let reader = open_stream(path, compression)
        .map_err(|e| format!("open {}: {e}", compression.as_str()))?;
    let mut head = Vec::with_capacity(len);
    reader
        .take(len as u64)
        .read_to_end(&mut head)
        .map_err(|e| {
            format!(
                "{} stream is corrupt or truncated: {e}",
                compression.as_str()
            )
        })?;
    Ok(head)
}
