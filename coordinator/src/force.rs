//! Forcing a new cluster without a quorum (`rehearse cluster failover --force`, docs/cluster.md).
//!
//! The operator's CLI asks every survivor, over the client API, to take the same membership: the
//! most up-to-date survivor the only voter, the others its learners. Each survivor writes that
//! membership to a file in its data dir and restarts in-process; at start the file is applied to
//! the stored membership (`RaftStore::force_conf`) and removed. The file makes the request
//! survive a crash between the answer and the restart: a node that finds it at start applies it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in the data dir that holds a forced membership until the next start applies it.
pub const FORCE_FILE: &str = "force-new-cluster.json";

/// Why a forced membership cannot be taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForceError {
    #[error("a forced membership needs a voter")]
    NoVoter,
    #[error("id 0 is reserved")]
    ZeroId,
    #[error("node {0} cannot be both voter and learner")]
    Both(u64),
    #[error("the forced membership leaves this node ({0}) out")]
    LeavesOut(u64),
    #[error("{path}: not a forced membership: {reason}")]
    Damaged { path: String, reason: String },
    #[error("read {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// The membership a survivor is told to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedConf {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl ForcedConf {
    /// Refuses a membership that could not work for node `me`: no voter, a node both voter and
    /// learner, id 0, or one that leaves `me` out.
    pub fn check(&self, me: u64) -> Result<(), ForceError> {
        if self.voters.is_empty() {
            return Err(ForceError::NoVoter);
        }
        if self.voters.iter().chain(&self.learners).any(|id| *id == 0) {
            return Err(ForceError::ZeroId);
        }
        if let Some(both) = self.voters.iter().find(|id| self.learners.contains(id)) {
            return Err(ForceError::Both(*both));
        }
        if !self.voters.contains(&me) && !self.learners.contains(&me) {
            return Err(ForceError::LeavesOut(me));
        }
        Ok(())
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FORCE_FILE)
}

/// Writes the membership for the next start (written whole, then renamed into place).
pub fn write(data_dir: &Path, conf: &ForcedConf) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{FORCE_FILE}.tmp"));
    let text = serde_json::to_vec(conf).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The membership waiting in the data dir, if any.
pub fn pending(data_dir: &Path) -> Result<Option<ForcedConf>, ForceError> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ForceError::Damaged {
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ForceError::Unreadable {
            path: p.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Removes the file once its membership is stored.
pub fn done(data_dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_membership_must_hold_this_node_and_a_voter() {
        let ok = ForcedConf {
            voters: vec![3],
            learners: vec![5, 7],
        };
        assert_eq!(ok.check(7), Ok(()));
        assert_eq!(ok.check(1), Err(ForceError::LeavesOut(1)));
        let none = ForcedConf {
            voters: vec![],
            learners: vec![3],
        };
        assert_eq!(none.check(3), Err(ForceError::NoVoter));
        let both = ForcedConf {
            voters: vec![3],
            learners: vec![3],
        };
        assert_eq!(both.check(3), Err(ForceError::Both(3)));
    }

    #[test]
    fn the_file_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(pending(dir.path()), Ok(None));
        let conf = ForcedConf {
            voters: vec![3],
            learners: vec![5],
        };
        write(dir.path(), &conf).expect("write");
        assert_eq!(pending(dir.path()), Ok(Some(conf)));
        done(dir.path()).expect("done");
        assert_eq!(pending(dir.path()), Ok(None));
        std::fs::write(dir.path().join(FORCE_FILE), "{").expect("write");
        assert!(matches!(
            pending(dir.path()),
            Err(ForceError::Damaged { .. })
        ));
    }
}
