//! rehearse-proto: the wire types of Rehearse.
//!
//! Will hold the `.proto` files and the code tonic-prost-build generates from them, with the
//! client API, the worker service and the raft-internal peer service kept apart. Nothing lives here
//! yet: the first service arrives with the coordinator (issue 3).
//!
//! Must not depend on: rehearse-coordinator, rehearse-worker (wire types stop at the API boundary;
//! one module in each service converts them to `rehearse_core` types).
