//! The scenarios, one file or directory each, all run by the skeleton in `skeleton.rs` (ramp,
//! prepare, barrier, measured phase, drain, close), and what the top level needs to know about
//! them before running: which latencies they measure, how many connections they open, how long
//! they may take.

pub mod connect;
pub mod delivery;
pub mod echo;
pub mod failover;
pub mod mixed;
mod skeleton;
pub mod soak;

use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::cli::{DeliveryArgs, Rate, Scenario, Via};
use crate::client::{self, Role};
use crate::context::{ramp_time, Outcome, RunCtx, CLOSE_GRACE};
use crate::fleet::Ended;
use crate::stats::Latency;

/// Runs one (non-mixed) scenario.
pub async fn run(ctx: &RunCtx, scenario: &Scenario) -> anyhow::Result<Outcome> {
    match scenario {
        Scenario::Connect(a) => connect::run(ctx, a).await,
        Scenario::Echo(a) => echo::run(ctx, a).await,
        Scenario::Broadcast(a) => {
            // With a key, publishers are real publisher connections; without one, ordinary
            // clients broadcast with `"broadcast":true` echoes, which any broker allows.
            let role = if ctx.target.api_key().is_some() {
                Role::Publisher
            } else {
                Role::Client
            };
            delivery::run(ctx, &a.delivery, delivery::Transport::Ws(role)).await
        }
        Scenario::Publish(a) => {
            if ctx.target.api_key().is_none() {
                anyhow::bail!("publish needs --api-key (the broker's websocket.socketApiKey)");
            }
            let transport = match a.via {
                Via::Http => delivery::Transport::Http {
                    batch: a.batch.max(1),
                    path: a.publish_path.clone(),
                },
                Via::Ws => delivery::Transport::Ws(Role::Publisher),
            };
            delivery::run(ctx, &a.delivery, transport).await
        }
        Scenario::Soak(a) => soak::run(ctx, a).await,
        Scenario::Failover(a) => failover::run(ctx, a).await,
        Scenario::Mixed(_) => anyhow::bail!("a mixed scenario cannot be nested in another"),
        Scenario::Agent(_) => anyhow::bail!("agent is not a scenario to run"),
    }
}

/// Refuses what `--workers` cannot split yet, before any worker starts.
pub fn check_workers(scenario: &Scenario) -> anyhow::Result<()> {
    let delivery = |d: &DeliveryArgs| -> anyhow::Result<()> {
        if d.in_flight.is_some() {
            anyhow::bail!("--in-flight runs in one process: it cannot be used with --workers");
        }
        if d.pause.pause_share > 0.0 {
            anyhow::bail!("--pause-share runs in one process: it cannot be used with --workers");
        }
        Ok(())
    };
    match scenario {
        Scenario::Broadcast(a) => delivery(&a.delivery),
        Scenario::Publish(a) => delivery(&a.delivery),
        Scenario::Soak(a) if a.broadcast_rate > 0.0 => anyhow::bail!(
            "soak --broadcast-rate runs in one process: with --workers use --broadcast-rate 0 \
             (or a broadcast scenario for fan-out)"
        ),
        Scenario::Failover(_) => anyhow::bail!(
            "failover runs in one process (one publisher, one disruption): it cannot be used \
             with --workers"
        ),
        _ => Ok(()),
    }
}

/// The latency measures a scenario records: primary (shown per window) and secondary.
pub fn measures(scenario: &Scenario) -> (Latency, Option<Latency>) {
    let open_loop = |d: &DeliveryArgs| d.rate != Rate::Max || !d.stage.is_empty();
    match scenario {
        Scenario::Connect(_) | Scenario::Mixed(_) | Scenario::Agent(_) => {
            (Latency::new("handshake", false), None)
        }
        // With stages, round trips count from the due time (coordinated omission corrected).
        Scenario::Echo(a) => (Latency::new("rtt", !a.stage.is_empty()), None),
        Scenario::Broadcast(a) => (Latency::new("delivery", open_loop(&a.delivery)), None),
        Scenario::Publish(a) => (
            Latency::new("delivery", open_loop(&a.delivery)),
            (a.via == Via::Http).then(|| Latency::new("publish_request", open_loop(&a.delivery))),
        ),
        Scenario::Soak(a) => (
            Latency::new("rtt", true),
            (a.broadcast_rate > 0.0).then(|| Latency::new("broadcast", true)),
        ),
        // Delivery from the intended send time (replays after a failover included), and the
        // time from a listener's connection ending to its recovery.
        Scenario::Failover(_) => (
            Latency::new("delivery", true),
            Some(Latency::new("reconnect", false)),
        ),
    }
}

