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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::delivery::{self, Listen, Publish, Tally};
use crate::cli::SoakArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, Outcome, RunCtx, Schedule, SeqSet, Sequence, StopReason};
use crate::fleet::{self, Ended, FleetSpec};
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
    let listen = Arc::new(Listen::new(ctx));
    let shared = Arc::new(Shared {
        gate: Gate::new(),
        done: done.clone(),
        seq: Sequence::new(None, done.clone()),
        encoder: Encoder::echo(args.message_size, false, &ctx.run_id),
        stats: ctx.stats.clone(),
        listen: listen.clone(),
        run: ctx.run_id.clone(),
        connections: total.max(1),
        interval: args.echo_interval,
        reply_timeout: args.reply_timeout,
    });

    if let Some(stages) = &stages {
        return staged(ctx, args, stages, shared, first, count).await;
    }

    ctx.phase("ramp");
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: !args.no_reconnect,
        recv_buffer: None,
        slots: None,
    };
    let sh = shared.clone();
    let mut held = fleet::launch(
        ctx,
        spec,
        |_| Held::default(),
        move |index, ws, state, stop| hold(sh.clone(), index, ws, state, stop),
    );
    let ramp = held
        .wait_connected(ctx.ramp_limit(count), &ctx.cancel)
        .await;
    ctx.barrier("ramped").await;

    // The broadcaster is a one-connection publisher fleet with its own sequence numbers.
    let broadcaster = (args.broadcast_rate > 0.0).then(|| {
        let publish = Arc::new(Publish {
            gate: shared.gate.clone(),
            done: done.clone(),
            seq: Sequence::new(None, done.clone()),
            encoder: Encoder::echo(args.message_size, true, &ctx.run_id),
            stats: ctx.stats.clone(),
            run: ctx.run_id.clone(),
            rate: Some(args.broadcast_rate),
            publishers: 1,
            sent: AtomicU64::new(0),
            sent_set: Arc::new(Mutex::new(SeqSet::default())),
            window: None,
            seq_stride: 1,
            seq_offset: 0,
            mix: None,
            stages: None,
        });
        let role = if ctx.target.api_key().is_some() {
            Role::Publisher
        } else {
            Role::Client
        };
        let spec = FleetSpec {
            count: 1,
            role,
            first_index: args.connections,
            reconnect: !args.no_reconnect,
            recv_buffer: None,
            slots: None,
        };
        let p = publish.clone();
        let fleet = fleet::launch(
            ctx,
            spec,
            |_| (),
            move |_, ws, (), stop| delivery::publish_ws(p.clone(), 0, ws, stop),
        );
        (publish, fleet)
    });
    let mut notes = Vec::new();
    let broadcaster = match broadcaster {
        Some((publish, mut fleet)) => {
            let r = fleet.wait_connected(ctx.ramp_limit(1), &ctx.cancel).await;
            if r.established == 0 {
                notes.push("the broadcaster could not connect: no broadcasts were sent".into());
            }
            Some((publish, fleet))
        }
        None => None,
    };

    ctx.phase("soak");
    let start = shared.gate.open();
    let natural = tokio::select! {
        _ = tokio::time::sleep_until((start + args.duration).into()) => StopReason::Duration,
        _ = done.cancelled() => StopReason::Duration,
    };
    done.cancel();
    let measured = start.elapsed();

    let mut delivery_summary = None;
    if let Some((publish, fleet)) = broadcaster {
        fleet.finish(Duration::from_secs(2)).await;
        ctx.phase("drain");
        let sent = publish.sent.load(Ordering::Relaxed);
        let expected = sent * ramp.established as u64;
        let limit = Instant::now() + args.reply_timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while listen.unique() < expected && Instant::now() < limit {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.cancel.cancelled() => break,
            }
        }
        let sent_set =
            std::mem::take(&mut *publish.sent_set.lock().unwrap_or_else(|e| e.into_inner()));
        delivery_summary = Some((sent, expected, sent_set));
    }

    ctx.phase("close");
    let (states, lost) = held.finish(Duration::ZERO).await;
    if lost > 0 {
        notes.push(format!(
            "{lost} connections did not close within the grace period"
        ));
    }
    let delivery = delivery_summary.map(|(sent, expected, sent_set)| {
        let mut d = DeliverySummary {
            listeners: ramp.established,
            publishers: 1,
            sent,
            expected,
            ..DeliverySummary::default()
        };
        for s in &states {
            let got = s.tally.seen.count_common(&sent_set);
            d.received += got;
            d.complete_listeners += usize::from(sent > 0 && got == sent);
            d.duplicates += s.tally.duplicates;
            d.foreign += s.tally.foreign;
        }
        d.missing = expected.saturating_sub(d.received);
        d.completeness = if expected > 0 {
            d.received as f64 / expected as f64
        } else {
            0.0
        };
        d
    });
    Ok(Outcome {
        target_connections: count + usize::from(args.broadcast_rate > 0.0),
        ramp: ramp.took,
        measured,
        stopped_by: ctx.stopped_by(natural),
        delivery,
        notes,
        failover: None,
    })
}

