//! The fleet: every instance that shares this one's NATS subject prefix, as the admin API sees
//! it. Each instance says it is there every [`HEARTBEAT`] with its stats; each answers list,
//! kick, drain and history requests from the others. So any instance answers for the whole
//! fleet: the instances and their health, connections across all of them, a kick or a drain
//! that reaches the instance that holds the connection or is named.
//!
//! Subjects, under the cluster's prefix `p`:
//! - `p.admin.presence`: heartbeats (the instance's [`Stats`]);
//! - `p.admin.all`: requests every instance answers (a fleet-wide list);
//! - `p.admin.to.<instance>`: requests for one instance (kick, drain, history).
//!
//! Who may ask is decided at the HTTP edge (the admin tokens); NATS is the fleet's own bus, as
//! it is for events (SECURITY.md). Without NATS the fleet is this instance alone and every
//! call is answered locally.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use admin_api::{
    id_key, Access, ConnectionPage, FleetPage, Health, InstanceInfo, InstanceList, KickQuery,
    ListQuery, Stats,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::{self, Refusal};
use crate::shared::Shared;

/// How often an instance says it is there.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silent this long (three heartbeats): [`Health::Silent`].
const SILENT_AFTER: Duration = Duration::from_secs(6);
/// Silent this long: no longer listed.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// How long a fleet-wide list waits for the instances that are up.
const GATHER_WAIT: Duration = Duration::from_millis(1500);
/// How long a request to one instance waits for its answer.
const ASK_WAIT: Duration = Duration::from_secs(3);

/// A request from one instance's admin API to another instance.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Request {
    List {
        query: ListQuery,
    },
    Kick {
        id: String,
        query: KickQuery,
        who: String,
    },
    Drain {
        who: String,
    },
    History,
}

/// An instance's answer: what its own HTTP route would have answered.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    instance: String,
    status: u16,
    body: Value,
}

impl Reply {
    fn from<T: Serialize>(instance: &str, r: Result<T, Refusal>) -> Reply {
        match r {
            Ok(body) => Reply {
                instance: instance.to_string(),
                status: 200,
                body: serde_json::to_value(body).unwrap_or(Value::Null),
            },
            Err(refusal) => Reply {
                instance: instance.to_string(),
                status: refusal.status,
                body: serde_json::json!({ "error": refusal.message }),
            },
        }
    }

    fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, Refusal> {
        if self.status == 200 {
            serde_json::from_value(self.body).map_err(|e| {
                Refusal::new(502, format!("instance {} answered with {e}", self.instance))
            })
        } else {
            let message = self.body["error"].as_str().map_or_else(
                || format!("instance {} refused", self.instance),
                str::to_owned,
            );
            Err(Refusal::new(self.status, message))
        }
    }
}

struct Peer {
    stats: Stats,
    seen: Instant,
}

/// What this instance knows of the fleet.
pub struct Fleet {
    instance: String,
    /// The cluster's subject prefix; `None` when standalone.
    prefix: Option<String>,
    link: OnceLock<async_nats::Client>,
    peers: Mutex<HashMap<String, Peer>>,
}

