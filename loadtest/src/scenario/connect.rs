//! `connect`: how many connections the server takes, how fast, and how they fail.
//!
//! Opens the connections at the paced rate, holds them (reading, so server pings are answered
//! and server-side closes are seen) for `--hold`, then closes them all. Nothing is sent: this
//! measures the accept path and per-connection cost alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::ConnectArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Outcome, RunCtx, StopReason};
use crate::fleet::{self, Ended, FleetSpec};
use crate::stages::Stages;

pub async fn run(ctx: &RunCtx, args: &ConnectArgs) -> anyhow::Result<Outcome> {
    if !args.stage.is_empty() {
        return staged(ctx, &Stages(args.stage.clone())).await;
    }
    ctx.phase("ramp");
    // With --workers, this process opens its share (indices first..first+count).
    let (first, count) = ctx.shard.part(args.connections);
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: false,
        recv_buffer: None,
        slots: None,
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
        failover: None,
    })
}

/// `--stage`: connections open and close as the stages say (see `stages`).
async fn staged(ctx: &RunCtx, stages: &Stages) -> anyhow::Result<Outcome> {
    let peak = stages.peak().floor() as usize;
    let (first, count) = ctx.shard.part(peak);
    let windows: Arc<Vec<(Duration, Duration)>> = Arc::new(
        (first..first + count)
            .map(|n| stages.window(n).unwrap_or((stages.total(), stages.total())))
            .collect(),
    );
    ctx.barrier("start").await;
    ctx.phase("stages");
    let start = Instant::now();
    let spec = FleetSpec {
        count,
        role: Role::Client,
        first_index: first,
        reconnect: false,
        recv_buffer: None,
        slots: Some({
            let w = windows.clone();
            Arc::new(move |index| w[index - first].0)
        }),
    };
    let w = windows.clone();
    let end = start + stages.total();
    let mut fleet = fleet::launch(
        ctx,
        spec,
        // Connections the level never falls below are held to the end of the stages (and in a
        // mixed run carried over to the next phase).
        move |index| Some(start + w[index - first].1).filter(|&at| at < end),
        |_, ws, close_at, stop| hold_until(ws, close_at, stop),
    );
    let ramp = fleet
        .wait_connected(end + ctx.target.connect_timeout(), &ctx.cancel)
        .await;
    let natural = if ctx.sleep_until(end).await {
        StopReason::Duration
    } else {
        StopReason::Deadline
    };
    let measured = start.elapsed();
    ctx.phase("close");
    let (_, lost) = fleet.finish(Duration::ZERO).await;
    let mut notes = vec![format!(
        "stages: peak {peak} connections, {:.1} s in all",
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

/// Holds a connection until `close_at` (the level falls below it: closed for good) or `stop`
/// (the end of the run: handed back open).
async fn hold_until(
    ws: Ws,
    close_at: Option<Instant>,
    stop: CancellationToken,
) -> (Option<Instant>, Ended) {
    let Some(at) = close_at else {
        let ((), ended) = hold(ws, stop).await;
        return (close_at, ended);
    };
    let own = stop.child_token();
    let timer = {
        let own = own.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            own.cancel();
        })
    };
    let ((), ended) = hold(ws, own).await;
    timer.abort();
    let ended = match ended {
        Ended::Open(ws) if !stop.is_cancelled() => {
            client::close(*ws, client::CLOSE_TIMEOUT).await;
            Ended::Finished
        }
        other => other,
    };
    (close_at, ended)
}

/// Keeps one connection open until `stop`, reading whatever arrives; hands it back open.
async fn hold(mut ws: Ws, stop: CancellationToken) -> ((), Ended) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let incoming = tokio::select! {
            _ = &mut stopped => None,
            i = client::recv(&mut ws) => Some(i),
        };
        match incoming {
            None => return ((), Ended::Open(Box::new(ws))),
            Some(Incoming::Text(_)) => {}
            Some(Incoming::Closed(reason)) => return ((), Ended::Dropped(reason)),
        }
    }
}
