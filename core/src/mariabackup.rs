//! MariaDB physical backups (`mariadb-backup --backup`), as pure logic: the checkpoints file
//! each backup carries, and whether a full backup and its incrementals form one chain.
//!
//! `xtrabackup_checkpoints` (`mariadb_backup_checkpoints` from MariaDB 11) says
//! `backup_type = full-backuped | incremental | …-prepared`, `from_lsn`, `to_lsn`. An
//! incremental made with `--incremental-basedir=B` starts where `B` ended: its `from_lsn` is
//! `B`'s `to_lsn`. Applied in any other order, or with one missing, `--prepare` would fail — or
//! worse, give a database that is not the one backed up.

/// What a backup's checkpoints file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoints {
    pub backup_type: String,
    pub from_lsn: u64,
    pub to_lsn: u64,
    /// The end of the redo copied (0 when the file does not say).
    pub last_lsn: u64,
}

impl Checkpoints {
    pub fn parse(text: &str) -> Result<Checkpoints, String> {
        let mut c = Checkpoints::default();
        let (mut from, mut to) = (None, None);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("the checkpoints file's {} is {value:?}", key.trim()))
            };
            match key.trim() {
                "backup_type" => c.backup_type = value.to_owned(),
                "from_lsn" => from = Some(number()?),
                "to_lsn" => to = Some(number()?),
                "last_lsn" => c.last_lsn = number()?,
                _ => {}
            }
        }
        match (from, to) {
            (Some(from), Some(to)) if !c.backup_type.is_empty() => {
                c.from_lsn = from;
                c.to_lsn = to;
                Ok(c)
            }
            _ => Err("the checkpoints file lacks backup_type, from_lsn or to_lsn".into()),
        }
    }

    pub fn is_full(&self) -> bool {
        self.backup_type.starts_with("full")
    }

    pub fn is_prepared(&self) -> bool {
        self.backup_type.ends_with("prepared")
    }
}

/// Checks that `full` and `incrementals` (in the order given, each with a name for messages)
/// form one chain. `Err` names the first bad link.
pub fn check_chain(
    full: &Checkpoints,
    incrementals: &[(String, Checkpoints)],
) -> Result<(), String> {
    if !full.is_full() {
        return Err(format!(
            "the base of the chain is not a full backup (backup_type = {})",
            full.backup_type
        ));
    }
    if full.is_prepared() && !incrementals.is_empty() {
        return Err(
            "the full backup was already prepared: incrementals can no longer be applied to it"
                .into(),
        );
    }
    let mut reached = full.to_lsn;
    let mut last = full.last_lsn;
    let mut previous = "the full backup".to_owned();
    for (i, (name, inc)) in incrementals.iter().enumerate() {
        if inc.backup_type != "incremental" {
            return Err(format!(
                "incremental {} ({name}) is not an incremental backup (backup_type = {})",
                i + 1,
                inc.backup_type
            ));
        }
        // With no checkpoint between two backups their to_lsn are equal; the redo each copied
        // still ends later than the one before.
        if inc.last_lsn != 0 && inc.last_lsn < last {
            return Err(format!(
                "incremental {} ({name}) ends at LSN {}, before {previous} (LSN {last}): it is out of order",
                i + 1,
                inc.last_lsn
            ));
        }
        if inc.from_lsn != reached {
            let why = if inc.from_lsn > reached {
                "a link between them is missing"
            } else {
                "it is out of order (it starts before the chain's end)"
            };
            return Err(format!(
                "incremental {} ({name}) starts at LSN {}, but {previous} ends at LSN {reached}: {why}",
                i + 1,
                inc.from_lsn
            ));
        }
        reached = inc.to_lsn;
        last = inc.last_lsn.max(last);
        previous = format!("incremental {} ({name})", i + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(kind: &str, from: u64, to: u64) -> Checkpoints {
        Checkpoints {
            backup_type: kind.into(),
            from_lsn: from,
            to_lsn: to,
            last_lsn: to,
        }
    }

    #[test]
    fn the_checkpoints_file_is_read() {
        let c = Checkpoints::parse(
            "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 46789\nlast_lsn = 46789\n",
        )
        .expect("parse");
        assert_eq!(c, cp("full-backuped", 0, 46789));
        assert_eq!(c.last_lsn, 46789);
        assert!(c.is_full() && !c.is_prepared());
        assert!(Checkpoints::parse("backup_type = full-backuped\n").is_err());
        assert!(Checkpoints::parse("backup_type = x\nfrom_lsn = a\nto_lsn = 1\n").is_err());
    }

    #[test]
    fn a_chain_is_whole_in_order_and_otherwise_names_the_bad_link() {
        let full = cp("full-backuped", 0, 100);
        let a = ("inc1".to_owned(), cp("incremental", 100, 200));
        let b = ("inc2".to_owned(), cp("incremental", 200, 300));
        assert_eq!(check_chain(&full, &[a.clone(), b.clone()]), Ok(()));
        let missing = check_chain(&full, &[b.clone()]).expect_err("missing link");
        assert!(
            missing.contains("incremental 1 (inc2) starts at LSN 200")
                && missing.contains("missing"),
            "{missing}"
        );
        let swapped = check_chain(&full, &[b.clone(), a.clone()]).expect_err("out of order");
        assert!(swapped.contains("missing"), "{swapped}");
        let twice = check_chain(&full, &[a.clone(), a.clone()]).expect_err("twice");
        assert!(twice.contains("out of order"), "{twice}");
        assert!(check_chain(&cp("incremental", 0, 1), &[]).is_err());
        // No checkpoint between the backups: equal to_lsn, the redo's end tells the order.
        let quiet = |last| Checkpoints {
            last_lsn: last,
            ..cp("incremental", 100, 100)
        };
        let q1 = ("q1".to_owned(), quiet(150));
        let q2 = ("q2".to_owned(), quiet(180));
        assert_eq!(check_chain(&full, &[q1.clone(), q2.clone()]), Ok(()));
        let swapped = check_chain(&full, &[q2, q1]).expect_err("out of order");
        assert!(
            swapped.contains("incremental 2 (q1)") && swapped.contains("out of order"),
            "{swapped}"
        );
        assert!(check_chain(&cp("full-prepared", 0, 100), &[a]).is_err());
    }
}
