//! `broadcast` and `publish`: fan-out delivery measured exactly.
//!
//! The run has five steps:
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
//! reported for the paused and the steady listeners apart (see [`PauseSummary`]).

mod accounting;
mod ids;
mod listeners;
mod pause;
mod publishers;
mod warmup;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::accounting::behind_note;
use self::ids::{gather_ids, Registrars};
use self::listeners::listen_loop;
pub(crate) use self::listeners::{Listen, Tally};
use self::pause::{pause_summary, PausePlan};
use self::publishers::{publish_http, HttpSpec, Senders};
pub(crate) use self::publishers::{publish_ws, Publish};
use self::warmup::warmup;
use crate::cli::{DeliveryArgs, Rate};
use crate::client::Role;
use crate::context::{Gate, Outcome, RunCtx, SeqSet, Sequence, StopReason};
use crate::fleet::{self, FleetSpec};
use crate::mix::{Expectation, Mix};
use crate::probe::{self, Encoder};
use crate::stages::Stages;
use crate::summary::DeliverySummary;

/// How events reach the broker.
#[derive(Debug, Clone)]
pub enum Transport {
    /// WebSocket connections of this role (publishers with the key, or clients broadcasting).
    Ws(Role),
    /// `POST` to the publish endpoint, `batch` events per request.
    Http { batch: usize, path: String },
}

