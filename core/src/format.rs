//! Recognising an artifact's format from its content, never from its name.
//!
//! [`sniff`] looks at the first bytes of a file (callers pass at least [`SNIFF_LEN`] bytes when the
//! file has them). Compressed files (gzip, zstd) are reported as such; the caller decompresses the
//! head and sniffs again to learn what is inside. The pg_dump archive header also tells which
//! server version the dump came from, which picks the PostgreSQL installation to restore with.

/// How many leading bytes [`sniff`] wants to see.
pub const SNIFF_LEN: usize = 64 * 1024;

/// What the first bytes say an artifact is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    Empty,
    /// pg_dump custom format (`-Fc`).
    Custom {
        server_major: Option<u32>,
    },
    /// pg_dump tar format (`-Ft`), or another tar archive.
    Tar {
        server_major: Option<u32>,
    },
    /// A SQL script; `pg_dump` plain output when `server_major` is known.
    PlainSql {
        server_major: Option<u32>,
    },
    Gzip,
    Zstd,
    /// A mysqldump / mariadb-dump script.
    MysqlDump,
    /// Not anything we know; `hint` describes the first bytes for the failure reason.
    Unknown {
        hint: String,
    },
}

impl Sniffed {
    pub fn describe(&self) -> &'static str {
        match self {
            Sniffed::Empty => "empty",
            Sniffed::Custom { .. } => "pg_dump custom",
            Sniffed::Tar { .. } => "pg_dump tar",
            Sniffed::PlainSql { .. } => "plain SQL",
            Sniffed::Gzip => "gzip",
            Sniffed::Zstd => "zstd",
            Sniffed::MysqlDump => "mysqldump",
            Sniffed::Unknown { .. } => "unknown",
        }
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const PGDMP: &[u8] = b"PGDMP";

pub fn sniff(head: &[u8]) -> Sniffed {
    if head.is_empty() {
        return Sniffed::Empty;
    }
    if head.starts_with(PGDMP) {
        return Sniffed::Custom {
            server_major: archive_server_major(head),
        };
    }
    if head.starts_with(GZIP_MAGIC) {
        return Sniffed::Gzip;
    }
    if head.starts_with(ZSTD_MAGIC) {
        return Sniffed::Zstd;
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        // pg_dump's tar format starts with toc.dat, whose content is an archive header.
        let server_major = head
            .get(512..)
            .filter(|h| h.starts_with(PGDMP))
            .and_then(archive_server_major);
        return Sniffed::Tar { server_major };
    }
    if looks_like_text(head) {
        let text = String::from_utf8_lossy(&head[..head.len().min(16 * 1024)]);
        if is_mysql_dump(&text) {
            return Sniffed::MysqlDump;
        }
        return Sniffed::PlainSql {
            server_major: plain_server_major(&text),
        };
    }
    Sniffed::Unknown { hint: hint(head) }
}

/// Text: no NUL byte, and almost all bytes printable or whitespace (UTF-8 continuation bytes count
/// as printable, so non-English comments and data are fine).
fn looks_like_text(head: &[u8]) -> bool {
    let sample = &head[..head.len().min(8192)];
    if sample.contains(&0) {
        return false;
    }
    let odd = sample
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c))
        .count();
    odd * 100 <= sample.len()
}

fn is_mysql_dump(text: &str) -> bool {
    let head: String = text.lines().take(5).collect::<Vec<_>>().join("\n");
    head.contains("MySQL dump")
        || head.contains("MariaDB dump")
        || text.contains("/*!40101 SET")
        || text.contains("/*!40") && text.contains("ENGINE=")
}

