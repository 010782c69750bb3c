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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::{DeliveryArgs, PauseArgs, Rate};
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, Outcome, RunCtx, Schedule, SeqSet, Sequence, StopReason};
use crate::fleet::{self, Ended, Fleet, FleetSpec};
use crate::http;
use crate::mix::{Expectation, Mix, ID_PROPERTY};
use crate::probe::{self, Encoder, Kind, Received};
use crate::stages::Stages;
use crate::stats::{Latency, Stats};
use crate::summary::{CatchUp, DeliverySummary, ListenerDetail, ListenerGroup, PauseSummary};

/// How events reach the broker.
#[derive(Debug, Clone)]
pub enum Transport {
    /// WebSocket connections of this role (publishers with the key, or clients broadcasting).
    Ws(Role),
    /// `POST` to the publish endpoint, `batch` events per request.
    Http { batch: usize, path: String },
}

/// Events written per flush on a WebSocket publisher: enough to amortise the syscall at high
/// rates, small enough that a batch never delays the schedule noticeably.
const WS_BATCH: usize = 64;
/// Give up on the warm-up after this long, plus a second per 10,000 listeners (the run goes on,
/// with a note).
const WARMUP_LIMIT: Duration = Duration::from_secs(5);
/// A warm-up event is re-sent after this long, then twice as long each time (at most
/// [`WARMUP_RESEND_MAX`]) until every listener has seen one: with 100,000 listeners one warm-up
/// is 100,000 deliveries, and re-sending it ten times a second would bury the server.
const WARMUP_RESEND: Duration = Duration::from_millis(100);
const WARMUP_RESEND_MAX: Duration = Duration::from_secs(2);
/// A listener asks for its connection id again after this long without an answer (its
/// MetaRequest may have gone to a publisher that does not answer, such as another run's).
const ID_RESEND: Duration = Duration::from_secs(1);
/// Give up waiting for the listeners' ids after this long, plus a second per 10,000 listeners.
const ID_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Listeners

/// What the listeners share.
pub(super) struct Listen {
    run: String,
    stats: Arc<Stats>,
    /// Distinct (listener, sequence) receipts so far: the drain waits on this.
    unique: AtomicU64,
    /// Listeners that have seen a warm-up event.
    warmed: AtomicUsize,
    warm_notify: Notify,
    /// `--in-flight`: receipts that make one event (the listener count; 0 when unused), and
    /// a wake-up each time the receipts pass another multiple of it.
    per_event: AtomicU64,
    delivered: Notify,
    /// Distinct receipts of the steady (never paused) listeners: what the `--in-flight` window
    /// counts, so a paused listener does not hold the publishers back.
    steady_unique: AtomicU64,
    /// Steady listeners that connected.
    steady_connected: AtomicUsize,
    /// Listener numbers that connected (what a `--mix` with user events expects depends on who).
    connected_ix: Mutex<Vec<usize>>,
    /// `--mix target=connection`: listeners ask for their connection id while this is set.
    asking: std::sync::atomic::AtomicBool,
    /// (listener number, connection id) of the listeners that learnt theirs, and a wake-up
    /// for each.
    ids: Mutex<Vec<(usize, String)>>,
    identified: Notify,
    /// `--pause-share`: when the paused listeners pause and what they must catch up on.
    pause: Option<PausePlan>,
}

/// When the paused listeners stop reading, and the reference for their catch-up.
pub(super) struct PausePlan {
    at: Duration,
    length: Duration,
    /// Opened at the start of the send phase (the publishers' gate).
    gate: Gate,
    /// Events whose send succeeded so far (shared with the publishers).
    sent_set: Arc<Mutex<SeqSet>>,
    /// The events sent before the paused listeners resumed: taken by the first one to resume
    /// (they all resume at the same moment). A listener has caught up once it has all of them.
    backlog: OnceLock<Arc<SeqSet>>,
}

/// One listener's receipts, handed back when it ends.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub seen: SeqSet,
    pub duplicates: u64,
    pub foreign: u64,
    warmed: bool,
    /// Listener number (0-based).
    index: usize,
    /// This listener is one of those that pause.
    paused: bool,
    /// It was connected (its receipts count).
    connected: bool,
    /// How the server or the network ended it (`close_1013`, `eof`, ...); `None` when it was
    /// still open when the run closed it.
    ended: Option<(String, Instant)>,
    paused_at: Option<Instant>,
    resumed_at: Option<Instant>,
    /// Events of the backlog not received yet, once resumed.
    backlog_left: Option<(Arc<SeqSet>, u64)>,
    caught_up: Option<Duration>,
}

