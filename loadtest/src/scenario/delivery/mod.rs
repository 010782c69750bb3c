//! `broadcast` and `publish`: fan-out delivery measured exactly.
//!
//! The run has five steps (those of the skeleton in `scenario/skeleton.rs`):
//! 1. **ramp**: open the listeners (ordinary clients) at the paced rate;
//! 2. **warm-up**: send unmeasured warm-up events until every listener has seen one. A listener's
//!    upgrade completing does not prove the server has registered it for fan-out yet; without this
//!    step the first events could miss late listeners and completeness would measure the ramp;
//! 3. **send**: the publishers send at the open-loop rate (each event is stamped with its intended
//!    send time) for `--duration` or until `--messages`;
//! 4. **drain**: wait until every listener has every sent event, or `--drain` passes;
//! 5. **count**: each listener hands back the set of sequence numbers it received; intersected
//!    with the set of events whose send succeeded, that gives completeness without estimation.
//!
//! With connection-targeted events in the `--mix`, the listeners first learn their connection
//! ids (between steps 1 and 2): the tool opens a publisher connection to each instance (a
//! *registrar*) before the listeners, every listener sends a MetaRequest
//! (`{"eventType":9,"property":"loadtest-id"}`, re-sent every second until answered), the broker
//! forwards it to a publisher with the listener's id in `from`, and the registrar answers it
//! `"to"` that id with the id as `val`. The identified listeners (swapped between workers) are
//! what connection events go to; each is expected by its listener alone.
//!
//! With `--pause-share`, some listeners stop polling their socket at `--pause-at` into the send
//! phase for `--pause-for` (TCP backpressure then reaches the server, whose per-connection queue
//! fills), then read on. Each listener's receipts, how it ended (close code, or no close frame)
//! and, for the paused ones, the time to receive everything sent before they resumed, are
//! reported for the paused and the steady listeners apart (see
//! [`crate::summary::PauseSummary`]).
//!
//! Where each part lives: `plan.rs` (the options checked, this worker's share), `listeners.rs`
//! (the listener connections and their receipts), `ids.rs` (connection ids), `warmup.rs`,
//! `publishers.rs` (WebSocket and HTTP publishers, the schedule, `--in-flight`), `pause.rs`
//! (`--pause-share`: the pause, the catch-up, the groups), `accounting.rs` (the count); this
//! file puts them in the skeleton's order.

mod accounting;
mod ids;
mod listeners;
mod pause;
mod plan;
mod publishers;
mod warmup;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) use self::accounting::count_broadcasts;
use self::accounting::Reference;
use self::ids::Registrars;
pub(crate) use self::listeners::{Listen, Tally};
use self::pause::PausePlan;
use self::plan::Plan;
use self::publishers::Senders;
pub(crate) use self::publishers::{publish_ws, Publish};
use super::skeleton::{self, Closed, Measured, Notes, Phases, Steps};
use crate::cli::{DeliveryArgs, Rate};
use crate::client::Role;
use crate::context::{Gate, Outcome, RunCtx, Sequence, StopReason};
use crate::fleet::{self, Fleet, FleetSpec, Ramp};

/// How events reach the broker.
#[derive(Debug, Clone)]
pub enum Transport {
    /// WebSocket connections of this role (publishers with the key, or clients broadcasting).
    Ws(Role),
    /// `POST` to the publish endpoint, `batch` events per request.
    Http { batch: usize, path: String },
}

/// Runs `broadcast` or `publish` (which differ in `transport`).
pub async fn run(
    ctx: &RunCtx,
    args: &DeliveryArgs,
    transport: Transport,
) -> anyhow::Result<Outcome> {
    let plan = Plan::new(ctx, args, transport)?;
    Ok(skeleton::drive(ctx, Delivery::new(ctx, plan)).await)
}

/// One run: its plan, and what its listeners and publishers share.
struct Delivery<'a> {
    plan: Plan<'a>,
    listen: Arc<Listen>,
    publish: Arc<Publish>,
}

/// What the run opened, and what the count is against.
struct Open {
    listeners: Fleet<Tally>,
    ramp: Ramp,
    /// `--mix target=connection`: the registrars, until the listeners have their ids.
    registrars: Option<Registrars>,
    /// The publishers, from their ramp to the end of the send phase.
    senders: Option<Senders>,
    publishers_ready: usize,
    reference: Reference,
}

