//! The fleet: one row per instance with its last heartbeat's stats and a short history for
//! its sparkline, and the fleet's totals (sums over the instances that are up).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use admin_api::{Health, InstanceInfo, InstanceList, OpenConnections, StatsHistory, Totals};

use super::charts::{History, Sample};

/// What the instances panel says about an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Heard from, and ready.
    Up,
    /// Heard from, not ready: draining (or not started yet).
    Draining,
    /// No heartbeat for a while: gone, partitioned or stopped.
    Silent,
}

impl InstanceState {
    pub fn of(info: &InstanceInfo) -> InstanceState {
        match (info.health, info.stats.ready) {
            (Health::Silent, _) => InstanceState::Silent,
            (Health::Up, true) => InstanceState::Up,
            (Health::Up, false) => InstanceState::Draining,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            InstanceState::Up => "Up",
            InstanceState::Draining => "Draining",
            InstanceState::Silent => "Silent",
        }
    }
}

/// One instance of the fleet.
#[derive(Clone)]
pub struct InstanceRow {
    pub info: InstanceInfo,
    pub history: History,
}

impl InstanceRow {
    pub fn state(&self) -> InstanceState {
        InstanceState::of(&self.info)
    }

    pub fn connections(&self) -> u64 {
        let c = self.info.stats.connections;
        c.clients + c.publishers
    }
}

/// Sums over the instances that are up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetTotals {
    pub instances: usize,
    pub up: usize,
    pub connections: OpenConnections,
    pub totals: Totals,
    /// The sum of each instance's latest rates.
    pub rates: Sample,
}

impl FleetTotals {
    fn add(&mut self, connections: OpenConnections, totals: &Totals, latest: Option<&Sample>) {
        self.up += 1;
        self.connections.clients += connections.clients;
        self.connections.publishers += connections.publishers;
        let t = &mut self.totals;
        t.accepted += totals.accepted;
        t.refused += totals.refused;
        t.closed += totals.closed;
        t.messages_in += totals.messages_in;
        t.messages_out += totals.messages_out;
        t.bytes_in += totals.bytes_in;
        t.bytes_out += totals.bytes_out;
        t.slow_consumer_drops += totals.slow_consumer_drops;
        t.decode_errors += totals.decode_errors;
        t.events += totals.events;
        if let Some(s) = latest {
            let r = &mut self.rates;
            r.messages_in += s.messages_in;
            r.messages_out += s.messages_out;
            r.events += s.events;
            r.accepted += s.accepted;
            r.refused += s.refused;
            r.slow_drops += s.slow_drops;
            r.decode_errors += s.decode_errors;
        }
    }
}

/// The instances as the last `GET .../instances` listed them.
#[derive(Default)]
pub struct Fleet {
    /// A list has arrived this session (a broker without fleet routes never sends one).
    pub known: bool,
    pub answered_by: String,
    pub clustered: bool,
    rows: Vec<InstanceRow>,
}

/// A change worth a line in the activity log.
#[derive(Debug, PartialEq, Eq)]
pub enum FleetChange {
    Joined(String),
    Left(String),
    Became(String, InstanceState),
}

impl Fleet {
    /// Folds in a list received at `at`: rows keep their history, new instances get a row,
    /// instances no longer listed go. Returns what changed (nothing for the first list).
    pub fn apply(&mut self, list: InstanceList, at: Instant) -> Vec<FleetChange> {
        let first = !self.known;
        let mut changes = Vec::new();
        let mut old = std::mem::take(&mut self.rows);
        for info in list.instances {
            let row = match old.iter().position(|r| r.info.instance == info.instance) {
                Some(i) => {
                    let mut row = old.swap_remove(i);
                    let before = row.state();
                    row.info = info;
                    if row.state() != before {
                        changes.push(FleetChange::Became(row.info.instance.clone(), row.state()));
                    }
                    row
                }
                None => {
                    if !first {
                        changes.push(FleetChange::Joined(info.instance.clone()));
                    }
                    InstanceRow {
                        info,
                        history: History::default(),
                    }
                }
            };
            self.rows.push(row);
        }
        for row in &mut self.rows {
            if row.info.health == Health::Up {
                row.history.push(&row.info.stats, at);
            }
        }
        changes.extend(old.into_iter().map(|r| FleetChange::Left(r.info.instance)));
        self.rows
            .sort_by(|a, b| a.info.instance.cmp(&b.info.instance));
        self.known = true;
        self.answered_by = list.answered_by;
        self.clustered = list.clustered;
        changes
    }

    /// Seeds an instance's sparkline with its recent history.
    pub fn seed(&mut self, history: &StatsHistory, now: Instant, now_unix_ms: u64) {
        if let Some(row) = self
            .rows
            .iter_mut()
            .find(|r| r.info.instance == history.instance)
        {
            row.history.seed(history, now, now_unix_ms);
        }
    }

    pub fn rows(&self) -> &[InstanceRow] {
        &self.rows
    }

    pub fn row(&self, instance: &str) -> Option<&InstanceRow> {
        self.rows.iter().find(|r| r.info.instance == instance)
    }

