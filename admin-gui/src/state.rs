//! The app's model: what the worker reported, folded into what the panels draw.
//!
//! Everything here is plain data and pure functions of the updates, so it is tested without a
//! window or a network: the connection table (with the stream's connects and disconnects merged
//! into the periodic full list), the sorted and filtered view, and the per-second rates.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::client::{Action, ActionOutcome, LinkStatus, Snapshot, Update};
use admin_api::{ConnectionInfo, ListFilter, Stats, Totals};

/// How much rate history is kept (the charts show up to this much).
pub const HISTORY: Duration = Duration::from_secs(10 * 60);
/// Lines kept in the activity log.
const ACTIVITY_LINES: usize = 500;
/// A connect or disconnect seen on the stream is remembered this long, so that a list fetched
/// before it happened does not undo it.
const MERGE_WINDOW: Duration = Duration::from_secs(60);

/// The table's columns; the table is sortable by each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    Id,
    Remote,
    Origin,
    User,
    Kind,
    Connected,
    MessagesIn,
    MessagesOut,
    BytesIn,
    BytesOut,
    Queue,
    Shard,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Id,
        Column::Remote,
        Column::Origin,
        Column::User,
        Column::Kind,
        Column::Connected,
        Column::MessagesIn,
        Column::MessagesOut,
        Column::BytesIn,
        Column::BytesOut,
        Column::Queue,
        Column::Shard,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Id => "ID",
            Column::Remote => "Remote address",
            Column::Origin => "Origin",
            Column::User => "User",
            Column::Kind => "Kind",
            Column::Connected => "Connected",
            Column::MessagesIn => "Msgs in",
            Column::MessagesOut => "Msgs out",
            Column::BytesIn => "Bytes in",
            Column::BytesOut => "Bytes out",
            Column::Queue => "Queue",
            Column::Shard => "Shard",
        }
    }

    /// Numbers read best largest first; text A to Z.
    pub fn default_descending(self) -> bool {
        matches!(
            self,
            Column::MessagesIn
                | Column::MessagesOut
                | Column::BytesIn
                | Column::BytesOut
                | Column::Queue
        )
    }

    fn compare(self, a: &ConnectionInfo, b: &ConnectionInfo) -> Ordering {
        match self {
            Column::Id => natural(&a.id, &b.id),
            Column::Remote => natural(&a.remote_addr, &b.remote_addr),
            Column::Origin => a.origin.cmp(&b.origin),
            Column::User => a.user.cmp(&b.user),
            Column::Kind => a.publisher.cmp(&b.publisher),
            // Oldest first when ascending: "connected since".
            Column::Connected => a.connected_at.cmp(&b.connected_at),
            Column::MessagesIn => a.messages_in.cmp(&b.messages_in),
            Column::MessagesOut => a.messages_out.cmp(&b.messages_out),
            Column::BytesIn => a.bytes_in.cmp(&b.bytes_in),
            Column::BytesOut => a.bytes_out.cmp(&b.bytes_out),
            Column::Queue => a.send_queue_depth.cmp(&b.send_queue_depth),
            Column::Shard => a.shard.cmp(&b.shard),
        }
    }
}

/// Compares strings with runs of digits as numbers, so `x.9` sorts before `x.10` and
/// `127.0.0.1:900` before `127.0.0.1:1000`.
fn natural(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            column: Column::Connected,
            descending: true,
        }
    }
}

/// One second of the instance, as the charts show it.
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

/// Rates computed from successive stats, kept for [`HISTORY`].
#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
    baseline: Option<(Instant, String, Totals)>,
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
                let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
                self.samples.push_back(Sample {
                    at: Some(at),
                    clients: stats.connections.clients as f64,
                    publishers: stats.connections.publishers as f64,
                    messages_in: per_s(t.messages_in, prev.messages_in),
                    messages_out: per_s(t.messages_out, prev.messages_out),
                    events: per_s(t.events, prev.events),
                    accepted: per_s(t.accepted, prev.accepted),
                    refused: per_s(t.refused, prev.refused),
                    slow_drops: per_s(t.slow_consumer_drops, prev.slow_consumer_drops),
                    decode_errors: per_s(t.decode_errors, prev.decode_errors),
                });
            }
        }
        self.baseline = Some((at, stats.instance.clone(), t));
        while self
            .samples
            .front()
            .and_then(|s| s.at)
            .is_some_and(|first| at.saturating_duration_since(first) > HISTORY)
        {
            self.samples.pop_front();
        }
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

