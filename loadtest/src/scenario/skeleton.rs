//! The steps every scenario takes, written once.
//!
//! `connect`, `echo`, `soak`, `broadcast`/`publish` and `failover` all run the same skeleton,
//! which [`drive`] carries out in this order for any [`Steps`]:
//!
//! 1. **ramp** (phase `ramp`): open the connections at the paced rate ([`Steps::ramp`]);
//! 2. **prepare**: what must be ready before anything is measured: connection ids, a warm-up,
//!    the publishers, each such step naming its own phase ([`Steps::prepare`]);
//! 3. **barrier**: with `--workers`, no worker measures before every worker got here (alone, the
//!    barrier is passed at once);
//! 4. **measure** (its phase named by the scenario: `hold`, `echo`, `soak`, `send`, ...): from
//!    its start to its natural end, the duration or a count ([`Steps::measure`], mostly
//!    [`Measured::until`]), or the run cut short;
//! 5. **drain** (phase `drain`, only when [`Steps::drains`]): wait for what is still on its way;
//! 6. **close** (phase `close` or `finish`): close the connections, or hand them back to a mixed
//!    run's pool, and count what they received ([`Steps::close`]);
//! 7. the [`Outcome`]: the measured phase's length and end, the notes every step added in this
//!    order, and what the count gave.
//!
//! With `--stage`, the connections open and close as the stages say, during the measured phase:
//! such a scenario has no ramp phase ([`Phases::ramp`] is `None`), and the driver runs its
//! [`Steps::ramp`] after the barrier, inside the measured phase.
//!
//! The helpers below are the pieces the steps share: the measured window, the drain's polling,
//! the note on connections lost at the close, and the stages' connection windows.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::context::{Outcome, RunCtx, StopReason};
use crate::fleet::SlotFor;
use crate::stages::Stages;
use crate::summary::{DeliverySummary, FailoverSummary};

/// The notes of a run, in the order the steps wrote them.
pub(crate) type Notes = Vec<String>;

/// The names of a scenario's phases, as the progress bar and `--server-pid` show them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phases {
    /// The ramp's phase, before the barrier; `None`: the connections open during the measured
    /// phase (`--stage`).
    pub ramp: Option<&'static str>,
    /// The workers' barrier before the measured phase.
    pub barrier: &'static str,
    pub measured: &'static str,
    pub close: &'static str,
}

impl Phases {
    /// Ramp, barrier `ramped`, the measured phase `measured`, close.
    pub const fn ramped(measured: &'static str) -> Self {
        Phases {
            ramp: Some("ramp"),
            barrier: "ramped",
            measured,
            close: "close",
        }
    }

    /// `--stage`: barrier `start`, the measured phase `measured` (the connections open in it),
    /// close.
    pub const fn staged(measured: &'static str) -> Self {
        Phases {
            ramp: None,
            barrier: "start",
            measured,
            close: "close",
        }
    }
}

/// The measured phase: when it started, how long it lasted, and why it ended when not cut short.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub start: Instant,
    pub took: Duration,
    pub natural: StopReason,
}

impl Measured {
    /// Waits from `start` until `run_for` has passed ([`StopReason::Duration`]) or `done` is
    /// cancelled ([`StopReason::Count`]: the count was reached; when the run was cut short, which
    /// cancels `done` too, [`RunCtx::stopped_by`] reports that instead), then cancels `done` so
    /// that the senders stop.
    pub async fn until(start: Instant, run_for: Duration, done: &CancellationToken) -> Self {
        let natural = tokio::select! {
            _ = tokio::time::sleep_until((start + run_for).into()) => StopReason::Duration,
            _ = done.cancelled() => StopReason::Count,
        };
        done.cancel();
        Measured {
            start,
            took: start.elapsed(),
            natural,
        }
    }
}

/// What the close hands the driver for the [`Outcome`].
#[derive(Debug, Default)]
pub(crate) struct Closed {
    /// The connections this process was to open.
    pub target_connections: usize,
    /// How long the ramp took.
    pub ramp: Duration,
    pub delivery: Option<DeliverySummary>,
    pub failover: Option<FailoverSummary>,
}

impl Closed {
    /// Connections alone: nothing delivered to count.
    pub fn connections(target_connections: usize, ramp: Duration) -> Self {
        Closed {
            target_connections,
            ramp,
            ..Closed::default()
        }
    }
}

/// A scenario as the steps of the skeleton (see the module's documentation for the order).
///
/// `Open` is what the ramp opened (fleets, tasks, their ramp figures), handed to every later
/// step and consumed by the close. Scenario-wide settings live in `Self`.
pub(crate) trait Steps: Send + Sized {
    /// What the ramp opened.
    type Open: Send;
    /// The names of the phases, and whether the ramp comes before the barrier.
    const PHASES: Phases;

    /// Opens the connections (and waits for their ramp).
    fn ramp(&mut self, ctx: &RunCtx, notes: &mut Notes) -> impl Future<Output = Self::Open> + Send;

