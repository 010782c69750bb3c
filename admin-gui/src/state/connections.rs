//! The connection table: the rows the list pages and the stream reported, merged so that a
//! slow page never resurrects a closed connection or hides a new one; the sorted, filtered
//! view; the selection; and which id ranges are on screen (for the counter refresh).
//!
//! Rows are kept in id order ([`admin_api::id_key`]) as well as by id: a page of the fleet
//! list covers an id range and replaces exactly the rows in it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::client::{Page, RangeQuery};
use admin_api::{id_instance, id_key, ConnectionInfo, ListFilter};

/// A connect or disconnect seen on the stream is remembered this long, so that a page fetched
/// before it happened does not undo it.
const MERGE_WINDOW: Duration = Duration::from_secs(60);
/// Counter refreshes ask for this many rows more than they show, to catch rows that appeared
/// in between.
const RANGE_SLACK: u64 = 4;
/// At most this many slices are refreshed per tick; nearer runs of rows are merged first.
pub const MAX_RANGES: usize = 6;

/// The table's columns; the table is sortable by each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    Id,
    Instance,
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
    pub const ALL: [Column; 13] = [
        Column::Id,
        Column::Instance,
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
            Column::Instance => "Instance",
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
            Column::Instance => natural(instance_of(a), instance_of(b)),
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

/// The instance that holds a connection: its `instance` field, or (a broker from before the
/// fleet) what its id says.
pub fn instance_of(c: &ConnectionInfo) -> &str {
    if c.instance.is_empty() {
        id_instance(&c.id)
    } else {
        &c.instance
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

/// A connection id in list order: the node that made it, its number, then the id itself (so
/// two malformed ids never collide).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    node: String,
    n: u64,
    id: String,
}

impl Key {
    fn of(id: &str) -> Key {
        let (node, n) = id_key(id);
        Key {
            node: node.to_string(),
            n,
            id: id.to_string(),
        }
    }

    fn order(&self) -> (&str, u64) {
        (&self.node, self.n)
    }
}

/// The connection that was selected and has since gone, with why.
#[derive(Clone, Debug)]
pub struct Departed {
    pub connection: ConnectionInfo,
    pub reason: String,
}

/// Every row the app knows, and how the table shows them.
#[derive(Default)]
pub struct ConnectionTable {
    rows: HashMap<String, ConnectionInfo>,
    order: BTreeSet<Key>,
    arrived: HashMap<String, Instant>,
    gone: HashMap<String, Instant>,
    /// Connections matching the filter on the broker (the table may hold fewer: see
    /// [`crate::client::MAX_ROWS`]).
    pub server_total: u64,
    /// Whether a full walk of the list has ended since connecting.
    pub synced: bool,
    /// Instances that did not answer the last page: their rows may be stale or absent.
    pub missing: Vec<String>,
    filter: ListFilter,
    sort: Sort,
    view: Vec<String>,
    view_dirty: bool,
    visible: Range<usize>,
    selected: Option<String>,
    departed: Option<Departed>,
}

impl ConnectionTable {
    /// An empty table that keeps the operator's filter and sort.
    pub fn keeping_view(&self) -> ConnectionTable {
        ConnectionTable {
            filter: self.filter.clone(),
            sort: self.sort,
            ..ConnectionTable::default()
        }
    }

    fn insert(&mut self, c: ConnectionInfo) {
        if !self.rows.contains_key(&c.id) {
            self.order.insert(Key::of(&c.id));
        }
        self.rows.insert(c.id.clone(), c);
    }

    fn remove(&mut self, id: &str) -> Option<ConnectionInfo> {
        let c = self.rows.remove(id)?;
        self.order.remove(&Key::of(id));
        Some(c)
    }

    /// A connect on the stream. Returns whether the row is shown under the current filter.
    pub fn connected(&mut self, connection: ConnectionInfo, at: Instant) {
        self.gone.remove(&connection.id);
        self.arrived.insert(connection.id.clone(), at);
        if self.filter.matches(&connection) {
            if !self.rows.contains_key(&connection.id) {
                self.server_total += 1;
            }
            self.insert(connection);
            self.view_dirty = true;
        }
    }

    /// A disconnect on the stream.
    pub fn disconnected(&mut self, id: &str, reason: &str, at: Instant) {
        self.arrived.remove(id);
        self.gone.insert(id.to_string(), at);
        if let Some(c) = self.remove(id) {
            self.server_total = self.server_total.saturating_sub(1);
            self.view_dirty = true;
            if self.selected.as_deref() == Some(id) {
                self.departed = Some(Departed {
                    connection: c,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Ids of the rows whose key is in `(after, until]` (to the end when `until` is `None`).
    fn ids_in(&self, after: &str, until: Option<&str>) -> Vec<String> {
        let lower = (!after.is_empty()).then(|| id_key(after));
        let upper = until.map(id_key);
        let start = match lower {
            Some((node, n)) => Key {
                node: node.to_string(),
                n,
                id: String::new(),
            },
            None => Key {
                node: String::new(),
                n: 0,
                id: String::new(),
            },
        };
        self.order
            .range(start..)
            .skip_while(|k| lower.is_some_and(|l| k.order() <= l))
            .take_while(|k| upper.is_none_or(|u| k.order() <= u))
            .map(|k| k.id.clone())
            .collect()
    }

    /// A slice of the list: replaces the rows of its id range, except those that connected
    /// after it was requested, and those of instances that did not answer; leaves out those
    /// that disconnected after it was requested.
    pub fn apply_page(&mut self, page: Page) {
        if page.filter != self.filter {
            return; // fetched for a filter the operator has since changed
        }
        let since = page.requested_at;
        let listed: HashSet<&str> = page.connections.iter().map(|c| c.id.as_str()).collect();
        let missing: HashSet<&str> = page.missing.iter().map(String::as_str).collect();
        for id in self.ids_in(&page.after, page.until.as_deref()) {
            if listed.contains(id.as_str()) {
                continue;
            }
            let arrived_since = self.arrived.get(&id).is_some_and(|&at| at >= since);
            let unanswered = self.rows.get(&id).is_some_and(|c| {
                missing.contains(instance_of(c)) || missing.contains(id_instance(&c.id))
            });
            if !arrived_since && !unanswered {
                self.remove(&id);
            }
        }
        for c in page.connections {
            if self.gone.get(&c.id).is_none_or(|&at| at < since) {
                self.insert(c);
            }
        }
        let horizon = since.checked_sub(MERGE_WINDOW).unwrap_or(since);
        self.arrived.retain(|_, at| *at >= horizon);
        self.gone.retain(|_, at| *at >= horizon);
        self.server_total = page.total;
        self.missing = page.missing;
        if page.walk_done {
            self.synced = true;
        }
        self.view_dirty = true;
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
            let mut rows: Vec<&ConnectionInfo> =
                self.rows.values().filter(|c| filter.matches(c)).collect();
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

    /// The view as of the last [`ConnectionTable::refresh_view`].
    pub fn view_rows(&self) -> &[String] {
        &self.view
    }

    pub fn connection(&self, id: &str) -> Option<&ConnectionInfo> {
        self.rows.get(id)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
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

    /// The rows of the view the table drew in the last frame (indices into the view).
    pub fn set_visible(&mut self, rows: Range<usize>) {
        self.visible = rows;
    }

    /// The slices of the list that hold the rows on screen and the selected one: runs of rows
    /// adjacent in id order become one slice each, the nearest runs merged until at most
    /// [`MAX_RANGES`] are left.
    pub fn watch_ranges(&self) -> Vec<RangeQuery> {
        let end = self.visible.end.min(self.view.len());
        let start = self.visible.start.min(end);
        let mut keys: Vec<Key> = self.view[start..end]
            .iter()
            .chain(self.selected.iter())
            .filter(|id| self.rows.contains_key(id.as_str()))
            .map(|id| Key::of(id))
            .collect();
        keys.sort();
        keys.dedup();
        // (the row before the run, its first row, its last row, its length)
        let mut runs: Vec<(Option<Key>, Key, Key, u64)> = Vec::new();
        for key in keys {
            let before = self.order.range(..&key).next_back().cloned();
            match runs.last_mut() {
                Some(run) if before.as_ref() == Some(&run.2) => {
                    run.2 = key;
                    run.3 += 1;
                }
                _ => runs.push((before, key.clone(), key, 1)),
            }
        }
        while runs.len() > MAX_RANGES {
            // Merge the two neighbouring runs with the fewest rows between them.
            let gaps: Vec<usize> = runs
                .windows(2)
                .map(|w| self.order.range(&w[0].2..&w[1].1).count().saturating_sub(1))
                .collect();
            let Some((i, &gap)) = gaps.iter().enumerate().min_by_key(|(_, g)| **g) else {
                break;
            };
            let next = runs.remove(i + 1);
            let run = &mut runs[i];
            run.2 = next.2;
            run.3 += gap as u64 + next.3;
        }
        runs.into_iter()
            .map(|(before, _, _, len)| RangeQuery {
                after: before.map(|k| k.id).unwrap_or_default(),
                limit: (len + RANGE_SLACK).min(admin_api::MAX_PAGE),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn conn(id: &str, port: u16, user: Option<&str>, msgs_in: u64) -> ConnectionInfo {
        ConnectionInfo {
            id: id.into(),
            instance: id_key(id).0.into(),
            remote_addr: format!("127.0.0.1:{port}"),
            origin: Some("http://localhost".into()),
            user: user.map(Into::into),
            messages_in: msgs_in,
            connected_at: 1_700_000_000 + u64::from(port),
            ..Default::default()
        }
    }

    fn page(at: Instant, after: &str, until: Option<&str>, conns: Vec<ConnectionInfo>) -> Page {
        Page {
            filter: ListFilter::default(),
            requested_at: at,
            after: after.into(),
            until: until.map(Into::into),
            total: conns.len() as u64,
            connections: conns,
            missing: Vec::new(),
            walk_done: after.is_empty() && until.is_none(),
        }
    }

    fn ids(t: &mut ConnectionTable) -> Vec<String> {
        let mut ids = t.view().to_vec();
        ids.sort_by(|a, b| natural(a, b));
        ids
    }

    #[test]
    fn stream_events_merge_with_lists() {
        let t0 = Instant::now();
        let mut t = ConnectionTable::default();
        t.apply_page(page(
            t0,
            "",
            None,
            vec![conn("a.1", 1000, None, 5), conn("a.2", 1001, None, 1)],
        ));
        assert_eq!(t.view().len(), 2);
        assert!(t.synced);

        // a.3 connects and a.1 leaves after a list was requested but before it arrives.
        let t1 = t0 + Duration::from_millis(10);
        t.connected(conn("a.3", 1002, Some("alice"), 0), t1);
        t.disconnected("a.1", "client", t1);
        t.apply_page(page(
            t0 + Duration::from_millis(5),
            "",
            None,
            vec![conn("a.1", 1000, None, 6), conn("a.2", 1001, None, 2)],
        ));
        assert_eq!(
            ids(&mut t),
            ["a.2", "a.3"],
            "the stale list neither revives a.1 nor drops a.3"
        );
        assert_eq!(
            t.connection("a.2").unwrap().messages_in,
            2,
            "counters come from the list"
        );
        assert_eq!(t.server_total, 2);
    }

    #[test]
    fn a_page_replaces_exactly_its_id_range() {
        let t0 = Instant::now();
        let mut t = ConnectionTable::default();
        let all: Vec<_> = ["a.x.1", "a.x.2", "a.x.9", "a.x.10", "b.y.1", "b.y.2"]
            .iter()
            .enumerate()
            .map(|(i, id)| conn(id, 1000 + i as u16, None, 0))
            .collect();
        t.apply_page(page(t0, "", None, all));
        // A slice after a.x.2 up to b.y.1: a.x.9 is gone, a.x.11 is new, counters change;
        // a.x.1, a.x.2 (before) and b.y.2 (after) are untouched.
        let t1 = t0 + Duration::from_millis(1);
        t.apply_page(page(
            t1,
            "a.x.2",
            Some("b.y.1"),
            vec![
                conn("a.x.10", 1003, None, 7),
                conn("a.x.11", 1006, None, 0),
                conn("b.y.1", 1004, None, 3),
            ],
        ));
        assert_eq!(
            ids(&mut t),
            ["a.x.1", "a.x.2", "a.x.10", "a.x.11", "b.y.1", "b.y.2"]
        );
        assert_eq!(t.connection("a.x.10").unwrap().messages_in, 7);
        // The last slice (no `until`) covers everything after its cursor.
        t.apply_page(page(t1, "a.x.11", None, vec![conn("b.y.2", 1005, None, 1)]));
        assert_eq!(ids(&mut t), ["a.x.1", "a.x.2", "a.x.10", "a.x.11", "b.y.2"]);
        // Rows of an instance that did not answer are kept.
        let mut p = page(t1, "", None, vec![conn("a.x.1", 1000, None, 0)]);
        p.missing = vec!["b.y".into()];
        t.apply_page(p);
        assert_eq!(ids(&mut t), ["a.x.1", "b.y.2"]);
        assert_eq!(t.missing, ["b.y"]);
    }

    #[test]
    fn sorts_by_every_column_and_flips() {
        let mut t = ConnectionTable::default();
        t.apply_page(page(
            Instant::now(),
            "",
            None,
            vec![
                conn("a.10", 900, Some("bob"), 3),
                conn("a.9", 1000, Some("alice"), 7),
            ],
        ));
        for column in Column::ALL {
            t.sort_by(column);
            assert_eq!(t.view().len(), 2, "{column:?}");
        }
        t.sort_by(Column::Id);
        let asc = !t.sort().descending;
        let first = t.view()[0].clone();
        assert_eq!(
            first,
            if asc { "a.9" } else { "a.10" },
            "ids sort naturally"
        );
        t.sort_by(Column::Remote);
        assert!(!t.sort().descending);
        assert_eq!(t.view()[0], "a.10", "127.0.0.1:900 before 127.0.0.1:1000");
        t.sort_by(Column::Remote);
        assert_eq!(t.view()[0], "a.9");
        t.sort_by(Column::MessagesIn);
        assert!(t.sort().descending, "numbers start largest first");
        assert_eq!(t.view()[0], "a.9");
    }

    #[test]
    fn filters_locally_at_once() {
        let mut t = ConnectionTable::default();
        t.apply_page(page(
            Instant::now(),
            "",
            None,
            vec![
                conn("a.1", 1, Some("bob"), 0),
                conn("a.2", 2, Some("alice"), 0),
            ],
        ));
        t.set_filter(ListFilter {
            user: "alice".into(),
            ..Default::default()
        });
        assert_eq!(t.view(), ["a.2"]);
        // A list fetched for the old filter is ignored.
        t.apply_page(page(
            Instant::now(),
            "",
            None,
            vec![conn("a.1", 1, Some("bob"), 0)],
        ));
        assert_eq!(t.view(), ["a.2"]);
    }

    #[test]
    fn selected_connection_that_leaves_is_remembered() {
        let mut t = ConnectionTable::default();
        t.apply_page(page(
            Instant::now(),
            "",
            None,
            vec![conn("a.1", 1, None, 0)],
        ));
        t.select(Some("a.1".into()));
        t.disconnected("a.1", "kicked", Instant::now());
        assert!(t.connection("a.1").is_none());
        assert_eq!(t.departed().unwrap().reason, "kicked");
    }

    #[test]
    fn rows_on_screen_become_few_small_slices() {
        let mut t = ConnectionTable::default();
        let conns: Vec<_> = (1..=40u16)
            .map(|n| conn(&format!("a.r.{n}"), n, None, u64::from(n % 7)))
            .collect();
        t.apply_page(page(Instant::now(), "", None, conns));
        // Sorted by id, rows 10..20 on screen: one slice from a.r.10.
        t.sort_by(Column::Id);
        if t.sort().descending {
            t.sort_by(Column::Id);
        }
        t.refresh_view();
        t.set_visible(9..19);
        assert_eq!(
            t.watch_ranges(),
            [RangeQuery {
                after: "a.r.9".into(),
                limit: 10 + RANGE_SLACK
            }]
        );
        // The first rows: the slice starts at the beginning; the selection far away is its
        // own slice.
        t.set_visible(0..3);
        t.select(Some("a.r.30".into()));
        assert_eq!(
            t.watch_ranges(),
            [
                RangeQuery {
                    after: String::new(),
                    limit: 3 + RANGE_SLACK
                },
                RangeQuery {
                    after: "a.r.29".into(),
                    limit: 1 + RANGE_SLACK
                }
            ]
        );
        // Sorted by a counter the rows on screen are scattered: never more than MAX_RANGES
        // slices, and every row on screen inside one.
        t.sort_by(Column::MessagesIn);
        t.refresh_view();
        t.set_visible(0..20);
        let ranges = t.watch_ranges();
        assert!(ranges.len() <= MAX_RANGES, "{ranges:?}");
        let order: Vec<&str> = t.order.iter().map(|k| k.id.as_str()).collect();
        for id in &t.view_rows()[0..20] {
            let pos = order.iter().position(|o| o == id).unwrap();
            assert!(
                ranges.iter().any(|r| {
                    let start = if r.after.is_empty() {
                        0
                    } else {
                        order.iter().position(|o| *o == r.after).unwrap() + 1
                    };
                    pos >= start && pos < start + r.limit as usize
                }),
                "{id} is in no slice: {ranges:?}"
            );
        }
    }
}
