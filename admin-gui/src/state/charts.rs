//! Rates over time, as the charts and sparklines draw them: per-second rates computed from
//! successive cumulative totals, seeded from the broker's recent history so a new window shows
//! the last minutes at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use admin_api::{OpenConnections, Stats, StatsHistory, Totals};

/// How much rate history is kept (the charts show up to this much).
pub const HISTORY: Duration = Duration::from_secs(10 * 60);

/// One point of an instance's history, as the charts show it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub at: Option<Instant>,
    pub clients: f64,
    pub publishers: f64,
    /// Per second, from successive totals.
    pub messages_in: f64,
    pub messages_out: f64,
    pub events: f64,
    pub accepted: f64,
    pub refused: f64,
    pub slow_drops: f64,
    pub decode_errors: f64,
}

impl Sample {
    pub fn connections(&self) -> f64 {
        self.clients + self.publishers
    }

    /// This sample plus `weight` times `other` (the time stays this sample's).
    pub fn plus(&self, other: &Sample, weight: f64) -> Sample {
        Sample {
            at: self.at,
            clients: self.clients + weight * other.clients,
            publishers: self.publishers + weight * other.publishers,
            messages_in: self.messages_in + weight * other.messages_in,
            messages_out: self.messages_out + weight * other.messages_out,
            events: self.events + weight * other.events,
            accepted: self.accepted + weight * other.accepted,
            refused: self.refused + weight * other.refused,
            slow_drops: self.slow_drops + weight * other.slow_drops,
            decode_errors: self.decode_errors + weight * other.decode_errors,
        }
    }
}

/// Rates computed from successive stats, kept for [`HISTORY`].
#[derive(Default, Clone)]
pub struct History {
    samples: VecDeque<Sample>,
    baseline: Option<(Instant, String, Totals)>,
}

/// Whether two totals are from one run of an instance (no counter went down).
fn went_down(prev: &Totals, now: &Totals) -> bool {
    now.accepted < prev.accepted
        || now.refused < prev.refused
        || now.messages_in < prev.messages_in
        || now.messages_out < prev.messages_out
        || now.events < prev.events
        || now.slow_consumer_drops < prev.slow_consumer_drops
        || now.decode_errors < prev.decode_errors
}

/// The rates between two totals `dt` seconds apart.
fn rate_sample(
    at: Instant,
    connections: OpenConnections,
    prev: &Totals,
    t: &Totals,
    dt: f64,
) -> Sample {
    let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
    Sample {
        at: Some(at),
        clients: connections.clients as f64,
        publishers: connections.publishers as f64,
        messages_in: per_s(t.messages_in, prev.messages_in),
        messages_out: per_s(t.messages_out, prev.messages_out),
        events: per_s(t.events, prev.events),
        accepted: per_s(t.accepted, prev.accepted),
        refused: per_s(t.refused, prev.refused),
        slow_drops: per_s(t.slow_consumer_drops, prev.slow_consumer_drops),
        decode_errors: per_s(t.decode_errors, prev.decode_errors),
    }
}

impl History {
    /// Folds in one stats message received at `at`. A counter that went down or a new
    /// instance id (the broker restarted) starts a new baseline instead of a bogus rate.
    pub fn push(&mut self, stats: &Stats, at: Instant) {
        let t = stats.totals;
        if let Some((then, instance, prev)) = &self.baseline {
            let dt = at.saturating_duration_since(*then).as_secs_f64();
            let restarted = *instance != stats.instance || went_down(prev, &t);
            if !restarted && dt < 0.25 {
                // Messages that arrived in a burst: let the next one cover the period.
                return;
            }
            if !restarted {
                self.samples
                    .push_back(rate_sample(at, stats.connections, prev, &t, dt));
            }
        }
        self.baseline = Some((at, stats.instance.clone(), t));
        self.age_out(at);
    }

    fn age_out(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .and_then(|s| s.at)
            .is_some_and(|first| now.saturating_duration_since(first) > HISTORY)
        {
            self.samples.pop_front();
        }
    }

    /// Puts the broker's recent history (one sample a second, Unix milliseconds) before what
    /// the app has seen itself. `now` and `now_unix_ms` are the same moment on both clocks.
    /// Samples that overlap what is already there are skipped; a run whose counters went down
    /// (a restart) starts a new baseline.
    pub fn seed(&mut self, history: &StatsHistory, now: Instant, now_unix_ms: u64) {
        let first_seen = self.samples.front().and_then(|s| s.at).or_else(|| {
            self.baseline
                .as_ref()
                .filter(|(_, instance, _)| *instance == history.instance)
                .map(|(at, _, _)| *at)
        });
        let mut seeded = Vec::new();
        let mut prev: Option<(Instant, Totals)> = None;
        for s in &history.samples {
            let ago = Duration::from_millis(now_unix_ms.saturating_sub(s.at_ms));
            if ago > HISTORY {
                continue;
            }
            let Some(at) = now.checked_sub(ago) else {
                continue;
            };
            if let Some((then, totals)) = prev {
                let dt = at.saturating_duration_since(then).as_secs_f64();
                if dt >= 0.25 && !went_down(&totals, &s.totals) {
                    seeded.push(rate_sample(at, s.connections, &totals, &s.totals, dt));
                }
                if dt < 0.25 {
                    continue;
                }
            }
            prev = Some((at, s.totals));
        }
        if let Some(first) = first_seen {
            // Half a second of margin: the live samples win where both exist.
            let limit = first
                .checked_sub(Duration::from_millis(500))
                .unwrap_or(first);
            seeded.retain(|s| s.at.is_some_and(|at| at < limit));
        }
        if self.baseline.is_none() {
            if let Some((at, totals)) = prev {
                self.baseline = Some((at, history.instance.clone(), totals));
            }
        }
        for s in seeded.into_iter().rev() {
            self.samples.push_front(s);
        }
        self.age_out(now);
    }