impl<'a> Delivery<'a> {
    fn new(ctx: &RunCtx, plan: Plan<'a>) -> Self {
        let args = plan.args;
        let gate = Gate::new();
        let done = ctx.cancel.child_token();
        let rate = match args.rate {
            Rate::PerSecond(r) => Some(r / args.publishers as f64),
            Rate::Max => None,
        };
        let mut publish = Publish {
            seq: Sequence::new(plan.messages, done.clone()),
            publishers: args.publishers,
            seq_stride: ctx.shard.count as u64,
            seq_offset: ctx.shard.index as u64,
            mix: plan.mix.clone(),
            stages: plan.stages.clone(),
            ..Publish::new(ctx, gate.clone(), done, plan.encoder.clone(), rate)
        };
        let pause = (plan.paused > 0).then(|| PausePlan {
            at: args.pause.pause_at,
            length: args.pause.pause_for,
            gate,
            sent_set: publish.sent_set.clone(),
            backlog: OnceLock::new(),
        });
        let listen = Arc::new(Listen::with_pause(ctx, pause));
        // `--in-flight`: the listeners' receipts retire events.
        publish.window = args.in_flight.map(|limit| (limit, listen.clone()));
        Delivery {
            plan,
            listen,
            publish: Arc::new(publish),
        }
    }

    /// Connection events: a registrar on every instance before the listeners ask for their ids.
    async fn open_registrars(&self, ctx: &RunCtx, notes: &mut Notes) -> Registrars {
        let (args, shard) = (self.plan.args, ctx.shard);
        let index = args.listeners + args.publishers + shard.count + shard.index;
        let (r, mut why) = Registrars::open(ctx, index).await;
        notes.append(&mut why);
        self.listen.asking.store(r.connected > 0, Ordering::Relaxed);
        r
    }

    /// This worker's listeners, ramped; the paused ones with `--pause-rcvbuf` get that receive
    /// buffer.
    async fn launch_listeners(&self, ctx: &RunCtx) -> (Fleet<Tally>, Ramp) {
        let (first, count) = self.plan.listeners;
        let (n_listeners, picks) = (self.plan.args.listeners, self.plan.args.pause.clone());
        let recv_buffer = picks.pause_rcvbuf.filter(|_| self.plan.paused > 0).map(
            |bytes| -> fleet::RecvBufferFor {
                let picks = picks.clone();
                (bytes, Arc::new(move |i| picks.is_paused(i, n_listeners)))
            },
        );
        let spec = FleetSpec {
            recv_buffer,
            ..FleetSpec::paced(Role::Client, first, count)
        };
        let l = self.listen.clone();
        let mut listeners = fleet::launch(
            ctx,
            spec,
            |i| Tally::new(i, picks.is_paused(i, n_listeners)),
            move |_, ws, tally, stop| listeners::listen_loop(l.clone(), ws, tally, stop),
        );
        let ramp = listeners.wait_ramp(ctx).await;
        (listeners, ramp)
    }

    /// The publishers connect (phase `ramp-pub`).
    async fn ramp_publishers(&self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) {
        ctx.phase("ramp-pub");
        if self.plan.args.in_flight.is_some() {
            // Only the steady listeners' receipts retire events (all of them without a pause).
            let steady = self.listen.steady_connected.load(Ordering::Relaxed);
            self.listen
                .per_event
                .store(steady.max(1) as u64, Ordering::Relaxed);
        }
        let (senders, ready) = Senders::launch(ctx, &self.plan, &self.publish).await;
        if ready == 0 && self.plan.publishers.1 > 0 {
            notes.push("no publisher could connect: nothing was sent".into());
        }
        open.senders = Some(senders);
        open.publishers_ready = ready;
    }
}

