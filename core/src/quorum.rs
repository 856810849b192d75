//! Where a cluster's votes are: members per region, and whether losing one region loses the
//! quorum (`rehearse cluster status` warns then).

use std::collections::BTreeMap;

/// Voters and learners of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionCount {
    pub voters: usize,
    pub learners: usize,
}

/// Members per region, from (role, region) pairs (role "voter" or "learner"; an unknown region
/// is "?").
pub fn by_region<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, RegionCount> {
    let mut out: BTreeMap<String, RegionCount> = BTreeMap::new();
    for (role, region) in members {
        let region = if region.is_empty() { "?" } else { region };
        let count = out.entry(region.to_owned()).or_default();
        if role == "voter" {
            count.voters += 1;
        } else {
            count.learners += 1;
        }
    }
    out
}

/// The warning for a cluster spread over several regions whose voters are mostly in one: losing
/// that region loses the quorum. `None` for a single-region cluster (its quorum lives and dies
/// with its one region anyway) and for a balanced one.
pub fn majority_warning(regions: &BTreeMap<String, RegionCount>) -> Option<String> {
    if regions.len() < 2 {
        return None;
    }
    let voters: usize = regions.values().map(|c| c.voters).sum();
    let (region, count) = regions.iter().max_by_key(|(_, c)| c.voters)?;
    (count.voters * 2 > voters).then(|| {
        format!(
            "region {region} holds {} of the {voters} voters: losing it loses the quorum (spread the voters: docs/cluster.md, \"Membership\")",
            count.voters
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_with_most_voters_is_named() {
        let r = by_region([
            ("voter", "eu"),
            ("voter", "eu"),
            ("voter", "us"),
            ("learner", "us"),
        ]);
        assert_eq!(
            r["us"],
            RegionCount {
                voters: 1,
                learners: 1
            }
        );
        assert!(
            majority_warning(&r)
                .is_some_and(|w| w.starts_with("region eu holds 2 of the 3 voters"))
        );
        let balanced = by_region([("voter", "eu"), ("voter", "us"), ("voter", "ap")]);
        assert_eq!(majority_warning(&balanced), None);
        let one = by_region([("voter", "eu"), ("voter", "eu"), ("voter", "eu")]);
        assert_eq!(majority_warning(&one), None, "a single-region cluster");
    }
}