impl Fleet {
    pub fn new(instance: &str, prefix: Option<&str>) -> Fleet {
        Fleet {
            instance: instance.to_string(),
            prefix: prefix.map(str::to_owned),
            link: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<String, Peer>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self) -> Option<(&async_nats::Client, &str)> {
        Some((self.link.get()?, self.prefix.as_deref()?))
    }

    /// This instance and every other one heard from in the last minute.
    pub fn instances(&self, shared: &Shared, access: Access) -> InstanceList {
        let mut instances = vec![InstanceInfo {
            instance: self.instance.clone(),
            health: Health::Up,
            seen_ms_ago: 0,
            stats: control::stats(shared, access),
        }];
        let mut peers = self.peers();
        peers.retain(|_, p| p.seen.elapsed() < FORGET_AFTER);
        for (name, p) in peers.iter() {
            let ago = p.seen.elapsed();
            instances.push(InstanceInfo {
                instance: name.clone(),
                health: if ago < SILENT_AFTER {
                    Health::Up
                } else {
                    Health::Silent
                },
                seen_ms_ago: ago.as_millis() as u64,
                stats: Stats {
                    access,
                    ..p.stats.clone()
                },
            });
        }
        instances[1..].sort_by(|a, b| a.instance.cmp(&b.instance));
        InstanceList {
            answered_by: self.instance.clone(),
            clustered: self.prefix.is_some(),
            instances,
        }
    }

    /// The other instances that are up: the ones a fleet-wide call waits for.
    fn up(&self) -> Vec<String> {
        self.peers()
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < SILENT_AFTER)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Connections across the fleet that match `q`: this instance's and every other's that
    /// answers within [`GATHER_WAIT`], merged in id order.
    pub async fn list(&self, shared: &Shared, q: &ListQuery) -> FleetPage {
        let q = ListQuery {
            offset: 0,
            ..q.clone()
        };
        let limit = q.limit();
        let mut pages = vec![(self.instance.clone(), control::list(shared, &q))];
        let mut missing = Vec::new();
        if let Some((client, prefix)) = self.client() {
            let expected = self.up();
            let answers = gather(
                client,
                format!("{prefix}.admin.all"),
                &Request::List { query: q.clone() },
                expected.len(),
            )
            .await;
            for reply in answers {
                let instance = reply.instance.clone();
                if let Ok(page) = reply.into_result::<ConnectionPage>() {
                    pages.push((instance, page));
                }
            }
            missing = expected
                .into_iter()
                .filter(|e| !pages.iter().any(|(i, _)| i == e))
                .collect();
            missing.sort();
        }
        merge(pages, limit, missing)
    }

    /// Kicks connection `id` on whichever instance holds it (named in the id).
    pub async fn kick(
        &self,
        shared: &Shared,
        id: &str,
        q: &KickQuery,
        who: &str,
    ) -> Result<admin_api::KickResponse, Refusal> {
        let owner = admin_api::id_instance(id);
        if owner == self.instance {
            return control::kick(shared, id, q, who);
        }
        self.ask(
            owner,
            &Request::Kick {
                id: id.to_string(),
                query: q.clone(),
                who: format!("{who} via {}", self.instance),
            },
        )
        .await
        .map_err(|r| match r.status {
            // No instance by that name answers: no such connection as far as the fleet knows.
            503 => Refusal::new(404, format!("no connection {id}: {}", r.message)),
            _ => r,
        })
    }

    /// Drains the named instance.
    pub async fn drain(
        &self,
        shared: &Arc<Shared>,
        instance: &str,
        who: &str,
    ) -> Result<admin_api::DrainResponse, Refusal> {
        if instance == self.instance {
            return Ok(control::drain(shared, who));
        }
        self.ask(
            instance,
            &Request::Drain {
                who: format!("{who} via {}", self.instance),
            },
        )
        .await
    }

    /// The named instance's last minutes of stats.
    pub async fn history(
        &self,
        shared: &Shared,
        instance: &str,
    ) -> Result<admin_api::StatsHistory, Refusal> {
        if instance == self.instance {
            return Ok(shared.recent.history(&self.instance));
        }
        self.ask(instance, &Request::History).await
    }

    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        instance: &str,
        request: &Request,
    ) -> Result<T, Refusal> {
        let Some((client, prefix)) = self.client() else {
            return Err(Refusal::new(
                404,
                format!(
                    "no instance {instance}: this instance ({}) is not in a cluster",
                    self.instance
                ),
            ));
        };
        // An instance name is `<instanceId>.<run>`: letters, digits, `-`, `_` and dots
        // between them. Anything else (`*`, `>`, spaces) must not reach a NATS subject.
        let well_formed = !instance.is_empty()
            && instance.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !well_formed {
            return Err(Refusal::new(404, format!("no instance {instance:?}")));
        }
        let payload = serde_json::to_vec(request).unwrap_or_default();
        let asked = tokio::time::timeout(
            ASK_WAIT,
            client.request(format!("{prefix}.admin.to.{instance}"), payload.into()),
        )
        .await;
        match asked {
            Ok(Ok(msg)) => match serde_json::from_slice::<Reply>(&msg.payload) {
                Ok(reply) => reply.into_result(),
                Err(e) => Err(Refusal::new(
                    502,
                    format!("instance {instance} answered with {e}"),
                )),
            },
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(Refusal::new(
                    503,
                    format!("no instance {instance} answers in the cluster"),
                ))
            }
            Ok(Err(e)) => Err(Refusal::new(
                503,
                format!("instance {instance} did not answer: {e}"),
            )),
            Err(_) => Err(Refusal::new(
                504,
                format!("instance {instance} did not answer within {ASK_WAIT:?}"),
            )),
        }
    }
}

