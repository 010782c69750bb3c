//! `failover`: does a deploy lose events for clients that resume?
//!
//! N listeners connect through one URL (a load balancer in front of several instances that share
//! a NATS JetStream history) with `?recover=1`; one publisher sends numbered broadcast events at
//! a steady rate; mid-run one instance is drained (`POST /admin/v1/drain`, or SIGTERM) or killed
//! (SIGKILL). Listeners whose connection ends reconnect with exponential backoff and jitter and
//! resume with `?since=` the last position they saw (the recovery notice's or an event's); with
//! `--no-recover` they reconnect without positions, which is what a deploy costs today. The
//! publisher reconnects too when its instance goes away.
//!
//! The count is exact: every listener keeps the set of sequence numbers it received. An event
//! "reached the cluster" when at least one listener received it; each listener's `missing` is
//! counted against those (the resume's job), and published events that reached no listener are
//! reported apart as `publish_lost` (lost between the publisher and the cluster, e.g. written to
//! an instance that was then killed: no resume can bring those back). Duplicates are second
//! receipts of a sequence number; out of order is a first receipt whose position (or, without
//! positions, sequence number) is below one already received. The reconnect time runs from the
//! moment a listener saw its connection end to its recovery notice (without positions: to its
//! upgrade), backoff included.
//!
//! Where each part lives: `disrupt.rs` (the drain or signal, checked before anything connects),
//! `listeners.rs` (the listeners' reconnect and resume loop and their receipts), `publisher.rs`,
//! `accounting.rs` (the count); this file puts them in the skeleton's order.

mod accounting;
mod disrupt;
mod listeners;
mod publisher;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use self::accounting::Disrupted;
use self::disrupt::Disruption;
use self::listeners::{listener, wait_for, Listener, Shared};
use self::publisher::{publisher, Published, PublisherSpec};
use super::skeleton::{self, Closed, Measured, Notes, Phases, Steps};
use crate::cli::{Disrupt, FailoverArgs};
use crate::context::{Outcome, RunCtx, CLOSE_GRACE};
use crate::probe::{self, Encoder};

/// The drain ends early once every listener is connected and no new receipt came for this long.
const QUIET: Duration = Duration::from_secs(1);

pub async fn run(ctx: &RunCtx, args: &FailoverArgs) -> anyhow::Result<Outcome> {
    check(ctx, args)?;
    let failover = Failover {
        args,
        disruption: Disruption::of(args)?,
        sh: Arc::new(Shared::new(ctx, args)),
        done: ctx.cancel.child_token(),
    };
    Ok(skeleton::drive(ctx, failover).await)
}

/// Refuses what cannot make a failover run.
fn check(ctx: &RunCtx, args: &FailoverArgs) -> anyhow::Result<()> {
    if ctx.target.api_key().is_none() {
        bail!("failover needs --api-key: the events come from a publisher connection");
    }
    if args.listeners == 0 {
        bail!("failover needs at least one listener (-l)");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a number of events per second above 0");
    }
    if args.backoff_min.is_zero() || args.backoff_max < args.backoff_min {
        bail!("--backoff-min must be above 0 and at most --backoff-max");
    }
    if args.disrupt != Disrupt::None && args.disrupt_at >= args.duration {
        bail!("--disrupt-at must be within the sending phase (below --duration)");
    }
    Ok(())
}

/// One failover run.
struct Failover<'a> {
    args: &'a FailoverArgs,
    disruption: Disruption,
    /// What the listener tasks share.
    sh: Arc<Shared>,
    /// Cancelled when sending is over.
    done: CancellationToken,
}

/// The listeners and the publisher, and what the send phase left for the count.
struct Open {
    listeners: JoinSet<Listener>,
    /// Stops the listeners (at the close).
    stop: CancellationToken,
    ramp: Duration,
    /// Listeners connected at the end of the ramp.
    connected: usize,
    /// Tells the publisher when sending starts (it sends warm-up events until then).
    start: watch::Sender<Option<Instant>>,
    publisher: Option<JoinHandle<Published>>,
    published: Published,
    disrupted: Option<Disrupted>,
}

