//! `soak`: hold N connections for a long time under a steady, moderate mix and watch the figures
//! per window, so that slow leaks (latency creeping up, errors appearing, connections dropped)
//! show as drift instead of vanishing into a run average.
//!
//! Each connection sends an echo every `--echo-interval` on its own open-loop schedule (phases
//! spread evenly, so the server sees a smooth rate of N / interval), with round trips measured
//! from the intended send time. One extra connection broadcasts at `--broadcast-rate`, and every
//! held connection counts those deliveries. Dropped connections are reconnected (and counted)
//! unless `--no-reconnect`.
//!
//! With `--stage`, the number of held connections follows the stages as in `connect`
//! (connection `n` opens when the level first reaches `n + 1` and closes when it next falls
//! below), each echoing every interval while it is open. Broadcasts are refused with stages:
//! a listener that comes and goes mid-stream has no exact set of events it should have received.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::delivery::{self, Listen, Publish, Tally};
use super::skeleton::{self, Closed, Measured, Notes, Phases, StagedSlots, Steps};
use crate::cli::SoakArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, Outcome, RunCtx, Schedule, Sequence};
use crate::fleet::{self, Ended, Fleet, FleetSpec, Ramp};
use crate::probe::{self, Encoder, Kind, Received};
use crate::stages::Stages;
use crate::stats::Stats;
use crate::summary::DeliverySummary;

struct Shared {
    gate: Gate,
    /// Cancelled at the end of the measured phase: no new echoes, keep reading.
    done: CancellationToken,
    seq: Sequence,
    encoder: Encoder,
    stats: Arc<Stats>,
    listen: Arc<Listen>,
    run: String,
    connections: usize,
    interval: Duration,
    reply_timeout: Duration,
}

/// One held connection's state; survives reconnects.
#[derive(Default)]
struct Held {
    tally: Tally,
    /// Echoes awaiting their reply: (sequence, give-up time).
    pending: VecDeque<(u64, Instant)>,
    /// `--stage`: when the level falls below this connection (it then closes for good).
    close_at: Option<Instant>,
}

pub async fn run(ctx: &RunCtx, args: &SoakArgs) -> anyhow::Result<Outcome> {
    if args.echo_interval.is_zero() {
        anyhow::bail!("--echo-interval must be above 0");
    }
    let stages = (!args.stage.is_empty()).then(|| Stages(args.stage.clone()));
    if stages.is_some() && args.broadcast_rate > 0.0 {
        anyhow::bail!(
            "soak --stage cannot take --broadcast-rate: a listener that joins and leaves \
             mid-stream has no exact set of events to count against (use broadcast --stage)"
        );
    }
    let total = stages
        .as_ref()
        .map_or(args.connections, |s| s.peak().floor() as usize);
    // With --workers (no broadcasts then, see `check_workers`), this process holds its share.
    let (first, count) = ctx.shard.part(total);
    let done = ctx.cancel.child_token();
    let shared = Arc::new(Shared {
        gate: Gate::new(),
        done: done.clone(),
        seq: Sequence::new(None, done.clone()),
        encoder: Encoder::echo(args.message_size, false, &ctx.run_id),
        stats: ctx.stats.clone(),
        listen: Arc::new(Listen::new(ctx)),
        run: ctx.run_id.clone(),
        connections: total.max(1),
        interval: args.echo_interval,
        reply_timeout: args.reply_timeout,
    });
    let soak = Soak {
        shared,
        args,
        first,
        count,
    };
    Ok(match stages {
        Some(stages) => {
            let slots = StagedSlots::new(&stages, first, count);
            skeleton::drive(ctx, Staged { soak, slots }).await
        }
        None => skeleton::drive(ctx, soak).await,
    })
}

/// This worker's held connections (`first..first + count`) and the options.
struct Soak<'a> {
    shared: Arc<Shared>,
    args: &'a SoakArgs,
    first: usize,
    count: usize,
}

/// What the soak opened.
struct Open {
    held: Fleet<Held>,
    ramp: Ramp,
    /// `--broadcast-rate`: the broadcaster's publisher (its sent events), and its connection
    /// until the measured phase is over.
    broadcasts: Option<Arc<Publish>>,
    broadcaster: Option<Fleet<()>>,
}

impl Soak<'_> {
    /// The held connections' fleet; `init` makes each one's state.
    fn launch(&self, ctx: &RunCtx, spec: FleetSpec, init: impl Fn(usize) -> Held) -> Fleet<Held> {
        let shared = self.shared.clone();
        fleet::launch(ctx, spec, init, move |index, ws, state, stop| {
            hold(shared.clone(), index, ws, state, stop)
        })
    }

    /// The broadcaster: a one-connection publisher fleet with its own sequence numbers.
    fn broadcaster(&self, ctx: &RunCtx) -> (Arc<Publish>, Fleet<()>) {
        let (args, done) = (self.args, &self.shared.done);
        let encoder = Encoder::echo(args.message_size, true, &ctx.run_id);
        let (gate, rate) = (self.shared.gate.clone(), Some(args.broadcast_rate));
        let publish = Arc::new(Publish::new(ctx, gate, done.clone(), encoder, rate));
        let role = if ctx.target.api_key().is_some() {
            Role::Publisher
        } else {
            Role::Client
        };
        let spec = FleetSpec {
            reconnect: !args.no_reconnect,
            ..FleetSpec::paced(role, args.connections, 1)
        };
        let p = publish.clone();
        let fleet = fleet::launch(
            ctx,
            spec,
            |_| (),
            move |_, ws, (), stop| delivery::publish_ws(p.clone(), 0, ws, stop),
        );
        (publish, fleet)
    }
}

