//! rehearse-loadtest: measures the coordinator at fleet scale.
//!
//! Will start (or target) a coordinator cluster, register simulated workers that speak the real
//! worker protocol, submit jobs, and report throughput and latency percentiles as JSON. Nothing
//! lives here yet (issue 7).