pub async fn run(
    ctx: &RunCtx,
    args: &DeliveryArgs,
    transport: Transport,
) -> anyhow::Result<Outcome> {
    if args.publishers == 0 {
        anyhow::bail!("--publishers must be at least 1");
    }
    match (args.in_flight, &transport) {
        (Some(0), _) => anyhow::bail!("--in-flight must be at least 1"),
        (Some(_), Transport::Http { .. }) => {
            anyhow::bail!("--in-flight needs WebSocket publishers (not `--via http`)")
        }
        _ => {}
    }
    let paused_n = args.pause.paused_count(args.listeners);
    if args.in_flight.is_some() && paused_n > 0 && paused_n == args.listeners {
        anyhow::bail!(
            "--in-flight needs at least one listener that does not pause (lower --pause-share)"
        );
    }
    // With --workers, this process runs its share of listeners, publishers and events.
    let shard = ctx.shard;
    let (l_first, l_count) = shard.part(args.listeners);
    let (p_first, p_count) = shard.part(args.publishers);
    let messages = args
        .messages
        .map(|m| shard.part_along(m, p_first, p_count, args.publishers));
    let event = match &args.event {
        Some(text) => probe::parse_event(text)?,
        None => probe::echo_event(args.message_size, true),
    };
    let encoder = Encoder::new(&event, &ctx.run_id);
    let stages = (!args.stage.is_empty()).then(|| Arc::new(Stages(args.stage.clone())));
    // With stages, the send phase lasts as long as they do.
    let send_for = stages.as_ref().map_or(args.duration, |s| s.total());
    let identities = ctx.target.identities().cloned();
    let mix = if args.mix.is_empty() {
        None
    } else {
        let users = identities
            .as_ref()
            .map_or(0, |ids| ids.user_count(args.listeners));
        let mix = Mix::parse(
            &args.mix,
            args.message_size,
            &ctx.run_id,
            identities.clone(),
            users,
        )?;
        if mix.has_user_events() && matches!(transport, Transport::Ws(Role::Client)) {
            anyhow::bail!(
                "--mix target=user needs publishers (--api-key): clients cannot address a user"
            );
        }
        if mix.has_connection_events() && ctx.target.api_key().is_none() {
            anyhow::bail!(
                "--mix target=connection needs --api-key: only publishers can address a \
                 connection, and the listeners learn their connection ids from the tool's own \
                 publisher connection"
            );
        }
        Some(Arc::new(mix))
    };
    // With user or connection events, what each listener expects depends on who it is.
    let targeted = mix.as_ref().filter(|m| m.is_targeted()).cloned();
    let user_of = |l: usize| identities.as_ref().map(|ids| ids.user_of(l));
    let with_ids = mix.as_ref().filter(|m| m.has_connection_events()).cloned();
    let mut notes = Vec::new();

    ctx.phase("ramp");
    let gate = Gate::new();
    let sent_set = Arc::new(Mutex::new(SeqSet::default()));
    let plan = (paused_n > 0).then(|| PausePlan {
        at: args.pause.pause_at,
        length: args.pause.pause_for,
        gate: gate.clone(),
        sent_set: sent_set.clone(),
        backlog: OnceLock::new(),
    });
    let listen = Arc::new(Listen::with_pause(ctx, plan));
    // Connection events: a registrar on every instance before the listeners ask for their ids.
    let registrars = match &with_ids {
        Some(_) => {
            let index = args.listeners + args.publishers + shard.count + shard.index;
            let (r, mut why) = Registrars::open(ctx, index).await;
            notes.append(&mut why);
            listen.asking.store(r.connected > 0, Ordering::Relaxed);
            Some(r)
        }
        None => None,
    };
    let n_listeners = args.listeners;
    let picks = args.pause.clone();
    let recv_buffer =
        args.pause
            .pause_rcvbuf
            .filter(|_| paused_n > 0)
            .map(|bytes| -> fleet::RecvBufferFor {
                let picks = picks.clone();
                (bytes, Arc::new(move |i| picks.is_paused(i, n_listeners)))
            });
    let spec = FleetSpec {
        count: l_count,
        role: Role::Client,
        first_index: l_first,
        reconnect: false,
        recv_buffer,
        slots: None,
    };
    let l = listen.clone();
    let mut listeners = fleet::launch(
        ctx,
        spec,
        |i| Tally::new(i, picks.is_paused(i, n_listeners)),
        move |_, ws, tally, stop| listen_loop(l.clone(), ws, tally, stop),
    );
    let ramp = listeners
        .wait_connected(ctx.ramp_limit(l_count), &ctx.cancel)
        .await;

    if let (Some(mix), Some(registrars)) = (&with_ids, registrars) {
        ctx.phase("ids");
        let own = if registrars.connected > 0 {
            gather_ids(ctx, &listen, ramp.established).await
        } else {
            Vec::new()
        };
        let unknown = ramp.established.saturating_sub(own.len());
        if unknown > 0 {
            ctx.stats.errors_n("no_connection_id", unknown as u64);
            notes.push(format!(
                "{unknown} of {} listeners did not learn their connection id: no connection \
                 event goes to them",
                ramp.established
            ));
        }
        // Every worker's publishers pick from the same list: all the workers' listeners.
        let all = match &ctx.link {
            Some(link) => {
                let key = format!("{}/ids", ctx.run_id);
                match link.exchange_ids(&key, &own, &ctx.cancel).await {
                    Some(all) => all,
                    None => {
                        notes.push("the other workers' connection ids never arrived: connection events go to this worker's listeners only".into());
                        own
                    }
                }
            }
            None => own,
        };
        if all.is_empty() {
            notes.push(
                "no listener learnt its connection id: connection events went to no one".into(),
            );
        }
        mix.set_connections(all);
        registrars.close().await;
    }

    ctx.phase("warm-up");
    let warm_index = args.listeners + args.publishers + shard.index;
    if let Some(note) = warmup(
        ctx,
        &transport,
        &encoder,
        &listen,
        ramp.established,
        warm_index,
    )
    .await
    {
        notes.push(note);
    }

    ctx.phase("ramp-pub");
    let done = ctx.cancel.child_token();
    let publish = Arc::new(Publish {
        gate,
        done: done.clone(),
        seq: Sequence::new(messages, done.clone()),
        encoder,
        stats: ctx.stats.clone(),
        run: ctx.run_id.clone(),
        rate: match args.rate {
            Rate::PerSecond(r) => Some(r / args.publishers as f64),
            Rate::Max => None,
        },
        publishers: args.publishers,
        sent: AtomicU64::new(0),
        sent_set,
        window: args.in_flight.map(|limit| {
            // Only the steady listeners' receipts retire events (all of them without a pause).
            let steady = listen.steady_connected.load(Ordering::Relaxed);
            listen
                .per_event
                .store(steady.max(1) as u64, Ordering::Relaxed);
            (limit, listen.clone())
        }),
        seq_stride: shard.count as u64,
        seq_offset: shard.index as u64,
        mix: mix.clone(),
        stages: stages.clone(),
    });
    let (senders, publishers_ready) = match &transport {
        Transport::Ws(role) => {
            let spec = FleetSpec {
                count: p_count,
                role: *role,
                first_index: args.listeners + p_first,
                reconnect: false,
                recv_buffer: None,
                slots: None,
            };
            // `index - first` is the publisher's number over all workers (its stagger slot).
            let (p, first) = (publish.clone(), args.listeners);
            let mut fleet = fleet::launch(
                ctx,
                spec,
                |_| (),
                move |index, ws, (), stop| publish_ws(p.clone(), index - first, ws, stop),
            );
            let r = fleet
                .wait_connected(ctx.ramp_limit(p_count), &ctx.cancel)
                .await;
            (Senders::Ws(fleet), r.established)
        }
        Transport::Http { batch, path } => {
            let stop = ctx.cancel.child_token();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut set = JoinSet::new();
            for j in p_first..p_first + p_count {
                let spec = HttpSpec {
                    target: ctx.target.clone(),
                    j,
                    index: args.listeners + j,
                    path: path.clone(),
                    batch: *batch,
                };
                set.spawn(publish_http(
                    publish.clone(),
                    spec,
                    stop.clone(),
                    tx.clone(),
                ));
            }
            drop(tx);
            let limit = ctx.ramp_limit(p_count);
            let (mut ready, mut settled) = (0, 0);
            while settled < p_count {
                match tokio::time::timeout_at(limit.into(), rx.recv()).await {
                    Ok(Some(ok)) => {
                        settled += 1;
                        ready += usize::from(ok);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            (Senders::Http(set, stop), ready)
        }
    };
    if publishers_ready == 0 && p_count > 0 {
        notes.push("no publisher could connect: nothing was sent".into());
    }
    // With --workers: nobody sends before every worker's listeners and publishers are up.
    ctx.barrier("ready").await;

    ctx.phase("send");
    let start = publish.gate.open();
    let natural = if p_count == 0 {
        // No publisher here: the send phase is the others' (the exchange below waits for it).
        StopReason::Count
    } else {
        tokio::select! {
            _ = tokio::time::sleep_until((start + send_for).into()) => StopReason::Duration,
            _ = done.cancelled() => StopReason::Count,
        }
    };
    done.cancel();
    let mut measured = start.elapsed();
    senders.finish(Duration::from_secs(5)).await;
    let own_sent = publish.sent.load(Ordering::Relaxed);
    // The completeness reference: the events every worker sent (this one's alone).
    let all_sent = {
        let own = publish
            .sent_set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match &ctx.link {
            Some(link) => {
                let key = format!("{}/sent", ctx.run_id);
                match link.exchange(&key, &own, &ctx.cancel).await {
                    Some(all) => all,
                    None => {
                        notes.push("the other workers' sent events never arrived: counted against this worker's alone".into());
                        own
                    }
                }
            }
            None => own,
        }
    };
    if p_count == 0 {
        measured = start.elapsed();
    }

    ctx.phase("drain");
    let sent = all_sent.len();
    let expectation = targeted
        .as_ref()
        .map(|mix| Expectation::of(mix, all_sent.iter()));
    let expected = match &expectation {
        Some(e) => listen
            .connected_ix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&l| e.for_listener(l, user_of(l)))
            .sum(),
        None => sent * ramp.established as u64,
    };
    let mut drain_limit = Instant::now() + args.drain;
    if paused_n > 0 {
        // Paused listeners get the whole --drain after they resume, even when the pause
        // outlasts the send phase.
        let resume = start + args.pause.pause_at + args.pause.pause_for;
        drain_limit = drain_limit.max(resume + args.drain);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while listen.unique() < expected && Instant::now() < drain_limit {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.cancel.cancelled() => break,
        }
    }

    ctx.phase("close");
    let (tallies, lost) = listeners.finish(Duration::ZERO).await;
    let sent_set = all_sent;
    let mut d = DeliverySummary {
        listeners: ramp.established,
        publishers: publishers_ready,
        sent,
        expected,
        ..DeliverySummary::default()
    };
    if let (Some(e), Some(mix)) = (&expectation, &targeted) {
        d.expected = expected;
        for t in tallies.iter().filter(|t| t.connected) {
            let u = user_of(t.index);
            let (mut got, mut wrong) = (0, 0);
            for seq in t.seen.iter().filter(|s| sent_set.contains(*s)) {
                if mix.is_for(seq, t.index, u) {
                    got += 1;
                } else {
                    wrong += 1;
                }
            }
            d.received += got;
            d.misdelivered += wrong;
            d.complete_listeners += usize::from(got == e.for_listener(t.index, u));
            d.duplicates += t.duplicates;
            d.foreign += t.foreign;
        }
        ctx.stats.errors_n("misdelivered", d.misdelivered);
    }
    for t in tallies.iter().filter(|_| targeted.is_none()) {
        let got = t.seen.count_common(&sent_set);
        d.received += got;
        d.complete_listeners += usize::from(sent > 0 && got == sent);
        d.duplicates += t.duplicates;
        d.foreign += t.foreign;
    }
    d.missing = expected.saturating_sub(d.received);
    d.completeness = if expected > 0 {
        d.received as f64 / expected as f64
    } else {
        0.0
    };
    if lost > 0 {
        notes.push(format!(
            "{lost} listeners did not close in time; their receipts count as missing"
        ));
    }
    if paused_n > 0 {
        let p = &args.pause;
        if p.pause_at >= measured {
            notes.push(format!(
                "the pause was due {:?} into sending, but sending stopped after {:.2} s: \
                 the paused listeners paused after the events were sent",
                p.pause_at,
                measured.as_secs_f64()
            ));
        } else if p.pause_at + p.pause_for > measured {
            notes.push(format!(
                "the pause ({:?} from {:?}) outlasted sending ({:.2} s): the drain waited \
                 up to --drain after the resume",
                p.pause_for,
                p.pause_at,
                measured.as_secs_f64()
            ));
        }
        d.pause = Some(pause_summary(p, paused_n, &tallies, sent, &sent_set, start));
    }
    let own_rate = match args.rate {
        Rate::PerSecond(r) => Rate::PerSecond(r * p_count as f64 / args.publishers as f64),
        Rate::Max => Rate::Max,
    };
    if let Some(note) = behind_note(own_rate, measured, own_sent, natural)
        .filter(|_| p_count > 0 && stages.is_none())
    {
        notes.push(note);
    }
    if d.missing > 0 && !ctx.cancel.is_cancelled() {
        notes.push(format!(
            "{} deliveries missing after a {:?} drain",
            d.missing, args.drain
        ));
    }
    let ws_publishers = match transport {
        Transport::Ws(_) => p_count,
        Transport::Http { .. } => 0,
    };
    Ok(Outcome {
        target_connections: l_count + ws_publishers,
        ramp: ramp.took,
        measured,
        stopped_by: ctx.stopped_by(natural),
        delivery: (args.listeners > 0).then_some(d),
        notes,
        failover: None,
    })
}