impl Steps for Soak<'_> {
    type Open = Open;
    const PHASES: Phases = Phases::ramped("soak");

    async fn ramp(&mut self, ctx: &RunCtx, _: &mut Notes) -> Open {
        let spec = FleetSpec {
            reconnect: !self.args.no_reconnect,
            ..FleetSpec::paced(Role::Client, self.first, self.count)
        };
        let mut held = self.launch(ctx, spec, |_| Held::default());
        let ramp = held.wait_ramp(ctx).await;
        Open {
            held,
            ramp,
            broadcasts: None,
            broadcaster: None,
        }
    }

    /// The broadcaster connects (with broadcasts this runs in one process: the barrier that
    /// follows is passed at once).
    async fn prepare(&mut self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) {
        if self.args.broadcast_rate <= 0.0 {
            return;
        }
        let (publish, mut fleet) = self.broadcaster(ctx);
        let r = fleet.wait_connected(ctx.ramp_limit(1), &ctx.cancel).await;
        if r.established == 0 {
            notes.push("the broadcaster could not connect: no broadcasts were sent".into());
        }
        open.broadcasts = Some(publish);
        open.broadcaster = Some(fleet);
    }

    async fn measure(&mut self, _: &RunCtx, open: &mut Open, _: &mut Notes) -> Measured {
        let start = self.shared.gate.open();
        let m = Measured::until(start, self.args.duration, &self.shared.done).await;
        if let Some(fleet) = open.broadcaster.take() {
            fleet.finish(Duration::from_secs(2)).await;
        }
        m
    }

    fn drains(&self, open: &Open) -> bool {
        open.broadcasts.is_some()
    }

    /// Until every held connection has every broadcast, or `--reply-timeout`.
    async fn drain(&mut self, ctx: &RunCtx, open: &mut Open, _: &Measured, _: &mut Notes) {
        let Some(publish) = &open.broadcasts else {
            return;
        };
        let expected = publish.sent.load(Ordering::Relaxed) * open.ramp.established as u64;
        let limit = Instant::now() + self.args.reply_timeout;
        let listen = &self.shared.listen;
        skeleton::poll_until(ctx, limit, Duration::from_millis(10), || {
            listen.unique() >= expected
        })
        .await;
    }

    async fn close(self, _: &RunCtx, open: Open, _: &Measured, notes: &mut Notes) -> Closed {
        let (states, lost) = open.held.finish(Duration::ZERO).await;
        skeleton::note_lost(
            notes,
            lost,
            "connections did not close within the grace period",
        );
        let delivery = open
            .broadcasts
            .map(|publish| count_broadcasts(&publish, &states, open.ramp.established));
        Closed {
            delivery,
            ..Closed::connections(
                self.count + usize::from(self.args.broadcast_rate > 0.0),
                open.ramp.took,
            )
        }
    }
}

/// What the held connections received of the broadcasts sent.
fn count_broadcasts(publish: &Publish, states: &[Held], listeners: usize) -> DeliverySummary {
    let sent = publish.sent.load(Ordering::Relaxed);
    let sent_set = std::mem::take(&mut *publish.sent_set.lock().unwrap_or_else(|e| e.into_inner()));
    let d = DeliverySummary {
        listeners,
        publishers: 1,
        sent,
        expected: sent * listeners as u64,
        ..DeliverySummary::default()
    };
    delivery::count_broadcasts(d, states.iter().map(|s| &s.tally), &sent_set)
}

/// `--stage`: connections open and close as the stages say, each echoing while it is open.
struct Staged<'a> {
    soak: Soak<'a>,
    slots: StagedSlots,
}

impl Steps for Staged<'_> {
    type Open = (Fleet<Held>, Ramp, Instant);
    const PHASES: Phases = Phases::staged("soak");

    async fn ramp(&mut self, ctx: &RunCtx, _: &mut Notes) -> Self::Open {
        let start = self.soak.shared.gate.open();
        let spec = FleetSpec {
            reconnect: !self.soak.args.no_reconnect,
            slots: Some(self.slots.slots()),
            ..FleetSpec::paced(Role::Client, self.soak.first, self.soak.count)
        };
        let close_at = self.slots.close_at(start);
        let mut held = self.soak.launch(ctx, spec, move |index| Held {
            // Held to the end of the stages: no close of its own (a mixed run carries it over).
            close_at: close_at(index),
            ..Held::default()
        });
        let end = start + self.slots.total();
        let ramp = held
            .wait_connected(end + ctx.target.connect_timeout(), &ctx.cancel)
            .await;
        (held, ramp, start)
    }

    async fn measure(&mut self, _: &RunCtx, open: &mut Self::Open, _: &mut Notes) -> Measured {
        Measured::until(open.2, self.slots.total(), &self.soak.shared.done).await
    }

    async fn close(
        self,
        _: &RunCtx,
        (held, ramp, _): Self::Open,
        _: &Measured,
        notes: &mut Notes,
    ) -> Closed {
        // Replies to the last echoes may still be on their way.
        let patience = self.soak.args.reply_timeout.min(Duration::from_secs(2));
        let (_, lost) = held.finish(patience).await;
        notes.push(self.slots.note());
        skeleton::note_lost(
            notes,
            lost,
            "connections did not close within the grace period",
        );
        Closed::connections(self.soak.count, ramp.took)
    }
}