/// `--stage`: connections open and close as the stages say, each echoing while it is open.
async fn staged(
    ctx: &RunCtx,
    args: &SoakArgs,
    stages: &Stages,
    shared: Arc<Shared>,
    first: usize,
    count: usize,
) -> anyhow::Result<Outcome> {
    let windows: Arc<Vec<(Duration, Duration)>> = Arc::new(
        (first..first + count)
            .map(|n| stages.window(n).unwrap_or((stages.total(), stages.total())))
            .collect(),
    );
    ctx.barrier("start").await;
    ctx.phase("soak");
    let start = shared.gate.open();
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: !args.no_reconnect,
        recv_buffer: None,
        slots: Some({
            let w = windows.clone();
            Arc::new(move |index| w[index - first].0)
        }),
    };
    let (sh, w) = (shared.clone(), windows.clone());
    let end = start + stages.total();
    let mut held = fleet::launch(
        ctx,
        spec,
        move |index| Held {
            // Held to the end of the stages: no close of its own (a mixed run carries it over).
            close_at: Some(start + w[index - first].1).filter(|&at| at < end),
            ..Held::default()
        },
        move |index, ws, state, stop| hold(sh.clone(), index, ws, state, stop),
    );
    let ramp = held
        .wait_connected(end + ctx.target.connect_timeout(), &ctx.cancel)
        .await;
    let natural = if ctx.sleep_until(end).await {
        StopReason::Duration
    } else {
        StopReason::Deadline
    };
    shared.done.cancel();
    let measured = start.elapsed();
    ctx.phase("close");
    // Replies to the last echoes may still be on their way.
    let (_, lost) = held
        .finish(args.reply_timeout.min(Duration::from_secs(2)))
        .await;
    let mut notes = vec![format!(
        "stages: peak {} connections, {:.1} s in all",
        stages.peak().floor(),
        stages.total().as_secs_f64()
    )];
    if lost > 0 {
        notes.push(format!(
            "{lost} connections did not close within the grace period"
        ));
    }
    Ok(Outcome {
        target_connections: count,
        ramp: ramp.took,
        measured,
        stopped_by: ctx.stopped_by(natural),
        delivery: None,
        notes,
        failover: None,
    })
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
    let closing = sleep_until_opt(st.close_at);
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
            _ = sleep_until_opt(wake) => Event::Tick,
            i = client::recv(&mut ws) => Event::In(i),
        };
        match event {
            Event::Stop => return (st, Ended::Open(Box::new(ws))),
            Event::Close => {
                client::close(ws, client::CLOSE_TIMEOUT).await;
                return (st, Ended::Finished);
            }
            Event::Tick => {
                let now = Instant::now();
                while let Some((_, give_up)) = st.pending.front() {
                    if *give_up > now {
                        break;
                    }
                    st.pending.pop_front();
                    sh.stats.error("reply_timeout");
                }
                if !sh.done.is_cancelled() {
                    while let Some(due) = schedule.take_due(now) {
                        let Some(seq) = sh.seq.take() else { break };
                        let text =
                            sh.encoder
                                .encode(Kind::Echo, seq, probe::ns_at(due), Some(index));
                        if let Err(ended) = super::send_text(&mut ws, text, &stop).await {
                            return (lose_pending(&sh, st), ended);
                        }
                        sh.stats.sent.fetch_add(1, Ordering::Relaxed);
                        st.pending.push_back((seq, due + sh.reply_timeout));
                    }
                }
            }
            Event::In(Incoming::Closed(reason)) => {
                return (lose_pending(&sh, st), Ended::Dropped(reason));
            }
            Event::In(Incoming::Text(text)) => match probe::classify(&text, &sh.run) {
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
            },
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
