//! The app's model: what the worker reported, folded into what the panels draw.
//!
//! Everything here is plain data and pure functions of the updates, so it is tested without a
//! window or a network. Where each part lives:
//!
//! - [`Model`] (this file): the link, the answering instance's stats, and the dispatch of
//!   each [`Update`] to the part it concerns;
//! - [`connections`]: the connection table (pages and stream merged, sorted, filtered, the
//!   selection, the id ranges on screen);
//! - [`instances`]: the fleet's instances, their sparklines and the fleet's totals;
//! - [`charts`]: rates from successive totals, seeded from the broker's history;
//! - [`activity`]: the activity log.

pub mod activity;
pub mod charts;
pub mod connections;
pub mod instances;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::client::{Action, ActionOutcome, LinkStatus, RangeQuery, Update};
use admin_api::{Health, InstanceInfo, Stats};

pub use activity::{ActivityLine, Level};
pub use charts::{History, Sample, HISTORY};
pub use connections::{Column, ConnectionTable, Departed, Sort};
pub use instances::{Fleet, FleetChange, FleetTotals, InstanceRow, InstanceState};

/// Everything the UI draws.
pub struct Model {
    pub link: LinkStatus,
    /// The stats of the instance the session talks to.
    pub stats: Option<Stats>,
    /// That instance's rates, for the charts.
    pub history: History,
    pub connections: ConnectionTable,
    pub fleet: Fleet,
    pub activity: VecDeque<ActivityLine>,
    /// The latest answer to each kind of action.
    pub outcomes: HashMap<Action, ActionOutcome>,
    /// The id ranges last asked to be refreshed.
    watched: Vec<RangeQuery>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            link: LinkStatus::Idle,
            stats: None,
            history: History::default(),
            connections: ConnectionTable::default(),
            fleet: Fleet::default(),
            activity: VecDeque::new(),
            outcomes: HashMap::new(),
            watched: Vec::new(),
        }
    }
}

/// One row of the instances panel.
pub struct InstanceView<'a> {
    pub info: Cow<'a, InstanceInfo>,
    pub history: &'a History,
    /// The instance the session talks to.
    pub answering: bool,
}

impl<'a> InstanceView<'a> {
    pub fn state(&self) -> InstanceState {
        InstanceState::of(&self.info)
    }
}

/// Now on the monotonic clock and in Unix milliseconds, to place history samples.
fn clocks() -> (Instant, u64) {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (Instant::now(), unix_ms)
}

impl Model {
    /// Whether this session's token may change things (inject, kick, drain). A read-only token
    /// (`broker.admin.readToken`) may not: the app greys those controls out and says why.
    pub fn may_change(&self) -> bool {
        self.stats
            .as_ref()
            .is_none_or(|s| s.access == admin_api::Access::Admin)
    }

