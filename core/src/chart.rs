//! Inline SVG charts for the dashboard: RTO per phase as stacked bars, RPO as a line, each with
//! its target as a dashed line. Pure: data in, SVG text out (no script, no external asset), so a
//! page prints and renders anywhere.
//!
//! Every bar is `<g class="bar" data-run="LABEL">` and every point `<circle class="point"
//! data-run="LABEL">`, with a `<title>` (the tooltip) naming the run and its values: tests and
//! people can both find a run's mark.

use std::fmt::Write as _;

/// One run's bar: its label (the tick), each phase's duration, and whether it passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub segments: Vec<(String, u64)>,
    pub passed: bool,
}

/// One run's point; `None` where the run has no value (it failed before measuring).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    pub value: Option<u64>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 28.0;

/// The phases in pipeline order, with their colours.
const PHASES: [(&str, &str); 6] = [
    ("fetch", "#8da0cb"),
    ("checksum", "#66c2a5"),
    ("provision", "#fc8d62"),
    ("restore", "#e78ac3"),
    ("checks", "#a6d854"),
    ("teardown", "#b3b3b3"),
];

fn colour_of(phase: &str) -> &'static str {
    PHASES
        .iter()
        .find(|(p, _)| *p == phase)
        .map_or("#999999", |(_, c)| c)
}

/// Text safe inside SVG/XML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// "1.2 s", "850 ms", "3.5 min", "2.0 h".
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{:.1} min", ms as f64 / 6e4),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

/// The y-axis top: the largest value or the target, with room above.
fn scale_max(values: impl Iterator<Item = u64>, target: Option<u64>) -> f64 {
    let max = values.chain(target).max().unwrap_or(0).max(1) as f64;
    max * 1.1
}

fn frame(out: &mut String, title: &str, max: f64) {
    let plot_h = HEIGHT - TOP - BOTTOM;
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title>"#,
        t = escape(title)
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="#555">{label}</text>"##,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 4.0,
            label = escape(&duration(v as u64))
        );
    }
}

fn target_line(out: &mut String, target: Option<u64>, max: f64, what: &str) {
    let Some(t) = target else { return };
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = TOP + plot_h - plot_h * (t as f64 / max);
    let _ = write!(
        out,
        r##"<g class="target"><line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="6 4" stroke-width="1.5"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="#d62728">{what} target {d}</text></g>"##,
        x2 = WIDTH - RIGHT,
        tx = WIDTH - RIGHT,
        ty = y - 4.0,
        d = escape(&duration(t))
    );
}

/// Stacked bars of the phases per run, oldest left, with the target as a dashed line.
pub fn stacked_bars(title: &str, bars: &[Bar], target_ms: Option<u64>) -> String {
    let totals = bars
        .iter()
        .map(|b| b.segments.iter().map(|(_, ms)| ms).sum());
    let max = scale_max(totals, target_ms);
    let mut out = String::new();
    frame(&mut out, title, max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / bars.len().max(1) as f64;
    let width = (slot * 0.7).clamp(2.0, 40.0);
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - width) / 2.0;
        let total: u64 = bar.segments.iter().map(|(_, ms)| ms).sum();
        let mut tip = format!("{}: {}", bar.label, duration(total));
        for (phase, ms) in &bar.segments {
            let _ = write!(tip, ", {phase} {}", duration(*ms));
        }
        if !bar.passed {
            tip.push_str(" (not passed)");
        }
        let _ = write!(
            out,
            r#"<g class="bar{}" data-run="{}"><title>{}</title>"#,
            if bar.passed { "" } else { " not-passed" },
            escape(&bar.label),
            escape(&tip)
        );
        let mut y = TOP + plot_h;
        for (phase, ms) in &bar.segments {
            let h = plot_h * (*ms as f64 / max);
            y -= h;
            let colour = colour_of(phase);
            let _ = write!(
                out,
                r#"<rect class="phase {p}" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{h:.1}" fill="{colour}"/>"#,
                p = escape(phase)
            );
        }
        if !bar.passed {
            let _ = write!(
                out,
                r##"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle" fill="#d62728">✕</text>"##,
                cx = x + width / 2.0,
                ty = y - 2.0
            );
        }
        out.push_str("</g>");
    }
    target_line(&mut out, target_ms, max, "RTO");
    legend(&mut out);
    out.push_str("</svg>");
    out
}

fn legend(out: &mut String) {
    let y = HEIGHT - 8.0;
    for (i, (phase, colour)) in PHASES.iter().enumerate() {
        let x = LEFT + 90.0 * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{ry}" width="10" height="10" fill="{colour}"/><text x="{tx}" y="{y}" fill="#333">{phase}</text>"##,
            ry = y - 9.0,
            tx = x + 14.0
        );
    }
}