impl Steps for Delivery<'_> {
    type Open = Open;
    /// With --workers: nobody sends before every worker's listeners and publishers are up.
    const PHASES: Phases = Phases {
        barrier: "ready",
        ..Phases::ramped("send")
    };

    async fn ramp(&mut self, ctx: &RunCtx, notes: &mut Notes) -> Open {
        let registrars = match self.plan.with_ids() {
            Some(_) => Some(self.open_registrars(ctx, notes).await),
            None => None,
        };
        let (listeners, ramp) = self.launch_listeners(ctx).await;
        Open {
            listeners,
            ramp,
            registrars,
            senders: None,
            publishers_ready: 0,
            reference: Reference::default(),
        }
    }

    /// Connection ids (phase `ids`, with connection events), the warm-up, the publishers.
    async fn prepare(&mut self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) {
        let established = open.ramp.established;
        if let (Some(mix), Some(registrars)) = (self.plan.with_ids(), open.registrars.take()) {
            ctx.phase("ids");
            ids::learn_ids(ctx, &self.listen, registrars, mix, established, notes).await;
        }
        ctx.phase("warm-up");
        let (args, transport) = (self.plan.args, &self.plan.transport);
        let index = args.listeners + args.publishers + ctx.shard.index;
        let encoder = &self.publish.encoder;
        let warm = warmup::warmup(ctx, transport, encoder, &self.listen, established, index);
        notes.extend(warm.await);
        self.ramp_publishers(ctx, open, notes).await;
    }

    /// Sending, then the publishers stop and the workers swap what they sent.
    async fn measure(&mut self, ctx: &RunCtx, open: &mut Open, notes: &mut Notes) -> Measured {
        let start = self.publish.gate.open();
        let alone = self.plan.publishers.1 == 0;
        let mut m = if alone {
            // No publisher here: the send phase is the others' (the exchange below waits for it).
            self.publish.done.cancel();
            Measured {
                start,
                took: start.elapsed(),
                natural: StopReason::Count,
            }
        } else {
            Measured::until(start, self.plan.send_for, &self.publish.done).await
        };
        if let Some(senders) = open.senders.take() {
            senders.finish(Duration::from_secs(5)).await;
        }
        open.reference.own_sent = self.publish.sent.load(Ordering::Relaxed);
        open.reference.all_sent = accounting::all_sent(ctx, &self.publish, notes).await;
        if alone {
            m.took = start.elapsed();
        }
        m
    }

    fn drains(&self, _: &Open) -> bool {
        true
    }

    /// Until every listener has every event it is to receive, or `--drain` passes.
    async fn drain(&mut self, ctx: &RunCtx, open: &mut Open, m: &Measured, _: &mut Notes) {
        let args = self.plan.args;
        open.reference
            .expect(&self.plan, &self.listen, open.ramp.established);
        let mut limit = Instant::now() + args.drain;
        if self.plan.paused > 0 {
            // Paused listeners get the whole --drain after they resume, even when the pause
            // outlasts the send phase.
            let resume = m.start + args.pause.pause_at + args.pause.pause_for;
            limit = limit.max(resume + args.drain);
        }
        let (listen, expected) = (&self.listen, open.reference.expected);
        skeleton::poll_until(ctx, limit, Duration::from_millis(10), || {
            listen.unique() >= expected
        })
        .await;
    }

    async fn close(self, ctx: &RunCtx, open: Open, m: &Measured, notes: &mut Notes) -> Closed {
        let (tallies, lost) = open.listeners.finish(Duration::ZERO).await;
        let (plan, reference) = (&self.plan, &open.reference);
        let ready = (open.ramp.established, open.publishers_ready);
        let mut d = accounting::count(ctx, plan, &tallies, reference, ready);
        skeleton::note_lost(
            notes,
            lost,
            "listeners did not close in time; their receipts count as missing",
        );
        if plan.paused > 0 {
            let p = &plan.args.pause;
            notes.extend(pause::pause_note(p, m.took));
            let sent = (d.sent, &reference.all_sent);
            d.pause = Some(pause::pause_summary(
                p,
                plan.paused,
                &tallies,
                sent,
                m.start,
            ));
        }
        notes.extend(accounting::publishers_note(plan, m, reference.own_sent));
        notes.extend(accounting::missing_note(ctx, &d, plan.args.drain));
        Closed {
            delivery: (plan.args.listeners > 0).then_some(d),
            ..Closed::connections(plan.listeners.1 + plan.ws_publishers(), open.ramp.took)
        }
    }
}