    /// Folds one update from the worker into the model.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Reset => {
                let activity = std::mem::take(&mut self.activity);
                let connections = self.connections.keeping_view();
                *self = Model {
                    activity,
                    connections,
                    ..Model::default()
                };
            }
            Update::Status(status) => {
                if let Some((level, line)) = activity::describe_transition(&self.link, &status) {
                    self.note(level, line);
                }
                self.link = status;
            }
            Update::Stats { stats, at } => {
                self.history.push(&stats, at);
                self.stats = Some(stats);
            }
            Update::Page(page) => self.connections.apply_page(page),
            Update::Connected { connection, at } => {
                let who = connection
                    .user
                    .as_deref()
                    .map_or(String::new(), |u| format!(" user {u}"));
                let kind = if connection.publisher {
                    "publisher"
                } else {
                    "client"
                };
                let line = format!(
                    "{kind} {} connected from {}{who}",
                    connection.id, connection.remote_addr
                );
                self.connections.connected(connection, at);
                self.note(Level::Info, line);
            }
            Update::Disconnected { id, reason, at } => {
                self.connections.disconnected(&id, &reason, at);
                let level = if matches!(reason.as_str(), "client" | "shutdown") {
                    Level::Info
                } else {
                    Level::Warning
                };
                self.note(level, format!("{id} disconnected ({reason})"));
            }
            Update::Instances { list, at } => {
                for change in self.fleet.apply(list, at) {
                    let (level, line) = match change {
                        FleetChange::Joined(i) => (Level::Info, format!("instance {i} joined")),
                        FleetChange::Left(i) => {
                            (Level::Warning, format!("instance {i} left the fleet"))
                        }
                        FleetChange::Became(i, InstanceState::Up) => {
                            (Level::Success, format!("instance {i} is up"))
                        }
                        FleetChange::Became(i, InstanceState::Draining) => {
                            (Level::Warning, format!("instance {i} is draining"))
                        }
                        FleetChange::Became(i, InstanceState::Silent) => {
                            (Level::Error, format!("instance {i} went silent"))
                        }
                    };
                    self.note(level, line);
                }
            }
            Update::History(history) => {
                let (now, unix_ms) = clocks();
                self.history.seed(&history, now, unix_ms);
            }
            Update::InstanceHistory(history) => {
                let (now, unix_ms) = clocks();
                self.fleet.seed(&history, now, unix_ms);
            }
            Update::Action(outcome) => {
                let level = if outcome.result.is_ok() {
                    Level::Success
                } else {
                    Level::Error
                };
                let text = match &outcome.result {
                    Ok(m) | Err(m) => m.clone(),
                };
                self.note(level, text);
                self.outcomes.insert(outcome.action, outcome);
            }
        }
    }

    /// Notes something the operator did (or that the app did for them) in the activity log.
    pub fn note(&mut self, level: Level, text: impl Into<String>) {
        activity::log(&mut self.activity, level, text.into());
    }

    pub fn outcome(&self, action: Action) -> Option<&ActionOutcome> {
        self.outcomes.get(&action)
    }

    pub fn clear_outcome(&mut self, action: Action) {
        self.outcomes.remove(&action);
    }

    /// Whether there is broker data to show (live, or kept while reconnecting).
    pub fn has_data(&self) -> bool {
        self.stats.is_some()
            && matches!(
                self.link,
                LinkStatus::Live { .. } | LinkStatus::Reconnecting { .. }
            )
    }

    /// The instance the session talks to.
    pub fn answering(&self) -> &str {
        if self.fleet.known && !self.fleet.answered_by.is_empty() {
            &self.fleet.answered_by
        } else {
            self.stats.as_ref().map_or("", |s| s.instance.as_str())
        }
    }

    /// The rows of the instances panel: the fleet's list, or (a broker without fleet routes)
    /// the one instance the session talks to.
    pub fn instances(&self) -> Vec<InstanceView<'_>> {
        let answering = self.answering();
        if self.fleet.known {
            return self
                .fleet
                .rows()
                .iter()
                .map(|r| InstanceView {
                    info: Cow::Borrowed(&r.info),
                    history: &r.history,
                    answering: r.info.instance == answering,
                })
                .collect();
        }
        self.stats
            .iter()
            .map(|s| InstanceView {
                info: Cow::Owned(InstanceInfo {
                    instance: s.instance.clone(),
                    health: Health::Up,
                    seen_ms_ago: 0,
                    stats: s.clone(),
                }),
                history: &self.history,
                answering: true,
            })
            .collect()
    }

    /// Sums over the fleet's instances that are up (the one instance without fleet routes).
    pub fn fleet_totals(&self) -> FleetTotals {
        if self.fleet.known {
            self.fleet.totals()
        } else {
            self.stats.as_ref().map_or_else(FleetTotals::default, |s| {
                instances::single_totals(s, &self.history)
            })
        }
    }

    /// The id ranges on screen, when they differ from the ones last returned (then the worker
    /// must be told).
    pub fn watch_changed(&mut self) -> Option<Vec<RangeQuery>> {
        let ranges = self.connections.watch_ranges();
        if ranges == self.watched {
            return None;
        }
        self.watched.clone_from(&ranges);
        Some(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Page;
    use admin_api::{ConnectionInfo, InstanceList, ListFilter};

    #[test]
    fn reset_keeps_the_view_and_the_log() {
        let mut m = Model::default();
        m.connections.sort_by(Column::User);
        m.connections.set_filter(ListFilter {
            user: "alice".into(),
            ..Default::default()
        });
        m.apply(Update::Page(Page {
            filter: m.connections.filter().clone(),
            requested_at: Instant::now(),
            after: String::new(),
            until: None,
            total: 1,
            connections: vec![ConnectionInfo {
                id: "a.1".into(),
                user: Some("alice".into()),
                ..Default::default()
            }],
            missing: Vec::new(),
            walk_done: true,
        }));
        m.note(Level::Info, "hello");
        m.apply(Update::Reset);
        assert!(m.connections.is_empty());
        assert_eq!(m.connections.sort().column, Column::User);
        assert_eq!(m.connections.filter().user, "alice");
        assert_eq!(m.activity.len(), 1);
    }

    #[test]
    fn one_instance_without_fleet_routes_is_one_row() {
        let mut m = Model::default();
        assert!(m.instances().is_empty());
        let stats = Stats {
            instance: "solo.1".into(),
            ready: true,
            ..Default::default()
        };
        m.apply(Update::Stats {
            stats,
            at: Instant::now(),
        });
        let rows = m.instances();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].info.instance, "solo.1");
        assert!(rows[0].answering);
        assert_eq!(m.fleet_totals().instances, 1);
        // A fleet list replaces it.
        m.apply(Update::Instances {
            list: InstanceList {
                answered_by: "solo.1".into(),
                clustered: false,
                instances: vec![InstanceInfo {
                    instance: "solo.1".into(),
                    ..Default::default()
                }],
            },
            at: Instant::now(),
        });
        assert_eq!(m.instances().len(), 1);
        assert!(m.fleet.known);
    }
}