    /// The fleet's charts: every instance's samples summed in [`FLEET_BUCKET`] buckets back from
    /// `now`, oldest first. An instance counts once per bucket (the mean of its samples there),
    /// so one polled every 2 s and one seeded every second weigh alike; an instance that went
    /// away simply stops adding.
    pub fn combined(&self, now: Instant) -> VecDeque<Sample> {
        let bucket = FLEET_BUCKET.as_secs_f64();
        let mut sums: BTreeMap<u64, Sample> = BTreeMap::new();
        for row in &self.rows {
            let mut mine: BTreeMap<u64, (Sample, f64)> = BTreeMap::new();
            for s in row.history.samples() {
                let Some(at) = s.at else { continue };
                let k = (now.saturating_duration_since(at).as_secs_f64() / bucket) as u64;
                let e = mine.entry(k).or_default();
                e.0 = e.0.plus(s, 1.0);
                e.1 += 1.0;
            }
            for (k, (sum, n)) in mine {
                let e = sums.entry(k).or_default();
                *e = e.plus(&sum, 1.0 / n);
            }
        }
        sums.into_iter()
            .rev()
            .map(|(k, s)| Sample {
                at: now.checked_sub(FLEET_BUCKET * k as u32),
                ..s
            })
            .collect()
    }

    /// Sums over the instances that are up.
    pub fn totals(&self) -> FleetTotals {
        let mut t = FleetTotals {
            instances: self.rows.len(),
            ..Default::default()
        };
        for row in self.rows.iter().filter(|r| r.info.health == Health::Up) {
            t.add(
                row.info.stats.connections,
                &row.info.stats.totals,
                row.history.latest(),
            );
        }
        t
    }
}

/// The width of one point of the fleet's charts.
pub const FLEET_BUCKET: Duration = Duration::from_secs(2);

/// Totals of a single instance (a broker without the fleet routes).
pub fn single_totals(stats: &admin_api::Stats, history: &History) -> FleetTotals {
    let mut t = FleetTotals {
        instances: 1,
        ..Default::default()
    };
    t.add(stats.connections, &stats.totals, history.latest());
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin_api::Stats;

    fn info(name: &str, clients: u64, msgs: u64, health: Health, ready: bool) -> InstanceInfo {
        InstanceInfo {
            instance: name.into(),
            health,
            seen_ms_ago: 0,
            stats: Stats {
                instance: name.into(),
                ready,
                connections: OpenConnections {
                    clients,
                    publishers: 1,
                },
                totals: Totals {
                    messages_in: msgs,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    fn list(instances: Vec<InstanceInfo>) -> InstanceList {
        InstanceList {
            answered_by: "a".into(),
            clustered: true,
            instances,
        }
    }

    #[test]
    fn rows_totals_and_changes() {
        let t0 = Instant::now();
        let mut f = Fleet::default();
        let changes = f.apply(
            list(vec![
                info("b", 2, 100, Health::Up, true),
                info("a", 3, 50, Health::Up, true),
            ]),
            t0,
        );
        assert!(changes.is_empty(), "the first list is no change");
        let names: Vec<&str> = f.rows().iter().map(|r| r.info.instance.as_str()).collect();
        assert_eq!(names, ["a", "b"], "sorted by name");
        let changes = f.apply(
            list(vec![
                info("a", 4, 70, Health::Up, true),
                info("b", 2, 120, Health::Up, false),
                info("c", 1, 0, Health::Up, true),
            ]),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(
            changes,
            [
                FleetChange::Became("b".into(), InstanceState::Draining),
                FleetChange::Joined("c".into())
            ]
        );
        let t = f.totals();
        assert_eq!((t.instances, t.up), (3, 3));
        assert_eq!(t.connections.clients, 7);
        assert_eq!(t.connections.publishers, 3);
        assert_eq!(t.totals.messages_in, 190);
        assert_eq!(t.rates.messages_in, 20.0, "10/s on a and 10/s on b");

        let changes = f.apply(
            list(vec![
                info("a", 4, 70, Health::Silent, true),
                info("c", 1, 0, Health::Up, true),
            ]),
            t0 + Duration::from_secs(4),
        );
        assert_eq!(
            changes,
            [
                FleetChange::Became("a".into(), InstanceState::Silent),
                FleetChange::Left("b".into())
            ]
        );
        let t = f.totals();
        assert_eq!(
            (t.instances, t.up),
            (2, 1),
            "a silent instance is not summed"
        );
        assert_eq!(t.connections.clients, 1);
    }

    #[test]
    fn the_fleet_chart_sums_every_instance_once_per_bucket() {
        let t0 = Instant::now();
        let mut f = Fleet::default();
        // Two instances polled together every 2 s: a at 100 msgs/s with 3 clients, b at 50
        // with 5.
        for i in 0..4u64 {
            f.apply(
                list(vec![
                    info("a", 3, 200 * i, Health::Up, true),
                    info("b", 5, 100 * i, Health::Up, true),
                ]),
                t0 + Duration::from_secs(2 * i),
            );
        }
        let now = t0 + Duration::from_secs(6);
        let c = f.combined(now);
        assert_eq!(c.len(), 3, "three rate points: {c:?}");
        for s in &c {
            assert_eq!(s.messages_in, 150.0);
            assert_eq!(s.clients, 8.0);
            assert_eq!(s.publishers, 2.0);
        }
        assert!(
            c.iter().zip(c.iter().skip(1)).all(|(x, y)| x.at < y.at),
            "oldest first"
        );
        // b stops being polled as up: the newest point has a alone.
        f.apply(
            list(vec![
                info("a", 3, 800, Health::Up, true),
                info("b", 5, 300, Health::Silent, true),
            ]),
            t0 + Duration::from_secs(8),
        );
        let c = f.combined(t0 + Duration::from_secs(8));
        assert_eq!(c.back().map(|s| s.messages_in), Some(100.0));
        assert_eq!(c.back().map(|s| s.clients), Some(3.0));
    }
}
