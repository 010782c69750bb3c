//! The connection list: cheap, consistent resync of the table with the fleet.
//!
//! The table is kept as slices of the list in id order ([`admin_api::id_key`]), fetched from
//! `GET .../fleet/connections` with the `after` cursor; each slice ([`Page`]) replaces exactly
//! the rows of its id range, so a list that changes between two pages is neither skipped nor
//! repeated, and a slice is as good as a full list for the rows it covers.
//!
//! - **Full walk** (every page, cursor to cursor): at the start of a session, when the stream
//!   lagged, after a filter change (debounced), when the fleet poll saw other instances'
//!   clients come or go (at most every [`CHURN_WALK_MIN`]), and otherwise every
//!   [`FULL_WALK`]. A slow walk (a huge fleet) makes every wait longer.
//! - **Counters of the rows on screen** (and the selected one): every [`COUNTERS`], one small
//!   page per run of adjacent rows the UI asks for ([`super::Command::Watch`]).
//! - **Connects and disconnects** of the instance the session talks to arrive at once on its
//!   stream ([`super::stream`]).
//!
//! A broker without the fleet routes is listed as before: `GET .../connections` by offset,
//! every [`LEGACY_RESYNC`].

use std::time::{Duration, Instant};

use tokio::sync::watch;

use admin_api::{ListFilter, ListQuery};

use super::http::{ApiError, Endpoint};
use super::session::SessionControl;
use super::{Outbox, Page, RangeQuery, Update};

/// Page size of a walk (the broker's maximum).
const PAGE: u64 = admin_api::MAX_PAGE;
/// Rows fetched at most per walk; past that the table says so and asks for a filter.
pub const MAX_ROWS: u64 = 50_000;
/// The whole list is walked at least this often, in case the stream and the fleet poll both
/// missed something.
pub const FULL_WALK: Duration = Duration::from_secs(60);
/// The rows on screen have their counters refreshed this often.
pub const COUNTERS: Duration = Duration::from_secs(2);
/// A walk asked for by other instances' churn comes at most this soon after the previous one.
pub const CHURN_WALK_MIN: Duration = Duration::from_secs(10);
/// A broker without the fleet routes: the whole list this often (the counters are only there).
pub const LEGACY_RESYNC: Duration = Duration::from_secs(5);
/// Filter edits within this window cause one walk, not one per keystroke.
const FILTER_DEBOUNCE: Duration = Duration::from_millis(250);

pub(super) async fn run(
    ep: &Endpoint,
    filter: &mut watch::Receiver<ListFilter>,
    ranges: &watch::Receiver<Vec<RangeQuery>>,
    ctl: &SessionControl,
    out: &Outbox,
) -> ApiError {
    let mut fleet_routes = true;
    loop {
        let current = filter.borrow_and_update().clone();
        let started = Instant::now();
        if fleet_routes {
            match walk(ep, &current, out).await {
                Ok(true) => {}
                Ok(false) => fleet_routes = false,
                Err(e) => return e,
            }
        }
        if !fleet_routes {
            if let Err(e) = legacy_walk(ep, &current, out).await {
                return e;
            }
        }
        // A slow walk (a huge fleet) is repeated less often, so the app never hogs the broker.
        let took = started.elapsed();
        let next_walk = started
            + if fleet_routes {
                FULL_WALK.max(took * 8)
            } else {
                LEGACY_RESYNC.max(took * 4)
            };
        let churn_walk = started + CHURN_WALK_MIN.max(took * 4);
        let mut churn = false;
        let mut tick = tokio::time::interval_at((Instant::now() + COUNTERS).into(), COUNTERS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = if churn {
                next_walk.min(churn_walk)
            } else {
                next_walk
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => break,
                () = ctl.lagged.notified() => break,
                changed = filter.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(FILTER_DEBOUNCE).await;
                    break;
                }
                () = ctl.fleet_changed.notified() => churn = true,
                _ = tick.tick(), if fleet_routes => {
                    let wanted = ranges.borrow().clone();
                    for range in &wanted {
                        if let Err(e) = refresh(ep, &current, range, out).await {
                            return e;
                        }
                    }
                }
            }
        }
    }
}

fn query(filter: &ListFilter, after: &str, limit: u64) -> ListQuery {
    ListQuery {
        id: filter.id.clone(),
        origin: filter.origin.clone(),
        user: filter.user.clone(),
        remote: filter.remote.clone(),
        publisher: filter.publisher,
        after: after.to_string(),
        offset: 0,
        limit: Some(limit),
    }
}

/// Walks the whole fleet list, page by page, each sent as it arrives. `Ok(false)`: the
/// broker has no fleet routes.
async fn walk(ep: &Endpoint, filter: &ListFilter, out: &Outbox) -> Result<bool, ApiError> {
    let mut after = String::new();
    let mut rows = 0u64;
    loop {
        let requested_at = Instant::now();
        let Some(page) = ep.fleet_page(&query(filter, &after, PAGE)).await? else {
            return Ok(false);
        };
        rows += page.connections.len() as u64;
        let last = page.connections.last().map(|c| c.id.clone());
        let next = page.next.clone().filter(|_| last.is_some());
        let done = next.is_none() || rows >= MAX_ROWS;
        out.send(Update::Page(Page {
            filter: filter.clone(),
            requested_at,
            after: after.clone(),
            // The last page covers everything after the cursor; a capped walk ends at its
            // last row.
            until: if next.is_none() { None } else { last },
            total: page.total,
            connections: page.connections,
            missing: page.missing,
            walk_done: done,
        }));
        match next {
            Some(next) if !done => after = next,
            _ => return Ok(true),
        }
    }
}

/// One slice: the rows after `range.after`, at most `range.limit`.
async fn refresh(
    ep: &Endpoint,
    filter: &ListFilter,
    range: &RangeQuery,
    out: &Outbox,
) -> Result<(), ApiError> {
    let requested_at = Instant::now();
    let Some(page) = ep
        .fleet_page(&query(filter, &range.after, range.limit.clamp(1, PAGE)))
        .await?
    else {
        return Ok(());
    };
    let last = page.connections.last().map(|c| c.id.clone());
    let until = if page.next.is_none() { None } else { last };
    if until.is_none() && page.next.is_some() {
        return Ok(()); // an empty page that claims more: nothing to learn
    }
    out.send(Update::Page(Page {
        filter: filter.clone(),
        requested_at,
        after: range.after.clone(),
        until,
        total: page.total,
        connections: page.connections,
        missing: page.missing,
        walk_done: false,
    }));
    Ok(())
}

/// A broker without the fleet routes: its own list by offset, sent as one slice.
async fn legacy_walk(ep: &Endpoint, filter: &ListFilter, out: &Outbox) -> Result<(), ApiError> {
    let requested_at = Instant::now();
    let mut all = Vec::new();
    let mut offset = 0;
    let total = loop {
        let page = ep.page(filter, offset, PAGE).await?;
        let n = page.connections.len() as u64;
        all.extend(page.connections);
        offset += n;
        if n == 0 || offset >= page.total || offset >= MAX_ROWS {
            break page.total;
        }
    };
    out.send(Update::Page(Page {
        filter: filter.clone(),
        requested_at,
        after: String::new(),
        until: None,
        total,
        connections: all,
        missing: Vec::new(),
        walk_done: true,
    }));
    Ok(())
}