    pub fn samples(&self) -> &VecDeque<Sample> {
        &self.samples
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    pub fn clear(&mut self) {
        self.samples.clear();
        self.baseline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin_api::StatsSample;

    pub(crate) fn stats(instance: &str, clients: u64, msgs_in: u64, refused: u64) -> Stats {
        Stats {
            instance: instance.into(),
            connections: OpenConnections {
                clients,
                publishers: 1,
            },
            totals: Totals {
                messages_in: msgs_in,
                refused,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn rates_from_successive_totals() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.push(&stats("a", 3, 100, 0), t0);
        assert!(h.latest().is_none(), "one value is no rate");
        h.push(&stats("a", 4, 300, 2), t0 + Duration::from_secs(2));
        let s = *h.latest().unwrap();
        assert_eq!(s.messages_in, 100.0);
        assert_eq!(s.refused, 1.0);
        assert_eq!(s.clients, 4.0);

        // A burst: merged into the next sample.
        h.push(&stats("a", 4, 310, 2), t0 + Duration::from_millis(2100));
        assert_eq!(h.samples().len(), 1);
        h.push(&stats("a", 4, 400, 2), t0 + Duration::from_secs(3));
        assert_eq!(h.latest().unwrap().messages_in, 100.0);

        // A restart (new instance) is a new baseline, not a negative or huge rate.
        h.push(&stats("b", 0, 5, 0), t0 + Duration::from_secs(4));
        assert_eq!(h.samples().len(), 2);
        h.push(&stats("b", 0, 15, 0), t0 + Duration::from_secs(5));
        assert_eq!(h.latest().unwrap().messages_in, 10.0);

        // Old samples age out.
        h.push(&stats("b", 0, 15, 0), t0 + HISTORY + Duration::from_secs(4));
        assert!(h
            .samples()
            .iter()
            .all(|s| s.at.unwrap() >= t0 + Duration::from_secs(4)));
    }

    fn history(instance: &str, now_ms: u64, secs_ago_and_msgs: &[(u64, u64)]) -> StatsHistory {
        StatsHistory {
            instance: instance.into(),
            samples: secs_ago_and_msgs
                .iter()
                .map(|&(ago, msgs)| StatsSample {
                    at_ms: now_ms - ago * 1000,
                    connections: OpenConnections {
                        clients: 2,
                        publishers: 0,
                    },
                    totals: Totals {
                        messages_in: msgs,
                        ..Default::default()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn history_seeds_the_minutes_before_the_window_opened() {
        let now = Instant::now() + Duration::from_secs(1000);
        let now_ms = 1_700_000_000_000;
        let mut h = History::default();
        // Four minutes ago to two seconds ago, 10 messages a second; a restart in the middle.
        h.seed(
            &history(
                "a",
                now_ms,
                &[
                    (240, 0),
                    (239, 10),
                    (238, 20),
                    (120, 5),
                    (119, 15),
                    (2, 1185),
                ],
            ),
            now,
            now_ms,
        );
        let rates: Vec<f64> = h.samples().iter().map(|s| s.messages_in).collect();
        assert_eq!(rates, [10.0, 10.0, 10.0, 10.0], "the restart is skipped");
        let first = h.samples()[0].at.unwrap();
        assert_eq!(now.duration_since(first), Duration::from_secs(239));
        // Live stats continue from the last history sample, with a rate at once.
        let mut s = stats("a", 2, 1195, 0);
        s.connections.publishers = 0;
        h.push(&s, now - Duration::from_secs(1));
        assert_eq!(h.latest().unwrap().messages_in, 10.0);
        assert_eq!(h.samples().len(), 5);

        // Seeding after live samples: only what is older than them is added.
        let mut live = History::default();
        live.push(&stats("a", 2, 1180, 0), now - Duration::from_secs(3));
        live.push(&stats("a", 2, 1190, 0), now - Duration::from_secs(2));
        live.seed(
            &history("a", now_ms, &[(5, 1150), (4, 1160), (3, 1170), (2, 1180)]),
            now,
            now_ms,
        );
        let ages: Vec<u64> = live
            .samples()
            .iter()
            .map(|s| now.duration_since(s.at.unwrap()).as_secs())
            .collect();
        assert_eq!(ages, [4, 3, 2], "seeded 4 s and 3 s ago, then the live one");
    }
}
