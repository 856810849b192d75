//! How commands are written into the Raft log, versioned, so a cluster can be upgraded one node
//! at a time without a replica ever applying something it does not understand.
//!
//! - Every command kind (and every new value inside one, e.g. the verdict `error`) has the
//!   command version that introduced it: [`Command::min_version`](crate::jobs::Command::min_version).
//! - A command of version 1 is written as it always was (bare JSON), so nodes that predate
//!   versioning still read it; a newer one goes in an envelope `{"v": N, "c": …}`.
//! - A node reads envelopes up to its own version. One it cannot read is [`DecodeError`]: the
//!   node stops applying and exits saying so — it never skips an entry (replicas would diverge).
//! - The replicated state holds the cluster's version; the leader raises it only once every
//!   member has said (in its raft traffic) that it reads the new version, and proposes a command
//!   only when the cluster's version covers it.

use serde::{Deserialize, Serialize};

use crate::jobs::Command;

/// The command version this build writes and reads: 2 adds the verdict `error` in reports, the
/// cluster version itself, `[[checks]] database` and `[sandbox] data/disk` in plans, and drills;
/// 3 adds `[pitr]`, `[promote]` and `targets.promote` in plans (and the `promote` phase and
/// `recovery` in their reports); 4 adds DR exercises and `[artifact] before` in plans; 5 adds
/// reports of an artifact not readable yet (`retry_after_ms`: an archived object being restored)
/// and the notifications' outbox; 6 adds the daily digest (`Command::Digest`); 7 starts the
/// evidence chain (no new command: from version 7 on, every replica appends each final verdict).
pub const CURRENT: u32 = 7;
/// A command kind newer than any release, for upgrade tests only (`Command::Probe`): a node
/// runs at this version only when told to (`rehearse coordinator --command-version 8`).
pub const TEST_PROBE: u32 = 8;
/// What nodes that predate versioning read (and what a peer that never said is taken to read).
pub const LEGACY: u32 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    c: &'a Command,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    c: Command,
}

#[derive(Deserialize)]
struct Head {
    v: u32,
}

/// Why an entry could not be read. Either way the node must stop: skipping it would let this
/// replica's state drift from the others'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the entry is of command version {version}; this node reads up to {readable} (upgrade it to the cluster's release)"
    )]
    TooNew { version: u32, readable: u32 },
    #[error("the entry does not decode: {0}")]
    Malformed(String),
}

/// The bytes of one log entry for `command`.
pub fn encode(command: &Command) -> Result<Vec<u8>, serde_json::Error> {
    let v = command.min_version();
    if v <= LEGACY {
        serde_json::to_vec(command)
    } else {
        serde_json::to_vec(&EnvelopeOut { v, c: command })
    }
}

/// The command in one log entry, for a node that reads up to version `readable`.
pub fn decode(bytes: &[u8], readable: u32) -> Result<Command, DecodeError> {
    if bytes.starts_with(b"{\"v\":") {
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if head.v > readable {
            return Err(DecodeError::TooNew {
                version: head.v,
                readable,
            });
        }
        let envelope: EnvelopeIn =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        return Ok(envelope.c);
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn errored() -> Command {
        let mut r = Report::new("/x", "postgres", "process", String::new());
        r.could_not_verify("provision", "no image");
        r.finish(&Default::default(), 0, None);
        Command::Report {
            job: "j".into(),
            token: 3,
            report: Box::new(r),
            at_ms: 1,
        }
    }

    #[test]
    fn legacy_commands_stay_bare_newer_ones_carry_their_version() {
        let bare = encode(&Command::Noop).expect("encode");
        assert_eq!(bare, b"\"Noop\"");
        assert_eq!(decode(&bare, LEGACY), Ok(Command::Noop));
        let newer = encode(&errored()).expect("encode");
        assert!(
            newer.starts_with(b"{\"v\":2,"),
            "{}",
            String::from_utf8_lossy(&newer)
        );
        assert_eq!(decode(&newer, CURRENT), Ok(errored()));
        let batch = Command::Batch(vec![Command::Noop, errored()]);
        assert_eq!(
            batch.min_version(),
            2,
            "a batch is as new as its newest command"
        );
    }

    #[test]
    fn a_node_never_reads_past_its_version() {
        let probe = encode(&Command::Probe {
            note: "upgrade test".into(),
        })
        .expect("encode");
        assert_eq!(
            decode(&probe, CURRENT),
            Err(DecodeError::TooNew {
                version: TEST_PROBE,
                readable: CURRENT
            })
        );
        assert!(decode(&probe, TEST_PROBE).is_ok());
        let newer = encode(&errored()).expect("encode");
        assert!(matches!(
            decode(&newer, LEGACY),
            Err(DecodeError::TooNew { version: 2, .. })
        ));
        assert!(matches!(
            decode(b"{\"Nonsense\":1}", CURRENT),
            Err(DecodeError::Malformed(_))
        ));
    }
}