impl Steps for Failover<'_> {
    type Open = Open;
    /// Failover runs in one process (`check_workers`): its barrier is passed at once.
    const PHASES: Phases = Phases::ramped("send");

    /// Every listener connects (and keeps trying, with backoff, until it has).
    async fn ramp(&mut self, ctx: &RunCtx, notes: &mut Notes) -> Open {
        let n = self.args.listeners;
        let stop = ctx.cancel.child_token();
        let mut listeners = JoinSet::new();
        let launched = Instant::now();
        for i in 0..n {
            let slot = launched + Duration::from_secs_f64(i as f64 / ctx.connect_rate);
            listeners.spawn(listener(self.sh.clone(), i, slot, stop.clone()));
        }
        wait_for(&self.sh, ctx.ramp_limit(n), &ctx.cancel, |s| {
            s.connected.load(Ordering::Relaxed) >= n
        })
        .await;
        let ramp = launched.elapsed();
        let connected = self.sh.connected.load(Ordering::Relaxed);
        if connected < n {
            notes.push(format!(
                "{connected} of {n} listeners connected within the ramp; the others kept trying"
            ));
        }
        Open {
            listeners,
            stop,
            ramp,
            connected,
            start: watch::channel(None).0,
            publisher: None,
            published: Published::default(),
            disrupted: None,
        }
    }

    /// Warm-up (phase `warm-up`): the publisher sends warm-up events until every listener has
    /// seen one.
    async fn prepare(&mut self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) {
        ctx.phase("warm-up");
        let args = self.args;
        open.publisher = Some(tokio::spawn(publisher(PublisherSpec {
            target: ctx.target.clone(),
            stats: ctx.stats.clone(),
            encoder: Encoder::echo(args.message_size, true, &ctx.run_id),
            rate: args.rate,
            index: args.listeners,
            backoff: (args.backoff_min, args.backoff_max),
            start: open.start.subscribe(),
            done: self.done.clone(),
        })));
        let n = args.listeners as u64;
        let limit = Instant::now() + Duration::from_secs(5) + Duration::from_millis(n / 10);
        wait_for(&self.sh, limit, &ctx.cancel, |s| {
            s.warmed.load(Ordering::Relaxed) >= s.connected.load(Ordering::Relaxed).max(1)
        })
        .await;
        let warmed = self.sh.warmed.load(Ordering::Relaxed);
        if warmed < self.sh.connected.load(Ordering::Relaxed) {
            notes.push(format!(
                "warm-up incomplete: {warmed} listeners had seen a warm-up event when sending \
                 started"
            ));
        }
    }

    /// Sending, with the disruption at `--disrupt-at`.
    async fn measure(&mut self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) -> Measured {
        let start = Instant::now();
        open.start.send_replace(Some(start));
        let disruption = {
            let (plan, at) = (self.disruption.clone(), start + self.args.disrupt_at);
            let cancel = ctx.cancel.clone();
            tokio::spawn(async move {
                if matches!(plan, Disruption::None) || !sleep_until(at, &cancel).await {
                    return None;
                }
                let t = start.elapsed().as_secs_f64();
                let (ok, result) = plan.execute().await;
                Some((t, ok, result))
            })
        };
        let m = Measured::until(start, self.args.duration, &self.done).await;
        open.disrupted = disruption.await.ok().flatten();
        let published = match open.publisher.take() {
            Some(task) => tokio::time::timeout(CLOSE_GRACE * 2, task).await.ok(),
            None => None,
        };
        open.published = match published {
            Some(Ok(p)) => p,
            _ => {
                notes.push(
                    "the publisher did not hand back its count; nothing counts as published".into(),
                );
                Published::default()
            }
        };
        m
    }

    fn drains(&self, _: &Open) -> bool {
        true
    }

    /// Until every listener has every published event, or all are back and quiet.
    async fn drain(&mut self, ctx: &RunCtx, open: &mut Open, _: &Measured, _: &mut Notes) {
        let limit = Instant::now() + self.args.drain;
        let everyone = open.connected as u64 * open.published.sent.len();
        let sh = &self.sh;
        skeleton::poll_until(ctx, limit, Duration::from_millis(50), || {
            let all = sh.unique.load(Ordering::Relaxed) >= everyone;
            let quiet = probe::now_ns().saturating_sub(sh.last_unique_ns.load(Ordering::Relaxed))
                >= QUIET.as_nanos() as u64;
            let back = sh.down.load(Ordering::Relaxed) == 0;
            all || (back && quiet)
        })
        .await;
    }

    /// The listeners hand back their receipts, and the count.
    async fn close(self, ctx: &RunCtx, mut open: Open, _: &Measured, notes: &mut Notes) -> Closed {
        let n = self.args.listeners;
        open.stop.cancel();
        let mut listeners = Vec::with_capacity(n);
        let limit = Instant::now() + CLOSE_GRACE + Duration::from_millis(n as u64 / 5);
        while let Ok(Some(r)) =
            tokio::time::timeout_at(limit.into(), open.listeners.join_next()).await
        {
            listeners.extend(r.ok());
        }
        let lost = n - listeners.len();
        if lost > 0 {
            open.listeners.abort_all();
        }
        skeleton::note_lost(
            notes,
            lost,
            "listeners did not hand back their receipts in time (not counted)",
        );
        listeners.sort_by_key(|l| l.index);
        let counted: Vec<&Listener> = listeners.iter().filter(|l| l.connected_once).collect();
        let (fo, delivery) = accounting::count(
            self.args,
            &self.disruption,
            open.disrupted,
            &open.published,
            &counted,
            &ctx.stats,
            notes,
        );
        Closed {
            target_connections: n + 1,
            ramp: open.ramp,
            delivery: Some(delivery),
            failover: Some(fo),
        }
    }
}

/// Sleeps until `at`; false if `stop` came first.
async fn sleep_until(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at.into()) => true,
        _ = stop.cancelled() => false,
    }
}
