//! A job's trace identity: one OpenTelemetry trace per job, its ids derived from the job id.
//!
//! Nothing is stored: whichever coordinator leads when the job ends, and every worker that runs
//! an attempt of it, name the same trace. The trace id is the first 16 bytes of
//! `blake3("rehearse trace " + job id)`; the job's root span id the next 8; an attempt's span id
//! comes from the job id and the attempt's fencing token. A worker learns its parent from the
//! W3C `traceparent` the assignment carries (`00-<trace>-<attempt span>-01`), so its spans hang
//! under the coordinator's span of that attempt.

/// The ids of a job's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTrace {
    pub trace_id: [u8; 16],
    /// The span of the whole job, from submit to its final state.
    pub root: [u8; 8],
}

/// The trace of job `job_id`.
pub fn job_trace(job_id: &str) -> JobTrace {
    let hash = digest(&["rehearse trace ", job_id]);
    let mut trace_id = [0u8; 16];
    trace_id.copy_from_slice(&hash[..16]);
    let mut root = [0u8; 8];
    root.copy_from_slice(&hash[16..24]);
    JobTrace {
        trace_id: nonzero(trace_id),
        root: nonzero(root),
    }
}

/// The span id of the attempt of `job_id` granted with fencing token `token`.
pub fn attempt_span(job_id: &str, token: u64) -> [u8; 8] {
    let hash = digest(&["rehearse attempt ", job_id, " ", &token.to_string()]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash[..8]);
    nonzero(id)
}

/// The W3C `traceparent` a worker's spans of this attempt take as their parent.
pub fn traceparent(job_id: &str, token: u64) -> String {
    format!(
        "00-{}-{}-01",
        hex(&job_trace(job_id).trace_id),
        hex(&attempt_span(job_id, token))
    )
}

/// The trace id of `job_id` as backends show it (32 lowercase hex digits).
pub fn trace_id_hex(job_id: &str) -> String {
    hex(&job_trace(job_id).trace_id)
}

/// The (trace id, parent span id) of a W3C `traceparent` of version 00; `None` when it is empty,
/// malformed, or names the invalid all-zero ids.
pub fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = s.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || flags.len() != 2 {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let span: [u8; 8] = unhex(span)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span))
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// W3C trace context forbids all-zero ids; a hash that gives one (never seen) gets a 1.
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_the_job_alone() {
        let a = job_trace("job-1");
        assert_eq!(a, job_trace("job-1"));
        assert_ne!(a.trace_id, job_trace("job-2").trace_id);
        assert_ne!(attempt_span("job-1", 7), attempt_span("job-1", 8));
        assert_ne!(attempt_span("job-1", 7), a.root);
    }

    #[test]
    fn traceparent_round_trips() {
        let tp = traceparent("job-1", 42);
        assert_eq!(tp.len(), 55);
        assert_eq!(
            parse_traceparent(&tp),
            Some((job_trace("job-1").trace_id, attempt_span("job-1", 42)))
        );
        assert!(tp.contains(&trace_id_hex("job-1")));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some()
        );
    }
}
