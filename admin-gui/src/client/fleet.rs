//! The fleet: every instance with its health and stats (`GET .../instances`, every
//! [`POLL`]), and the last minutes of history that seed the charts and the sparklines at the
//! start of a session.
//!
//! The poll also watches what the stream cannot see: when an instance comes or goes, changes
//! health, or (not the one the stream is on) accepts or closes connections, it asks the list
//! resync for a walk ([`super::sync`], rate-limited there).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use admin_api::{Health, InstanceInfo};

use super::http::{ApiError, Endpoint};
use super::session::SessionControl;
use super::{Outbox, Update};

/// How often the instances are read (the brokers' heartbeat interval).
pub const POLL: Duration = Duration::from_secs(2);
/// Sparklines seeded from history at most for this many instances.
const SEED_MAX: usize = 32;

/// What the poll remembers of an instance to notice a change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Signature {
    accepted: u64,
    closed: u64,
    up: bool,
}

impl Signature {
    fn of(i: &InstanceInfo) -> Signature {
        Signature {
            accepted: i.stats.totals.accepted,
            closed: i.stats.totals.closed,
            up: i.health == Health::Up,
        }
    }
}

/// Whether the instances changed in a way the list must follow: one came or went, changed
/// health, or one that is not `streamed` opened or closed connections.
fn fleet_changed(
    before: &HashMap<String, Signature>,
    now: &[InstanceInfo],
    streamed: Option<&str>,
) -> bool {
    if before.len() != now.len() {
        return true;
    }
    now.iter().any(|i| match before.get(&i.instance) {
        None => true,
        Some(prev) => {
            let sig = Signature::of(i);
            prev.up != sig.up
                || (Some(i.instance.as_str()) != streamed
                    && (prev.accepted != sig.accepted || prev.closed != sig.closed))
        }
    })
}

/// Errors that end the session; anything else from an optional route is skipped.
fn fatal(e: &ApiError) -> bool {
    matches!(e, ApiError::Unauthorized(_) | ApiError::Unreachable(_))
}

pub(super) async fn run(ep: &Endpoint, ctl: &SessionControl, out: &Outbox) -> ApiError {
    match ep.history().await {
        Ok(Some(history)) => out.send(Update::History(history)),
        Ok(None) => {}
        Err(e) if fatal(&e) => return e,
        Err(_) => {}
    }
    let mut seen: Option<HashMap<String, Signature>> = None;
    let mut seeded: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let list = match ep.instances().await {
            Ok(Some(list)) => list,
            // A broker without fleet routes: the stats of its stream are all there is.
            Ok(None) => return std::future::pending().await,
            Err(e) if fatal(&e) => return e,
            Err(_) => continue,
        };
        if let Some(before) = &seen {
            if fleet_changed(before, &list.instances, ctl.streamed().as_deref()) {
                ctl.fleet_changed.notify_one();
            }
        }
        seen = Some(
            list.instances
                .iter()
                .map(|i| (i.instance.clone(), Signature::of(i)))
                .collect(),
        );
        let new: Vec<String> = list
            .instances
            .iter()
            .map(|i| i.instance.clone())
            .filter(|name| !seeded.contains(name))
            .take(SEED_MAX.saturating_sub(seeded.len()))
            .collect();
        out.send(Update::Instances {
            list,
            at: Instant::now(),
        });
        for name in new {
            match ep.instance_history(&name).await {
                Ok(Some(history)) => out.send(Update::InstanceHistory(history)),
                Ok(None) => {}
                Err(e) if fatal(&e) => return e,
                Err(_) => {}
            }
            seeded.insert(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin_api::{Stats, Totals};

    fn instance(name: &str, accepted: u64, closed: u64, health: Health) -> InstanceInfo {
        InstanceInfo {
            instance: name.into(),
            health,
            seen_ms_ago: 0,
            stats: Stats {
                instance: name.into(),
                ready: true,
                totals: Totals {
                    accepted,
                    closed,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    fn seen(list: &[InstanceInfo]) -> HashMap<String, Signature> {
        list.iter()
            .map(|i| (i.instance.clone(), Signature::of(i)))
            .collect()
    }

    #[test]
    fn churn_where_the_stream_cannot_see_asks_for_a_walk() {
        let before = seen(&[
            instance("a", 5, 1, Health::Up),
            instance("b", 3, 0, Health::Up),
        ]);
        // The streamed instance's own churn: the stream already told.
        let a_moved = [
            instance("a", 6, 1, Health::Up),
            instance("b", 3, 0, Health::Up),
        ];
        assert!(!fleet_changed(&before, &a_moved, Some("a")));
        assert!(
            fleet_changed(&before, &a_moved, None),
            "no stream: any churn"
        );
        // b's churn: only a walk shows it.
        let b_moved = [
            instance("a", 5, 1, Health::Up),
            instance("b", 3, 1, Health::Up),
        ];
        assert!(fleet_changed(&before, &b_moved, Some("a")));
        // b went silent, or a new instance joined.
        let b_silent = [
            instance("a", 5, 1, Health::Up),
            instance("b", 3, 0, Health::Silent),
        ];
        assert!(fleet_changed(&before, &b_silent, Some("a")));
        let joined = [
            instance("a", 5, 1, Health::Up),
            instance("b", 3, 0, Health::Up),
            instance("c", 0, 0, Health::Up),
        ];
        assert!(fleet_changed(&before, &joined, Some("a")));
        let same = [
            instance("a", 5, 1, Health::Up),
            instance("b", 3, 0, Health::Up),
        ];
        assert!(!fleet_changed(&before, &same, Some("a")));
    }
}
