//! The listeners: one task per listener connection that counts what it receives (each
//! listener's [`Tally`], all of them together in [`Listen`]), sees the warm-up, asks for its
//! connection id when connection events are in the mix, and pauses when it is one of the
//! `--pause-share`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ids::{id_answer, id_request, ID_RESEND};
use super::pause::PausePlan;
use crate::client::{self, Incoming, Ws};
use crate::context::{RunCtx, SeqSet};
use crate::fleet::Ended;
use crate::mix::ID_PROPERTY;
use crate::probe::{self, Kind, Received};
use crate::scenario::skeleton::sleep_until_opt;
use crate::stats::{Latency, Stats};

/// What the listeners share.
pub(crate) struct Listen {
    pub(super) run: String,
    pub(super) stats: Arc<Stats>,
    /// Distinct (listener, sequence) receipts so far: the drain waits on this.
    pub(super) unique: AtomicU64,
    /// Listeners that have seen a warm-up event.
    pub(super) warmed: AtomicUsize,
    pub(super) warm_notify: Notify,
    /// `--in-flight`: receipts that make one event (the listener count; 0 when unused), and
    /// a wake-up each time the receipts pass another multiple of it.
    pub(super) per_event: AtomicU64,
    pub(super) delivered: Notify,
    /// Distinct receipts of the steady (never paused) listeners: what the `--in-flight` window
    /// counts, so a paused listener does not hold the publishers back.
    pub(super) steady_unique: AtomicU64,
    /// Steady listeners that connected.
    pub(super) steady_connected: AtomicUsize,
    /// Listener numbers that connected (what a `--mix` with user events expects depends on who).
    pub(super) connected_ix: Mutex<Vec<usize>>,
    /// `--mix target=connection`: listeners ask for their connection id while this is set.
    pub(super) asking: std::sync::atomic::AtomicBool,
    /// (listener number, connection id) of the listeners that learnt theirs, and a wake-up
    /// for each.
    pub(super) ids: Mutex<Vec<(usize, String)>>,
    pub(super) identified: Notify,
    /// `--pause-share`: when the paused listeners pause and what they must catch up on.
    pub(super) pause: Option<PausePlan>,
}

/// One listener's receipts, handed back when it ends.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub seen: SeqSet,
    pub duplicates: u64,
    pub foreign: u64,
    pub(super) warmed: bool,
    /// Listener number (0-based).
    pub(super) index: usize,
    /// This listener is one of those that pause.
    pub(super) paused: bool,
    /// It was connected (its receipts count).
    pub(super) connected: bool,
    /// How the server or the network ended it (`close_1013`, `eof`, ...); `None` when it was
    /// still open when the run closed it.
    pub(super) ended: Option<(String, Instant)>,
    pub(super) paused_at: Option<Instant>,
    pub(super) resumed_at: Option<Instant>,
    /// Events of the backlog not received yet, once resumed.
    pub(super) backlog_left: Option<(Arc<SeqSet>, u64)>,
    pub(super) caught_up: Option<Duration>,
}

impl Tally {
    pub(super) fn new(index: usize, paused: bool) -> Self {
        Tally {
            index,
            paused,
            ..Tally::default()
        }
    }
}

impl Listen {
    pub(crate) fn new(ctx: &RunCtx) -> Self {
        Listen {
            run: ctx.run_id.clone(),
            stats: ctx.stats.clone(),
            unique: AtomicU64::new(0),
            warmed: AtomicUsize::new(0),
            warm_notify: Notify::new(),
            per_event: AtomicU64::new(0),
            delivered: Notify::new(),
            steady_unique: AtomicU64::new(0),
            steady_connected: AtomicUsize::new(0),
            connected_ix: Mutex::new(Vec::new()),
            asking: std::sync::atomic::AtomicBool::new(false),
            ids: Mutex::new(Vec::new()),
            identified: Notify::new(),
            pause: None,
        }
    }

    pub(super) fn with_pause(ctx: &RunCtx, pause: Option<PausePlan>) -> Self {
        Listen {
            pause,
            ..Listen::new(ctx)
        }
    }

    /// Receipts that retire events in the `--in-flight` window (the steady listeners').
    pub(super) fn window_unique(&self) -> u64 {
        self.steady_unique.load(Ordering::Relaxed)
    }

    /// The measure a listener's delivery latency goes to: paused listeners have their own
    /// (`delivery_paused`), so the pause does not hide in the steady listeners' figures.
    fn latency_for(&self, tally: &Tally) -> &Latency {
        match (&self.stats.extra, tally.paused) {
            (Some(extra), true) => extra,
            _ => &self.stats.primary,
        }
    }

