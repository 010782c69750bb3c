//! Counters, HDR latency histograms and per-window figures of one scenario run.
//!
//! Every connection task records into one shared [`Stats`]. Counters are atomics; histograms sit
//! behind a `Mutex` each. That lock is taken once per recorded sample and held for a few
//! nanoseconds: with one tokio worker per core there are at most a couple of contenders, which
//! costs far less than the JSON decoding that precedes each sample. Each histogram is kept twice,
//! a run total and a window that the sampler swaps out every `--window`, so drift over time is
//! visible without storing every sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histograms hold microseconds from 1 µs to one hour with 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// A fresh, empty latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Locks a mutex, ignoring poisoning: a panicked recorder leaves a histogram that is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Percentiles of a histogram, in milliseconds, as shown in summaries and windows.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// `None` for an empty histogram: "no samples" is not "0 ms".
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

struct HistogramPair {
    total: Histogram<u64>,
    window: Histogram<u64>,
}

/// One latency measure (handshake, round trip, delivery, ...), total and current window.
pub struct Latency {
    name: &'static str,
    corrected: bool,
    inner: Mutex<HistogramPair>,
}

impl Latency {
    /// `corrected` says that samples are measured from the intended send time (open loop), so the
    /// figures include the time a late sender spent catching up (coordinated omission corrected).
    pub fn new(name: &'static str, corrected: bool) -> Self {
        Latency {
            name,
            corrected,
            inner: Mutex::new(HistogramPair {
                total: new_histogram(),
                window: new_histogram(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn corrected(&self) -> bool {
        self.corrected
    }

    /// Records one sample given in nanoseconds (rounded up to whole microseconds).
    pub fn record_ns(&self, ns: u64) {
        let us = ns.div_ceil(1000).max(1);
        let mut pair = lock(&self.inner);
        pair.total.saturating_record(us);
        pair.window.saturating_record(us);
    }

    pub fn record(&self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds a histogram gathered locally by one task (used where one lock per sample is too many).
    pub fn merge(&self, local: &Histogram<u64>) {
        let mut pair = lock(&self.inner);
        // Both share the same bounds, so addition cannot fail; a failure would only lose samples.
        let _ = pair.total.add(local);
        let _ = pair.window.add(local);
    }

    fn take_window(&self) -> Histogram<u64> {
        let mut pair = lock(&self.inner);
        let window = pair.window.clone();
        pair.window.reset();
        window
    }

    /// A copy of the run total.
    pub fn total(&self) -> Histogram<u64> {
        lock(&self.inner).total.clone()
    }
}

/// Figures of one time window, for drift and the plots over time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Window {
    /// End of the window, seconds since the run started.
    pub t_s: f64,
    /// Window length in seconds (the last one may be shorter).
    pub len_s: f64,
    pub open: i64,
    pub connected: u64,
    pub connect_failures: u64,
    pub drops: u64,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub sent_per_s: f64,
    pub received_per_s: f64,
    /// The primary latency measure over this window.
    pub latency: Option<Percentiles>,
    /// The secondary measure (if the scenario has one) over this window.
    pub secondary: Option<Percentiles>,
}

#[derive(Default, Clone, Copy)]
struct Marks {
    at: f64,
    connected: u64,
    failures: u64,
    drops: u64,
    sent: u64,
    received: u64,
    errors: u64,
}

/// Everything one scenario run measures.
pub struct Stats {
    started: Instant,
    /// Connections established (each reconnect counts again).
    pub established: AtomicU64,
    /// Connection attempts that failed, by reason in `failures`.
    pub failed: AtomicU64,
    /// Established connections that ended before the run stopped them, by reason in `drops`.
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    /// Of `established`: connections taken over from the phase before (mixed), no handshake.
    pub reused: AtomicU64,
    open: AtomicI64,
    peak_open: AtomicI64,
    /// Messages the scenario sent (events, for HTTP publishing), counted once written.
    pub sent: AtomicU64,
    /// Probe messages received and accounted (replies, deliveries).
    pub received: AtomicU64,
    /// Errors other than connection failures and drops, by kind in `errors_by_kind`.
    pub errors: AtomicU64,
    pub handshake: Latency,
    pub primary: Latency,
    pub secondary: Option<Latency>,
    /// A further measure reported in the summary but not per window (`delivery_paused`).
    pub extra: Option<Latency>,
    failures: Mutex<BTreeMap<String, u64>>,
    drops: Mutex<BTreeMap<String, u64>>,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    windows: Mutex<(Vec<Window>, Marks)>,
}

impl Stats {
    pub fn new(primary: Latency, secondary: Option<Latency>) -> Self {
        Stats {
            started: Instant::now(),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            open: AtomicI64::new(0),
            peak_open: AtomicI64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            handshake: Latency::new("handshake", false),
            primary,
            secondary,
            extra: None,
            failures: Mutex::new(BTreeMap::new()),
            drops: Mutex::new(BTreeMap::new()),
            errors_by_kind: Mutex::new(BTreeMap::new()),
            windows: Mutex::new((Vec::new(), Marks::default())),
        }
    }

    /// Adds a measure that is summarised for the whole run only.
    pub fn with_extra(mut self, extra: Option<Latency>) -> Self {
        self.extra = extra;
        self
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn connected(&self, handshake: Duration) {
        self.handshake.record(handshake);
        // In `connect` the handshake is the primary measure: record it in the primary too so
        // the per-window figures (and the drift plot) show it.
        if self.primary.name() == self.handshake.name() {
            self.primary.record(handshake);
        }
        self.established.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
    }

    /// A connection taken over from the phase before: established and open, no handshake.
    pub fn reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
        self.established.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
    }

    pub fn disconnected(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn peak_open(&self) -> i64 {
        self.peak_open.load(Ordering::Relaxed)
    }

    pub fn connect_failed(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.failures).entry(reason.to_owned()).or_default() += 1;
    }

    pub fn dropped(&self, reason: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        *lock(&self.drops).entry(reason.to_owned()).or_default() += 1;
    }

    pub fn error(&self, kind: &str) {
        self.errors_n(kind, 1);
    }

    pub fn errors_n(&self, kind: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.errors.fetch_add(n, Ordering::Relaxed);
        *lock(&self.errors_by_kind)
            .entry(kind.to_owned())
            .or_default() += n;
    }

    pub fn failures(&self) -> BTreeMap<String, u64> {
        lock(&self.failures).clone()
    }

    pub fn drops(&self) -> BTreeMap<String, u64> {
        lock(&self.drops).clone()
    }

    pub fn errors_by_kind(&self) -> BTreeMap<String, u64> {
        lock(&self.errors_by_kind).clone()
    }

    /// Closes the last, partial window at the end of a run, unless it is shorter than `min`:
    /// a window of a few milliseconds holds the close-down, and its rates would be noise.
    pub fn sample_final(&self, min: Duration) {
        let (since, none_yet) = {
            let w = lock(&self.windows);
            (self.elapsed().as_secs_f64() - w.1.at, w.0.is_empty())
        };
        if none_yet || since >= min.as_secs_f64() {
            self.sample_window();
        }
    }

    /// Closes the current window: called every `--window` by the sampler and once at the end.
    pub fn sample_window(&self) {
        let now = self.elapsed().as_secs_f64();
        let current = Marks {
            at: now,
            connected: self.established.load(Ordering::Relaxed),
            failures: self.failed.load(Ordering::Relaxed),
            drops: self.dropped.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        };
        let latency = Percentiles::of(&self.primary.take_window());
        let secondary = self
            .secondary
            .as_ref()
            .and_then(|s| Percentiles::of(&s.take_window()));
        let mut guard = lock(&self.windows);
        let (list, last) = &mut *guard;
        let len = now - last.at;
        if len <= 0.0 {
            return;
        }
        let rate = |n: u64| n as f64 / len;
        list.push(Window {
            t_s: now,
            len_s: len,
            open: self.open(),
            connected: current.connected - last.connected,
            connect_failures: current.failures - last.failures,
            drops: current.drops - last.drops,
            sent: current.sent - last.sent,
            received: current.received - last.received,
            errors: current.errors - last.errors,
            sent_per_s: rate(current.sent - last.sent),
            received_per_s: rate(current.received - last.received),
            latency,
            secondary,
        });
        *last = current;
    }

    pub fn windows(&self) -> Vec<Window> {
        lock(&self.windows).0.clone()
    }

    /// The most recent closed window (what the progress line shows).
    pub fn last_window(&self) -> Option<Window> {
        lock(&self.windows).0.last().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds_and_absent_when_empty() {
        let latency = Latency::new("rtt", false);
        assert!(Percentiles::of(&latency.total()).is_none());
        for ms in 1..=100u64 {
            latency.record(Duration::from_millis(ms));
        }
        let p = Percentiles::of(&latency.total()).expect("samples");
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn windows_hold_deltas_and_reset_the_window_histogram() {
        let stats = Stats::new(Latency::new("rtt", false), None);
        stats.sent.fetch_add(10, Ordering::Relaxed);
        stats.primary.record(Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(2));
        stats.sample_window();
        stats.sent.fetch_add(5, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        stats.sample_window();
        let w = stats.windows();
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].sent, w[1].sent), (10, 5));
        assert!(w[0].latency.is_some());
        assert!(w[1].latency.is_none());
        assert_eq!(stats.primary.total().len(), 1);
    }
}
