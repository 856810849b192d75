//! PostgreSQL physical backups, as pure logic: LSNs, WAL segment names, the `backup_label` a base
//! backup carries, what a WAL archive holds, and whether its segments form an unbroken chain
//! from the base backup's start to the archive's end.
//!
//! A segment name is `TTTTTTTTXXXXXXXXYYYYYYYY` (hex): timeline, then the segment number split
//! at 2^32 bytes of WAL (`XXXXXXXX` counts 4 GiB "log ids", `YYYYYYYY` the segments inside one).
//! Archives also hold timeline histories (`00000002.history`), backup history files
//! (`…00000028.backup`) and partial segments (`….partial`); any of them may carry a compression
//! suffix (`.gz`, `.zst`) when `archive_command` compressed it.

use std::fmt;

/// The default WAL segment size (initdb `--wal-segsize 16`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `"16/B374D848"` (what `pg_current_wal_lsn()` and `backup_label` print).
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The segment number this position lies in.
    pub fn segno(self, segment_bytes: u64) -> u64 {
        self.0 / segment_bytes.max(1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One WAL segment: its timeline and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub segno: u64,
}

impl Segment {
    /// The segment a name means, for segments of `segment_bytes`.
    pub fn parse(name: &str, segment_bytes: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..], 16).ok()?;
        let per_log = per_log(segment_bytes);
        (seg < per_log && timeline > 0).then_some(Segment {
            timeline,
            segno: log * per_log + seg,
        })
    }

    /// Its file name.
    pub fn name(self, segment_bytes: u64) -> String {
        let per_log = per_log(segment_bytes);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_log,
            self.segno % per_log
        )
    }
}

fn per_log(segment_bytes: u64) -> u64 {
    (0x1_0000_0000 / segment_bytes.max(1)).max(1)
}

/// What one file in a WAL archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Segment(Segment),
    /// `TTTTTTTT.history`: how timeline `T` branched off its parent.
    History(u32),
    /// A backup history file, a `.partial` segment, or anything else: not replayed.
    Other,
}

/// A file name in an archive: what it is, and its compression suffix ("gz", "zst") if any.
pub fn classify(name: &str, segment_bytes: u64) -> (Entry, Option<&'static str>) {
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Some("gz"))
    } else if let Some(s) = name
        .strip_suffix(".zst")
        .or_else(|| name.strip_suffix(".zstd"))
    {
        (s, Some("zst"))
    } else {
        (name, None)
    };
    if let Some(segment) = Segment::parse(stem, segment_bytes) {
        return (Entry::Segment(segment), compression);
    }
    if let Some(tli) = stem.strip_suffix(".history")
        && tli.len() == 8
        && let Ok(tli) = u32::from_str_radix(tli, 16)
    {
        return (Entry::History(tli), compression);
    }
    (Entry::Other, compression)
}

/// What a base backup's `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupLabel {
    pub start: Lsn,
    pub start_segment: String,
    pub checkpoint: Lsn,
    pub timeline: u32,
    /// "streamed" or "pg_start_backup"/"pg_backup_start".
    pub method: String,
    /// `START TIME`, as written ("2026-11-30 11:42:07 UTC").
    pub start_time: String,
    pub label: String,
}

/// Parses a `backup_label`. `Err` says which line is missing or malformed.
pub fn parse_backup_label(text: &str) -> Result<BackupLabel, String> {
    let mut label = BackupLabel::default();
    let mut seen_start = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "START WAL LOCATION" => {
                // "0/2000028 (file 000000010000000000000002)"
                let (lsn, rest) = value.split_once(' ').unwrap_or((value, ""));
                label.start = Lsn::parse(lsn)
                    .ok_or_else(|| format!("backup_label: START WAL LOCATION {value:?}"))?;
                label.start_segment = rest
                    .trim()
                    .trim_start_matches("(file ")
                    .trim_end_matches(')')
                    .to_owned();
                seen_start = true;
            }
            "CHECKPOINT LOCATION" => {
                label.checkpoint = Lsn::parse(value)
                    .ok_or_else(|| format!("backup_label: CHECKPOINT LOCATION {value:?}"))?;
            }
            "START TIMELINE" => {
                label.timeline = value
                    .parse()
                    .map_err(|_| format!("backup_label: START TIMELINE {value:?}"))?;
            }
            "BACKUP METHOD" => label.method = value.to_owned(),
            "START TIME" => label.start_time = value.to_owned(),
            "LABEL" => label.label = value.to_owned(),
            _ => {}
        }
    }
    if !seen_start {
        return Err("backup_label has no START WAL LOCATION line".into());
    }
    if label.timeline == 0 {
        // Labels before PostgreSQL 11 have no START TIMELINE; the start segment names it.
        label.timeline =
            Segment::parse(&label.start_segment, DEFAULT_SEGMENT_BYTES).map_or(1, |s| s.timeline);
    }
    Ok(label)
}

