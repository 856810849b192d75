//! Progress on a terminal, drawn on stderr with indicatif: for `verify` and `demo`, the running
//! phase with its elapsed time and, for fetch and checksum, the bytes moved of the total with the
//! throughput, each finished phase kept as a line above; for `job wait`, the job's state and
//! phase. Nothing is drawn when stderr is not a terminal (stdout carries only the report in any
//! case), or with `REHEARSE_PROGRESS=0`.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rehearse_core::report::Phase;
use rehearse_worker::progress::{Meter, Reading};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TICK: Duration = Duration::from_millis(100);

/// Whether progress is drawn: stderr is a terminal and `REHEARSE_PROGRESS` is not `0`.
pub(crate) fn wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var("REHEARSE_PROGRESS").as_deref() != Ok("0")
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

/// A bar that follows one verification until [`Drawn::finish`].
pub(crate) struct Drawn {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Drawn {
    /// Removes the bar once the last phase's line is written (the verification is over: its
    /// phase channel closed).
    pub(crate) async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// A finished phase's line: its name, time, and what it moved — bytes with throughput, or
/// archive entries restored of the total.
fn phase_line(phase: Phase, took: Duration, moved: Reading) -> String {
    let ms = took.as_millis();
    let took_text = if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", took.as_secs_f64())
    };
    let mut line = format!("✓ {:<9} {took_text:>7}", phase.as_str());
    if moved.items {
        line.push_str(&format!("  {}/{} TOC entries", moved.done, moved.total));
    } else if moved.done > 0 {
        let rate = moved.done as f64 / took.as_secs_f64().max(0.001);
        line.push_str(&format!(
            "  {}  {}/s",
            HumanBytes(moved.done),
            HumanBytes(rate as u64)
        ));
    }
    line
}

/// Draws the phases announced on `phases` and the bytes counted on `meter`.
pub(crate) fn verification(mut phases: watch::Receiver<Option<Phase>>, meter: Arc<Meter>) -> Drawn {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(style("{spinner} {msg:<9} {elapsed:>4}"));
    bar.enable_steady_tick(TICK);
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let mut current: Option<(Phase, std::time::Instant)> = None;
        loop {
            let phase = *phases.borrow_and_update();
            let now = meter.read();
            if phase != current.map(|(p, _)| p) {
                if let Some((p, began)) = current {
                    shown.println(phase_line(p, began.elapsed(), meter.previous()));
                }
                current = phase.map(|p| (p, std::time::Instant::now()));
                shown.reset();
                shown.set_message(phase.map_or("", Phase::as_str).to_owned());
                shown.set_style(style("{spinner} {msg:<9} {elapsed:>4}"));
            }
            // The meter may still hold the previous phase's count until the new one resets it.
            if now.items && now.total > 0 {
                shown.set_style(style(
                    "{spinner} {msg:<9} {elapsed:>4} [{bar:30}] {pos}/{len} TOC entries",
                ));
                shown.set_length(now.total);
                shown.set_position(now.done.min(now.total));
            } else if now.total > 0 {
                shown.set_style(style(
                    "{spinner} {msg:<9} {elapsed:>4} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                ));
                shown.set_length(now.total);
                shown.set_position(now.done.min(now.total));
            } else if now.done > 0 {
                shown.set_style(style(
                    "{spinner} {msg:<9} {elapsed:>4} {bytes} {binary_bytes_per_sec}",
                ));
                shown.set_position(now.done);
            }
            tokio::select! {
                changed = phases.changed() => {
                    if changed.is_err() {
                        // The verification is over: its last phase ends here.
                        if let Some((p, began)) = current {
                            shown.println(phase_line(p, began.elapsed(), meter.read()));
                        }
                        break;
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    });
    Drawn { bar, task }
}

/// A spinner for `job wait`: the job's state and phase as polled.
pub(crate) struct Waiting {
    bar: ProgressBar,
}

impl Waiting {
    pub(crate) fn start(id: &str) -> Waiting {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style("{spinner} {prefix} {msg} {elapsed:>4}"));
        bar.set_prefix(id.to_owned());
        bar.enable_steady_tick(TICK);
        Waiting { bar }
    }

    pub(crate) fn show(&self, state: &str, phase: &str) {
        self.bar.set_message(if phase.is_empty() {
            state.to_owned()
        } else {
            format!("{state}: {phase}")
        });
    }

    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}
