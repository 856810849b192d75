//! Choosing one recovery point from a backup set (a prefix holding many backups), as AWS Backup
//! restore testing does: the latest, or a random one, optionally only among the recent ones.
//! Pure: the source lists the objects, the caller passes the time and a random seed. Plans say
//! `[artifact] pick = "latest" | "random"` and `within = "30d"`.

use std::time::Duration;

/// One object under the prefix, as the listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    pub modified_ms: i64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Latest,
    Random,
    /// The backup no passed run has verified for longest (never verified first), from the
    /// drill's record of what it verified: rotates through a set.
    LeastRecentlyTested,
}

impl Pick {
    pub fn parse(s: &str) -> Option<Pick> {
        match s {
            "latest" => Some(Pick::Latest),
            "random" => Some(Pick::Random),
            "least_recently_tested" => Some(Pick::LeastRecentlyTested),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pick::Latest => "latest",
            Pick::Random => "random",
            Pick::LeastRecentlyTested => "least_recently_tested",
        }
    }
}

/// Which backups of a set may be picked: modified within the last `within` (from now), and
/// before `before_ms` (a DR exercise's past disaster instant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub within: Option<Duration>,
    pub before_ms: Option<i64>,
}

/// The chosen point, and how many there were to choose from (the report says both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub candidate: Candidate,
    /// Eligible points (after `within`).
    pub candidates: usize,
    /// Everything listed under the prefix that could be a backup.
    pub listed: usize,
}

/// Sidecar checksum files and empty objects (directory markers) are not recovery points.
fn is_backup(c: &Candidate) -> bool {
    c.size > 0 && !c.key.ends_with(".blake3") && !c.key.ends_with('/')
}

/// Picks one point, or says why there is none ("no backup under s3://b/daily/ newer than 30d
/// (12 older)").
pub fn choose(
    prefix: &str,
    listed: &[Candidate],
    pick: Pick,
    within: Option<Duration>,
    now_ms: i64,
    seed: u64,
) -> Result<Chosen, String> {
    let window = Window {
        within,
        before_ms: None,
    };
    choose_tested(prefix, listed, pick, window, now_ms, seed, &|_| None)
}

