//! The listeners: each connects through the one URL with `?recover=1`, keeps the set of
//! sequence numbers it received and the last position it saw, and when its connection ends
//! reconnects with backoff and jitter, resuming with `?since=` that position (or without
//! positions with `--no-recover`). [`Shared`] holds what they report together (connected,
//! warmed, receipts, down), [`Listener`] what each hands back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sleep_until;
use crate::cli::FailoverArgs;
use crate::client::{self, Incoming, Role, Target, Ws};
use crate::context::{RunCtx, SeqSet};
use crate::fleet::Ended;
use crate::probe::{self, Kind, Received};
use crate::stats::Stats;

/// What the listener tasks share.
pub(super) struct Shared {
    pub(super) run: String,
    pub(super) stats: Arc<Stats>,
    pub(super) target: Arc<Target>,
    pub(super) recover: bool,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    /// Listeners that connected at least once, and a wake-up for each.
    pub(super) connected: AtomicUsize,
    /// Listeners that have seen a warm-up event.
    pub(super) warmed: AtomicUsize,
    pub(super) progress: Notify,
    /// Distinct (listener, sequence) receipts, and when the last one came (probe clock, ns).
    pub(super) unique: AtomicU64,
    pub(super) last_unique_ns: AtomicU64,
    /// Listeners whose connection ended and that have not recovered yet.
    pub(super) down: AtomicUsize,
}

impl Shared {
    pub(super) fn new(ctx: &RunCtx, args: &FailoverArgs) -> Self {
        Shared {
            run: ctx.run_id.clone(),
            stats: ctx.stats.clone(),
            target: ctx.target.clone(),
            recover: !args.no_recover,
            backoff_min: args.backoff_min,
            backoff_max: args.backoff_max,
            connected: AtomicUsize::new(0),
            warmed: AtomicUsize::new(0),
            progress: Notify::new(),
            unique: AtomicU64::new(0),
            last_unique_ns: AtomicU64::new(0),
            down: AtomicUsize::new(0),
        }
    }
}

/// One listener's record, kept across its reconnects and handed back at the end.
#[derive(Debug, Default)]
pub(super) struct Listener {
    pub(super) index: usize,
    pub(super) seen: SeqSet,
    pub(super) duplicates: u64,
    pub(super) out_of_order: u64,
    pub(super) foreign: u64,
    pub(super) warmed: bool,
    pub(super) connected_once: bool,
    /// Where to resume from: the last position seen (recovery notice or event).
    pub(super) resume_from: Option<String>,
    /// The highest position (without positions: sequence number) among first receipts.
    pub(super) order_max: Option<u64>,
    /// How each of its connections ended, by label.
    pub(super) closed_by: BTreeMap<String, u64>,
    pub(super) reconnects: u64,
    pub(super) failures: u64,
    /// When its connection ended, until it recovered.
    pub(super) down_since: Option<Instant>,
    /// The connection asked `?since=`: its recovery notice counts as a recovery.
    pub(super) resuming: bool,
    pub(super) recoveries_complete: u64,
    pub(super) recoveries_incomplete: u64,
    pub(super) incomplete_reasons: Vec<String>,
    pub(super) replayed: u64,
}

/// The position in a frame: `"brokerPosition":"<epoch>-<seq>"` (the broker adds it last).
fn position_of(text: &str) -> Option<(&str, u64)> {
    const KEY: &str = "\"brokerPosition\":\"";
    let at = text.rfind(KEY)? + KEY.len();
    let rest = &text[at..];
    let pos = &rest[..rest.find('"')?];
    let seq = pos.rsplit_once('-')?.1.parse().ok()?;
    Some((pos, seq))
}

