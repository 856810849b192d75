//! rehearse-coordinator: the Raft-replicated coordinator.
//!
//! Will hold the raft-rs `RawNode` driver, its redb storage (log, hard state, snapshots), the
//! replicated state machine's driver (the state machine itself is pure and lives in
//! `rehearse_core`), the scheduler loop, worker liveness, drills, and the gRPC + HTTP API.
//! Nothing lives here yet (issue 3).
//!
//! Must not depend on: rehearse-worker.
