//! `echo`: closed loop round trips. Each connection sends one echo request, waits for its reply,
//! and sends the next; the figures are round-trip time and requests per second.
//!
//! Closed loop means a slow server slows the senders down, so the latencies here are service
//! times under the load the server itself admits; use `broadcast`/`publish` (open loop) to find
//! out what happens at a load it does not choose.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::EchoArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, Outcome, RunCtx, Sequence, StopReason};
use crate::fleet::{self, Ended, FleetSpec};
use crate::probe::{self, Encoder, Kind, Received};
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
}

pub async fn run(ctx: &RunCtx, args: &EchoArgs) -> anyhow::Result<Outcome> {
    let (first, count) = ctx.shard.part(args.connections);
    let requests = args
        .requests
        .map(|r| ctx.shard.part_along(r, first, count, args.connections));
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
    });

    ctx.phase("ramp");
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: false,
        recv_buffer: None,
        slots: None,
    };
    let body_shared = shared.clone();
    let mut fleet = fleet::launch(
        ctx,
        spec,
        |_| (),
        move |index, ws, (), stop| echo_loop(body_shared.clone(), index, ws, stop),
    );
    let ramp = fleet
        .wait_connected(ctx.ramp_limit(count), &ctx.cancel)
        .await;
    ctx.barrier("ramped").await;

    ctx.phase("echo");
    let start = shared.gate.open();
    let natural = tokio::select! {
        _ = tokio::time::sleep_until((start + args.duration).into()) => StopReason::Duration,
        _ = done.cancelled() => StopReason::Count,
    };
    done.cancel();
    let measured = start.elapsed();

    ctx.phase("finish");
    let (_, lost) = fleet
        .finish(args.reply_timeout + Duration::from_secs(1))
        .await;
    let mut notes = Vec::new();
    if ramp.established == 0 {
        notes.push("no connection was established: nothing was measured".into());
    }
    if lost > 0 {
        notes.push(format!(
            "{lost} connections did not finish within the grace period"
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
    Timeout,
    In(Incoming),
}

async fn echo_loop(
    sh: Arc<Shared>,
    index: usize,
    mut ws: Ws,
    stop: CancellationToken,
) -> ((), Ended) {
    if sh.gate.wait(&stop).await.is_none() {
        client::close(ws, client::CLOSE_TIMEOUT).await;
        return ((), Ended::Finished);
    }
    loop {
        if sh.done.is_cancelled() || stop.is_cancelled() {
            client::close(ws, client::CLOSE_TIMEOUT).await;
            return ((), Ended::Finished);
        }
        let Some(seq) = sh.seq.take() else {
            client::close(ws, client::CLOSE_TIMEOUT).await;
            return ((), Ended::Finished);
        };
        let text = sh
            .encoder
            .encode(Kind::Echo, seq, probe::now_ns(), Some(index));
        if let Err(ended) = super::send_text(&mut ws, text, &stop).await {
            return ((), ended);
        }
        sh.stats.sent.fetch_add(1, Ordering::Relaxed);

        let deadline = Instant::now() + sh.reply_timeout;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                _ = tokio::time::sleep_until(deadline.into()) => Event::Timeout,
                i = client::recv(&mut ws) => Event::In(i),
            };
            match event {
                Event::Stop => {
                    client::close(ws, client::CLOSE_TIMEOUT).await;
                    return ((), Ended::Finished);
                }
                Event::Timeout => {
                    sh.stats.error("reply_timeout");
                    break;
                }
                Event::In(Incoming::Closed(reason)) => return ((), Ended::Dropped(reason)),
                Event::In(Incoming::Text(text)) => match probe::classify(&text, &sh.run) {
                    Received::Probe(p) if p.kind == Kind::Echo && p.seq == seq => {
                        sh.stats
                            .primary
                            .record_ns(probe::now_ns().saturating_sub(p.t_ns));
                        sh.stats.received.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Received::ErrorEvent => {
                        sh.stats.error("error_event");
                        break;
                    }
                    // A late reply to a request that timed out, or someone else's broadcast.
                    _ => {}
                },
            }
        }
        if !sh.think.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(sh.think) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}