    /// What must be ready before the barrier, after the ramp (none by default; not called when
    /// the ramp comes after the barrier, with `--stage`).
    fn prepare(
        &mut self,
        _ctx: &RunCtx,
        _open: &mut Self::Open,
        _notes: &mut Notes,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The measured phase.
    fn measure(
        &mut self,
        ctx: &RunCtx,
        open: &mut Self::Open,
        notes: &mut Notes,
    ) -> impl Future<Output = Measured> + Send;

    /// Whether there is anything to drain after the measured phase.
    fn drains(&self, _open: &Self::Open) -> bool {
        false
    }

    /// Waits for what is still on its way (called in phase `drain` when [`Steps::drains`]).
    fn drain(
        &mut self,
        _ctx: &RunCtx,
        _open: &mut Self::Open,
        _measured: &Measured,
        _notes: &mut Notes,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Closes the connections and counts what they received.
    fn close(
        self,
        ctx: &RunCtx,
        open: Self::Open,
        measured: &Measured,
        notes: &mut Notes,
    ) -> impl Future<Output = Closed> + Send;
}

/// Runs a scenario's steps in the skeleton's order and assembles its [`Outcome`].
pub(crate) async fn drive<S: Steps>(ctx: &RunCtx, mut steps: S) -> Outcome {
    let phases = S::PHASES;
    let mut notes = Notes::new();
    let ramped = match phases.ramp {
        Some(name) => {
            ctx.phase(name);
            let mut open = steps.ramp(ctx, &mut notes).await;
            steps.prepare(ctx, &mut open, &mut notes).await;
            Some(open)
        }
        None => None,
    };
    ctx.barrier(phases.barrier).await;
    ctx.phase(phases.measured);
    let mut open = match ramped {
        Some(open) => open,
        // `--stage`: the connections open during the measured phase.
        None => steps.ramp(ctx, &mut notes).await,
    };
    let measured = steps.measure(ctx, &mut open, &mut notes).await;
    if steps.drains(&open) {
        ctx.phase("drain");
        steps.drain(ctx, &mut open, &measured, &mut notes).await;
    }
    ctx.phase(phases.close);
    let closed = steps.close(ctx, open, &measured, &mut notes).await;
    Outcome {
        target_connections: closed.target_connections,
        ramp: closed.ramp,
        measured: measured.took,
        stopped_by: ctx.stopped_by(measured.natural),
        delivery: closed.delivery,
        notes,
        failover: closed.failover,
    }
}

/// Checks `done` every `every` until it holds, `limit` passes or the run is cancelled: the
/// drains' wait.
pub(crate) async fn poll_until(
    ctx: &RunCtx,
    limit: Instant,
    every: Duration,
    mut done: impl FnMut() -> bool + Send,
) {
    let mut tick = tokio::time::interval(every);
    while !done() && Instant::now() < limit {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.cancel.cancelled() => break,
        }
    }
}

/// Adds the note on `lost` connection tasks that did not end within the close's grace (`what`
/// says what they were and what that costs), if there were any.
pub(crate) fn note_lost(notes: &mut Notes, lost: usize, what: &str) {
    if lost > 0 {
        notes.push(format!("{lost} {what}"));
    }
}

/// Sleeps until `at`; forever when there is no `at`.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `--stage`: when each of this worker's connections opens and closes (connection `n` opens
/// when the level first reaches `n + 1` and closes when it next falls below).
pub(crate) struct StagedSlots {
    first: usize,
    /// (open, close) of connections `first..`, from the start of the stages.
    windows: Arc<Vec<(Duration, Duration)>>,
    total: Duration,
    peak: f64,
}

impl StagedSlots {
    /// The windows of connections `first..first + count`.
    pub fn new(stages: &Stages, first: usize, count: usize) -> Self {
        let total = stages.total();
        StagedSlots {
            first,
            windows: Arc::new(
                (first..first + count)
                    .map(|n| stages.window(n).unwrap_or((total, total)))
                    .collect(),
            ),
            total,
            peak: stages.peak(),
        }
    }

    /// How long the stages last.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// When each connection opens, from the fleet's launch (its [`crate::fleet::FleetSpec::slots`]).
    pub fn slots(&self) -> SlotFor {
        let (w, first) = (self.windows.clone(), self.first);
        Arc::new(move |index| w[index - first].0)
    }

    /// When connection `index` of a fleet launched at `start` closes for good; `None` for those
    /// the level never falls below, held to the end of the stages (and in a mixed run carried
    /// over to the next phase).
    pub fn close_at(&self, start: Instant) -> impl Fn(usize) -> Option<Instant> {
        let (w, first, end) = (self.windows.clone(), self.first, start + self.total);
        move |index| Some(start + w[index - first].1).filter(|&at| at < end)
    }

    /// The note that says what the stages were.
    pub fn note(&self) -> String {
        format!(
            "stages: peak {} connections, {:.1} s in all",
            self.peak.floor(),
            self.total.as_secs_f64()
        )
    }
}