fn plain_server_major(text: &str) -> Option<u32> {
    let line = text
        .lines()
        .take(40)
        .find_map(|l| l.strip_prefix("-- Dumped from database version "))?;
    leading_number(line)
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn hint(head: &[u8]) -> String {
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("first bytes {}", shown.join(" "))
}

/// Reads the pg_dump archive header (custom format, and toc.dat of tar/directory formats) far
/// enough to find the version of the server that was dumped. Layout, from pg_backup_archiver.c
/// `ReadHead`: "PGDMP", version major, minor, revision, int size, offset size, format; then the
/// compression (a byte from archive version 1.15, else an int), seven ints of creation time, the
/// database name, the server version and the pg_dump version (strings from 1.10).
pub fn archive_server_major(head: &[u8]) -> Option<u32> {
    let mut r = Reader {
        buf: head,
        pos: PGDMP.len(),
    };
    let vmaj = r.byte()?;
    let vmin = r.byte()?;
    let vrev = if vmaj > 1 || (vmaj == 1 && vmin > 0) {
        r.byte()?
    } else {
        0
    };
    let version = (u32::from(vmaj), u32::from(vmin), u32::from(vrev));
    if version < (1, 10, 0) {
        return None;
    }
    let int_size = usize::from(r.byte()?);
    if !(1..=8).contains(&int_size) {
        return None;
    }
    r.byte()?; // offset size
    r.byte()?; // format
    if version >= (1, 15, 0) {
        r.byte()?; // compression algorithm
    } else {
        r.int(int_size)?; // compression level
    }
    for _ in 0..7 {
        r.int(int_size)?; // creation time
    }
    r.string(int_size)?; // database name
    let server = r.string(int_size)?;
    leading_number(&server)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// pg_dump's ReadInt: a sign byte, then `size` bytes little-endian.
    fn int(&mut self, size: usize) -> Option<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..size {
            value |= i64::from(self.byte()?).checked_shl(8 * i as u32)?;
        }
        Some(if negative { -value } else { value })
    }

    fn string(&mut self, int_size: usize) -> Option<String> {
        let len = self.int(int_size)?;
        if len < 0 {
            return Some(String::new());
        }
        let len = usize::try_from(len).ok().filter(|&l| l <= 4096)?;
        let bytes = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A custom-format header as pg_dump 15 writes it (archive version 1.14, int size 4).
    fn custom_header(server: &str) -> Vec<u8> {
        let mut h = b"PGDMP".to_vec();
        h.extend([1, 14, 0, 4, 8, 1]);
        let int = |h: &mut Vec<u8>, v: i32| {
            h.push(u8::from(v < 0));
            h.extend(v.unsigned_abs().to_le_bytes());
        };
        int(&mut h, -1); // compression level
        for v in [1, 2, 3, 4, 5, 126, 0] {
            int(&mut h, v);
        }
        for s in ["shop", server, "15.18"] {
            int(&mut h, s.len() as i32);
            h.extend(s.as_bytes());
        }
        h
    }

    #[test]
    fn custom_format_and_its_server_version() {
        assert_eq!(
            sniff(&custom_header("15.18 (Debian 15.18-0+deb12u1)")),
            Sniffed::Custom {
                server_major: Some(15)
            }
        );
        assert_eq!(
            sniff(&custom_header("9.6.24")),
            Sniffed::Custom {
                server_major: Some(9)
            }
        );
        // truncated header: still custom, version unknown
        assert_eq!(
            sniff(&custom_header("16.2")[..20]),
            Sniffed::Custom { server_major: None }
        );
    }

    #[test]
    fn tar_with_toc_header() {
        let mut t = vec![0u8; 512];
        t[..7].copy_from_slice(b"toc.dat");
        t[257..262].copy_from_slice(b"ustar");
        t.extend(custom_header("16.1"));
        assert_eq!(
            sniff(&t),
            Sniffed::Tar {
                server_major: Some(16)
            }
        );
    }

    #[test]
    fn plain_sql_and_mysql() {
        let pg = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)\n-- Dumped by pg_dump version 15.18\n\nSET statement_timeout = 0;\n";
        assert_eq!(
            sniff(pg.as_bytes()),
            Sniffed::PlainSql {
                server_major: Some(15)
            }
        );
        assert_eq!(
            sniff(b"CREATE TABLE t (id int);\n"),
            Sniffed::PlainSql { server_major: None }
        );
        let my = "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n-- Host: localhost    Database: shop\n/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n";
        assert_eq!(sniff(my.as_bytes()), Sniffed::MysqlDump);
        let maria = "-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB\n";
        assert_eq!(sniff(maria.as_bytes()), Sniffed::MysqlDump);
    }

    #[test]
    fn compressed_empty_and_garbage() {
        assert_eq!(sniff(&[]), Sniffed::Empty);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Sniffed::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Sniffed::Zstd);
        let garbage = [0x00u8, 0xff, 0x13, 0x37, 0x42, 0x00, 0x99, 0x01];
        assert!(
            matches!(sniff(&garbage), Sniffed::Unknown { hint } if hint.contains("00 ff 13 37"))
        );
    }

    proptest! {
        /// Hostile input: any bytes at all are classified without a panic.
        #[test]
        fn sniff_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = sniff(&bytes);
            let mut with_magic = b"PGDMP".to_vec();
            with_magic.extend(&bytes);
            let _ = sniff(&with_magic);
        }
    }
}