fn went_down(prev: &Totals, now: &Totals) -> bool {
    now.accepted < prev.accepted
        || now.refused < prev.refused
        || now.messages_in < prev.messages_in
        || now.messages_out < prev.messages_out
        || now.events < prev.events
        || now.slow_consumer_drops < prev.slow_consumer_drops
        || now.decode_errors < prev.decode_errors
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Success,
    Warning,
    Error,
}

/// One line of the activity log.
#[derive(Clone, Debug)]
pub struct ActivityLine {
    pub unix: u64,
    pub level: Level,
    pub text: String,
}

/// The connection that was selected and has since gone, with why.
#[derive(Clone, Debug)]
pub struct Departed {
    pub connection: ConnectionInfo,
    pub reason: String,
}

/// Everything the UI draws.
pub struct Model {
    pub link: LinkStatus,
    pub stats: Option<Stats>,
    pub history: History,
    connections: HashMap<String, ConnectionInfo>,
    arrived: HashMap<String, Instant>,
    gone: HashMap<String, Instant>,
    /// Connections matching the filter on the broker (the table may hold fewer: see
    /// [`crate::client::MAX_ROWS`]).
    pub server_total: u64,
    /// Whether a full list has arrived since connecting.
    pub synced: bool,
    filter: ListFilter,
    sort: Sort,
    view: Vec<String>,
    view_dirty: bool,
    selected: Option<String>,
    departed: Option<Departed>,
    pub activity: VecDeque<ActivityLine>,
    /// The latest answer to each kind of action.
    pub outcomes: HashMap<Action, ActionOutcome>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            link: LinkStatus::Idle,
            stats: None,
            history: History::default(),
            connections: HashMap::new(),
            arrived: HashMap::new(),
            gone: HashMap::new(),
            server_total: 0,
            synced: false,
            filter: ListFilter::default(),
            sort: Sort::default(),
            view: Vec::new(),
            view_dirty: false,
            selected: None,
            departed: None,
            activity: VecDeque::new(),
            outcomes: HashMap::new(),
        }
    }
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
                let (filter, sort) = (self.filter.clone(), self.sort);
                *self = Model {
                    activity,
                    filter,
                    sort,
                    ..Model::default()
                };
            }
            Update::Status(status) => {
                if let Some(line) = describe_transition(&self.link, &status) {
                    self.log(line.0, line.1);
                }
                self.link = status;
            }
            Update::Stats { stats, at } => {
                self.history.push(&stats, at);
                self.stats = Some(stats);
            }
            Update::Snapshot(snapshot) => self.apply_snapshot(snapshot),
            Update::Connected { connection, at } => {
                self.gone.remove(&connection.id);
                self.arrived.insert(connection.id.clone(), at);
                if self.filter.matches(&connection) {
                    if !self.connections.contains_key(&connection.id) {
                        self.server_total += 1;
                    }
                    self.connections
                        .insert(connection.id.clone(), connection.clone());
                    self.view_dirty = true;
                }
                let who = connection
                    .user
                    .as_deref()
                    .map_or(String::new(), |u| format!(" user {u}"));
                let kind = if connection.publisher {
                    "publisher"
                } else {
                    "client"
                };
                self.log(
                    Level::Info,
                    format!(
                        "{kind} {} connected from {}{who}",
                        connection.id, connection.remote_addr
                    ),
                );
            }
            Update::Disconnected { id, reason, at } => {
                self.arrived.remove(&id);
                self.gone.insert(id.clone(), at);
                if let Some(c) = self.connections.remove(&id) {
                    self.server_total = self.server_total.saturating_sub(1);
                    self.view_dirty = true;
                    if self.selected.as_deref() == Some(id.as_str()) {
                        self.departed = Some(Departed {
                            connection: c,
                            reason: reason.clone(),
                        });
                    }
                }
                let level = if matches!(reason.as_str(), "client" | "shutdown") {
                    Level::Info
                } else {
                    Level::Warning
                };
                self.log(level, format!("{id} disconnected ({reason})"));
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
                self.log(level, text);
                self.outcomes.insert(outcome.action, outcome);
            }
        }
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        if snapshot.filter != self.filter {
            return; // fetched for a filter the operator has since changed
        }
        let since = snapshot.requested_at;
        let mut fresh: HashMap<String, ConnectionInfo> = snapshot
            .connections
            .into_iter()
            .filter(|c| self.gone.get(&c.id).is_none_or(|&at| at < since))
            .map(|c| (c.id.clone(), c))
            .collect();
        // Connected after the list was requested, so not in it yet: keep.
        for (id, &at) in &self.arrived {
            if at >= since && !fresh.contains_key(id) {
                if let Some(c) = self.connections.get(id) {
                    fresh.insert(id.clone(), c.clone());
                }
            }
        }
        let horizon = since.checked_sub(MERGE_WINDOW).unwrap_or(since);
        self.arrived.retain(|_, at| *at >= horizon);
        self.gone.retain(|_, at| *at >= horizon);
        self.server_total = snapshot.total.max(fresh.len() as u64);
        self.connections = fresh;
        self.synced = true;
        self.view_dirty = true;
    }

    fn log(&mut self, level: Level, text: String) {
        if self.activity.len() == ACTIVITY_LINES {
            self.activity.pop_front();
        }
        self.activity.push_back(ActivityLine {
            unix: crate::format::now_unix(),
            level,
            text,
        });
    }

    /// Notes something the operator did (or that the app did for them) in the activity log.
    pub fn note(&mut self, level: Level, text: impl Into<String>) {
        self.log(level, text.into());
    }

    pub fn filter(&self) -> &ListFilter {
        &self.filter
    }

    /// Changes the filter; the local view follows at once, the worker must be told too.
    pub fn set_filter(&mut self, filter: ListFilter) {
        if filter != self.filter {
            self.filter = filter;
            self.view_dirty = true;
        }
    }

    pub fn sort(&self) -> Sort {
        self.sort
    }

    /// Sorts by `column`; the same column again flips the direction.
    pub fn sort_by(&mut self, column: Column) {
        self.sort = if self.sort.column == column {
            Sort {
                column,
                descending: !self.sort.descending,
            }
        } else {
            Sort {
                column,
                descending: column.default_descending(),
            }
        };
        self.view_dirty = true;
    }

    /// Ids of the rows to show, filtered and sorted (recomputed only after a change).
    pub fn view(&mut self) -> &[String] {
        self.refresh_view();
        &self.view
    }

    /// Brings the sorted, filtered view up to date (cheap when nothing changed).
    pub fn refresh_view(&mut self) {
        if self.view_dirty {
            let filter = &self.filter;
            let mut rows: Vec<&ConnectionInfo> = self
                .connections
                .values()
                .filter(|c| filter.matches(c))
                .collect();
            let Sort { column, descending } = self.sort;
            rows.sort_by(|a, b| {
                let ord = column.compare(a, b);
                let ord = if descending { ord.reverse() } else { ord };
                // Ties in id order, whichever the direction, so equal rows never swap.
                ord.then_with(|| natural(&a.id, &b.id))
            });
            self.view = rows.into_iter().map(|c| c.id.clone()).collect();
            self.view_dirty = false;
        }
    }

    /// The view as of the last [`Model::refresh_view`].
    pub fn view_rows(&self) -> &[String] {
        &self.view
    }

    pub fn connection(&self, id: &str) -> Option<&ConnectionInfo> {
        self.connections.get(id)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    pub fn select(&mut self, id: Option<String>) {
        if id != self.selected {
            self.selected = id;
            self.departed = None;
        }
    }

    /// The selected connection if it has disconnected since it was selected.
    pub fn departed(&self) -> Option<&Departed> {
        self.departed.as_ref()
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
}

/// A log line for a change of link state worth telling (not every retry).
fn describe_transition(old: &LinkStatus, new: &LinkStatus) -> Option<(Level, String)> {
    use LinkStatus as L;
    match (old, new) {
        (L::Live { .. }, L::Live { .. }) => None,
        (_, L::Live { url, streaming }) => Some((
            Level::Success,
            if *streaming {
                format!("connected to {url} (live stream)")
            } else {
                format!("connected to {url} (no event stream on this broker: polling stats)")
            },
        )),
        (_, L::Unauthorized { url, message }) => Some((
            Level::Error,
            format!("{url} refused the admin token: {message}"),
        )),
        (L::Live { .. }, L::Reconnecting { error, .. }) => {
            Some((Level::Error, format!("lost the broker: {error}")))
        }
        (L::Unreachable { .. }, L::Unreachable { .. })
        | (L::Reconnecting { .. }, L::Reconnecting { .. }) => None,
        (_, L::Unreachable { url, error, .. }) => {
            Some((Level::Error, format!("cannot reach {url}: {error}")))
        }
        (_, L::InvalidUrl { message }) => Some((Level::Error, message.clone())),
        (L::Idle, L::Idle) => None,
        (_, L::Idle) => Some((Level::Info, "disconnected".into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin_api::OpenConnections;

    fn conn(id: &str, port: u16, user: Option<&str>, msgs_in: u64) -> ConnectionInfo {
        ConnectionInfo {
            id: id.into(),
            remote_addr: format!("127.0.0.1:{port}"),
            origin: Some("http://localhost".into()),
            user: user.map(Into::into),
            messages_in: msgs_in,
            connected_at: 1_700_000_000 + u64::from(port),
            ..Default::default()
        }
    }

    fn snapshot(at: Instant, conns: Vec<ConnectionInfo>) -> Update {
        Update::Snapshot(Snapshot {
            filter: ListFilter::default(),
            requested_at: at,
            total: conns.len() as u64,
            connections: conns,
        })
    }

    #[test]
    fn stream_events_merge_with_lists() {
        let t0 = Instant::now();
        let mut m = Model::default();
        m.apply(snapshot(
            t0,
            vec![conn("a.1", 1000, None, 5), conn("a.2", 1001, None, 1)],
        ));
        assert_eq!(m.view().len(), 2);

        // a.3 connects and a.1 leaves after a list was requested but before it arrives.
        let t1 = t0 + Duration::from_millis(10);
        m.apply(Update::Connected {
            connection: conn("a.3", 1002, Some("alice"), 0),
            at: t1,
        });
        m.apply(Update::Disconnected {
            id: "a.1".into(),
            reason: "client".into(),
            at: t1,
        });
        m.apply(snapshot(
            t0 + Duration::from_millis(5),
            vec![conn("a.1", 1000, None, 6), conn("a.2", 1001, None, 2)],
        ));
        let mut ids: Vec<&str> = m.view().iter().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            ["a.2", "a.3"],
            "the stale list neither revives a.1 nor drops a.3"
        );
        assert_eq!(
            m.connection("a.2").unwrap().messages_in,
            2,
            "counters come from the list"
        );
        assert_eq!(m.server_total, 2);
    }

    #[test]
    fn sorts_by_every_column_and_flips() {
        let mut m = Model::default();
        m.apply(snapshot(
            Instant::now(),
            vec![
                conn("a.10", 900, Some("bob"), 3),
                conn("a.9", 1000, Some("alice"), 7),
            ],
        ));
        for column in Column::ALL {
            m.sort_by(column);
            assert_eq!(m.view().len(), 2, "{column:?}");
        }
        m.sort_by(Column::Id);
        let asc = !m.sort().descending;
        let first = m.view()[0].clone();
        assert_eq!(
            first,
            if asc { "a.9" } else { "a.10" },
            "ids sort naturally"
        );
        m.sort_by(Column::Remote);
        assert!(!m.sort().descending);
        assert_eq!(m.view()[0], "a.10", "127.0.0.1:900 before 127.0.0.1:1000");
        m.sort_by(Column::Remote);
        assert_eq!(m.view()[0], "a.9");
        m.sort_by(Column::MessagesIn);
        assert!(m.sort().descending, "numbers start largest first");
        assert_eq!(m.view()[0], "a.9");
    }

    #[test]
    fn filters_locally_at_once() {
        let mut m = Model::default();
        m.apply(snapshot(
            Instant::now(),
            vec![
                conn("a.1", 1, Some("bob"), 0),
                conn("a.2", 2, Some("alice"), 0),
            ],
        ));
        m.set_filter(ListFilter {
            user: "alice".into(),
            ..Default::default()
        });
        assert_eq!(m.view(), ["a.2"]);
        // A list fetched for the old filter is ignored.
        m.apply(snapshot(
            Instant::now(),
            vec![conn("a.1", 1, Some("bob"), 0)],
        ));
        assert_eq!(m.view(), ["a.2"]);
    }

    #[test]
    fn selected_connection_that_leaves_is_remembered() {
        let mut m = Model::default();
        m.apply(snapshot(Instant::now(), vec![conn("a.1", 1, None, 0)]));
        m.select(Some("a.1".into()));
        m.apply(Update::Disconnected {
            id: "a.1".into(),
            reason: "kicked".into(),
            at: Instant::now(),
        });
        assert!(m.connection("a.1").is_none());
        assert_eq!(m.departed().unwrap().reason, "kicked");
    }

    fn stats(instance: &str, clients: u64, msgs_in: u64, refused: u64) -> Stats {
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
}
