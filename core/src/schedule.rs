//! When a drill fires: cron schedules in an IANA time zone, evaluated the same on every replica.
//!
//! - Patterns are cron (`croner`): 5 fields, or 6 with seconds; `L`, `W`, `#`, names (`SUN#1`).
//! - Time zones come from `chrono-tz`, whose database is compiled in: every coordinator computes
//!   the same instants whatever its host's `/usr/share/zoneinfo` says.
//! - Daylight saving: a fixed time that falls in a gap (spring forward) fires once, at the first
//!   valid instant after it; a fixed time in a repeated hour (fall back) fires once, at the first
//!   of the two. [`Schedule::upcoming`] notes both.
//! - [`Schedule::ticks_between`] lists the ticks in a span without a cap, and
//!   [`jitter_ms`] spreads runs inside their window deterministically per (drill, tick).
//!
//! Pure: instants are milliseconds since the Unix epoch, passed in by the caller.

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("timezone {0:?} is not an IANA time zone name (e.g. \"Europe/Berlin\")")]
    Timezone(String),
    #[error("schedule {pattern:?} is not a cron pattern: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("schedule {0:?} never fires")]
    Never(String),
}

/// A validated schedule: the pattern and the zone it is read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    pattern: String,
    cron: Cron,
    tz: Tz,
}

/// One upcoming fire time, for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FireTime {
    pub at_ms: i64,
    /// RFC 3339 in UTC.
    pub utc: String,
    /// RFC 3339 in the schedule's zone, with its offset.
    pub local: String,
    /// A daylight-saving note when the local time was shifted or is repeated.
    pub note: Option<String>,
}

impl Schedule {
    /// Parses `pattern` in zone `timezone` (an IANA name; "UTC" when empty). `Err` says which
    /// of the two is wrong and why.
    pub fn new(pattern: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let tz: Tz = if timezone.trim().is_empty() {
            Tz::UTC
        } else {
            timezone
                .trim()
                .parse()
                .map_err(|_| ScheduleError::Timezone(timezone.to_owned()))?
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::Pattern {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })?;
        let schedule = Schedule {
            pattern: pattern.trim().to_owned(),
            cron,
            tz,
        };
        // A pattern that can never fire (30 February) is refused now, not at the first tick.
        schedule
            .next_after(0)
            .ok_or_else(|| ScheduleError::Never(pattern.to_owned()))?;
        Ok(schedule)
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first fire instant strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = self.tz.from_utc_datetime(&utc(after_ms)?.naive_utc());
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// Every fire instant in `(after_ms, until_ms]`, in order, plus how many there were in
    /// total when more than `keep` (only the last `keep` are returned): after a long outage the
    /// caller learns how many ticks it missed without holding them all.
    pub fn ticks_between(&self, after_ms: i64, until_ms: i64, keep: usize) -> (Vec<i64>, u64) {
        let mut kept = std::collections::VecDeque::with_capacity(keep.min(64));
        let mut total = 0u64;
        let mut at = after_ms;
        while let Some(next) = self.next_after(at) {
            if next > until_ms {
                break;
            }
            total += 1;
            if kept.len() == keep {
                kept.pop_front();
            }
            if keep > 0 {
                kept.push_back(next);
            }
            at = next;
        }
        (kept.into_iter().collect(), total)
    }

    /// The next `count` fire times after `after_ms`, with their local times and DST notes.
    pub fn upcoming(&self, after_ms: i64, count: usize) -> Vec<FireTime> {
        let mut out = Vec::with_capacity(count);
        let mut at = after_ms;
        while out.len() < count {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(self.describe(next));
            at = next;
        }
        out
    }

    /// One instant as UTC and local time, noting a DST shift or a repeated hour.
    pub fn describe(&self, at_ms: i64) -> FireTime {
        let when = utc(at_ms).unwrap_or_default();
        let local = when.with_timezone(&self.tz);
        let naive = local.naive_local();
        let note = if !self.cron.is_time_matching(&local).unwrap_or(true) {
            // The pattern's wall time did not exist that day: it fired after the gap.
            Some(format!(
                "the scheduled local time does not exist on {} (daylight saving starts): runs at {}",
                naive.date(),
                local.format("%H:%M:%S %Z")
            ))
        } else if matches!(
            self.tz.from_local_datetime(&naive),
            LocalResult::Ambiguous(..)
        ) {
            Some(format!(
                "{} occurs twice on {} (daylight saving ends): runs once, at the first ({})",
                local.format("%H:%M:%S"),
                naive.date(),
                local.format("%Z")
            ))
        } else {
            None
        };
        FireTime {
            at_ms,
            utc: when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            local: local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            note,
        }
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// How far into its window a run of `drill` at `tick_ms` starts: the same on every replica
/// (a hash of both), at most a tenth of the window and never more than five minutes, so a
/// fleet's drills do not all start in the same second yet each leaves most of its window to
/// find a worker.
pub fn jitter_ms(drill: &str, tick_ms: i64, window_ms: u64) -> u64 {
    let spread = (window_ms / 10).min(5 * 60 * 1000);
    if spread == 0 {
        return 0;
    }
    // FNV-1a: small, stable across platforms and releases (std's hashers are not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in drill.as_bytes().iter().chain(tick_ms.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % spread
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("time")
            .timestamp_millis()
    }

    #[test]
    fn first_sunday_of_the_month_in_berlin() {
        let s = Schedule::new("0 2 * * SUN#1", "Europe/Berlin").expect("valid");
        let next = s.upcoming(ms("2026-11-20T00:00:00Z"), 3);
        let local: Vec<&str> = next.iter().map(|f| f.local.as_str()).collect();
        assert_eq!(
            local,
            [
                "2026-12-06T02:00:00+01:00",
                "2027-01-03T02:00:00+01:00",
                "2027-02-07T02:00:00+01:00"
            ]
        );
        assert_eq!(next[0].utc, "2026-12-06T01:00:00Z");
    }

    #[test]
    fn berlin_spring_forward_fires_once_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let s = Schedule::new("30 2 * * *", "Europe/Berlin").expect("valid");
        let next = s.upcoming(ms("2026-03-27T12:00:00Z"), 3);
        assert_eq!(next[0].local, "2026-03-28T02:30:00+01:00");
        assert_eq!(next[1].local, "2026-03-29T03:00:00+02:00");
        assert_eq!(next[1].utc, "2026-03-29T01:00:00Z");
        assert!(
            next[1]
                .note
                .as_deref()
                .is_some_and(|n| n.contains("does not exist on 2026-03-29")),
            "{:?}",
            next[1].note
        );
        assert_eq!(next[2].local, "2026-03-30T02:30:00+02:00");
        assert!(next[0].note.is_none() && next[2].note.is_none());
    }

    #[test]
    fn berlin_fall_back_fires_once_in_the_repeated_hour() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = Schedule::new("30 2 * * *", "Europe/Berlin").expect("valid");
        let (ticks, total) =
            s.ticks_between(ms("2026-10-24T12:00:00Z"), ms("2026-10-25T12:00:00Z"), 10);
        assert_eq!(total, 1, "one run on the 25th, not two");
        let day = s.describe(ticks[0]);
        assert_eq!(
            day.local, "2026-10-25T02:30:00+02:00",
            "the first of the two"
        );
        assert!(
            day.note
                .as_deref()
                .is_some_and(|n| n.contains("occurs twice"))
        );
    }