impl Tally {
    fn new(index: usize, paused: bool) -> Self {
        Tally {
            index,
            paused,
            ..Tally::default()
        }
    }

    /// Resumed reading now: what is left to catch up on is the backlog it has not seen yet.
    fn resume(&mut self, plan: &PausePlan) {
        let now = Instant::now();
        self.resumed_at = Some(now);
        let backlog = plan
            .backlog
            .get_or_init(|| {
                Arc::new(
                    plan.sent_set
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                )
            })
            .clone();
        let left = backlog.len() - backlog.count_common(&self.seen);
        if left == 0 {
            self.caught_up = Some(Duration::ZERO);
        } else {
            self.backlog_left = Some((backlog, left));
        }
    }

    /// Counts a first receipt of `seq` towards the catch-up.
    fn on_new(&mut self, seq: u64) {
        let Some((backlog, left)) = &mut self.backlog_left else {
            return;
        };
        if backlog.contains(seq) {
            *left -= 1;
            if *left == 0 {
                self.caught_up = self.resumed_at.map(|r| r.elapsed());
                self.backlog_left = None;
            }
        }
    }
}

impl Listen {
    pub(super) fn new(ctx: &RunCtx) -> Self {
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

    fn with_pause(ctx: &RunCtx, pause: Option<PausePlan>) -> Self {
        Listen {
            pause,
            ..Listen::new(ctx)
        }
    }

    /// Receipts that retire events in the `--in-flight` window (the steady listeners').
    fn window_unique(&self) -> u64 {
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

    pub(super) fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// Accounts one received frame; delivery latency goes to `latency`.
    pub(super) fn handle(&self, tally: &mut Tally, text: &str, latency: &Latency) {
        self.handle_received(tally, probe::classify(text, &self.run), latency);
    }

    /// As [`Listen::handle`], for a frame already classified.
    pub(super) fn handle_received(&self, tally: &mut Tally, received: Received, latency: &Latency) {
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

/// The MetaRequest by which a listener asks for its connection id.
fn id_request() -> String {
    format!(r#"{{"eventType":9,"property":"{ID_PROPERTY}"}}"#)
}

/// The connection id in a registrar's answer to [`id_request`], if `text` is one.
fn id_answer(text: &str) -> Option<String> {
    if !text.contains(ID_PROPERTY) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v.get("eventType")?.as_u64()? == 9
        && v.get("property")?.as_str()? == ID_PROPERTY
        && v.get("from").is_none())
    .then(|| v.get("val")?.as_str().map(str::to_owned))
    .flatten()
}

async fn listen_loop(
    sh: Arc<Listen>,
    mut ws: Ws,
    mut tally: Tally,
    stop: CancellationToken,
) -> (Tally, Ended) {
    tally.connected = true;
    sh.connected_ix
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(tally.index);
    if !tally.paused {
        sh.steady_connected.fetch_add(1, Ordering::Relaxed);
    }
    let plan = sh.pause.as_ref().filter(|_| tally.paused);
    // One stop future for the whole loop: re-creating it per frame registers and unregisters a
    // waiter each time, which showed up at 5% of the tool's CPU at 500k deliveries/s.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // Paused listeners: the moment the pause starts (once the send phase has started).
    let pause_begins = async {
        match plan {
            Some(p) => match p.gate.wait(&stop).await {
                Some(start) => {
                    let at = start + p.at;
                    tokio::time::sleep_until(at.into()).await;
                    at
                }
                None => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    };
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
            _ = sleep_until_some(ask_at), if ask_at.is_some() => Woke::Ask,
        };
        match woke {
            Woke::Ask => {
                if let Err(ended) = super::send_text(&mut ws, id_request(), &stop).await {
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
                        sh.ids
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((tally.index, id));
                        sh.identified.notify_waiters();
                    }
                    None => {
                        let latency = sh.latency_for(&tally);
                        sh.handle(&mut tally, &text, latency)
                    }
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
            Woke::Frame(Incoming::Text(text)) => {
                let latency = sh.latency_for(&tally);
                sh.handle(&mut tally, &text, latency)
            }
            Woke::Pause(at) => {
                pause_pending = false;
                let Some(p) = plan else { continue };
                tally.paused_at = Some(at);
                // The socket is not polled at all until the pause is over: what the server
                // sends piles up in the kernel buffers, then in the server's queue.
                let resumed = tokio::select! {
                    _ = &mut stopped => false,
                    _ = tokio::time::sleep_until((at + p.length).into()) => true,
                };
                if !resumed {
                    return (tally, Ended::Open(Box::new(ws)));
                }
                tally.resume(p);
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection ids

/// The registrars: one publisher connection per instance that answers the listeners'
/// [`id_request`]s with their own connection id.
struct Registrars {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Instances (URLs) a registrar could connect to.
    connected: usize,
}

impl Registrars {
    /// Connects one registrar to every URL of the target; `index` picks the source address.
    async fn open(ctx: &RunCtx, index: usize) -> (Self, Vec<String>) {
        let stop = ctx.cancel.child_token();
        let mut tasks = JoinSet::new();
        let mut notes = Vec::new();
        let mut connected = 0;
        for k in 0..ctx.target.endpoint_count() {
            match ctx.target.connect_to(k, index, Role::Publisher).await {
                Ok((ws, _)) => {
                    connected += 1;
                    tasks.spawn(registrar(ws, stop.clone()));
                }
                Err(e) => notes.push(format!(
                    "the connection-id registrar for {} could not connect: {e}",
                    ctx.target.endpoint(k).url
                )),
            }
        }
        (
            Registrars {
                stop,
                tasks,
                connected,
            },
            notes,
        )
    }

    async fn close(mut self) {
        self.stop.cancel();
        let limit = Instant::now() + client::CLOSE_TIMEOUT + Duration::from_millis(500);
        while let Ok(Some(_)) = tokio::time::timeout_at(limit.into(), self.tasks.join_next()).await
        {
        }
        self.tasks.abort_all();
    }
}

/// One registrar: answers every [`id_request`] forwarded to it (from any listener of any run:
/// the answer only tells the asker its own id) until `stop`.
async fn registrar(ws: Ws, stop: CancellationToken) {
    let (mut sink, mut stream) = ws.split();
    loop {
        let text = tokio::select! {
            _ = stop.cancelled() => break,
            i = client::recv(&mut stream) => match i {
                Incoming::Text(t) => t,
                Incoming::Closed(_) => return,
            },
        };
        if !text.contains(ID_PROPERTY) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let asked = v.get("eventType").and_then(serde_json::Value::as_u64) == Some(9)
            && v.get("property").and_then(serde_json::Value::as_str) == Some(ID_PROPERTY);
        let Some(from) = v
            .get("from")
            .and_then(serde_json::Value::as_str)
            .filter(|_| asked)
        else {
            continue;
        };
        let answer = serde_json::json!({
            "eventType": 9, "to": from, "property": ID_PROPERTY, "val": from,
        });
        if super::send_text(&mut sink, answer.to_string(), &stop)
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, sink.close()).await;
    // The server's close frame.
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Waits until `expected` listeners have learnt their connection ids (or the limit), stops
/// the asking, and returns the ids of this worker's listeners.
async fn gather_ids(ctx: &RunCtx, listen: &Listen, expected: usize) -> Vec<(usize, String)> {
    let limit = Instant::now() + ID_LIMIT + Duration::from_millis(expected as u64 / 10);
    loop {
        let notified = listen.identified.notified();
        let have = listen.ids.lock().unwrap_or_else(|e| e.into_inner()).len();
        if have >= expected || Instant::now() >= limit || ctx.cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(limit.into()) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    }
    listen.asking.store(false, Ordering::Relaxed);
    listen.ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// ---------------------------------------------------------------------------------------------
// Publishers

/// What the publishers share.
pub(super) struct Publish {
    pub gate: Gate,
    /// Cancelled when the send phase is over.
    pub done: CancellationToken,
    pub seq: Sequence,
    pub encoder: Encoder,
    pub stats: Arc<Stats>,
    pub run: String,
    /// Events per second per publisher; `None` for as fast as possible.
    pub rate: Option<f64>,
    pub publishers: usize,
    /// Events whose write succeeded, as a count and as a set (the completeness reference).
    pub sent: AtomicU64,
    pub sent_set: Arc<Mutex<SeqSet>>,
    /// `--in-flight`: the limit and the listeners whose receipts retire events.
    pub window: Option<(u64, Arc<Listen>)>,
    /// `--workers`: the k-th event of this worker is number `k × stride + offset`, so the
    /// workers' numbers never collide (stride 1, offset 0 alone).
    pub seq_stride: u64,
    pub seq_offset: u64,
    /// `--mix`: which event each sequence number is; `None`: `encoder` for all.
    pub mix: Option<Arc<Mix>>,
    /// `--stage`: the rate follows the stages (over all publishers of all workers).
    pub stages: Option<Arc<Stages>>,
}

impl Publish {
    /// Event `seq`, due at probe time `t`.
    fn encode(&self, seq: u64, t: u64) -> String {
        match &self.mix {
            Some(mix) => mix.encode(seq, t),
            None => self.encoder.encode(Kind::Delivery, seq, t, None),
        }
    }

    /// Publisher `j`'s schedule; publishers are staggered evenly so the total is smooth.
    fn schedule(&self, start: Instant, j: usize) -> Option<Schedule> {
        if let Some(stages) = &self.stages {
            // Publisher j takes events j, j + P, j + 2P, ... of the staged schedule.
            return Some(Schedule::staged(
                start,
                stages.clone(),
                self.publishers as u64,
                j as u64,
            ));
        }
        self.rate.map(|r| {
            let total = r * self.publishers as f64;
            Schedule::new(start, Duration::from_secs_f64(j as f64 / total), r)
        })
    }

    /// Appends up to `max` events due now as (sequence, probe time); false once the total
    /// (`--messages`) is used up. Without a schedule (`max` rate) every event is due now and
    /// stamped with the actual time.
    fn take_due(
        &self,
        schedule: &mut Option<Schedule>,
        max: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> bool {
        let now = Instant::now();
        for _ in 0..max {
            let t = match schedule {
                Some(s) => match s.take_due(now) {
                    Some(due) => probe::ns_at(due),
                    None => return true,
                },
                None => probe::now_ns(),
            };
            match self.seq.take() {
                Some(k) => out.push((k * self.seq_stride + self.seq_offset, t)),
                None => return false,
            }
        }
        true
    }

    fn record_sent(&self, events: &[(u64, u64)]) {
        let n = events.len() as u64;
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.stats.sent.fetch_add(n, Ordering::Relaxed);
        let mut set = self.sent_set.lock().unwrap_or_else(|e| e.into_inner());
        for (seq, _) in events {
            set.insert(*seq);
        }
    }

    /// How many more events the `--in-flight` window admits now (`max` without a window); waits
    /// while it is full. `None` when the send phase ended first.
    async fn admitted(&self, max: usize, stop: &CancellationToken) -> Option<usize> {
        let Some((limit, listen)) = &self.window else {
            return Some(max);
        };
        let per_event = listen.per_event.load(Ordering::Relaxed).max(1);
        loop {
            let retired = listen.window_unique() / per_event;
            let outstanding = self.sent.load(Ordering::Relaxed).saturating_sub(retired);
            if outstanding < *limit {
                return Some(max.min((*limit - outstanding) as usize));
            }
            // Woken when an event is complete; the timeout covers lost receipts (a listener
            // that dropped), so a stuck window still ends with the phase.
            tokio::select! {
                _ = listen.delivered.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = self.done.cancelled() => return None,
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// Waits until the next event is due; false if the send phase ended first.
    async fn wait_next(&self, schedule: &Option<Schedule>, stop: &CancellationToken) -> bool {
        let Some(s) = schedule else { return true };
        tokio::select! {
            _ = tokio::time::sleep_until(s.next_due().into()) => true,
            _ = self.done.cancelled() => false,
            _ = stop.cancelled() => false,
        }
    }
}

/// One WebSocket publisher: sends on schedule, reads (and discards) what comes back; hands the
/// connection back open when its sending is over.
pub(super) async fn publish_ws(
    sh: Arc<Publish>,
    j: usize,
    ws: Ws,
    stop: CancellationToken,
) -> ((), Ended) {
    let (mut sink, stream) = ws.split();
    let reading = CancellationToken::new();
    let mut reader = tokio::spawn(drain_reads(
        stream,
        sh.stats.clone(),
        sh.run.clone(),
        reading.clone(),
    ));
    let ended = async {
        let Some(start) = sh.gate.wait(&stop).await else {
            return Ended::Finished;
        };
        let mut schedule = sh.schedule(start, j);
        let mut batch = Vec::with_capacity(WS_BATCH);
        loop {
            if sh.done.is_cancelled() || stop.is_cancelled() {
                return Ended::Finished;
            }
            batch.clear();
            let Some(admitted) = sh.admitted(WS_BATCH, &stop).await else {
                return Ended::Finished;
            };
            let more = sh.take_due(&mut schedule, admitted, &mut batch);
            if batch.is_empty() {
                if !more || !sh.wait_next(&schedule, &stop).await {
                    return Ended::Finished;
                }
                continue;
            }
            let write = async {
                for (seq, t) in &batch {
                    let text = sh.encode(*seq, *t);
                    sink.feed(Message::text(text)).await?;
                }
                sink.flush().await
            };
            let written = tokio::select! {
                r = write => Some(r),
                _ = stop.cancelled() => None,
            };
            match written {
                None => return Ended::Finished,
                Some(Err(e)) => {
                    sh.stats.errors_n("send_failed", batch.len() as u64);
                    return Ended::Dropped(client::error_label(&e));
                }
                Some(Ok(())) => sh.record_sent(&batch),
            }
            if !more {
                return Ended::Finished;
            }
            // At `max` rate there is never a wait: let the other tasks of this worker run.
            tokio::task::yield_now().await;
        }
    }
    .await;
    if let Ended::Finished = ended {
        // Still open: take the reading half back and hand the whole connection back.
        reading.cancel();
        if let Ok(Ok(Some(stream))) = tokio::time::timeout(client::CLOSE_TIMEOUT, &mut reader).await
        {
            if let Ok(ws) = stream.reunite(sink) {
                return ((), Ended::Open(Box::new(ws)));
            }
        }
        return ((), Ended::Finished);
    }
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, sink.close()).await;
    if tokio::time::timeout(client::CLOSE_TIMEOUT, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    ((), ended)
}

/// Reads a publisher's incoming side so the server never blocks on it; counts error events
/// (the server rejecting what was sent). Returns the stream when `stop` comes first (the
/// connection is still open), `None` when the connection ended.
async fn drain_reads<S>(
    mut stream: S,
    stats: Arc<Stats>,
    run: String,
    stop: CancellationToken,
) -> Option<S>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => return Some(stream),
            i = client::recv(&mut stream) => i,
        };
        match incoming {
            Incoming::Text(text) => {
                if probe::classify(&text, &run) == Received::ErrorEvent {
                    stats.error("error_event");
                }
            }
            Incoming::Closed(_) => return None,
        }
    }
}

/// Where and how one HTTP publisher posts.
struct HttpSpec {
    target: Arc<crate::client::Target>,
    /// Publisher number (its place in the stagger).
    j: usize,
    /// Connection index (its source address).
    index: usize,
    path: String,
    batch: usize,
}

/// One HTTP publisher: `batch` events per `POST`, on schedule.
async fn publish_http(
    sh: Arc<Publish>,
    spec: HttpSpec,
    stop: CancellationToken,
    ready: mpsc::UnboundedSender<bool>,
) {
    let HttpSpec {
        target: ctx_target,
        j,
        index,
        path,
        batch,
    } = spec;
    let mut conn = match http::Publisher::connect(&ctx_target, index, &path).await {
        Ok(c) => {
            let _ = ready.send(true);
            c
        }
        Err(f) => {
            sh.stats.connect_failed(&f.reason());
            let _ = ready.send(false);
            return;
        }
    };
    let Some(start) = sh.gate.wait(&stop).await else {
        return;
    };
    let mut schedule = sh.schedule(start, j);
    let mut pending: Vec<(u64, u64)> = Vec::with_capacity(batch);
    let request_latency = sh.stats.secondary.as_ref();
    let mut retried = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let more = sh.take_due(&mut schedule, batch - pending.len(), &mut pending);
        let finishing = !more || sh.done.is_cancelled();
        if pending.len() < batch && !finishing {
            if !sh.wait_next(&schedule, &stop).await && stop.is_cancelled() {
                return;
            }
            continue;
        }
        if pending.is_empty() {
            return;
        }
        let body = if batch == 1 {
            sh.encode(pending[0].0, pending[0].1)
        } else {
            let events: Vec<String> = pending.iter().map(|(seq, t)| sh.encode(*seq, *t)).collect();
            format!("[{}]", events.join(","))
        };
        // The request is due when its last event is: measured from there, batching delay is
        // the events' latency, not the request's.
        let due = pending.last().map_or(0, |(_, t)| *t);
        let n = pending.len() as u64;
        let answer = tokio::select! {
            r = conn.post(body) => Some(r),
            _ = stop.cancelled() => None,
        };
        match answer {
            None => return,
            Some(Ok(status)) => {
                if let Some(l) = request_latency {
                    l.record_ns(probe::now_ns().saturating_sub(due));
                }
                if (200..300).contains(&status) {
                    sh.record_sent(&pending);
                } else {
                    sh.stats.errors_n(&format!("http_{status}"), n);
                }
            }
            Some(Err(http::PostError::Closed)) if !retried => {
                // The server closed the idle connection (after a refusal, or a keep-alive
                // limit) before this request went out: reconnect and send the batch again.
                match http::Publisher::connect(&ctx_target, index, &path).await {
                    Ok(c) => {
                        conn = c;
                        retried = true;
                        continue;
                    }
                    Err(f) => {
                        sh.stats.connect_failed(&f.reason());
                        sh.stats.errors_n("http_closed", n);
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                sh.stats.errors_n(e.label(), n);
                match http::Publisher::connect(&ctx_target, index, &path).await {
                    Ok(c) => conn = c,
                    Err(f) => {
                        sh.stats.connect_failed(&f.reason());
                        return;
                    }
                }
            }
        }
        retried = false;
        pending.clear();
        if finishing {
            return;
        }
    }
}

/// The running publishers, whichever the transport.
enum Senders {
    Ws(Fleet<()>),
    Http(JoinSet<()>, CancellationToken),
}

impl Senders {
    /// Lets publishers finish their current batch, then stops them.
    async fn finish(self, patience: Duration) {
        match self {
            Senders::Ws(fleet) => {
                fleet.finish(patience).await;
            }
            Senders::Http(mut set, stop) => {
                let limit = Instant::now() + patience;
                while let Ok(Some(_)) = tokio::time::timeout_at(limit.into(), set.join_next()).await
                {
                }
                stop.cancel();
                set.abort_all();
                while set.join_next().await.is_some() {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Warm-up

/// Something that can send one event: a WebSocket or an HTTP publisher.
enum WarmSender {
    Ws(
        futures_util::stream::SplitSink<Ws, Message>,
        tokio::task::JoinHandle<Option<futures_util::stream::SplitStream<Ws>>>,
    ),
    Http(http::Publisher),
}

impl WarmSender {
    async fn open(ctx: &RunCtx, transport: &Transport, index: usize) -> Result<Self, String> {
        match transport {
            Transport::Ws(role) => {
                let (ws, _) = ctx
                    .target
                    .connect(index, *role)
                    .await
                    .map_err(|e| e.to_string())?;
                let (sink, stream) = ws.split();
                let reader = tokio::spawn(drain_reads(
                    stream,
                    ctx.stats.clone(),
                    ctx.run_id.clone(),
                    CancellationToken::new(),
                ));
                Ok(WarmSender::Ws(sink, reader))
            }
            Transport::Http { path, .. } => http::Publisher::connect(&ctx.target, index, path)
                .await
                .map(WarmSender::Http)
                .map_err(|e| e.to_string()),
        }
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        match self {
            WarmSender::Ws(sink, _) => sink
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string()),
            WarmSender::Http(p) => match p.post(text).await {
                Ok(s) if (200..300).contains(&s) => Ok(()),
                Ok(s) => Err(format!("HTTP {s}")),
                Err(e) => Err(format!("{e:?}")),
            },
        }
    }

    async fn close(self) {
        if let WarmSender::Ws(mut sink, reader) = self {
            let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, sink.close()).await;
            reader.abort();
        }
    }
}

/// Sends warm-up events until all `listeners` have seen one. Returns a note when that failed.
async fn warmup(
    ctx: &RunCtx,
    transport: &Transport,
    encoder: &Encoder,
    listen: &Listen,
    listeners: usize,
    index: usize,
) -> Option<String> {
    if listeners == 0 {
        return None;
    }
    let mut sender = match WarmSender::open(ctx, transport, index).await {
        Ok(s) => s,
        Err(e) => return Some(format!("warm-up skipped: could not open a sender ({e})")),
    };
    let limit = Instant::now() + WARMUP_LIMIT + Duration::from_millis(listeners as u64 / 10);
    let mut resend = WARMUP_RESEND;
    let mut next_send = Instant::now();
    let mut k = 0u64;
    let mut note = None;
    loop {
        let notified = listen.warm_notify.notified();
        if listen.warmed.load(Ordering::Relaxed) >= listeners {
            break;
        }
        let now = Instant::now();
        if now >= limit || ctx.cancel.is_cancelled() {
            note = Some(format!(
                "warm-up incomplete: {} of {} listeners saw a warm-up event within {:?}; \
                 early events may have missed the others",
                listen.warmed.load(Ordering::Relaxed),
                listeners,
                WARMUP_LIMIT
            ));
            break;
        }
        if now >= next_send {
            if let Err(e) = sender
                .send(encoder.encode(Kind::Warmup, k, probe::now_ns(), None))
                .await
            {
                note = Some(format!("warm-up send failed: {e}"));
                break;
            }
            k += 1;
            next_send = now + resend;
            resend = (resend * 2).min(WARMUP_RESEND_MAX);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(next_send.min(limit).into()) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    }
    sender.close().await;
    note
}

// ---------------------------------------------------------------------------------------------
// The scenario

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

/// A note when an open-loop sender fell behind its schedule: fewer events went out than the
/// rate asked for, because the server (or this machine) could not take them. The latencies of
/// the events that did go out include that delay.
pub(super) fn behind_note(
    rate: Rate,
    measured: Duration,
    sent: u64,
    stopped: StopReason,
) -> Option<String> {
    let Rate::PerSecond(r) = rate else {
        return None;
    };
    if stopped != StopReason::Duration {
        return None;
    }
    let scheduled = (r * measured.as_secs_f64()).floor() as u64;
    (sent + sent / 100 + 1 < scheduled).then(|| {
        format!(
            "publishers fell behind: {sent} of {scheduled} scheduled events were sent \
             ({:.0}%); the latencies include the wait",
            sent as f64 * 100.0 / scheduled as f64
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Pause accounting

/// Entries in `pause.details` at most (the paused listeners first), so a run of 100,000
/// listeners keeps a JSON of a sensible size; the group figures always cover every listener.
const MAX_DETAILS: usize = 1000;

/// The paused and the steady listeners' figures, apart.
fn pause_summary(
    args: &PauseArgs,
    paused_n: usize,
    tallies: &[Tally],
    sent: u64,
    sent_set: &SeqSet,
    start: Instant,
) -> PauseSummary {
    let mut steady = ListenerGroup::default();
    let mut paused = ListenerGroup::default();
    let mut catch_ups = Vec::new();
    let mut resumed = 0;
    let mut details = Vec::new();
    let mut sorted: Vec<&Tally> = tallies.iter().filter(|t| t.connected).collect();
    sorted.sort_by_key(|t| (!t.paused, t.index));
    for t in sorted {
        let got = t.seen.count_common(sent_set);
        let missing = sent.saturating_sub(got);
        let ended = t.ended.as_ref().map(|(label, _)| label.as_str());
        let group = if t.paused { &mut paused } else { &mut steady };
        group.add(got, missing, sent, ended);
        if t.paused {
            if t.resumed_at.is_some() {
                resumed += 1;
            }
            if let Some(c) = t.caught_up {
                catch_ups.push(c.as_secs_f64() * 1000.0);
            }
        }
        if t.paused || missing > 0 || ended.is_some() {
            details.push(ListenerDetail {
                index: t.index,
                paused: t.paused,
                received: got,
                missing,
                ended: ended.map(str::to_owned),
                close_code: ended.and_then(close_code),
                ended_at_s: t.ended.as_ref().map(|(_, at)| signed_secs(start, *at)),
                paused_at_s: t.paused_at.map(|at| signed_secs(start, at)),
                catch_up_ms: t.caught_up.map(|c| c.as_secs_f64() * 1000.0),
            });
        }
    }
    steady.finish();
    paused.finish();
    catch_ups.sort_by(f64::total_cmp);
    paused.catch_up = Some(CatchUp {
        resumed,
        caught_up: catch_ups.len(),
        min_ms: catch_ups.first().copied(),
        p50_ms: catch_ups.get(catch_ups.len() / 2).copied(),
        max_ms: catch_ups.last().copied(),
    });
    let details_omitted = details.len().saturating_sub(MAX_DETAILS);
    details.truncate(MAX_DETAILS);
    PauseSummary {
        share: args.pause_share,
        paused_listeners: paused_n,
        at_s: args.pause_at.as_secs_f64(),
        for_s: args.pause_for.as_secs_f64(),
        rcvbuf_bytes: args.pause_rcvbuf,
        paused,
        steady,
        details,
        details_omitted,
    }
}

/// Seconds from `start` to `at`, negative when `at` came first.
fn signed_secs(start: Instant, at: Instant) -> f64 {
    if at >= start {
        (at - start).as_secs_f64()
    } else {
        -(start - at).as_secs_f64()
    }
}

/// The close code in an end label: `close_1013` is 1013; a close frame without a code is
/// reported as 1005 (as RFC 6455 names it); anything else had no close frame.
pub(crate) fn close_code(label: &str) -> Option<u16> {
    match label.strip_prefix("close_")? {
        "no_code" => Some(1005),
        code => code.parse().ok(),
    }
}

impl ListenerGroup {
    /// Adds one listener that received `got` of the `sent` events and ended as `ended`.
    fn add(&mut self, got: u64, missing: u64, sent: u64, ended: Option<&str>) {
        self.listeners += 1;
        self.expected += sent;
        self.received += got;
        self.missing += missing;
        if missing == 0 && sent > 0 {
            self.complete_listeners += 1;
        }
        if missing > 0 {
            self.lossy_listeners += 1;
            self.max_missing = self.max_missing.max(missing);
        }
        match ended {
            None => self.open_at_end += 1,
            Some(label) => match close_code(label) {
                Some(code) => *self.closed_by_server.entry(code.to_string()).or_default() += 1,
                None => {
                    self.no_close_frame += 1;
                    *self.no_close_frame_by.entry(label.to_owned()).or_default() += 1;
                }
            },
        }
    }

    fn finish(&mut self) {
        self.completeness = if self.expected > 0 {
            self.received as f64 / self.expected as f64
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn close_labels_give_codes() {
        assert_eq!(close_code("close_1013"), Some(1013));
        assert_eq!(close_code("close_no_code"), Some(1005));
        assert_eq!(close_code("eof"), None);
        assert_eq!(close_code("protocol"), None);
    }

    #[test]
    fn groups_count_losses_and_ends() {
        let mut g = ListenerGroup::default();
        g.add(10, 0, 10, None);
        g.add(4, 6, 10, Some("close_1013"));
        g.add(7, 3, 10, Some("eof"));
        g.finish();
        assert_eq!(
            (g.listeners, g.expected, g.received, g.missing),
            (3, 30, 21, 9)
        );
        assert_eq!(
            (g.complete_listeners, g.lossy_listeners, g.max_missing),
            (1, 2, 6)
        );
        assert_eq!(g.closed_by_server, BTreeMap::from([("1013".to_owned(), 1)]));
        assert_eq!((g.no_close_frame, g.open_at_end), (1, 1));
        assert_eq!(g.no_close_frame_by, BTreeMap::from([("eof".to_owned(), 1)]));
        assert!((g.completeness - 0.7).abs() < 1e-9);
    }

    #[test]
    fn catch_up_counts_the_backlog_only() {
        let mut sent = SeqSet::default();
        for seq in 0..5 {
            sent.insert(seq);
        }
        let plan = PausePlan {
            at: Duration::ZERO,
            length: Duration::ZERO,
            gate: Gate::new(),
            sent_set: Arc::new(Mutex::new(sent)),
            backlog: OnceLock::new(),
        };
        let mut t = Tally::new(0, true);
        t.seen.insert(0);
        t.seen.insert(1);
        t.resume(&plan);
        assert!(t.caught_up.is_none());
        for seq in [2, 7, 3] {
            t.seen.insert(seq);
            t.on_new(seq);
        }
        assert!(
            t.caught_up.is_none(),
            "event 4 is still missing; 7 is not in the backlog"
        );
        t.seen.insert(4);
        t.on_new(4);
        assert!(t.caught_up.is_some());
    }
}