impl Shared {
    fn recovered(&self, l: &mut Listener) {
        if let Some(since) = l.down_since.take() {
            if let Some(m) = &self.stats.secondary {
                m.record(since.elapsed());
            }
            self.down.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn handle(&self, l: &mut Listener, text: &str) {
        match probe::classify(text, &self.run) {
            Received::Probe(p) => {
                let pos = position_of(text);
                if let Some((at, _)) = pos {
                    l.resume_from = Some(at.to_owned());
                }
                match p.kind {
                    Kind::Delivery => {
                        if l.seen.insert(p.seq) {
                            self.unique.fetch_add(1, Ordering::Relaxed);
                            self.last_unique_ns
                                .store(probe::now_ns(), Ordering::Relaxed);
                            self.stats.received.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .primary
                                .record_ns(probe::now_ns().saturating_sub(p.t_ns));
                            let key = pos.map_or(p.seq, |(_, s)| s);
                            if l.order_max.is_some_and(|max| key < max) {
                                l.out_of_order += 1;
                                self.stats.error("out_of_order");
                            }
                            l.order_max = Some(l.order_max.map_or(key, |m| m.max(key)));
                        } else {
                            l.duplicates += 1;
                            self.stats.error("duplicate_delivery");
                        }
                    }
                    Kind::Warmup => {
                        if !l.warmed {
                            l.warmed = true;
                            self.warmed.fetch_add(1, Ordering::Relaxed);
                            self.progress.notify_waiters();
                        }
                    }
                    Kind::Echo => {}
                }
            }
            Received::Foreign => l.foreign += 1,
            Received::ErrorEvent => self.stats.error("error_event"),
            // The recovery notice: `{"brokerPosition":...,"brokerRecovery":{...}}` (in either
            // order of keys).
            Received::Other if text.contains("\"brokerRecovery\"") => self.notice(l, text),
            Received::Other => {}
        }
    }

    fn notice(&self, l: &mut Listener, text: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            self.stats.error("bad_recovery_notice");
            return;
        };
        if let Some(at) = v.get("brokerPosition").and_then(|p| p.as_str()) {
            l.resume_from = Some(at.to_owned());
        }
        let r = &v["brokerRecovery"];
        if l.resuming {
            l.resuming = false;
            if r["complete"].as_bool() == Some(true) {
                l.recoveries_complete += 1;
                l.replayed += r["replayed"].as_u64().unwrap_or(0);
            } else {
                l.recoveries_incomplete += 1;
                l.incomplete_reasons
                    .push(r["reason"].as_str().unwrap_or("(no reason)").to_owned());
            }
        }
        self.recovered(l);
    }

    /// Backoff before attempt `attempt` (0 for the first after a close), with jitter.
    fn backoff(&self, index: usize, attempt: u32) -> Duration {
        let base = self
            .backoff_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        let r = crate::identity::mix64(probe::now_ns() ^ ((index as u64) << 20) ^ attempt as u64);
        base.mul_f64(0.5 + 0.5 * ((r >> 11) as f64 / (1u64 << 53) as f64))
    }
}

pub(super) async fn listener(
    sh: Arc<Shared>,
    index: usize,
    slot: Instant,
    stop: CancellationToken,
) -> Listener {
    let mut l = Listener {
        index,
        ..Listener::default()
    };
    let mut at = slot;
    let mut attempt = 0u32;
    loop {
        if !sleep_until(at, &stop).await {
            break;
        }
        let query = match (&l.resume_from, sh.recover) {
            (_, false) => None,
            (Some(pos), true) if l.connected_once => {
                Some(format!("since={}", client::percent_encode(pos)))
            }
            (_, true) => Some("recover=1".to_owned()),
        };
        let connected = tokio::select! {
            r = sh.target.connect_with_query(index, Role::Client, query.as_deref()) => r,
            _ = stop.cancelled() => break,
        };
        let ws = match connected {
            Ok((ws, handshake)) => {
                sh.stats.connected(handshake);
                ws
            }
            Err(failure) => {
                sh.stats.connect_failed(&failure.reason());
                l.failures += u64::from(l.connected_once);
                at = Instant::now() + sh.backoff(index, attempt + 1);
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        if l.connected_once {
            l.reconnects += 1;
            sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        } else {
            l.connected_once = true;
            sh.connected.fetch_add(1, Ordering::Relaxed);
            sh.progress.notify_waiters();
        }
        l.resuming = query.as_deref().is_some_and(|q| q.starts_with("since="));
        if !sh.recover {
            sh.recovered(&mut l);
        }
        let ended = read(&sh, ws, &mut l, &stop).await;
        sh.stats.disconnected();
        match ended {
            // (Failover closes its own connections: nothing comes back open.)
            Ended::Finished | Ended::Open(_) => break,
            Ended::Dropped(reason) => {
                if stop.is_cancelled() {
                    break;
                }
                sh.stats.dropped(&reason);
                *l.closed_by.entry(reason).or_default() += 1;
                if l.down_since.is_none() {
                    l.down_since = Some(Instant::now());
                    sh.down.fetch_add(1, Ordering::Relaxed);
                }
                at = Instant::now() + sh.backoff(index, 0);
            }
        }
    }
    l
}

async fn read(sh: &Shared, mut ws: Ws, l: &mut Listener, stop: &CancellationToken) -> Ended {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => {
                tokio::spawn(client::close(ws, client::CLOSE_TIMEOUT));
                return Ended::Finished;
            }
            i = client::recv(&mut ws) => match i {
                Incoming::Closed(reason) => return Ended::Dropped(reason),
                Incoming::Text(text) => sh.handle(l, &text),
            },
        }
    }
}

/// Waits until `done(shared)` holds, `limit` passes or the run is cancelled; re-checked on
/// every listener's progress and at least every 100 ms.
pub(super) async fn wait_for(
    sh: &Shared,
    limit: Instant,
    cancel: &CancellationToken,
    done: impl Fn(&Shared) -> bool,
) {
    while !done(sh) && Instant::now() < limit {
        let woke = sh.progress.notified();
        tokio::select! {
            _ = woke => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(limit.into()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_the_last_field() {
        let text = r#"{"eventType":10,"lt":{"run":"r","seq":1,"t":2},"brokerPosition":"ab-c-42"}"#;
        assert_eq!(position_of(text), Some(("ab-c-42", 42)));
        assert_eq!(position_of(r#"{"eventType":10}"#), None);
        assert_eq!(position_of(r#"{"brokerPosition":"x-y"}"#), None);
    }
}
