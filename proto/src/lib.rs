//! rehearse-proto: the wire types of Rehearse.
//!
//! Generated from `proto/rehearse.proto`: the client API (`Coordinator`) and the raft-internal
//! `Peer` service, kept apart. Raft messages travel as bytes inside `RaftBatch`, encoded with
//! raft-rs's own protobuf codec; nothing here knows their shape.
//!
//! Must not depend on: rehearse-coordinator, rehearse-worker (wire types stop at the API boundary;
//! one module in each service converts them to `rehearse_core` types).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rehearse.v1");
}