/// Sends `request` to every instance and collects the answers until `expected` have come or
/// [`GATHER_WAIT`] has passed.
async fn gather(
    client: &async_nats::Client,
    subject: String,
    request: &Request,
    expected: usize,
) -> Vec<Reply> {
    let mut answers = Vec::new();
    if expected == 0 {
        return answers;
    }
    let inbox = client.new_inbox();
    let Ok(mut sub) = client.subscribe(inbox.clone()).await else {
        return answers;
    };
    let payload = serde_json::to_vec(request).unwrap_or_default();
    if client
        .publish_with_reply(subject, inbox, payload.into())
        .await
        .is_err()
    {
        return answers;
    }
    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
    while answers.len() < expected {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => {
                if let Ok(reply) = serde_json::from_slice::<Reply>(&msg.payload) {
                    answers.push(reply);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = sub.unsubscribe().await;
    answers
}

/// Merges each instance's first page (each in id order, each at most `limit`) into the
/// fleet's first `limit` in id order: every one of those is on some instance's first page.
fn merge(pages: Vec<(String, ConnectionPage)>, limit: u64, missing: Vec<String>) -> FleetPage {
    let mut answered: Vec<String> = pages.iter().map(|(i, _)| i.clone()).collect();
    answered.sort();
    let total = pages.iter().map(|(_, p)| p.total).sum();
    let maybe_more = pages
        .iter()
        .any(|(_, p)| p.connections.len() as u64 >= limit);
    let mut connections: Vec<_> = pages.into_iter().flat_map(|(_, p)| p.connections).collect();
    connections.sort_by(|a, b| id_key(&a.id).cmp(&id_key(&b.id)));
    let truncated = connections.len() as u64 > limit;
    connections.truncate(limit as usize);
    let next = (truncated || maybe_more)
        .then(|| connections.last().map(|c| c.id.clone()))
        .flatten();
    FleetPage {
        total,
        limit,
        connections,
        next,
        answered,
        missing,
    }
}

/// Joins the fleet once the cluster's NATS client is made: heartbeats, and answers to the other
/// instances' requests, until shutdown.
pub async fn run(fleet: Arc<Fleet>, shared: Arc<Shared>) {
    let (Some(prefix), Some(cluster)) = (fleet.prefix.clone(), shared.router.cluster.as_ref())
    else {
        return;
    };
    let client = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        c = cluster.client() => c,
    };
    let _ = fleet.link.set(client.clone());
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client.subscribe(subject.clone()).await.map_err(|e| {
                tracing::warn!(error = %e, subject, "fleet: cannot subscribe; the admin API sees this instance only");
            })
        }
    };
    let (Ok(presence), Ok(all), Ok(mine)) = (
        subscribe(format!("{prefix}.admin.presence")).await,
        subscribe(format!("{prefix}.admin.all")).await,
        subscribe(format!("{prefix}.admin.to.{}", fleet.instance)).await,
    ) else {
        return;
    };
    let mut requests = futures_util::stream::select(all, mine);
    let mut presence = presence;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let heartbeat_subject = format!("{prefix}.admin.presence");
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            _ = beat.tick() => {
                let stats = control::stats(&shared, Access::Admin);
                if let Ok(body) = serde_json::to_vec(&stats) {
                    let _ = client.publish(heartbeat_subject.clone(), body.into()).await;
                }
            }
            msg = presence.next() => {
                let Some(msg) = msg else { break };
                if let Ok(stats) = serde_json::from_slice::<Stats>(&msg.payload) {
                    if stats.instance != fleet.instance && !stats.instance.is_empty() {
                        let new = fleet
                            .peers()
                            .insert(stats.instance.clone(), Peer { stats, seen: Instant::now() })
                            .is_none();
                        // A newcomer hears of us at once, not at our next heartbeat.
                        if new {
                            beat.reset_immediately();
                        }
                    }
                }
            }
            msg = requests.next() => {
                let Some(msg) = msg else { break };
                let Some(reply_to) = msg.reply.clone() else { continue };
                let reply = answer(&fleet, &shared, &msg.payload);
                if let Ok(body) = serde_json::to_vec(&reply) {
                    let _ = client.publish(reply_to, body.into()).await;
                }
            }
        }
    }
    // The last word: not ready, so the others show it draining until it goes silent.
    let stats = control::stats(&shared, Access::Admin);
    if let Ok(body) = serde_json::to_vec(&stats) {
        let _ = client.publish(heartbeat_subject, body.into()).await;
    }
}

/// This instance's answer to another's request.
fn answer(fleet: &Fleet, shared: &Arc<Shared>, payload: &[u8]) -> Reply {
    let me = fleet.instance.as_str();
    let request = match serde_json::from_slice::<Request>(payload) {
        Ok(r) => r,
        Err(e) => {
            return Reply::from::<()>(me, Err(Refusal::new(400, format!("bad request: {e}"))))
        }
    };
    match request {
        Request::List { query } => Reply::from(me, Ok(control::list(shared, &query))),
        Request::Kick { id, query, who } => {
            Reply::from(me, control::kick(shared, &id, &query, &who))
        }
        Request::Drain { who } => Reply::from(me, Ok(control::drain(shared, &who))),
        Request::History => Reply::from(me, Ok(shared.recent.history(me))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin_api::ConnectionInfo;

    fn page(ids: &[&str], total: u64) -> ConnectionPage {
        ConnectionPage {
            total,
            offset: 0,
            limit: 2,
            connections: ids
                .iter()
                .map(|id| ConnectionInfo {
                    id: (*id).into(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn merge_takes_the_fleets_first_page_in_id_order() {
        let m = merge(
            vec![
                ("b".into(), page(&["b.aaaaaaaa.1", "b.aaaaaaaa.10"], 5)),
                ("a".into(), page(&["a.aaaaaaaa.2", "a.aaaaaaaa.3"], 2)),
            ],
            2,
            vec!["c".into()],
        );
        let ids: Vec<_> = m.connections.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a.aaaaaaaa.2", "a.aaaaaaaa.3"]);
        assert_eq!(m.total, 7);
        assert_eq!(m.next.as_deref(), Some("a.aaaaaaaa.3"));
        assert_eq!(m.answered, ["a", "b"]);
        assert_eq!(m.missing, ["c"]);

        let last = merge(vec![("a".into(), page(&["a.aaaaaaaa.2"], 1))], 2, vec![]);
        assert_eq!(last.next, None, "a short page is the last");
    }
}