impl BackupLabel {
    /// `START TIME` as ms since the epoch, when it is written in UTC (the server's log time
    /// zone decides; other zones are not guessed).
    pub fn start_ms(&self) -> Option<i64> {
        let text = self.start_time.trim();
        let utc = text
            .strip_suffix(" UTC")
            .or_else(|| text.strip_suffix(" GMT"))?;
        chrono::NaiveDateTime::parse_from_str(utc.trim(), "%Y-%m-%d %H:%M:%S")
            .ok()
            .map(|t| t.and_utc().timestamp_millis())
    }
}

/// The WAL range a `backup_manifest` records (`WAL-Ranges`): the backup is consistent once
/// replay passes `end` on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// The last `WAL-Ranges` entry of a `backup_manifest` (JSON), if it has one.
pub fn manifest_wal_range(manifest: &str) -> Option<WalRange> {
    let value: serde_json::Value = serde_json::from_str(manifest).ok()?;
    let range = value.get("WAL-Ranges")?.as_array()?.last()?;
    Some(WalRange {
        timeline: u32::try_from(range.get("Timeline")?.as_u64()?).ok()?,
        start: Lsn::parse(range.get("Start-LSN")?.as_str()?)?,
        end: Lsn::parse(range.get("End-LSN")?.as_str()?)?,
    })
}

/// The segments recovery will ask for, in order, and the histories beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// (segment, the archive's file name) from the base backup's start to the archive's end,
    /// or to the first hole; where several timelines hold one segment number, the highest.
    pub segments: Vec<(Segment, String)>,
    /// Archive file names of timeline histories.
    pub histories: Vec<String>,
    /// The first hole, when the archive has segments after one.
    pub gap: Option<Gap>,
    /// Segments in the archive from the start on, including those after a hole.
    pub available: u64,
}

impl Chain {
    pub fn last(&self) -> Option<Segment> {
        self.segments.last().map(|(s, _)| *s)
    }
}

/// A hole in the archive: no timeline holds segment `missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The first missing segment's name.
    pub missing: String,
    /// How many consecutive segments are missing.
    pub count: u64,
    /// The archive's segment just before the hole (`None`: the hole starts at the backup).
    pub after: Option<String>,
    /// The next segment the archive holds after the hole.
    pub before: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.count == 1 {
            format!("WAL {} missing", self.missing)
        } else {
            format!(
                "WAL {} and the {} segments after it missing",
                self.missing,
                self.count - 1
            )
        };
        match &self.after {
            Some(after) => write!(
                f,
                "{what} between {after} and {} in the archive",
                self.before
            ),
            None => write!(
                f,
                "{what}: the archive's first segment after the base backup's start is {}",
                self.before
            ),
        }
    }
}

/// The chain of segments from `start` (the base backup's first segment) to the newest segment
/// in `names` on `start`'s timeline or a later one, stopping at the first hole (named in
/// `gap`). Segments before the start and on older timelines are not needed and are left out.
pub fn chain(names: &[String], start: Segment, segment_bytes: u64) -> Chain {
    let mut by_segno: std::collections::BTreeMap<u64, (Segment, String)> = Default::default();
    let mut histories = Vec::new();
    for name in names {
        match classify(name, segment_bytes).0 {
            Entry::Segment(s) if s.timeline >= start.timeline && s.segno >= start.segno => {
                let keep = by_segno
                    .get(&s.segno)
                    .is_none_or(|(have, _)| have.timeline < s.timeline);
                if keep {
                    by_segno.insert(s.segno, (s, name.clone()));
                }
            }
            Entry::History(tli) if tli > start.timeline => histories.push(name.clone()),
            _ => {}
        }
    }
    histories.sort();
    let available = by_segno.len() as u64;
    let mut segments = Vec::with_capacity(by_segno.len());
    let mut expect = start.segno;
    let mut previous: Option<String> = None;
    for (segno, (segment, name)) in by_segno {
        if segno != expect {
            let gap = Some(Gap {
                missing: Segment {
                    timeline: previous
                        .as_ref()
                        .and_then(|p| classify(p, segment_bytes).0.segment())
                        .map_or(start.timeline, |s| s.timeline),
                    segno: expect,
                }
                .name(segment_bytes),
                count: segno - expect,
                after: previous,
                before: name,
            });
            return Chain {
                segments,
                histories,
                gap,
                available,
            };
        }
        previous = Some(name.clone());
        segments.push((segment, name));
        expect = segno + 1;
    }
    Chain {
        segments,
        histories,
        gap: None,
        available,
    }
}

