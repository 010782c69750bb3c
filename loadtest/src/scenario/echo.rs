//! `echo`: closed loop round trips. Each connection sends one echo request, waits for its reply,
//! and sends the next; the figures are round-trip time and requests per second.
//!
//! Closed loop means a slow server slows the senders down, so the latencies here are service
//! times under the load the server itself admits; use `broadcast`/`publish` (open loop) to find
//! out what happens at a load it does not choose.
//!
//! With `--stage`, the requests follow a rate instead: request `k` of the whole run is due when
//! the integral of the staged rate reaches `k`, connection `j` of `C` sends requests `j`,
//! `j + C`, ... (still one in flight), and each round trip is measured from its due time, so a
//! server (or a connection) that falls behind the schedule shows as latency (`rtt*`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::skeleton::{self, Closed, Measured, Notes, Phases, Steps};
use crate::cli::EchoArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, Outcome, RunCtx, Schedule, Sequence, StopReason};
use crate::fleet::{self, Ended, Fleet, FleetSpec, Ramp};
use crate::probe::{self, Encoder, Kind, Received};
use crate::stages::Stages;
use crate::stats::Stats;

struct Shared {
    gate: Gate,
    /// Cancelled when the measured phase is over: finish the request in flight, then close.
    done: CancellationToken,
    seq: Sequence,
    encoder: Encoder,
    stats: Arc<Stats>,
    run: String,
    reply_timeout: Duration,
    think: Duration,
    /// `--stage`: the request rate over all connections (of all workers), and their number.
    stages: Option<Arc<Stages>>,
    connections: usize,
}

pub async fn run(ctx: &RunCtx, args: &EchoArgs) -> anyhow::Result<Outcome> {
    let stages = (!args.stage.is_empty()).then(|| Arc::new(Stages(args.stage.clone())));
    if stages.is_some() && !args.think.is_zero() {
        anyhow::bail!("--think does not go with --stage: the stages say when each request is due");
    }
    let (first, count) = ctx.shard.part(args.connections);
    let requests = args
        .requests
        .map(|r| ctx.shard.part_along(r, first, count, args.connections));
    // With stages, the measured phase lasts as long as they do.
    let run_for = stages.as_ref().map_or(args.duration, |s| s.total());
    let done = ctx.cancel.child_token();
    let shared = Arc::new(Shared {
        gate: Gate::new(),
        done: done.clone(),
        seq: Sequence::new(requests, done.clone()),
        encoder: Encoder::echo(args.message_size, false, &ctx.run_id),
        stats: ctx.stats.clone(),
        run: ctx.run_id.clone(),
        reply_timeout: args.reply_timeout,
        think: args.think,
        stages,
        connections: args.connections.max(1),
    });
    let echo = Echo {
        shared,
        first,
        count,
        run_for,
    };
    Ok(skeleton::drive(ctx, echo).await)
}

/// This worker's echo connections (`first..first + count`).
struct Echo {
    shared: Arc<Shared>,
    first: usize,
    count: usize,
    run_for: Duration,
}

/// The connections and their ramp.
struct Open {
    fleet: Fleet<()>,
    ramp: Ramp,
}

impl Steps for Echo {
    type Open = Open;
    const PHASES: Phases = Phases {
        close: "finish",
        ..Phases::ramped("echo")
    };

    async fn ramp(&mut self, ctx: &RunCtx, _: &mut Notes) -> Open {
        let spec = FleetSpec::paced(Role::Client, self.first, self.count);
        let shared = self.shared.clone();
        let mut fleet = fleet::launch(
            ctx,
            spec,
            |_| (),
            move |index, ws, (), stop| echo_loop(shared.clone(), index, ws, stop),
        );
        let ramp = fleet.wait_ramp(ctx).await;
        Open { fleet, ramp }
    }

    async fn measure(&mut self, _: &RunCtx, _: &mut Open, _: &mut Notes) -> Measured {
        let start = self.shared.gate.open();
        Measured::until(start, self.run_for, &self.shared.done).await
    }

    async fn close(self, ctx: &RunCtx, open: Open, m: &Measured, notes: &mut Notes) -> Closed {
        let patience = self.shared.reply_timeout + Duration::from_secs(1);
        let (_, lost) = open.fleet.finish(patience).await;
        if open.ramp.established == 0 {
            notes.push("no connection was established: nothing was measured".into());
        }
        skeleton::note_lost(
            notes,
            lost,
            "connections did not finish within the grace period",
        );
        if let Some(stages) = &self.shared.stages {
            notes.extend(self.stage_notes(ctx, stages, &open.ramp, m));
        }
        Closed::connections(self.count, open.ramp.took)
    }
}