/// A line through the runs' values (gaps where a run has none), with the target.
pub fn line(title: &str, points: &[Point], target_ms: Option<u64>, what: &str) -> String {
    let max = scale_max(points.iter().filter_map(|p| p.value), target_ms);
    let mut out = String::new();
    frame(&mut out, title, max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / points.len().max(1) as f64;
    let at = |i: usize, v: u64| {
        (
            LEFT + slot * i as f64 + slot / 2.0,
            TOP + plot_h - plot_h * (v as f64 / max),
        )
    };
    // The line, broken where a run has no value.
    let mut path = String::new();
    let mut pen_down = false;
    for (i, p) in points.iter().enumerate() {
        match p.value {
            Some(v) => {
                let (x, y) = at(i, v);
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = write!(
            out,
            r##"<path class="series" d="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            path.trim_end()
        );
    }
    for (i, p) in points.iter().enumerate() {
        if let Some(v) = p.value {
            let (x, y) = at(i, v);
            let _ = write!(
                out,
                r##"<circle class="point" data-run="{l}" cx="{x:.1}" cy="{y:.1}" r="3.5" fill="#1f77b4"><title>{l}: {d}</title></circle>"##,
                l = escape(&p.label),
                d = escape(&duration(v))
            );
        }
    }
    target_line(&mut out, target_ms, max, what);
    out.push_str("</svg>");
    out
}

/// One run's phases left to right, each as wide as its share of the whole.
pub fn timeline(title: &str, phases: &[(String, u64, bool)]) -> String {
    let total: u64 = phases.iter().map(|(_, ms, _)| ms).sum::<u64>().max(1);
    let (w, h) = (WIDTH, 64.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title>"#,
        t = escape(title)
    );
    let mut x = 4.0;
    let span = w - 8.0;
    for (phase, ms, ok) in phases {
        let width = span * (*ms as f64 / total as f64);
        let colour = colour_of(phase);
        let _ = write!(
            out,
            r##"<g class="phase-span{}" data-phase="{p}"><title>{p}: {d}{}</title><rect x="{x:.1}" y="8" width="{width:.1}" height="28" fill="{colour}" stroke="{}" stroke-width="{}"/>"##,
            if *ok { "" } else { " failed" },
            if *ok { "" } else { " (failed)" },
            if *ok { "#ffffff" } else { "#d62728" },
            if *ok { 1 } else { 3 },
            p = escape(phase),
            d = escape(&duration(*ms)),
        );
        if width > 60.0 {
            let _ = write!(
                out,
                r##"<text x="{tx:.1}" y="27" fill="#111">{p} {d}</text>"##,
                tx = x + 4.0,
                p = escape(phase),
                d = escape(&duration(*ms))
            );
        }
        out.push_str("</g>");
        x += width;
    }
    let _ = write!(
        out,
        r##"<text x="4" y="54" fill="#555">total {}</text></svg>"##,
        escape(&duration(total))
    );
    out
}

/// One step of an exercise on its clock: offsets from the exercise's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub step: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// passed, failed, error, halted, aborted, running, waiting.
    pub state: String,
    pub gate: bool,
    /// On the critical path (drawn with a heavy outline).
    pub critical: bool,
}

fn state_colour(state: &str) -> &'static str {
    match state {
        "passed" => "#2ca02c",
        "failed" => "#d62728",
        "error" => "#ff7f0e",
        "running" => "#1f77b4",
        _ => "#b3b3b3",
    }
}

/// An exercise's steps as a Gantt chart on one clock, one row each, the critical path drawn
/// heavy, gates hatched, with the RTO target as a dashed vertical line.
pub fn gantt(title: &str, spans: &[Span], target_ms: Option<u64>) -> String {
    let row = 26.0;
    let h = TOP + BOTTOM + row * spans.len().max(1) as f64;
    let label_w = 160.0;
    let plot_w = WIDTH - label_w - RIGHT;
    let max = spans
        .iter()
        .map(|s| s.end_ms)
        .chain(target_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.05;
    let x_of = |ms: u64| label_w + plot_w * (ms as f64 / max);
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {h}" width="{WIDTH}" height="{h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title><defs><pattern id="gate" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#ffffff" opacity="0.5"/></pattern></defs>"##,
        t = escape(title)
    );
    for (i, s) in spans.iter().enumerate() {
        let y = TOP + row * i as f64;
        let (x0, x1) = (x_of(s.start_ms), x_of(s.end_ms.max(s.start_ms)));
        let width = (x1 - x0).max(2.0);
        let _ = write!(
            out,
            r##"<g class="step{}{}" data-step="{n}" data-state="{st}"><title>{n}: {st}, {a} → {b} ({d}){}</title><text x="4" y="{ty:.1}" fill="#111">{n}</text><rect x="{x0:.1}" y="{ry:.1}" width="{width:.1}" height="{rh}" fill="{c}" stroke="#111" stroke-width="{sw}"/>{hatch}</g>"##,
            if s.critical { " critical" } else { "" },
            if s.gate { " gate" } else { "" },
            if s.critical {
                ", on the critical path"
            } else {
                ""
            },
            n = escape(&s.step),
            st = escape(&s.state),
            a = escape(&duration(s.start_ms)),
            b = escape(&duration(s.end_ms)),
            d = escape(&duration(s.end_ms.saturating_sub(s.start_ms))),
            ty = y + row / 2.0 + 4.0,
            ry = y + 4.0,
            rh = row - 8.0,
            c = state_colour(&s.state),
            sw = if s.critical { 2.5 } else { 0.5 },
            hatch = if s.gate {
                format!(
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{width:.1}" height="{}" fill="url(#gate)"/>"#,
                    y + 4.0,
                    row - 8.0
                )
            } else {
                String::new()
            },
        );
    }
    if let Some(t) = target_ms {
        let x = x_of(t);
        let _ = write!(
            out,
            r##"<g class="target"><line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{y2:.1}" stroke="#d62728" stroke-dasharray="6 4" stroke-width="1.5"/><text x="{x:.1}" y="{ty:.1}" text-anchor="end" fill="#d62728">RTO target {d}</text></g>"##,
            y2 = h - BOTTOM,
            ty = h - BOTTOM + 14.0,
            d = escape(&duration(t))
        );
    }
    let _ = write!(
        out,
        r##"<text x="{label_w}" y="{ty:.1}" fill="#555">0</text></svg>"##,
        ty = h - BOTTOM + 14.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, ms: &[(&str, u64)], passed: bool) -> Bar {
        Bar {
            label: label.into(),
            segments: ms.iter().map(|(p, m)| ((*p).into(), *m)).collect(),
            passed,
        }
    }

    #[test]
    fn a_gantt_has_a_row_per_step_with_the_critical_path_marked() {
        let span = |step: &str, a, b, critical, gate| Span {
            step: step.into(),
            start_ms: a,
            end_ms: b,
            state: "passed".into(),
            gate,
            critical,
        };
        let svg = gantt(
            "x",
            &[
                span("db", 0, 4_000, true, false),
                span("files <1>", 0, 1_000, false, false),
                span("cutover", 4_000, 9_000, true, true),
            ],
            Some(60_000),
        );
        assert_eq!(svg.matches(r#"class="step"#).count(), 3);
        assert_eq!(svg.matches(r#"class="step critical"#).count(), 2);
        assert!(svg.contains(r#"class="step critical gate" data-step="cutover""#));
        assert!(svg.contains("files &lt;1&gt;"), "escaped");
        assert!(svg.contains("RTO target 1.0 min"));
    }

    #[test]
    fn one_bar_per_run_stacked_in_phase_order_with_the_target() {
        let svg = stacked_bars(
            "RTO",
            &[
                bar("run 1", &[("fetch", 100), ("restore", 900)], true),
                bar("run <2>", &[("fetch", 200), ("restore", 2800)], false),
            ],
            Some(2_000),
        );
        assert_eq!(svg.matches(r#"<g class="bar"#).count(), 2);
        assert_eq!(svg.matches(r#"class="phase restore""#).count(), 2);
        assert!(svg.contains("not-passed"));
        assert!(
            svg.contains(r#"data-run="run &lt;2&gt;""#),
            "labels are escaped"
        );
        assert!(svg.contains("RTO target 2.0 s"));
        assert!(!svg.contains("<script"));
        // The taller bar reaches higher (a smaller y) than the shorter one.
        let ys: Vec<f64> = svg
            .match_indices(r#"class="phase restore" x=""#)
            .map(|(i, _)| {
                let rest = &svg[i..];
                let y = &rest[rest.find(" y=\"").expect("y") + 4..];
                y[..y.find('"').expect("end")].parse().expect("number")
            })
            .collect();
        assert!(ys[1] < ys[0], "{ys:?}");
    }

    #[test]
    fn a_line_skips_runs_without_a_value() {
        let svg = line(
            "RPO",
            &[
                Point {
                    label: "a".into(),
                    value: Some(60_000),
                },
                Point {
                    label: "b".into(),
                    value: None,
                },
                Point {
                    label: "c".into(),
                    value: Some(120_000),
                },
            ],
            None,
            "RPO",
        );
        assert_eq!(svg.matches(r#"<circle class="point""#).count(), 2);
        let d = &svg[svg.find(r#"class="series" d=""#).expect("path") + 18..];
        let d = &d[..d.find('"').expect("end")];
        assert_eq!(d.matches('M').count(), 2, "the line breaks at the gap: {d}");
        assert!(!svg.contains("target"));
    }

    #[test]
    fn a_timeline_spans_each_phase_by_its_share() {
        let svg = timeline(
            "job",
            &[("fetch".into(), 100, true), ("restore".into(), 300, false)],
        );
        assert_eq!(svg.matches(r#"<g class="phase-span"#).count(), 2);
        assert!(svg.contains(r#"class="phase-span failed" data-phase="restore""#));
        assert!(svg.contains("total 400 ms"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(1_200), "1.2 s");
        assert_eq!(duration(210_000), "3.5 min");
        assert_eq!(duration(7_200_000), "2.0 h");
    }
}