    #[test]
    fn new_york_dst_both_ways() {
        let s = Schedule::new("15 2 * * *", "America/New_York").expect("valid");
        // 2026-03-08: 02:00 EST -> 03:00 EDT
        let spring = s.upcoming(ms("2026-03-07T12:00:00Z"), 2);
        assert_eq!(spring[0].local, "2026-03-08T03:00:00-04:00");
        assert!(spring[0].note.is_some());
        assert_eq!(spring[1].local, "2026-03-09T02:15:00-04:00");
        // 2026-11-01: 02:00 EDT -> 01:00 EST; 02:15 exists once (after the fall back), 01:15 twice
        let s = Schedule::new("15 1 * * *", "America/New_York").expect("valid");
        let (ticks, total) =
            s.ticks_between(ms("2026-10-31T12:00:00Z"), ms("2026-11-02T00:00:00Z"), 10);
        assert_eq!(total, 1);
        assert_eq!(s.describe(ticks[0]).local, "2026-11-01T01:15:00-04:00");
    }

    #[test]
    fn seconds_interval_and_missed_ticks_are_counted_not_capped() {
        let s = Schedule::new("*/5 * * * * *", "").expect("valid");
        assert_eq!(s.timezone(), "UTC");
        let from = ms("2026-12-01T00:00:00Z");
        let (kept, total) = s.ticks_between(from, from + 3_600_000, 2);
        assert_eq!(total, 720, "an hour of 5-second ticks, all counted");
        assert_eq!(kept, [from + 3_595_000, from + 3_600_000]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |p: &str, tz: &str| Schedule::new(p, tz).map(drop).unwrap_err().to_string();
        assert!(err("0 2 * *", "UTC").contains("not a cron pattern"));
        assert!(err("0 2 * * *", "Mars/Olympus").contains("IANA"));
        assert!(err("0 0 30 2 *", "UTC").contains("never fires"));
    }

    #[test]
    fn jitter_is_deterministic_and_inside_the_window() {
        let a = jitter_ms("shop monthly", 1_000, 4 * 3_600_000);
        assert_eq!(a, jitter_ms("shop monthly", 1_000, 4 * 3_600_000));
        assert!(a < 5 * 60 * 1000);
        assert_eq!(jitter_ms("x", 1, 5), 0);
    }

    proptest! {
        /// Ticks are strictly increasing, each one a fire time, and none is skipped: the
        /// next after tick k is tick k+1.
        #[test]
        fn ticks_are_consecutive_fire_times(start in 1_700_000_000_000i64..1_900_000_000_000i64, minutes in 1u32..30, zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])) {
            let s = Schedule::new(&format!("*/{minutes} * * * *"), zone).expect("valid");
            let (ticks, total) = s.ticks_between(start, start + 6 * 3_600_000, 1_000);
            prop_assert_eq!(ticks.len() as u64, total);
            for w in ticks.windows(2) {
                prop_assert!(w[0] < w[1]);
                prop_assert_eq!(s.next_after(w[0]), Some(w[1]));
            }
            if let Some(first) = ticks.first() {
                prop_assert_eq!(s.next_after(start), Some(*first));
            }
        }

        #[test]
        fn jitter_never_leaves_the_window(name in "[a-z ]{1,20}", tick in any::<i64>(), window in 0u64..100_000_000) {
            let j = jitter_ms(&name, tick, window);
            prop_assert!(j <= window / 10);
        }
    }
}
