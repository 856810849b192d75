//! Renderings of a report for people (short text) and for CI pipelines (JUnit XML).
//! JSON is the report's serde form (`serde_json::to_string_pretty`).

use std::fmt::Write;

use crate::report::{Report, Verdict, human_ms};

/// A short, readable summary: verdict and reason first, then the figures.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let verdict = match r.verdict {
        Verdict::Passed => "PASSED",
        Verdict::Failed => "FAILED",
        Verdict::Error => "ERROR",
    };
    let title = r
        .name
        .as_deref()
        .map(|n| format!("{n}  "))
        .unwrap_or_default();
    let profile = match r.profile.as_deref() {
        Some(p) if p != "fast" => format!(", {p} profile"),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "{verdict}  {title}{} ({}, {} sandbox{profile})",
        r.artifact.url, r.engine, r.runtime
    );
    if let Some(f) = &r.failure {
        if f.could_not_verify {
            let _ = writeln!(
                s,
                "  could not verify (in {}): {} — this says nothing about the backup",
                f.phase, f.reason
            );
        } else {
            let _ = writeln!(s, "  failed in {}: {}", f.phase, f.reason);
        }
    }
    let mut artifact = human_bytes(r.artifact.bytes).to_string();
    if let Some(format) = &r.artifact.format {
        let _ = write!(artifact, ", {format}");
    }
    if let Some(b3) = &r.artifact.blake3 {
        let _ = write!(artifact, ", blake3 {}", &b3[..b3.len().min(16)]);
    }
    if let Some(from) = &r.artifact.blake3_from {
        let _ = write!(artifact, " (checked against the {from})");
    }
    let _ = writeln!(s, "  artifact  {artifact}");
    for c in &r.artifact.copies {
        let mark = if c.ok { "✓" } else { "✗" };
        match &c.reason {
            Some(reason) => {
                let _ = writeln!(s, "  copy      {mark} {}: {reason}", c.url);
            }
            None => {
                let _ = writeln!(s, "  copy      {mark} {}", c.url);
            }
        }
    }
    if let Some(v) = &r.server_version {
        let _ = writeln!(
            s,
            "  server    PostgreSQL {v}, database {}",
            r.database.as_deref().unwrap_or("?")
        );
    }
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| {
            format!(
                "{} {}{}",
                p.name.as_str(),
                human_ms(p.ms),
                if p.ok { "" } else { " ✗" }
            )
        })
        .collect();
    let _ = writeln!(s, "  phases    {}", phases.join(" · "));
    for (name, value) in [("RTO", r.rto_ms), ("RPO", r.rpo_ms)] {
        let Some(ms) = value else { continue };
        let target = r.targets.iter().find(|t| t.name.eq_ignore_ascii_case(name));
        let suffix = target
            .map(|t| {
                format!(
                    " (target {} {})",
                    human_ms(t.target_ms),
                    if t.ok { "✓" } else { "✗" }
                )
            })
            .unwrap_or_default();
        let _ = writeln!(s, "  {name}       {}{suffix}", human_ms(ms));
    }
    for c in &r.checks {
        let mark = if c.ok { "✓" } else { "✗" };
        let detail = match (&c.reason, &c.observed) {
            (Some(reason), _) if !c.ok => reason.clone(),
            (_, Some(o)) => format!("{o} {}", c.expect),
            (_, None) => c.expect.clone(),
        };
        let _ = writeln!(s, "  check     {mark} {}: {detail}", c.name);
    }
    if let Some(i) = &r.integrity {
        let mark = if i.ok { "✓" } else { "✗" };
        let first = i.output.lines().next().unwrap_or("no problems found");
        let _ = writeln!(s, "  integrity {mark} {}: {first}", i.tool);
    }
    if let Some(rec) = &r.recovery {
        let _ = writeln!(
            s,
            "  recovery  {} WAL segments replayed from {} to {} (target {}{}), timeline {}{}",
            rec.segments_replayed,
            rec.start_lsn,
            rec.last_replayed_lsn.as_deref().unwrap_or("?"),
            rec.target,
            if rec.target_reached {
                ", reached"
            } else {
                ", not reached"
            },
            rec.timeline
                .map_or_else(|| "?".to_owned(), |t| t.to_string()),
            rec.last_commit_at
                .as_ref()
                .map_or(String::new(), |c| format!(", last commit {c}"))
        );
        if let Some(p) = &rec.promotion {
            let _ = writeln!(
                s,
                "  promote   timeline {} → {} in {}{}",
                p.old_timeline,
                p.new_timeline,
                crate::report::human_ms(p.promoted_ms),
                p.canary_ms.map_or(String::new(), |c| format!(
                    ", first write committed after {}",
                    crate::report::human_ms(c)
                ))
            );
        }
    }
    if let Some(f) = &r.files {
        let _ = writeln!(
            s,
            "  files     {} files, {} bytes, {} dirs, {} symlinks",
            f.count, f.bytes, f.dirs, f.symlinks
        );
    }
    if !r.tables.is_empty() {
        let total: u64 = r.tables.iter().map(|t| t.rows).sum();
        let mut biggest: Vec<_> = r.tables.iter().collect();
        biggest.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.name.cmp(&b.name)));
        let shown: Vec<String> = biggest
            .iter()
            .take(3)
            .map(|t| format!("{} {}", t.name, t.rows))
            .collect();
        let more = if r.tables.len() > 3 { ", …" } else { "" };
        let _ = writeln!(
            s,
            "  tables    {} tables, {total} rows ({}{more})",
            r.tables.len(),
            shown.join(", ")
        );
    }
    for note in &r.notes {
        let _ = writeln!(s, "  note      {note}");
    }
    s
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// JUnit XML: one testcase per phase that ran, per check, and per target.
pub fn junit(r: &Report) -> String {
    let suite = r.name.clone().unwrap_or_else(|| r.artifact.url.clone());
    let mut cases = String::new();
    let mut failures = 0;
    let mut errors = 0;
    let mut count = 0;
    // JUnit's own split: <failure> for the thing under test (the backup), <error> for a test that
    // could not run (the environment).
    let environment = r.verdict == Verdict::Error;
    let mut case = |class: &str, name: &str, ms: u64, failure: Option<&str>| {
        count += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml(class),
            xml(name),
            ms as f64 / 1000.0
        );
        match failure {
            Some(msg) => {
                let tag = if environment && class == "rehearse.phase" {
                    errors += 1;
                    "error"
                } else {
                    failures += 1;
                    "failure"
                };
                let _ = writeln!(
                    cases,
                    ">\n      <{tag} message=\"{}\">{}</{tag}>\n    </testcase>",
                    xml(msg),
                    xml(msg)
                );
            }
            None => cases.push_str("/>\n"),
        }
    };
    let failed_phase = r
        .failure
        .as_ref()
        .map(|f| (f.phase.as_str(), f.reason.as_str()));
    for p in &r.phases {
        let failure = (!p.ok).then(|| match failed_phase {
            Some((phase, reason)) if phase == p.name.as_str() => reason,
            _ => "failed",
        });
        case("rehearse.phase", p.name.as_str(), p.ms, failure);
    }
    for c in &r.checks {
        case(
            "rehearse.check",
            &c.name,
            0,
            if c.ok {
                None
            } else {
                Some(c.reason.as_deref().unwrap_or("failed"))
            },
        );
    }
    for t in &r.targets {
        let msg = format!(
            "{} {} exceeds target {}",
            t.name,
            t.observed_ms.map_or("unmeasured".into(), human_ms),
            human_ms(t.target_ms)
        );
        case(
            "rehearse.target",
            &t.name,
            t.observed_ms.unwrap_or(0),
            if t.ok { None } else { Some(&msg) },
        );
    }
    let total_ms: u64 = r.phases.iter().map(|p| p.ms).sum();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{}\" tests=\"{count}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\" timestamp=\"{}\">\n{cases}  </testsuite>\n</testsuites>\n",
        xml(&format!("rehearse: {suite}")),
        total_ms as f64 / 1000.0,
        xml(&r.started_at)
    )
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CheckReport, Phase, PhaseReport};

    fn sample() -> Report {
        let mut r = Report::new(
            "file:///b/shop.dump",
            "postgres",
            "process",
            "2026-11-22T02:00:00Z".into(),
        );
        r.name = Some("shop <nightly>".into());
        r.phases = vec![
            PhaseReport {
                name: Phase::Fetch,
                ms: 3,
                ok: true,
            },
            PhaseReport {
                name: Phase::Checks,
                ms: 95,
                ok: false,
            },
        ];
        r.checks = vec![CheckReport {
            name: "orders".into(),
            sql: "SELECT count(*) FROM orders".into(),
            expect: ">= 1000".into(),
            observed: Some("998".into()),
            ok: false,
            reason: Some("observed 998, expected >= 1000".into()),
        }];
        r.fail("checks", "check \"orders\": observed 998, expected >= 1000");
        r.finish(&Default::default(), 0, None);
        r
    }

    #[test]
    fn human_leads_with_verdict_and_reason() {
        let text = human(&sample());
        let mut lines = text.lines();
        assert!(lines.next().is_some_and(|l| l.starts_with("FAILED")));
        assert_eq!(
            lines.next(),
            Some("  failed in checks: check \"orders\": observed 998, expected >= 1000")
        );
        assert!(text.contains("✗ orders: observed 998"));
    }

    #[test]
    fn junit_counts_and_escapes() {
        let x = junit(&sample());
        assert!(x.contains("tests=\"3\" failures=\"2\""), "{x}");
        assert!(x.contains("rehearse: shop &lt;nightly&gt;"));
        assert!(x.contains("<testcase classname=\"rehearse.check\" name=\"orders\""));
        assert!(x.contains("<failure message=\"check &quot;orders&quot;: observed 998"));
    }
}
