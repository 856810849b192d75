//! rehearse-proto: the wire types of Rehearse.
//!
//! Generated from `proto/rehearse.proto`: the client API (`Coordinator`) and the raft-internal
//! `Peer` service, kept apart. Raft messages travel as bytes inside `RaftBatch`, encoded with
//! raft-rs's own protobuf codec; nothing here knows their shape.
//!
//! Besides the generated code, the two pieces every speaker of the protocol shares:
//! - [`client`]: a client of the coordinator cluster that follows the leader (CLI, workers, tests);
//! - [`tls`]: mutual TLS material for servers and clients.
//!
//! Must not depend on: rehearse-coordinator, rehearse-worker (wire types stop at the API boundary;
//! one module in each service converts them to `rehearse_core` types).

pub mod client;
pub mod tls;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rehearse.v1");
}

/// The encoded descriptors of `rehearse.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rehearse");

/// Metadata key carrying the leader on a "not leader" answer (`ID=ADDR`).
pub const LEADER_METADATA: &str = "rehearse-leader";

/// A fresh job id: 128 random bits, hex. Clients choose it, so a retry is the same job.
pub fn new_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("job-");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
