//! The line filter a MySQL/MariaDB dump passes through on its way into a MariaDB sandbox: the
//! known differences of MySQL 8 dumps, mapped so a good backup restores.
//!
//! Nearly every `mysqldump` 8.0 output declares `COLLATE=utf8mb4_0900_ai_ci`, which MariaDB does
//! not have; GTID-enabled servers add `SET @@GLOBAL.GTID_PURGED=…`; and 8.0-only clauses come in
//! versioned comments (`/*!80016 DEFAULT ENCRYPTION='N' */`) that MariaDB — whose version number
//! is larger — would execute and fail on. [`Mysql8Filter`] maps each to what MariaDB takes:
//!
//! | MySQL 8 | in the MariaDB sandbox |
//! |---|---|
//! | `utf8mb4_0900_ai_ci`, `_as_ci`, `_as_cs` | `utf8mb4_uca1400_ai_ci`, `_as_ci`, `_as_cs` (UCA 14.0, MariaDB ≥ 10.10) |
//! | `utf8mb4_<lang>_0900_<x>` | `utf8mb4_uca1400_<x>` (the language tailoring is lost; noted) |
//! | `utf8mb4_0900_bin` | `utf8mb4_bin` |
//! | `SET @@GLOBAL.GTID_PURGED=…;` | dropped (replication state of the source, not data) |
//! | `/*!8xxxx … */` | left as a comment MariaDB skips (`/*!999999 … */`) |
//!
//! Collations are mapped outside data only: `INSERT` lines pass untouched, so a value that
//! happens to contain a collation name is never changed. Every mapping is counted and listed in
//! the report's notes ([`Mysql8Filter::notes`]).

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Mysql8Filter {
    /// "8.0.36" when the header says the dump came from MySQL 8.
    source: Option<String>,
    /// (from, to) → how often.
    mapped: BTreeMap<(String, String), u64>,
    gtid_dropped: bool,
    /// Inside a `SET @@GLOBAL.GTID_PURGED` statement that spans lines.
    in_gtid: bool,
    /// Versioned comments of MySQL 8 that were disarmed, by version marker.
    disarmed: BTreeMap<String, u64>,
    line: u64,
}

impl Mysql8Filter {
    pub fn new() -> Mysql8Filter {
        Mysql8Filter::default()
    }

    /// The MySQL version the header names, when it is 8 or later.
    pub fn source_version(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Filters one line (with or without its `\n`), appending what the client should read.
    pub fn feed(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.line += 1;
        if self.in_gtid {
            self.in_gtid = !ends_statement(line);
            return;
        }
        // Data lines pass as they are (and most of a dump is data): only statements are mapped.
        if line.starts_with(b"INSERT INTO ") || line.starts_with(b"REPLACE INTO ") {
            out.extend_from_slice(line);
            return;
        }
        let text = String::from_utf8_lossy(line);
        if self.line <= 5 && self.source.is_none() {
            self.source = mysql8_version(&text);
        }
        if text.trim_start().starts_with("SET @@GLOBAL.GTID_PURGED") {
            self.gtid_dropped = true;
            self.in_gtid = !ends_statement(line);
            out.extend_from_slice(b"-- (SET @@GLOBAL.GTID_PURGED dropped by rehearse)\n");
            return;
        }
        let mut text = text.into_owned();
        if text.contains("_0900_") {
            text = self.map_collations(&text);
        }
        if text.contains("/*!8") {
            text = self.disarm(&text);
        }
        out.extend_from_slice(text.as_bytes());
    }

    fn map_collations(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("utf8mb4_") {
            out.push_str(&rest[..at]);
            let word_len = rest[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - at);
            let word = &rest[at..at + word_len];
            match mariadb_collation(word) {
                Some(to) => {
                    *self
                        .mapped
                        .entry((word.to_owned(), to.clone()))
                        .or_default() += 1;
                    out.push_str(&to);
                }
                None => out.push_str(word),
            }
            rest = &rest[at + word_len..];
        }
        out.push_str(rest);
        out
    }

    /// `/*!80016 X */` → `/*!999999 X */`: still a comment, one MariaDB never executes.
    fn disarm(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("/*!8") {
            out.push_str(&rest[..at]);
            let digits = &rest[at + 3..];
            let n = digits.chars().take_while(char::is_ascii_digit).count();
            if n == 5 {
                *self.disarmed.entry(digits[..5].to_owned()).or_default() += 1;
                out.push_str("/*!999999");
                rest = &digits[5..];
            } else {
                out.push_str("/*!");
                rest = digits;
            }
        }
        out.push_str(rest);
        out
    }

    /// What was mapped, for the report: one note per kind, with counts.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(v) = &self.source {
            notes.push(format!(
                "MySQL {v} dump restored into MariaDB with the known differences mapped"
            ));
        }
        for ((from, to), n) in &self.mapped {
            let lost = if from.matches('_').count() > 3 {
                " (language tailoring lost)"
            } else {
                ""
            };
            notes.push(format!("collation {from} mapped to {to}{lost}: {n}×"));
        }
        if self.gtid_dropped {
            notes.push(
                "SET @@GLOBAL.GTID_PURGED dropped (the source's replication state, not data)"
                    .to_owned(),
            );
        }
        if !self.disarmed.is_empty() {
            let list: Vec<String> = self
                .disarmed
                .iter()
                .map(|(v, n)| format!("/*!{v} … */ {n}×"))
                .collect();
            notes.push(format!(
                "MySQL 8-only clauses in versioned comments skipped: {}",
                list.join(", ")
            ));
        }
        notes
    }
}

