//! Reading an artifact as a stream, shared by every engine: one layer of gzip or zstd peeled,
//! the first bytes of what is inside (for sniffing), and a feed that reads, decompresses and
//! (for plain scripts) filters the artifact line by line into a tool's stdin on a blocking
//! thread, a few chunks in flight at most.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rehearse_core::format::{SNIFF_LEN, Sniffed, sniff};
use tokio::sync::mpsc;

use crate::artifact::LocalArtifact;
use crate::runtime::FeedRx;

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

/// Bytes handed to the tool per write; a few of these in flight bound the memory used.
const CHUNK: usize = 256 * 1024;
const IN_FLIGHT: usize = 4;
/// A plain script line longer than this is refused (a hostile file without newlines must not be
/// read into memory whole).
const MAX_LINE: u64 = 256 * 1024 * 1024;

/// What a restore tool reads on stdin: the artifact, decompressed, optionally through a filter.
pub struct Feed<F> {
    pub path: PathBuf,
    pub compression: Compression,
    pub filter: Option<F>,
}

/// A line filter between a plain script and the client that runs it (psql's
/// [`rehearse_core::script::ScriptFilter`], MariaDB's [`rehearse_core::mysqldump::Mysql8Filter`]). `Err` refuses the script.
pub trait LineFilter: Send + 'static {
    /// What goes to the client before the script.
    fn prologue(&self) -> Vec<u8> {
        Vec::new()
    }
    fn filter(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
}

/// No filter: the bytes as they are (a binary stream for a tool's stdin).
pub struct Unfiltered;

impl LineFilter for Unfiltered {
    fn filter(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(line);
        Ok(())
    }
}

/// Starts reading (and decompressing, and filtering) an artifact on a blocking thread; the
/// chunks arrive on the receiver, a few in flight at most. The task returns the filter.
pub fn start_feed<F: LineFilter>(feed: Feed<F>) -> (FeedRx, tokio::task::JoinHandle<Option<F>>) {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>(IN_FLIGHT);
    let feeder = tokio::task::spawn_blocking(move || {
        feed_blocking(&feed.path, feed.compression, feed.filter, &tx)
    });
    (rx, feeder)
}

pub fn open_stream(path: &Path, compression: Compression) -> io::Result<Box<dyn Read + Send>> {
    decoder(File::open(path)?, compression)
}

/// `input` decompressed.
pub fn decoder<'a, R: Read + Send + 'a>(
    input: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(input))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
    })
}

/// A reader that hashes (blake3) every byte read through it: one pass both hashes the stored
/// bytes and feeds the decompressor.
pub struct Hashing<R> {
    pub inner: R,
    pub hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads the decompressed stream (blocking thread), filters plain scripts line by line, and sends
/// chunks. Stops early when the receiver is gone (the tool exited, or the verification ended).
fn feed_blocking<F: LineFilter>(
    path: &Path,
    compression: Compression,
    mut filter: Option<F>,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Option<F> {
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
                        if let Err(refused) = f.filter(&line, &mut out) {
                            let _ = tx.blocking_send(Err(refused));
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

/// What is inside one layer of gzip or zstd (or the content itself): the inner format, the
/// compression, and " (gzip)"-style text for labels.
pub fn peel(artifact: &LocalArtifact) -> Result<(Sniffed, Compression, String), String> {
    let compression = match sniff(&artifact.head) {
        Sniffed::Gzip => Compression::Gzip,
        Sniffed::Zstd => Compression::Zstd,
        other => return Ok((other, Compression::None, String::new())),
    };
    let head = decompressed_head(&artifact.path, compression, SNIFF_LEN)?;
    Ok((
        sniff(&head),
        compression,
        format!(" ({})", compression.as_str()),
    ))
}