/// [`choose`], with when each candidate was last verified by a passed run (`None`: never), for
/// [`Pick::LeastRecentlyTested`].
pub fn choose_tested(
    prefix: &str,
    listed: &[Candidate],
    pick: Pick,
    window: Window,
    now_ms: i64,
    seed: u64,
    tested: &dyn Fn(&Candidate) -> Option<i64>,
) -> Result<Chosen, String> {
    let within = window.within;
    let all: Vec<&Candidate> = listed.iter().filter(|c| is_backup(c)).collect();
    let backups: Vec<&Candidate> = all
        .iter()
        .copied()
        .filter(|c| window.before_ms.is_none_or(|b| c.modified_ms <= b))
        .collect();
    if backups.is_empty()
        && !all.is_empty()
        && let Some(b) = window.before_ms
    {
        let at = chrono::DateTime::from_timestamp_millis(b)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        return Err(format!(
            "no backup under {prefix} made before {at} ({} newer)",
            all.len()
        ));
    }
    let oldest_allowed = within.map(|w| now_ms.saturating_sub(w.as_millis() as i64));
    let mut eligible: Vec<&Candidate> = backups
        .iter()
        .copied()
        .filter(|c| oldest_allowed.is_none_or(|t| c.modified_ms >= t))
        .collect();
    if eligible.is_empty() {
        return Err(match within {
            Some(w) if !backups.is_empty() => format!(
                "no backup under {prefix} newer than {} ({} older)",
                humantime::format_duration(w),
                backups.len()
            ),
            _ => format!("no backup under {prefix}"),
        });
    }
    // Newest first, then by key: the order (and so a seeded pick) does not depend on the listing.
    eligible.sort_by(|a, b| {
        b.modified_ms
            .cmp(&a.modified_ms)
            .then_with(|| a.key.cmp(&b.key))
    });
    let i = match pick {
        Pick::Latest => 0,
        Pick::Random => (seed % eligible.len() as u64) as usize,
        // Never verified first (the oldest of those first), then the one verified longest ago.
        Pick::LeastRecentlyTested => (0..eligible.len())
            .min_by_key(|&i| {
                let c = eligible[i];
                (tested(c).unwrap_or(i64::MIN), c.modified_ms, c.key.clone())
            })
            .unwrap_or(0),
    };
    Ok(Chosen {
        candidate: eligible[i].clone(),
        candidates: eligible.len(),
        listed: backups.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    fn c(key: &str, day: i64, size: u64) -> Candidate {
        Candidate {
            key: key.into(),
            modified_ms: day * DAY,
            size,
        }
    }

    fn set() -> Vec<Candidate> {
        vec![
            c("daily/a.dump", 1, 10),
            c("daily/c.dump", 40, 10),
            c("daily/c.dump.blake3", 41, 64),
            c("daily/", 42, 0),
            c("daily/b.dump", 20, 10),
        ]
    }

    #[test]
    fn latest_skips_sidecars_and_markers() {
        let got = choose("s3://b/daily/", &set(), Pick::Latest, None, 50 * DAY, 7).expect("chosen");
        assert_eq!(got.candidate.key, "daily/c.dump");
        assert_eq!((got.candidates, got.listed), (3, 3));
    }

    #[test]
    fn within_limits_the_points_and_an_empty_set_says_why() {
        let thirty_days = Some(Duration::from_secs(30 * 86_400));
        let got = choose("p/", &set(), Pick::Random, thirty_days, 50 * DAY, 99).expect("chosen");
        assert_eq!(got.candidates, 2, "a.dump is older than 30 days");
        assert_ne!(got.candidate.key, "daily/a.dump");
        let err = choose(
            "s3://b/daily/",
            &set(),
            Pick::Latest,
            thirty_days,
            500 * DAY,
            0,
        )
        .expect_err("none recent");
        assert_eq!(
            err,
            "no backup under s3://b/daily/ newer than 30days (3 older)"
        );
        let err = choose("s3://b/empty/", &[], Pick::Latest, None, 0, 0).expect_err("empty");
        assert_eq!(err, "no backup under s3://b/empty/");
    }

    proptest! {
        /// A random pick is always an eligible point, every eligible point can be picked, and the
        /// listing's order changes nothing.
        #[test]
        fn random_picks_cover_the_eligible_points(days in prop::collection::vec(0i64..100, 1..12), seed in any::<u64>()) {
            let listed: Vec<Candidate> = days.iter().enumerate().map(|(i, d)| c(&format!("k{i}"), *d, 1)).collect();
            let within = Some(Duration::from_secs(50 * 86_400));
            let now = 100 * DAY;
            let eligible = listed.iter().filter(|x| x.modified_ms >= 50 * DAY).count();
            match choose("p/", &listed, Pick::Random, within, now, seed) {
                Ok(got) => {
                    prop_assert!(got.candidate.modified_ms >= 50 * DAY);
                    prop_assert_eq!(got.candidates, eligible);
                    let mut reversed = listed.clone();
                    reversed.reverse();
                    prop_assert_eq!(choose("p/", &reversed, Pick::Random, within, now, seed), Ok(got));
                    let picked: std::collections::BTreeSet<String> = (0..eligible as u64)
                        .filter_map(|s| choose("p/", &listed, Pick::Random, within, now, s).ok())
                        .map(|g| g.candidate.key)
                        .collect();
                    prop_assert_eq!(picked.len(), eligible);
                }
                Err(_) => prop_assert_eq!(eligible, 0),
            }
        }
    }

    #[test]
    fn before_bounds_the_points_and_says_so_when_none_is_left() {
        let window = |before_day: i64| Window {
            within: None,
            before_ms: Some(before_day * DAY),
        };
        let got = choose_tested("p/", &set(), Pick::Latest, window(30), 50 * DAY, 0, &|_| {
            None
        })
        .expect("chosen");
        assert_eq!(
            got.candidate.key, "daily/b.dump",
            "c.dump is newer than the bound"
        );
        assert_eq!(got.candidates, 2);
        let none = choose_tested("p/", &set(), Pick::Latest, window(0), 50 * DAY, 0, &|_| {
            None
        })
        .expect_err("nothing before day 0");
        assert!(
            none.contains("made before 1970-01-01T00:00:00Z (3 newer)"),
            "{none}"
        );
    }

    #[test]
    fn least_recently_tested_rotates_through_the_set() {
        let set = set();
        let mut tested: std::collections::BTreeMap<String, i64> = Default::default();
        let mut picked = Vec::new();
        for run in 0..4 {
            let got = choose_tested(
                "s3://b/daily/",
                &set,
                Pick::LeastRecentlyTested,
                Window::default(),
                50 * DAY,
                run,
                &|c| tested.get(&c.key).copied(),
            )
            .expect("chosen");
            tested.insert(got.candidate.key.clone(), 100 + run as i64);
            picked.push(got.candidate.key);
        }
        // Never verified first, oldest first; then the one verified longest ago.
        assert_eq!(
            picked,
            [
                "daily/a.dump",
                "daily/b.dump",
                "daily/c.dump",
                "daily/a.dump"
            ]
        );
        assert_eq!(
            Pick::parse("least_recently_tested"),
            Some(Pick::LeastRecentlyTested)
        );
    }
}