enum Event {
    Stop,
    /// `--stage`: the level fell below this connection.
    Close,
    Tick,
    In(Incoming),
}

async fn hold(
    sh: Arc<Shared>,
    index: usize,
    mut ws: Ws,
    mut st: Held,
    stop: CancellationToken,
) -> (Held, Ended) {
    let Some(start) = sh.gate.wait(&stop).await else {
        return (st, Ended::Open(Box::new(ws)));
    };
    // Spread the connections' echoes evenly over one interval; a reconnected connection starts
    // a fresh schedule from now.
    let phase = sh
        .interval
        .mul_f64((index % sh.connections) as f64 / sh.connections as f64);
    let mut schedule = Schedule::new(
        start.max(Instant::now()),
        phase,
        1.0 / sh.interval.as_secs_f64(),
    );
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // `--stage`: the level falls below this connection then (a reconnect after it closes at once).
    let closing = skeleton::sleep_until_opt(st.close_at);
    tokio::pin!(closing);
    loop {
        let sending = !sh.done.is_cancelled();
        let mut wake = st.pending.front().map(|p| p.1);
        if sending {
            let next = schedule.next_due();
            wake = Some(wake.map_or(next, |w| w.min(next)));
        }
        let event = tokio::select! {
            _ = &mut stopped => Event::Stop,
            _ = &mut closing => Event::Close,
            _ = sh.done.cancelled(), if sending => Event::Tick,
            _ = skeleton::sleep_until_opt(wake) => Event::Tick,
            i = client::recv(&mut ws) => Event::In(i),
        };
        match event {
            Event::Stop => return (st, Ended::Open(Box::new(ws))),
            Event::Close => {
                client::close(ws, client::CLOSE_TIMEOUT).await;
                return (st, Ended::Finished);
            }
            Event::Tick => {
                if let Err(ended) = tick(&sh, index, &mut ws, &mut st, &mut schedule, &stop).await {
                    return (lose_pending(&sh, st), ended);
                }
            }
            Event::In(Incoming::Closed(reason)) => {
                return (lose_pending(&sh, st), Ended::Dropped(reason));
            }
            Event::In(Incoming::Text(text)) => receive(&sh, index, &mut st, &text),
        }
    }
}

/// Gives up on the echoes whose reply is overdue, and sends those due now (until the measured
/// phase is over); `Err` when the connection ended.
async fn tick(
    sh: &Shared,
    index: usize,
    ws: &mut Ws,
    st: &mut Held,
    schedule: &mut Schedule,
    stop: &CancellationToken,
) -> Result<(), Ended> {
    let now = Instant::now();
    while let Some((_, give_up)) = st.pending.front() {
        if *give_up > now {
            break;
        }
        st.pending.pop_front();
        sh.stats.error("reply_timeout");
    }
    if sh.done.is_cancelled() {
        return Ok(());
    }
    while let Some(due) = schedule.take_due(now) {
        let Some(seq) = sh.seq.take() else { break };
        let text = sh
            .encoder
            .encode(Kind::Echo, seq, probe::ns_at(due), Some(index));
        super::send_text(ws, text, stop).await?;
        sh.stats.sent.fetch_add(1, Ordering::Relaxed);
        st.pending.push_back((seq, due + sh.reply_timeout));
    }
    Ok(())
}

/// Accounts one frame: the reply to one of this connection's echoes, or a broadcast.
fn receive(sh: &Shared, index: usize, st: &mut Held, text: &str) {
    match probe::classify(text, &sh.run) {
        Received::Probe(p) if p.kind == Kind::Echo && p.conn == Some(index) => {
            if let Some(pos) = st.pending.iter().position(|(s, _)| *s == p.seq) {
                st.pending.remove(pos);
                sh.stats
                    .primary
                    .record_ns(probe::now_ns().saturating_sub(p.t_ns));
                sh.stats.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        Received::Probe(p) if p.kind == Kind::Echo => {}
        Received::ErrorEvent => sh.stats.error("error_event"),
        received => {
            if let Some(latency) = &sh.stats.secondary {
                sh.listen.handle_received(&mut st.tally, received, latency);
            }
        }
    }
}

/// Echoes in flight on a dropped connection will never be answered: count them.
fn lose_pending(sh: &Shared, mut st: Held) -> Held {
    sh.stats
        .errors_n("reply_lost_in_drop", st.pending.len() as u64);
    st.pending.clear();
    st
}