impl Echo {
    /// What the stages were, and whether the connections kept up with them.
    fn stage_notes(&self, ctx: &RunCtx, stages: &Stages, ramp: &Ramp, m: &Measured) -> Notes {
        let mut notes = vec![format!(
            "stages: peak {} requests/s, {:.1} s in all",
            stages.peak(),
            stages.total().as_secs_f64()
        )];
        // This worker's connections' share of the schedule.
        let connections = self.shared.connections as u64;
        let scheduled = stages.events() * self.count as u64 / connections;
        let sent = ctx.stats.sent.load(Ordering::Relaxed);
        if m.natural == StopReason::Duration
            && ramp.established == self.count
            && sent + sent / 100 + 1 < scheduled
        {
            notes.push(format!(
                "connections fell behind the staged rate: {sent} of {scheduled} scheduled \
                 requests were sent ({:.0}%); the round trips include the wait",
                sent as f64 * 100.0 / scheduled.max(1) as f64
            ));
        }
        notes
    }
}

enum Event {
    Stop,
    Timeout,
    In(Incoming),
}

/// How the wait for a reply ended.
enum Reply {
    /// The reply came (its round trip recorded), or an error event, or `--reply-timeout`.
    Done,
    /// The run stops.
    Stop,
    /// The connection ended.
    Closed(String),
}

/// Waits for the reply to request `seq`.
async fn await_reply(sh: &Shared, ws: &mut Ws, seq: u64, stop: &CancellationToken) -> Reply {
    let deadline = Instant::now() + sh.reply_timeout;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => Event::Stop,
            _ = tokio::time::sleep_until(deadline.into()) => Event::Timeout,
            i = client::recv(ws) => Event::In(i),
        };
        match event {
            Event::Stop => return Reply::Stop,
            Event::Timeout => {
                sh.stats.error("reply_timeout");
                return Reply::Done;
            }
            Event::In(Incoming::Closed(reason)) => return Reply::Closed(reason),
            Event::In(Incoming::Text(text)) => match probe::classify(&text, &sh.run) {
                Received::Probe(p) if p.kind == Kind::Echo && p.seq == seq => {
                    sh.stats
                        .primary
                        .record_ns(probe::now_ns().saturating_sub(p.t_ns));
                    sh.stats.received.fetch_add(1, Ordering::Relaxed);
                    return Reply::Done;
                }
                Received::ErrorEvent => {
                    sh.stats.error("error_event");
                    return Reply::Done;
                }
                // A late reply to a request that timed out, or someone else's broadcast.
                _ => {}
            },
        }
    }
}

async fn echo_loop(
    sh: Arc<Shared>,
    index: usize,
    mut ws: Ws,
    stop: CancellationToken,
) -> ((), Ended) {
    let Some(start) = sh.gate.wait(&stop).await else {
        return ((), Ended::Open(Box::new(ws)));
    };
    // `--stage`: this connection's requests of the staged schedule.
    let mut schedule = sh
        .stages
        .as_ref()
        .map(|stages| Schedule::staged(start, stages.clone(), sh.connections as u64, index as u64));
    loop {
        if sh.done.is_cancelled() || stop.is_cancelled() {
            return ((), Ended::Open(Box::new(ws)));
        }
        // The time the request is stamped with: its due time on a schedule, else now.
        let t = match &mut schedule {
            None => None,
            Some(s) => {
                let due = tokio::select! {
                    _ = tokio::time::sleep_until(s.next_due().into()) => s.take_due(Instant::now()),
                    _ = sh.done.cancelled() => None,
                    _ = stop.cancelled() => None,
                };
                match due {
                    Some(due) => Some(probe::ns_at(due)),
                    None => continue,
                }
            }
        };
        let Some(seq) = sh.seq.take() else {
            return ((), Ended::Open(Box::new(ws)));
        };
        let t = t.unwrap_or_else(probe::now_ns);
        let text = sh.encoder.encode(Kind::Echo, seq, t, Some(index));
        if let Err(ended) = super::send_text(&mut ws, text, &stop).await {
            return ((), ended);
        }
        sh.stats.sent.fetch_add(1, Ordering::Relaxed);

        match await_reply(&sh, &mut ws, seq, &stop).await {
            Reply::Done => {}
            Reply::Stop => return ((), Ended::Open(Box::new(ws))),
            Reply::Closed(reason) => return ((), Ended::Dropped(reason)),
        }
        if !sh.think.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(sh.think) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}
