//! API tokens: who may call what (`rehearse coordinator --auth required`). A token is a secret
//! made by the client (`rehearse token create`); the replicated state keeps only its blake3 hash,
//! its name and its role, so neither the log, the snapshots nor the logs hold a usable secret.
//!
//! Roles: `read` (jobs, drills, exercises, workers, cluster, evidence), `operate` (read, and
//! submit, cancel, drills, exercises, drain), `admin` (everything: membership, tokens), and
//! `worker` (a worker's own calls only: register, heartbeat, assignments, progress, verdicts).
//! Pure logic: the coordinator's HTTP and gRPC sides ask [`need_grpc`] / [`Role::may`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
    Admin,
    Worker,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Operate, Role::Admin, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether a token of this role may make a call that needs `need`.
    pub fn may(self, need: Need) -> bool {
        match need {
            Need::Open => true,
            Need::Read => matches!(self, Role::Read | Role::Operate | Role::Admin),
            Need::Operate => matches!(self, Role::Operate | Role::Admin),
            Need::Admin => self == Role::Admin,
            Need::Worker => matches!(self, Role::Worker | Role::Admin),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No token (health, the OpenAPI document, raft between peers: they authenticate by mTLS).
    Open,
    Read,
    Operate,
    Admin,
    Worker,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Open => "none",
            Need::Read => "read",
            Need::Operate => "operate",
            Need::Admin => "admin",
            Need::Worker => "worker",
        }
    }
}

/// What a gRPC call needs, by its path (`/package.Service/Method`). A method of the client API
/// not listed here needs `admin`: a new call is closed until someone decides.
pub fn need_grpc(path: &str) -> Need {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        "rehearse.v1.Coordinator" => match method {
            "GetJob" | "ListJobs" | "ClusterStatus" | "ListWorkers" | "ListDrills" | "GetDrill"
            | "ListExercises" | "GetExercise" | "ExportEvidence" => Need::Read,
            "Submit" | "CancelJob" | "DrainWorker" | "ApplyDrill" | "PauseDrill"
            | "ResumeDrill" | "RunDrill" | "DeleteDrill" | "StartExercise" | "ApproveGate"
            | "AbortExercise" => Need::Operate,
            "RegisterWorker" | "Heartbeat" | "Assignments" | "ReportProgress" | "ReportVerdict" => {
                Need::Worker
            }
            _ => Need::Admin,
        },
        // Raft between coordinators (mTLS), health checks, reflection.
        "rehearse.v1.Peer" | "grpc.health.v1.Health" => Need::Open,
        s if s.starts_with("grpc.reflection.") => Need::Open,
        _ => Need::Admin,
    }
}

/// A token as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub role: Role,
    /// blake3 of the secret, hex.
    pub hash: String,
    pub created_at_ms: u64,
}

/// The prefix of every secret (so a leaked one is recognisable, e.g. by secret scanners).
pub const SECRET_PREFIX: &str = "rh_";

/// The hash the state keeps for a secret.
pub fn hash(secret: &str) -> String {
    blake3::hash(secret.trim().as_bytes()).to_hex().to_string()
}

