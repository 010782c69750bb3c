//! The publisher: one publisher connection that sends warm-up events until sending starts, then
//! numbered broadcast events at `--rate`; it reconnects (with backoff) when its instance goes
//! away, and hands back the set of events whose write succeeded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sleep_until;
use crate::client::{self, Incoming, Role, Target, Ws};
use crate::context::{Schedule, SeqSet};
use crate::fleet::Ended;
use crate::probe::{self, Encoder, Kind};
use crate::stats::Stats;

/// A warm-up event is sent this often until every listener has seen one.
const WARMUP_EVERY: Duration = Duration::from_millis(250);

/// What the publisher hands back.
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) sent: SeqSet,
    pub(super) reconnects: u64,
    /// Events whose write failed (the connection broke): not counted as published.
    pub(super) failed: u64,
}

pub(super) struct PublisherSpec {
    pub(super) target: Arc<Target>,
    pub(super) stats: Arc<Stats>,
    pub(super) encoder: Encoder,
    pub(super) rate: f64,
    pub(super) index: usize,
    pub(super) backoff: (Duration, Duration),
    /// `None` during the warm-up; the start of sending once it is set.
    pub(super) start: watch::Receiver<Option<Instant>>,
    /// Cancelled when sending is over.
    pub(super) done: CancellationToken,
}

/// What the publisher sends next; kept across its reconnects.
struct Sending {
    start: watch::Receiver<Option<Instant>>,
    /// Set once sending starts.
    schedule: Option<Schedule>,
    next_seq: u64,
    warm_seq: u64,
    next_warm: Instant,
}

/// What the publisher does after one connection.
enum Next {
    /// Sending is over (or the run ended): stop.
    Stop,
    /// The connection broke: connect again.
    Reconnect,
}

pub(super) async fn publisher(p: PublisherSpec) -> Published {
    let mut out = Published::default();
    let mut sending = Sending {
        start: p.start.clone(),
        schedule: None,
        next_seq: 0,
        warm_seq: 0,
        next_warm: Instant::now(),
    };
    let mut connected_once = false;
    while let Some(ws) = connect(&p).await {
        if connected_once {
            out.reconnects += 1;
            p.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        connected_once = true;
        if let Next::Stop = send_on(&p, ws, &mut sending, &mut out).await {
            break;
        }
    }
    out
}

/// Connects, with backoff between failed attempts; `None` once sending is over.
async fn connect(p: &PublisherSpec) -> Option<Ws> {
    let mut attempt = 0u32;
    while !p.done.is_cancelled() {
        let connected = tokio::select! {
            r = p.target.connect_with_query(p.index, Role::Publisher, None) => r,
            _ = p.done.cancelled() => return None,
        };
        match connected {
            Ok((ws, handshake)) => {
                p.stats.connected(handshake);
                return Some(ws);
            }
            Err(failure) => {
                p.stats.connect_failed(&failure.reason());
                let base = p
                    .backoff
                    .0
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(p.backoff.1);
                attempt += 1;
                if !sleep_until(Instant::now() + base, &p.done).await {
                    return None;
                }
            }
        }
    }
    None
}

/// Sends on one connection (warm-up events until sending starts, then the schedule) until
/// sending is over or the connection breaks.
async fn send_on(p: &PublisherSpec, mut ws: Ws, s: &mut Sending, out: &mut Published) -> Next {
    loop {
        if s.schedule.is_none() {
            if let Some(at) = *s.start.borrow_and_update() {
                s.schedule = Some(Schedule::new(at, Duration::ZERO, p.rate));
            }
        }
        let next = match &s.schedule {
            Some(schedule) => schedule.next_due(),
            None => s.next_warm,
        };
        let waiting = s.schedule.is_none();
        tokio::select! {
            _ = p.done.cancelled() => {
                client::close(ws, client::CLOSE_TIMEOUT).await;
                p.stats.disconnected();
                return Next::Stop;
            }
            _ = s.start.changed(), if waiting => {}
            i = client::recv(&mut ws) => {
                if let Incoming::Closed(reason) = i {
                    p.stats.disconnected();
                    p.stats.dropped(&format!("publisher_{reason}"));
                    return Next::Reconnect;
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {
                if let Err(next) = send_due(p, &mut ws, s.due(), out).await {
                    return next;
                }
            }
        }
    }
}

impl Sending {
    /// The events due now: the scheduled ones once sending started, else one warm-up event.
    fn due(&mut self) -> Vec<(Kind, u64, Instant)> {
        let mut due = Vec::new();
        match &mut self.schedule {
            Some(s) => {
                let now = Instant::now();
                while let Some(at) = s.take_due(now) {
                    due.push((Kind::Delivery, self.next_seq, at));
                    self.next_seq += 1;
                }
            }
            None => {
                due.push((Kind::Warmup, self.warm_seq, Instant::now()));
                self.warm_seq += 1;
                self.next_warm = Instant::now() + WARMUP_EVERY;
            }
        }
        due
    }
}

/// Writes the `due` events; the events written are published. `Err` when the connection
/// ended meanwhile.
async fn send_due(
    p: &PublisherSpec,
    ws: &mut Ws,
    due: Vec<(Kind, u64, Instant)>,
    out: &mut Published,
) -> Result<(), Next> {
    for (kind, seq, at) in due {
        let text = p.encoder.encode(kind, seq, probe::ns_at(at), None);
        match crate::scenario::send_text(ws, text, &p.done).await {
            Ok(()) => {
                if kind == Kind::Delivery {
                    out.sent.insert(seq);
                    p.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Ended::Finished | Ended::Open(_)) => {
                p.stats.disconnected();
                return Err(Next::Stop);
            }
            Err(Ended::Dropped(reason)) => {
                out.failed += u64::from(kind == Kind::Delivery);
                p.stats.disconnected();
                p.stats.dropped(&format!("publisher_{reason}"));
                return Err(Next::Reconnect);
            }
        }
    }
    Ok(())
}
