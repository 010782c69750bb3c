//! What every scenario run shares: the target, its statistics, the stop signal, and the small
//! synchronisation helpers (start gate, sequence numbers, send schedule) that scenarios combine.
//!
//! There is one stop path, as in mini-redis: a run-wide `CancellationToken` that the hard
//! deadline and Ctrl-C cancel. Every wait in every scenario also watches it, so a run that is
//! told to stop wraps up (closes, summarises) within a bounded grace instead of being killed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::Target;
use crate::progress::Tracker;
use crate::stats::Stats;
use crate::summary::DeliverySummary;

/// How long connections get to close politely at the end before they are dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One scenario run's shared state.
pub struct RunCtx {
    pub target: Arc<Target>,
    pub stats: Arc<Stats>,
    /// Cancelled by the hard deadline or an interrupt: wrap up now.
    pub cancel: CancellationToken,
    /// Embedded in every probe; unique per scenario run.
    pub run_id: String,
    pub connect_rate: f64,
    pub tracker: Tracker,
    pub(crate) deadline_hit: Arc<AtomicBool>,
    /// `--server-pid`: sampled at every phase change.
    pub server: Option<Arc<crate::server::ServerProbe>>,
    /// `--workers`: this process's part of the plan (0 of 1 alone).
    pub shard: crate::workers::Shard,
    /// `--workers`: the line to the parent (barriers, sent sets); `None` alone.
    pub link: Option<Arc<crate::workers::Link>>,
    /// `mixed`: connections carried over between phases; `None` otherwise.
    pub pool: Option<Arc<crate::pool::Pool>>,
}

impl RunCtx {
    /// Shows the current phase (`ramp`, `send`, `drain`, ...) on the progress bar.
    pub fn phase(&self, name: &str) {
        self.tracker.phase(name);
        if let Some(server) = &self.server {
            server.enter(name);
        }
    }

    /// The reason to report: `natural` unless the run was cut short.
    pub fn stopped_by(&self, natural: StopReason) -> StopReason {
        if !self.cancel.is_cancelled() {
            natural
        } else if self.deadline_hit.load(Ordering::Relaxed) {
            StopReason::Deadline
        } else {
            StopReason::Interrupted
        }
    }

    /// Latest time by which a ramp of `n` connections must be settled: the paced schedule plus
    /// one connect timeout for the last connections, plus a little slack.
    pub fn ramp_limit(&self, n: usize) -> Instant {
        Instant::now()
            + ramp_time(n, self.connect_rate)
            + self.target.connect_timeout()
            + Duration::from_secs(1)
    }

    /// Waits until every worker has reached the step `step` of this run (at once when alone);
    /// false if the run was cancelled first.
    pub async fn barrier(&self, step: &str) -> bool {
        match &self.link {
            Some(link) => {
                link.barrier(&format!("{}/{step}", self.run_id), &self.cancel)
                    .await
            }
            None => !self.cancel.is_cancelled(),
        }
    }

    /// Sleeps until `at`; returns false if the run was cancelled first.
    pub async fn sleep_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => true,
            _ = self.cancel.cancelled() => false,
        }
    }
}

/// Time the paced ramp of `n` connections takes at `rate` per second.
pub fn ramp_time(n: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate.max(f64::MIN_POSITIVE))
}

/// Why the measured phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Its `--duration` (or `--hold`) elapsed.
    Duration,
    /// Its count (`--requests`, `--messages`) was reached.
    Count,
    /// The hard deadline passed (the server or the network stopped answering).
    Deadline,
    /// Ctrl-C.
    Interrupted,
    /// Every phase ran (mixed).
    Completed,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Duration => "duration elapsed",
            StopReason::Count => "count reached",
            StopReason::Deadline => "HARD DEADLINE",
            StopReason::Interrupted => "interrupted",
            StopReason::Completed => "completed",
        })
    }
}

/// What a scenario reports besides the shared statistics.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target_connections: usize,
    pub ramp: Duration,
    pub measured: Duration,
    pub stopped_by: StopReason,
    pub delivery: Option<DeliverySummary>,
    pub notes: Vec<String>,
    /// `failover`: what the disruption cost the listeners.
    pub failover: Option<crate::summary::FailoverSummary>,
}

/// Opens once, for everyone: the start of the measured phase, after the ramp.
///
/// Connections that finish their handshake early wait here, so every connection starts sending
/// at the same moment and `--duration` measures the steady state, not the ramp.
#[derive(Clone)]
pub struct Gate {
    tx: Arc<watch::Sender<Option<Instant>>>,
    rx: watch::Receiver<Option<Instant>>,
}

impl Gate {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(None);
        Gate {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Opens the gate now and returns the start time.
    pub fn open(&self) -> Instant {
        let now = Instant::now();
        self.tx.send_replace(Some(now));
        now
    }

    /// Waits for the gate; `None` if `stop` came first.
    pub async fn wait(&self, stop: &CancellationToken) -> Option<Instant> {
        let mut rx = self.rx.clone();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|v| *v),
            _ = stop.cancelled() => None,
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands out sequence numbers up to an optional total; cancels `done` when the total is reached.
pub struct Sequence {
    next: AtomicU64,
    limit: Option<u64>,
    done: CancellationToken,
}

impl Sequence {
    pub fn new(limit: Option<u64>, done: CancellationToken) -> Self {
        Sequence {
            next: AtomicU64::new(0),
            limit,
            done,
        }
    }

    /// The next number, or `None` once the total is used up.
    pub fn take(&self) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(limit) if n >= limit => {
                self.done.cancel();
                None
            }
            Some(limit) if n + 1 == limit => {
                self.done.cancel();
                Some(n)
            }
            _ => Some(n),
        }
    }

