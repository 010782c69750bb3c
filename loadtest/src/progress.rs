//! Live progress on stderr: one line per scenario run with its phase and current rates.
//!
//! Bars are drawn only when stderr is a terminal and `--quiet` is off, so pipes, CI logs and the
//! `--json` consumer never see control sequences. Rates are computed from counter deltas between
//! redraws, so they show what is happening now, not the run average.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Stats;

const REDRAW: Duration = Duration::from_millis(250);

/// Where bars go; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    quiet: bool,
}

impl Progress {
    /// Bars on stderr when `bars`; notes on stderr unless `quiet`.
    pub fn new(bars: bool, quiet: bool) -> Self {
        Progress {
            multi: (bars && !quiet)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            quiet,
        }
    }

    /// Neither bars nor notes.
    pub fn hidden() -> Self {
        Progress {
            multi: None,
            quiet: true,
        }
    }

    /// Prints a line above the bars, or plainly to stderr when there are none.
    pub fn note(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    /// Starts a live line for one run; it redraws until the returned tracker is dropped.
    pub fn track(&self, label: &str, stats: Arc<Stats>) -> Tracker {
        let phase = Arc::new(Mutex::new(String::from("start")));
        let Some(multi) = &self.multi else {
            return Tracker {
                phase,
                task: None,
                bar: None,
            };
        };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_owned());
        let task = {
            let (bar, phase) = (bar.clone(), phase.clone());
            tokio::spawn(async move {
                let mut last = (Instant::now(), 0u64, 0u64);
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let sent = stats.sent.load(Ordering::Relaxed);
                    let received = stats.received.load(Ordering::Relaxed);
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    let (sent_rate, recv_rate) =
                        ((sent - last.1) as f64 / dt, (received - last.2) as f64 / dt);
                    last = (now, sent, received);
                    let p99 = stats
                        .last_window()
                        .and_then(|w| w.latency)
                        .map(|p| format!("{:.2} ms", p.p99_ms))
                        .unwrap_or_else(|| "-".into());
                    let phase = phase.lock().map(|p| p.clone()).unwrap_or_default();
                    bar.set_message(format!(
                        "{phase:<8} open {} (failed {}, dropped {}) | sent {}/s | recv {}/s | {} p99 {p99} | errors {}",
                        stats.open(),
                        stats.failed.load(Ordering::Relaxed),
                        stats.dropped.load(Ordering::Relaxed),
                        si(sent_rate),
                        si(recv_rate),
                        stats.primary.name(),
                        stats.errors.load(Ordering::Relaxed),
                    ));
                    bar.tick();
                }
            })
        };
        Tracker {
            phase,
            task: Some(task),
            bar: Some(bar),
        }
    }
}

/// One run's live line; stops redrawing and clears itself when dropped.
pub struct Tracker {
    phase: Arc<Mutex<String>>,
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Tracker {
    /// A tracker that shows nothing (tests, `--quiet`).
    pub fn hidden() -> Self {
        Tracker {
            phase: Arc::new(Mutex::new(String::new())),
            task: None,
            bar: None,
        }
    }

    pub fn phase(&self, name: &str) {
        if let Ok(mut p) = self.phase.lock() {
            name.clone_into(&mut p);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `1234567.0` → `1.23M`: rates stay readable at a glance.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