/// A secret from 32 random bytes (the caller's randomness; core does no I/O).
pub fn secret_from(bytes: &[u8; 32]) -> String {
    let mut s = String::from(SECRET_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Token names: as worker names ([`crate::fleet::check_name`]).
pub fn check_name(name: &str) -> Result<(), String> {
    crate::fleet::check_name("token name", name)
}

impl crate::jobs::JobStore {
    /// Adds a token; a name or hash already in use is refused (revoke first).
    pub(crate) fn create_token(&mut self, token: &Token, index: u64) -> Result<(), String> {
        check_name(&token.name)?;
        if self.tokens.contains_key(&token.name) {
            return Err(format!(
                "a token named {:?} exists; revoke it first",
                token.name
            ));
        }
        if token.hash.len() != 64 || !token.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the token hash must be 64 hex digits (blake3)".into());
        }
        if self.tokens.values().any(|t| t.hash == token.hash) {
            return Err("a token with this secret exists".into());
        }
        self.tokens.insert(token.name.clone(), token.clone());
        self.tokens_changed_at = index;
        Ok(())
    }

    pub(crate) fn revoke_token(&mut self, name: &str, index: u64) -> Result<(), String> {
        if self.tokens.remove(name).is_none() {
            return Err(format!("no token named {name:?}"));
        }
        self.tokens_changed_at = index;
        Ok(())
    }

    /// The tokens, by name.
    pub fn tokens(&self) -> &BTreeMap<String, Token> {
        &self.tokens
    }

    /// The log index of the last change to the tokens (0: none yet): the coordinator refreshes
    /// its lookup table when this moves.
    pub fn tokens_changed_at(&self) -> u64 {
        self.tokens_changed_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_workers_only_work() {
        assert!(Role::Admin.may(Need::Admin) && Role::Admin.may(Need::Worker));
        assert!(Role::Operate.may(Need::Read) && !Role::Operate.may(Need::Admin));
        assert!(Role::Read.may(Need::Read) && !Role::Read.may(Need::Operate));
        assert!(Role::Worker.may(Need::Worker) && !Role::Worker.may(Need::Read));
        assert!(!Role::Operate.may(Need::Worker));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(r.may(Need::Open));
        }
    }

    #[test]
    fn grpc_paths_map_to_needs_and_unknown_calls_are_closed() {
        assert_eq!(need_grpc("/rehearse.v1.Coordinator/GetJob"), Need::Read);
        assert_eq!(need_grpc("/rehearse.v1.Coordinator/Submit"), Need::Operate);
        assert_eq!(
            need_grpc("/rehearse.v1.Coordinator/ReportVerdict"),
            Need::Worker
        );
        assert_eq!(
            need_grpc("/rehearse.v1.Coordinator/ChangeMembership"),
            Need::Admin
        );
        assert_eq!(
            need_grpc("/rehearse.v1.Coordinator/ForceNewCluster"),
            Need::Admin
        );
        assert_eq!(
            need_grpc("/rehearse.v1.Coordinator/SomethingNew"),
            Need::Admin
        );
        assert_eq!(need_grpc("/rehearse.v1.Peer/Send"), Need::Open);
        assert_eq!(need_grpc("/grpc.health.v1.Health/Check"), Need::Open);
        assert_eq!(
            need_grpc("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Need::Open
        );
        assert_eq!(need_grpc("/other.Service/X"), Need::Admin);
    }

    #[test]
    fn secrets_hash_and_names_are_checked() {
        let s = secret_from(&[7; 32]);
        assert!(s.starts_with("rh_") && s.len() == 3 + 64);
        assert_eq!(
            hash(&s),
            hash(&format!("{s}\n")),
            "a trailing newline is ignored"
        );
        assert_ne!(hash(&s), hash(&secret_from(&[8; 32])));
        assert!(check_name("ci-1").is_ok());
        assert!(check_name("").is_err() && check_name("a b").is_err());
    }

    #[test]
    fn tokens_are_created_once_and_revoked() {
        let mut s = crate::jobs::JobStore::default();
        let t = Token {
            name: "ci".into(),
            role: Role::Operate,
            hash: hash("rh_x"),
            created_at_ms: 1,
        };
        assert!(s.create_token(&t, 5).is_ok());
        assert_eq!(s.tokens_changed_at(), 5);
        assert!(s.create_token(&t, 6).is_err_and(|e| e.contains("exists")));
        let same_secret = Token {
            name: "other".into(),
            ..t.clone()
        };
        assert!(s.create_token(&same_secret, 7).is_err());
        assert!(s.revoke_token("ci", 8).is_ok());
        assert_eq!(s.tokens_changed_at(), 8);
        assert!(s.revoke_token("ci", 9).is_err());
        assert!(s.tokens().is_empty());
    }
}