/// A measure summarised for the whole run only: `delivery_paused`, the delivery latency of the
/// listeners that pause (kept out of `delivery`, which then describes the steady listeners).
pub fn extra_measure(scenario: &Scenario) -> Option<Latency> {
    let d = match scenario {
        Scenario::Broadcast(a) => &a.delivery,
        Scenario::Publish(a) => &a.delivery,
        _ => return None,
    };
    (d.pause.paused_count(d.listeners) > 0)
        .then(|| Latency::new("delivery_paused", d.rate != Rate::Max))
}

/// The connections (role, index) this worker's fleets open for `scenario`: what a phase of a
/// mixed run can take over from the phase before. `with_key`: `--api-key` was given (so
/// `broadcast` publishes from publisher connections).
pub fn wanted(
    scenario: &Scenario,
    shard: crate::workers::Shard,
    with_key: bool,
) -> Vec<(Role, usize)> {
    let range = |role: Role, first: usize, (start, len): (usize, usize)| {
        (first + start..first + start + len).map(move |i| (role, i))
    };
    let delivery = |d: &DeliveryArgs, publishers: Option<Role>| {
        let mut out: Vec<(Role, usize)> = range(Role::Client, 0, shard.part(d.listeners))
            // Paused listeners with a small receive buffer are opened afresh (it is set first).
            .filter(|&(_, i)| d.pause.pause_rcvbuf.is_none() || !d.pause.is_paused(i, d.listeners))
            .collect();
        if let Some(role) = publishers {
            out.extend(range(role, d.listeners, shard.part(d.publishers)));
        }
        out
    };
    let staged = |stages: &[crate::stages::Stage]| {
        crate::stages::Stages(stages.to_vec()).peak().floor() as usize
    };
    match scenario {
        Scenario::Connect(a) if !a.stage.is_empty() => {
            range(Role::Client, 0, shard.part(staged(&a.stage))).collect()
        }
        Scenario::Connect(a) => range(Role::Client, 0, shard.part(a.connections)).collect(),
        Scenario::Echo(a) => range(Role::Client, 0, shard.part(a.connections)).collect(),
        Scenario::Broadcast(a) => delivery(
            &a.delivery,
            Some(if with_key {
                Role::Publisher
            } else {
                Role::Client
            }),
        ),
        Scenario::Publish(a) => {
            delivery(&a.delivery, (a.via == Via::Ws).then_some(Role::Publisher))
        }
        Scenario::Soak(a) if !a.stage.is_empty() => {
            range(Role::Client, 0, shard.part(staged(&a.stage))).collect()
        }
        Scenario::Soak(a) => {
            let mut out: Vec<(Role, usize)> =
                range(Role::Client, 0, shard.part(a.connections)).collect();
            if a.broadcast_rate > 0.0 {
                let role = if with_key {
                    Role::Publisher
                } else {
                    Role::Client
                };
                out.push((role, a.connections));
            }
            out
        }
        Scenario::Failover(_) | Scenario::Mixed(_) | Scenario::Agent(_) => Vec::new(),
    }
}