    /// A listener connected: its receipts count, and a steady one's retire `--in-flight` events.
    fn register(&self, tally: &mut Tally) {
        tally.connected = true;
        self.connected_ix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tally.index);
        if !tally.paused {
            self.steady_connected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The listener learnt its connection id.
    fn learnt_id(&self, tally: &Tally, id: String) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tally.index, id));
        self.identified.notify_waiters();
    }

    /// Accounts one received frame, its delivery latency to the listener's measure.
    fn receive(&self, tally: &mut Tally, text: &str) {
        let latency = self.latency_for(tally);
        self.handle(tally, text, latency)
    }

    pub(crate) fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// Accounts one received frame; delivery latency goes to `latency`.
    fn handle(&self, tally: &mut Tally, text: &str, latency: &Latency) {
        self.handle_received(tally, probe::classify(text, &self.run), latency);
    }

    /// As [`Listen::handle`], for a frame already classified.
    pub(crate) fn handle_received(&self, tally: &mut Tally, received: Received, latency: &Latency) {
        match received {
            Received::Probe(p) => match p.kind {
                Kind::Delivery => {
                    if tally.seen.insert(p.seq) {
                        self.unique.fetch_add(1, Ordering::Relaxed);
                        if tally.paused {
                            tally.on_new(p.seq);
                        } else {
                            let before = self.steady_unique.fetch_add(1, Ordering::Relaxed);
                            let per_event = self.per_event.load(Ordering::Relaxed);
                            if per_event > 0 && (before + 1).is_multiple_of(per_event) {
                                self.delivered.notify_one();
                            }
                        }
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                        latency.record_ns(probe::now_ns().saturating_sub(p.t_ns));
                    } else {
                        tally.duplicates += 1;
                        self.stats.error("duplicate_delivery");
                    }
                }
                Kind::Warmup => {
                    if !tally.warmed {
                        tally.warmed = true;
                        self.warmed.fetch_add(1, Ordering::Relaxed);
                        self.warm_notify.notify_waiters();
                    }
                }
                Kind::Echo => {}
            },
            Received::Foreign => tally.foreign += 1,
            Received::ErrorEvent => self.stats.error("error_event"),
            Received::Other => {}
        }
    }
}

/// What woke a listener.
enum Woke {
    Stop,
    Frame(Incoming),
    /// Time to stop reading (paused listeners only), at this instant.
    Pause(Instant),
    /// Time to ask (again) for the connection id.
    Ask,
}

/// One listener: counts what arrives until `stop`, asking for its connection id while
/// [`Listen::asking`] says so, and pausing when it is one of the paused listeners.
pub(super) async fn listen_loop(
    sh: Arc<Listen>,
    mut ws: Ws,
    mut tally: Tally,
    stop: CancellationToken,
) -> (Tally, Ended) {
    sh.register(&mut tally);
    let plan = sh.pause.as_ref().filter(|_| tally.paused);
    // One stop future for the whole loop: re-creating it per frame registers and unregisters a
    // waiter each time, which showed up at 5% of the tool's CPU at 500k deliveries/s.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let pause_begins = pause_begins(plan, &stop);
    tokio::pin!(pause_begins);
    let mut pause_pending = plan.is_some();
    // `--mix target=connection`: ask for the connection id now, and again until answered.
    let mut next_ask = sh.asking.load(Ordering::Relaxed).then(Instant::now);
    loop {
        let ask_at = next_ask.filter(|_| sh.asking.load(Ordering::Relaxed));
        let woke = tokio::select! {
            _ = &mut stopped => Woke::Stop,
            i = client::recv(&mut ws) => Woke::Frame(i),
            at = &mut pause_begins, if pause_pending => Woke::Pause(at),
            _ = sleep_until_opt(ask_at), if ask_at.is_some() => Woke::Ask,
        };
        match woke {
            Woke::Ask => {
                if let Err(ended) = crate::scenario::send_text(&mut ws, id_request(), &stop).await {
                    if let Ended::Dropped(reason) = &ended {
                        tally.ended = Some((reason.clone(), Instant::now()));
                    }
                    return (tally, ended);
                }
                next_ask = Some(Instant::now() + ID_RESEND);
            }
            Woke::Frame(Incoming::Text(text))
                if next_ask.is_some() && text.contains(ID_PROPERTY) =>
            {
                match id_answer(&text) {
                    Some(id) => {
                        next_ask = None;
                        sh.learnt_id(&tally, id);
                    }
                    None => sh.receive(&mut tally, &text),
                }
            }
            Woke::Stop => {
                // Hand the receipts back first and let the fleet close (or park) the
                // connection: with tens of thousands of listeners closing at once on a loaded
                // machine, a listener that waited for its close handshake could outlast the
                // fleet's grace and its receipts would be lost (counted as missing, though they
                // arrived).
                return (tally, Ended::Open(Box::new(ws)));
            }
            Woke::Frame(Incoming::Closed(reason)) => {
                tally.ended = Some((reason.clone(), Instant::now()));
                return (tally, Ended::Dropped(reason));
            }
            Woke::Frame(Incoming::Text(text)) => sh.receive(&mut tally, &text),
            Woke::Pause(at) => {
                pause_pending = false;
                let Some(p) = plan else { continue };
                if !pause(&mut tally, p, at, &stop).await {
                    return (tally, Ended::Open(Box::new(ws)));
                }
            }
        }
    }
}

/// Paused listeners: the moment the pause starts (once the send phase has started); never for
/// the others.
async fn pause_begins(plan: Option<&PausePlan>, stop: &CancellationToken) -> Instant {
    let Some(p) = plan else {
        return std::future::pending().await;
    };
    match p.gate.wait(stop).await {
        Some(start) => {
            let at = start + p.at;
            tokio::time::sleep_until(at.into()).await;
            at
        }
        None => std::future::pending().await,
    }
}

/// The pause, from `at`: the socket is not polled at all until it is over, so what the server
/// sends piles up in the kernel buffers, then in the server's queue. False when `stop` came
/// first.
async fn pause(tally: &mut Tally, p: &PausePlan, at: Instant, stop: &CancellationToken) -> bool {
    tally.paused_at = Some(at);
    let resumed = tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until((at + p.length).into()) => true,
    };
    if resumed {
        tally.resume(p);
    }
    resumed
}