/// `-- MySQL dump 10.13  Distrib 8.0.36, for Linux` or `-- Server version<TAB>8.0.36` → "8.0.36".
fn mysql8_version(line: &str) -> Option<String> {
    let rest = line
        .split_once("Distrib ")
        .map(|(_, r)| r)
        .or_else(|| line.strip_prefix("-- Server version").map(str::trim_start))?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let major: u32 = version.split('.').next()?.parse().ok()?;
    (major >= 8 && !line.contains("MariaDB")).then_some(version)
}

/// MariaDB's nearest collation for a MySQL 8 one, or `None` to leave it.
fn mariadb_collation(name: &str) -> Option<String> {
    let (_, suffix) = name.split_once("_0900_")?;
    Some(match suffix {
        "bin" => "utf8mb4_bin".to_owned(),
        "ai_ci" | "as_ci" | "as_cs" => format!("utf8mb4_uca1400_{suffix}"),
        _ => return None,
    })
}

fn ends_statement(line: &[u8]) -> bool {
    line.trim_ascii_end().ends_with(b";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dump: &str) -> (String, Mysql8Filter) {
        let mut f = Mysql8Filter::new();
        let mut out = Vec::new();
        for line in dump.split_inclusive('\n') {
            f.feed(line.as_bytes(), &mut out);
        }
        (String::from_utf8(out).expect("utf8"), f)
    }

    const DUMP: &str = "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n\
--\n\
-- Server version\t8.0.36\n\
SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n\
9f0a2b1c-71ca-11e1-9e33-c80aa9429562:1-3';\n\
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci */ /*!80016 DEFAULT ENCRYPTION='N' */;\n\
CREATE TABLE `orders` (\n\
  `id` int NOT NULL,\n\
  `note` varchar(20) COLLATE utf8mb4_de_pb_0900_as_cs DEFAULT NULL,\n\
  `code` varbinary(8) /*!80023 INVISIBLE */,\n\
  PRIMARY KEY (`id`)\n\
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci;\n\
INSERT INTO `orders` VALUES (1,'utf8mb4_0900_ai_ci /*!80016 x */',NULL);\n";

    #[test]
    fn mysql8_constructs_are_mapped_and_listed() {
        let (out, f) = run(DUMP);
        assert_eq!(f.source_version(), Some("8.0.36"));
        assert!(!out.contains("GTID_PURGED="), "{out}");
        assert!(
            !out.contains("9f0a2b1c"),
            "the continuation line goes too: {out}"
        );
        assert!(out.contains("COLLATE=utf8mb4_uca1400_ai_ci;"), "{out}");
        assert!(out.contains("COLLATE utf8mb4_uca1400_ai_ci */"), "{out}");
        assert!(
            out.contains("COLLATE utf8mb4_uca1400_as_cs DEFAULT NULL"),
            "{out}"
        );
        assert!(out.contains("/*!999999 DEFAULT ENCRYPTION='N' */"), "{out}");
        assert!(out.contains("/*!999999 INVISIBLE */"), "{out}");
        assert!(
            out.contains("/*!40100 DEFAULT"),
            "older versioned comments stay"
        );
        // data is never rewritten
        assert!(
            out.contains("VALUES (1,'utf8mb4_0900_ai_ci /*!80016 x */',NULL);"),
            "{out}"
        );
        let notes = f.notes().join("\n");
        assert!(notes.contains("MySQL 8.0.36 dump"), "{notes}");
        assert!(
            notes.contains("collation utf8mb4_0900_ai_ci mapped to utf8mb4_uca1400_ai_ci: 2×"),
            "{notes}"
        );
        assert!(notes.contains("language tailoring lost"), "{notes}");
        assert!(notes.contains("GTID_PURGED dropped"), "{notes}");
        assert!(notes.contains("/*!80016 … */ 1×"), "{notes}");
    }

    #[test]
    fn mariadb_dumps_pass_unchanged() {
        let dump = "-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)\n\
CREATE TABLE `t` (`id` int) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;\n\
/*!40101 SET character_set_client = @saved_cs_client */;\n";
        let (out, f) = run(dump);
        assert_eq!(out, dump);
        assert_eq!(f.source_version(), None);
        assert!(f.notes().is_empty());
    }
}