/// Connections a scenario holds at once (for the file-descriptor limit).
pub fn connections(scenario: &Scenario) -> usize {
    match scenario {
        Scenario::Connect(a) if !a.stage.is_empty() => {
            crate::stages::Stages(a.stage.clone()).peak() as usize
        }
        Scenario::Connect(a) => a.connections,
        Scenario::Echo(a) => a.connections,
        Scenario::Broadcast(a) => a.delivery.listeners + a.delivery.publishers + 1,
        Scenario::Publish(a) => a.delivery.listeners + a.delivery.publishers + 1,
        Scenario::Soak(a) if !a.stage.is_empty() => {
            crate::stages::Stages(a.stage.clone()).peak() as usize
        }
        Scenario::Soak(a) => a.connections + 1,
        Scenario::Failover(a) => a.listeners + 2,
        Scenario::Mixed(_) | Scenario::Agent(_) => 0,
    }
}

/// The longest a scenario should take when the server answers: ramp, measured phase, drain and
/// closing. The hard deadline adds slack on top of this.
pub fn planned(scenario: &Scenario, connect_rate: f64, connect_timeout: Duration) -> Duration {
    let ramp = |n: usize| ramp_time(n, connect_rate) + connect_timeout;
    // As `delivery::warmup` allows: 5 s plus a second per 10,000 listeners.
    let warmup =
        |d: &DeliveryArgs| Duration::from_secs(5) + Duration::from_millis(d.listeners as u64 / 10);
    let body = match scenario {
        Scenario::Connect(a) if !a.stage.is_empty() => {
            crate::stages::Stages(a.stage.clone()).total() + connect_timeout
        }
        Scenario::Connect(a) => ramp(a.connections) + a.hold,
        Scenario::Echo(a) if !a.stage.is_empty() => {
            ramp(a.connections) + crate::stages::Stages(a.stage.clone()).total() + a.reply_timeout
        }
        Scenario::Echo(a) => ramp(a.connections) + a.duration + a.reply_timeout,
        Scenario::Broadcast(a) => delivery_plan(&a.delivery, ramp) + warmup(&a.delivery),
        Scenario::Publish(a) => delivery_plan(&a.delivery, ramp) + warmup(&a.delivery),
        Scenario::Soak(a) if !a.stage.is_empty() => {
            crate::stages::Stages(a.stage.clone()).total() + connect_timeout + a.reply_timeout
        }
        Scenario::Soak(a) => ramp(a.connections + 1) + a.duration + a.reply_timeout,
        // Ramp, warm-up, sending, the publisher's hand-over, the drain.
        Scenario::Failover(a) => {
            ramp(a.listeners)
                + Duration::from_secs(5)
                + Duration::from_millis(a.listeners as u64 / 10)
                + a.duration
                + CLOSE_GRACE * 2
                + a.drain
        }
        Scenario::Mixed(_) | Scenario::Agent(_) => Duration::ZERO,
    };
    // Closing takes longer for many connections (see `Fleet::finish`).
    body + CLOSE_GRACE * 2 + Duration::from_millis(connections(scenario) as u64 / 5)
}

fn delivery_plan(d: &DeliveryArgs, ramp: impl Fn(usize) -> Duration) -> Duration {
    // A pause that outlasts the send phase delays the drain until it is over.
    let pause_overrun = if d.pause.paused_count(d.listeners) > 0 {
        (d.pause.pause_at + d.pause.pause_for).saturating_sub(d.duration)
    } else {
        Duration::ZERO
    };
    let sending = if d.stage.is_empty() {
        d.duration
    } else {
        crate::stages::Stages(d.stage.clone()).total()
    };
    ramp(d.listeners) + ramp(d.publishers) + sending + pause_overrun + d.drain + CLOSE_GRACE
}

/// Sends one text frame unless `stop` comes first (a server that stopped reading would otherwise
/// block the send forever once the socket buffers are full).
pub(crate) async fn send_text<S>(
    sink: &mut S,
    text: String,
    stop: &CancellationToken,
) -> Result<(), Ended>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    tokio::select! {
        r = sink.send(Message::text(text)) => r.map_err(|e| Ended::Dropped(client::error_label(&e))),
        _ = stop.cancelled() => Err(Ended::Finished),
    }
}