    /// Numbers handed out so far (may exceed the limit by the refused attempts).
    pub fn issued(&self) -> u64 {
        let n = self.next.load(Ordering::Relaxed);
        self.limit.map_or(n, |l| n.min(l))
    }
}

/// An open-loop send schedule: event `i` is due at `start + offset + i * interval`.
///
/// Latency is measured from these due times, not from when the sender got round to sending, so a
/// stalled sender shows up as latency instead of silently sending less (coordinated omission).
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    next: u64,
    /// `--stage`: the rate follows the stages; this sender takes every `step`-th event of the
    /// whole schedule, starting at number `phase`.
    staged: Option<(Arc<crate::stages::Stages>, u64, u64)>,
}

impl Schedule {
    /// `rate` events per second starting at `start + offset`.
    pub fn new(start: Instant, offset: Duration, rate: f64) -> Self {
        Schedule {
            start: start + offset,
            interval: Duration::from_secs_f64(1.0 / rate.max(1e-9)),
            next: 0,
            staged: None,
        }
    }

    /// Events `phase`, `phase + step`, ... of a schedule whose rate follows `stages`.
    pub fn staged(
        start: Instant,
        stages: Arc<crate::stages::Stages>,
        step: u64,
        phase: u64,
    ) -> Self {
        Schedule {
            start,
            interval: Duration::ZERO,
            next: 0,
            staged: Some((stages, step.max(1), phase)),
        }
    }

    /// When the next event is due (far in the future once the stages are over).
    pub fn next_due(&self) -> Instant {
        match &self.staged {
            Some((stages, step, phase)) => match stages.due(self.next * step + phase) {
                Some(at) => self.start + at,
                None => self.start + stages.total() + Duration::from_secs(24 * 3600),
            },
            None => self.start + self.interval.mul_f64(self.next as f64),
        }
    }

    /// Takes the next event if it is due at or before `now`, returning its due time.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next_due();
        if due <= now {
            self.next += 1;
            Some(due)
        } else {
            None
        }
    }
}

/// A growable bit set of sequence numbers: one bit per event per receiver, so counting receipts
/// per sequence stays exact and cheap even for thousands of listeners.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was already there (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let mask = 1u64 << b;
        if self.words[w] & mask != 0 {
            return false;
        }
        self.words[w] |= mask;
        self.len += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many members are also in `other`.
    pub fn count_common(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }

    /// The members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u64)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }

    /// The set as little-endian words (to cross a process boundary).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The inverse of [`SeqSet::to_bytes`]; trailing bytes short of a word are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let len = words.iter().map(|w| u64::from(w.count_ones())).sum();
        SeqSet { words, len }
    }

    pub fn union_with(&mut self, other: &SeqSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.len = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_stops_at_its_limit_and_signals_done() {
        let done = CancellationToken::new();
        let seq = Sequence::new(Some(2), done.clone());
        assert_eq!(seq.take(), Some(0));
        assert!(!done.is_cancelled());
        assert_eq!(seq.take(), Some(1));
        assert!(done.is_cancelled());
        assert_eq!(seq.take(), None);
        assert_eq!(seq.issued(), 2);
    }

    #[test]
    fn schedule_releases_events_at_their_due_time() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::ZERO, 10.0);
        assert_eq!(s.take_due(start), Some(start));
        assert_eq!(s.take_due(start), None);
        let later = start + Duration::from_millis(250);
        assert!(s.take_due(later).is_some());
        assert!(s.take_due(later).is_some());
        assert!(s.take_due(later).is_none(), "third event is due at 300 ms");
    }

    #[test]
    fn seq_set_counts_duplicates_and_intersections() {
        let mut a = SeqSet::default();
        assert!(a.insert(3));
        assert!(!a.insert(3));
        assert!(a.insert(200));
        assert!(a.contains(3) && a.contains(200));
        assert!(!a.contains(4) && !a.contains(100_000));
        let mut b = SeqSet::default();
        b.insert(3);
        assert_eq!(a.count_common(&b), 1);
        b.union_with(&a);
        assert_eq!(b.len(), 2);
        let c = SeqSet::from_bytes(&b.to_bytes());
        assert_eq!(c.iter().collect::<Vec<_>>(), [3, 200]);
    }

    #[tokio::test]
    async fn gate_releases_waiters_and_stop_wins() {
        let gate = Gate::new();
        let stop = CancellationToken::new();
        let waiter = {
            let (gate, stop) = (gate.clone(), stop.clone());
            tokio::spawn(async move { gate.wait(&stop).await })
        };
        let opened = gate.open();
        assert_eq!(waiter.await.expect("joins"), Some(opened));
        stop.cancel();
        assert!(Gate::new().wait(&stop).await.is_none());
    }
}