impl Entry {
    fn segment(&self) -> Option<Segment> {
        match self {
            Entry::Segment(s) => Some(*s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_BYTES;

    #[test]
    fn lsns_and_segment_names_round_trip() {
        let lsn = Lsn::parse("16/B374D848").expect("lsn");
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(lsn.segno(SEG), 0x16 * 256 + 0xB3);
        let s = Segment::parse("0000000100000016000000B3", SEG).expect("segment");
        assert_eq!(s.segno, lsn.segno(SEG));
        assert_eq!(s.name(SEG), "0000000100000016000000B3");
        // A segment number past the last of a log id is not a segment of this size.
        assert_eq!(Segment::parse("000000010000000000000100", SEG), None);
        assert_eq!(Segment::parse("00000001000000000000000", SEG), None);
        assert_eq!(Lsn::parse("zz/1"), None);
        // 64 MiB segments: four times fewer per log id.
        let big = Segment::parse("00000001000000010000003F", 64 << 20).expect("segment");
        assert_eq!(big.segno, 64 + 63);
    }

    #[test]
    fn archive_names_are_classified_with_their_compression() {
        let c = |n: &str| classify(n, SEG);
        assert!(matches!(
            c("000000010000000000000003.gz"),
            (Entry::Segment(_), Some("gz"))
        ));
        assert!(matches!(
            c("000000010000000000000003.zst"),
            (Entry::Segment(_), Some("zst"))
        ));
        assert_eq!(c("00000002.history"), (Entry::History(2), None));
        assert_eq!(
            c("000000010000000000000002.00000028.backup"),
            (Entry::Other, None)
        );
        assert_eq!(c("000000010000000000000004.partial"), (Entry::Other, None));
    }

    #[test]
    fn a_backup_label_is_read() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                    BACKUP FROM: primary\nSTART TIME: 2026-11-30 11:42:07 UTC\n\
                    LABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n";
        let l = parse_backup_label(text).expect("label");
        assert_eq!(l.start, Lsn(0x0200_0028));
        assert_eq!(l.start_segment, "000000010000000000000002");
        assert_eq!(l.checkpoint, Lsn(0x0200_0060));
        assert_eq!(l.timeline, 1);
        assert_eq!(l.method, "streamed");
        assert!(parse_backup_label("LABEL: x\n").is_err());
        assert!(parse_backup_label("START WAL LOCATION: nope (file x)\n").is_err());
    }

    #[test]
    fn the_manifest_names_the_wal_range() {
        let m = r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
            "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}"#;
        assert_eq!(
            manifest_wal_range(m),
            Some(WalRange {
                timeline: 1,
                start: Lsn(0x0200_0028),
                end: Lsn(0x0200_0100)
            })
        );
        assert_eq!(manifest_wal_range("{}"), None);
        assert_eq!(manifest_wal_range("not json"), None);
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_unbroken_archive_is_one_chain_from_the_backup_start() {
        let start = Segment::parse("000000010000000000000002", SEG).expect("start");
        let archive = names(&[
            "000000010000000000000001",
            "000000010000000000000002.gz",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003.gz",
            "0000000100000000000000FF",
            "000000010000000100000000",
        ]);
        // 3 → FF is a hole: the chain stops before it.
        let c = chain(&archive, start, SEG);
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.available, 4);
        let gap = c.gap.expect("hole");
        assert_eq!(gap.missing, "000000010000000000000004");
        assert_eq!(gap.count, 0xFF - 4);
        assert_eq!(gap.after.as_deref(), Some("000000010000000000000003.gz"));
        assert_eq!(gap.before, "0000000100000000000000FF");
        assert!(gap.to_string().contains("WAL 000000010000000000000004"));

        let archive = names(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]);
        let c = chain(&archive, start, SEG);
        assert_eq!(c.gap, None);
        assert_eq!(
            c.segments.len(),
            3,
            "the segment before the start is left out"
        );
        assert_eq!(
            c.last().map(|s| s.name(SEG)).as_deref(),
            Some("000000010000000000000004")
        );
    }

    #[test]
    fn a_later_timeline_continues_the_chain() {
        let start = Segment::parse("000000010000000000000002", SEG).expect("start");
        let archive = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "00000002.history",
            "000000020000000000000003",
            "000000020000000000000004",
        ]);
        let c = chain(&archive, start, SEG);
        let got: Vec<&str> = c.segments.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            got,
            [
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004"
            ]
        );
        assert_eq!(c.histories, ["00000002.history"]);
    }

    #[test]
    fn a_missing_first_segment_is_a_gap_at_the_start() {
        let start = Segment::parse("000000010000000000000002", SEG).expect("start");
        let c = chain(&names(&["000000010000000000000003"]), start, SEG);
        assert!(c.segments.is_empty());
        let gap = c.gap.expect("first missing");
        assert_eq!(gap.missing, "000000010000000000000002");
        assert_eq!(gap.after, None);
        // An archive with nothing after the start is an empty chain, not a gap.
        let empty = chain(&[], start, SEG);
        assert!(empty.segments.is_empty() && empty.gap.is_none());
    }
}
