//! `connect`: how many connections the server takes, how fast, and how they fail.
//!
//! Opens the connections at the paced rate, holds them (reading, so server pings are answered
//! and server-side closes are seen) for `--hold`, then closes them all. Nothing is sent: this
//! measures the accept path and per-connection cost alone.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::skeleton::{self, Closed, Measured, Notes, Phases, StagedSlots, Steps};
use crate::cli::ConnectArgs;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Outcome, RunCtx};
use crate::fleet::{self, Ended, Fleet, FleetSpec, Ramp};
use crate::stages::Stages;

pub async fn run(ctx: &RunCtx, args: &ConnectArgs) -> anyhow::Result<Outcome> {
    if !args.stage.is_empty() {
        let stages = Stages(args.stage.clone());
        let (first, count) = ctx.shard.part(stages.peak().floor() as usize);
        let slots = StagedSlots::new(&stages, first, count);
        return Ok(skeleton::drive(
            ctx,
            Staged {
                first,
                count,
                slots,
            },
        )
        .await);
    }
    // With --workers, this process opens its share (indices first..first+count).
    let (first, count) = ctx.shard.part(args.connections);
    let hold = args.hold;
    Ok(skeleton::drive(ctx, Connect { first, count, hold }).await)
}

/// Opens the connections, holds them for `--hold`, closes them.
struct Connect {
    first: usize,
    count: usize,
    hold: Duration,
}

/// The connections and their ramp.
struct Held<S> {
    fleet: Fleet<S>,
    ramp: Ramp,
}

impl Steps for Connect {
    type Open = Held<()>;
    // Every worker holds its connections at the same time.
    const PHASES: Phases = Phases::ramped("hold");

    async fn ramp(&mut self, ctx: &RunCtx, _: &mut Notes) -> Held<()> {
        let spec = FleetSpec::paced(Role::Client, self.first, self.count);
        let mut fleet = fleet::launch(ctx, spec, |_| (), |_, ws, (), stop| hold(ws, stop));
        let ramp = fleet.wait_ramp(ctx).await;
        Held { fleet, ramp }
    }

    async fn measure(&mut self, ctx: &RunCtx, _: &mut Held<()>, _: &mut Notes) -> Measured {
        Measured::until(Instant::now(), self.hold, &ctx.cancel.child_token()).await
    }

    async fn close(self, _: &RunCtx, held: Held<()>, _: &Measured, notes: &mut Notes) -> Closed {
        let (_, lost) = held.fleet.finish(Duration::ZERO).await;
        let ramp = held.ramp;
        if ramp.established + ramp.failed < self.count {
            notes.push(format!(
                "{} connections had not settled when the ramp limit passed",
                self.count - ramp.established - ramp.failed
            ));
        }
        skeleton::note_lost(
            notes,
            lost,
            "connections did not close within the grace period",
        );
        Closed::connections(self.count, ramp.took)
    }
}

/// `--stage`: connections open and close as the stages say (see `stages`).
struct Staged {
    first: usize,
    count: usize,
    slots: StagedSlots,
}

/// The staged connections, their ramp, and the start of the stages.
struct StagedHeld {
    held: Held<Option<Instant>>,
    start: Instant,
}

impl Steps for Staged {
    type Open = StagedHeld;
    const PHASES: Phases = Phases::staged("stages");

    async fn ramp(&mut self, ctx: &RunCtx, _: &mut Notes) -> StagedHeld {
        let start = Instant::now();
        let spec = FleetSpec {
            slots: Some(self.slots.slots()),
            ..FleetSpec::paced(Role::Client, self.first, self.count)
        };
        let mut fleet = fleet::launch(
            ctx,
            spec,
            self.slots.close_at(start),
            |_, ws, close_at, stop| hold_until(ws, close_at, stop),
        );
        let end = start + self.slots.total();
        let ramp = fleet
            .wait_connected(end + ctx.target.connect_timeout(), &ctx.cancel)
            .await;
        StagedHeld {
            held: Held { fleet, ramp },
            start,
        }
    }

    async fn measure(&mut self, ctx: &RunCtx, open: &mut StagedHeld, _: &mut Notes) -> Measured {
        Measured::until(open.start, self.slots.total(), &ctx.cancel.child_token()).await
    }

    async fn close(self, _: &RunCtx, open: StagedHeld, _: &Measured, notes: &mut Notes) -> Closed {
        let (_, lost) = open.held.fleet.finish(Duration::ZERO).await;
        notes.push(self.slots.note());
        skeleton::note_lost(
            notes,
            lost,
            "connections did not close within the grace period",
        );
        Closed::connections(self.count, open.held.ramp.took)
    }
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
