//! `connect`: how many connections the server takes, how fast, and how they fail.
//!
//! Opens the connections at the paced rate, holds them (reading, so server pings are answered
//! and server-side closes are seen) for `--hold`, then closes them all. Nothing is sent: this
//! measures the accept path and per-connection cost alone.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::ConnectArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Outcome, RunCtx, StopReason};
use crate::fleet::{self, Ended, FleetSpec};

pub async fn run(ctx: &RunCtx, args: &ConnectArgs) -> anyhow::Result<Outcome> {
    ctx.phase("ramp");
    // With --workers, this process opens its share (indices first..first+count).
    let (first, count) = ctx.shard.part(args.connections);
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: false,
        recv_buffer: None,
    };
    let mut fleet = fleet::launch(ctx, spec, |_| (), |_, ws, (), stop| hold(ws, stop));
    let ramp = fleet
        .wait_connected(ctx.ramp_limit(count), &ctx.cancel)
        .await;
    // Every worker holds its connections at the same time.
    ctx.barrier("ramped").await;

    ctx.phase("hold");
    let held = Instant::now();
    let natural = if ctx.sleep_until(held + args.hold).await {
        StopReason::Duration
    } else {
        StopReason::Deadline
    };
    let measured = held.elapsed();

    ctx.phase("close");
    let (_, lost) = fleet.finish(Duration::ZERO).await;
    let mut notes = Vec::new();
    if ramp.established + ramp.failed < count {
        notes.push(format!(
            "{} connections had not settled when the ramp limit passed",
            count - ramp.established - ramp.failed
        ));
    }
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
    })
}

/// Keeps one connection open until `stop`, reading whatever arrives.
async fn hold(mut ws: Ws, stop: CancellationToken) -> ((), Ended) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let incoming = tokio::select! {
            _ = &mut stopped => None,
            i = client::recv(&mut ws) => Some(i),
        };
        match incoming {
            None => {
                client::close(ws, client::CLOSE_TIMEOUT).await;
                return ((), Ended::Finished);
            }
            Some(Incoming::Text(_)) => {}
            Some(Incoming::Closed(reason)) => return ((), Ended::Dropped(reason)),
        }
    }
}
