//! The publishers: WebSocket connections ([`publish_ws`]) or HTTP clients ([`publish_http`])
//! that send on the open-loop schedule, stamp each event with its intended send time, and
//! record which events went out (the completeness reference); `--in-flight` holds them back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::listeners::Listen;
use super::plan::Plan;
use super::Transport;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::{Gate, RunCtx, Schedule, SeqSet, Sequence};
use crate::fleet::{self, Ended, Fleet, FleetSpec};
use crate::http;
use crate::mix::Mix;
use crate::probe::{self, Encoder, Kind, Received};
use crate::stages::Stages;
use crate::stats::Stats;

/// Events written per flush on a WebSocket publisher: enough to amortise the syscall at high
/// rates, small enough that a batch never delays the schedule noticeably.
const WS_BATCH: usize = 64;

/// What the publishers share.
pub(crate) struct Publish {
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
    /// One publisher that sends `encoder`'s event at `rate` events per second (`None`: as fast
    /// as it can) from the opening of `gate` until `done`, numbering its events from 0. A
    /// broadcast or publish run changes the fields that say more (publishers, workers,
    /// `--messages`, a mix, stages, a window).
    pub(crate) fn new(
        ctx: &RunCtx,
        gate: Gate,
        done: CancellationToken,
        encoder: Encoder,
        rate: Option<f64>,
    ) -> Self {
        Publish {
            gate,
            done: done.clone(),
            seq: Sequence::new(None, done),
            encoder,
            stats: ctx.stats.clone(),
            run: ctx.run_id.clone(),
            rate,
            publishers: 1,
            sent: AtomicU64::new(0),
            sent_set: Arc::new(Mutex::new(SeqSet::default())),
            window: None,
            seq_stride: 1,
            seq_offset: 0,
            mix: None,
            stages: None,
        }
    }

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
pub(crate) async fn publish_ws(
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
    let ended = send_batches(&sh, j, &mut sink, &stop).await;
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

/// Publisher `j`'s sending, from the opening of the gate: batches of the events due (as many as
/// the `--in-flight` window admits), until the send phase or the total is over
/// ([`Ended::Finished`]) or a write fails ([`Ended::Dropped`]).
async fn send_batches(
    sh: &Publish,
    j: usize,
    sink: &mut SplitSink<Ws, Message>,
    stop: &CancellationToken,
) -> Ended {
    let Some(start) = sh.gate.wait(stop).await else {
        return Ended::Finished;
    };
    let mut schedule = sh.schedule(start, j);
    let mut batch = Vec::with_capacity(WS_BATCH);
    loop {
        if sh.done.is_cancelled() || stop.is_cancelled() {
            return Ended::Finished;
        }
        batch.clear();
        let Some(admitted) = sh.admitted(WS_BATCH, stop).await else {
            return Ended::Finished;
        };
        let more = sh.take_due(&mut schedule, admitted, &mut batch);
        if batch.is_empty() {
            if !more || !sh.wait_next(&schedule, stop).await {
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

/// Reads a publisher's incoming side so the server never blocks on it; counts error events
/// (the server rejecting what was sent). Returns the stream when `stop` comes first (the
/// connection is still open), `None` when the connection ended.
pub(super) async fn drain_reads<S>(
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
    pub(super) target: Arc<crate::client::Target>,
    /// Publisher number (its place in the stagger).
    pub(super) j: usize,
    /// Connection index (its source address).
    pub(super) index: usize,
    pub(super) path: String,
    pub(super) batch: usize,
}

/// One HTTP publisher: `batch` events per `POST`, on schedule.
async fn publish_http(
    sh: Arc<Publish>,
    spec: HttpSpec,
    stop: CancellationToken,
    ready: mpsc::UnboundedSender<bool>,
) {
    let mut conn = match http::Publisher::connect(&spec.target, spec.index, &spec.path).await {
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
    let batch = spec.batch;
    let mut schedule = sh.schedule(start, spec.j);
    let mut pending: Vec<(u64, u64)> = Vec::with_capacity(batch);
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
        let answer = tokio::select! {
            r = conn.post(sh.body(&pending, batch)) => r,
            _ = stop.cancelled() => return,
        };
        match sh.posted(&spec, &mut conn, answer, &pending, retried).await {
            Posted::Done => {}
            Posted::Again => {
                retried = true;
                continue;
            }
            Posted::Stop => return,
        }
        retried = false;
        pending.clear();
        if finishing {
            return;
        }
    }
}

/// What an HTTP publisher does after a request.
enum Posted {
    /// The request was answered (or failed and the connection is new): on to the next batch.
    Done,
    /// The server had closed the idle connection before the request went out: send the batch
    /// again on a new connection.
    Again,
    /// No connection any more: this publisher is done.
    Stop,
}

impl Publish {
    /// The body of one request: the event, or the batch as a JSON array.
    fn body(&self, pending: &[(u64, u64)], batch: usize) -> String {
        if batch == 1 {
            self.encode(pending[0].0, pending[0].1)
        } else {
            let events: Vec<String> = pending
                .iter()
                .map(|(seq, t)| self.encode(*seq, *t))
                .collect();
            format!("[{}]", events.join(","))
        }
    }

    /// Accounts the answer to a request of the `pending` events (`retried`: this is their
    /// second try), and reconnects when the connection failed.
    async fn posted(
        &self,
        spec: &HttpSpec,
        conn: &mut http::Publisher,
        answer: Result<u16, http::PostError>,
        pending: &[(u64, u64)],
        retried: bool,
    ) -> Posted {
        let n = pending.len() as u64;
        let reconnect = || http::Publisher::connect(&spec.target, spec.index, &spec.path);
        match answer {
            Ok(status) => {
                // The request is due when its last event is: measured from there, batching
                // delay is the events' latency, not the request's.
                let due = pending.last().map_or(0, |(_, t)| *t);
                if let Some(l) = self.stats.secondary.as_ref() {
                    l.record_ns(probe::now_ns().saturating_sub(due));
                }
                if (200..300).contains(&status) {
                    self.record_sent(pending);
                } else {
                    self.stats.errors_n(&format!("http_{status}"), n);
                }
                Posted::Done
            }
            Err(http::PostError::Closed) if !retried => {
                // The server closed the idle connection (after a refusal, or a keep-alive
                // limit) before this request went out: reconnect and send the batch again.
                match reconnect().await {
                    Ok(c) => {
                        *conn = c;
                        Posted::Again
                    }
                    Err(f) => {
                        self.stats.connect_failed(&f.reason());
                        self.stats.errors_n("http_closed", n);
                        Posted::Stop
                    }
                }
            }
            Err(e) => {
                self.stats.errors_n(e.label(), n);
                match reconnect().await {
                    Ok(c) => {
                        *conn = c;
                        Posted::Done
                    }
                    Err(f) => {
                        self.stats.connect_failed(&f.reason());
                        Posted::Stop
                    }
                }
            }
        }
    }
}

/// The running publishers, whichever the transport.
pub(super) enum Senders {
    Ws(Fleet<()>),
    Http(JoinSet<()>, CancellationToken),
}

impl Senders {
    /// Starts this worker's publishers and waits until they are connected (or the ramp
    /// limit): the running publishers, and how many are ready.
    pub(super) async fn launch(
        ctx: &RunCtx,
        plan: &Plan<'_>,
        publish: &Arc<Publish>,
    ) -> (Senders, usize) {
        match &plan.transport {
            Transport::Ws(role) => Self::launch_ws(ctx, plan, *role, publish).await,
            Transport::Http { batch, path } => {
                Self::launch_http(ctx, plan, (*batch, path), publish).await
            }
        }
    }

    async fn launch_ws(
        ctx: &RunCtx,
        plan: &Plan<'_>,
        role: Role,
        publish: &Arc<Publish>,
    ) -> (Senders, usize) {
        let (first, count) = plan.publishers;
        let listeners = plan.args.listeners;
        let spec = FleetSpec::paced(role, listeners + first, count);
        // `index - listeners` is the publisher's number over all workers (its stagger slot).
        let p = publish.clone();
        let mut fleet = fleet::launch(
            ctx,
            spec,
            |_| (),
            move |index, ws, (), stop| publish_ws(p.clone(), index - listeners, ws, stop),
        );
        let r = fleet.wait_ramp(ctx).await;
        (Senders::Ws(fleet), r.established)
    }

    async fn launch_http(
        ctx: &RunCtx,
        plan: &Plan<'_>,
        (batch, path): (usize, &str),
        publish: &Arc<Publish>,
    ) -> (Senders, usize) {
        let (first, count) = plan.publishers;
        let stop = ctx.cancel.child_token();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut set = JoinSet::new();
        for j in first..first + count {
            let spec = HttpSpec {
                target: ctx.target.clone(),
                j,
                index: plan.args.listeners + j,
                path: path.to_owned(),
                batch,
            };
            set.spawn(publish_http(
                publish.clone(),
                spec,
                stop.clone(),
                tx.clone(),
            ));
        }
        drop(tx);
        let limit = ctx.ramp_limit(count);
        let (mut ready, mut settled) = (0, 0);
        while settled < count {
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

    /// Lets publishers finish their current batch, then stops them.
    pub(super) async fn finish(self, patience: Duration) {
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
