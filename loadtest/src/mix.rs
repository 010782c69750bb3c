//! A weighted mix of events for `broadcast`/`publish` (`--mix`, or `[[phase.event]]` in a
//! scenario file): some to everyone, some to one user, some to one connection, in the
//! proportions of production.
//!
//! `--mix target=user,type=1,weight=3 --mix target=all,type=10,weight=1`: three quarters of the
//! events are Login events (`eventType` 1) for one user each, a quarter Echo broadcasts. Which
//! entry, and which user or connection, event number `seq` is, follows from `seq` alone (a fixed
//! hash), so every worker and every listener can tell what it should have received without being
//! told: a listener expects the events to everyone plus those to its own user and to its own
//! connection, and any user or connection event it gets that was meant for another is counted as
//! `misdelivered`.
//!
//! User-targeted events need per-connection identities (`--jwt-secret` or `--token-file`) and
//! publisher connections (`--api-key`): the broker routes a publisher's event carrying a
//! top-level `username` to that user's connections.
//!
//! Connection-targeted events carry `"to": "<connection id>"`, the broker's id of one listener
//! (`<instanceId>.<run>.<number>`), which the broker routes to that connection alone. A listener
//! learns its id the way the protocol gives it out: it sends a MetaRequest
//! (`{"eventType":9,"property":"loadtest-id"}`), the broker forwards it to a publisher with the
//! sender's id in `from`, and the tool's own publisher connection answers `"to"` that id with the
//! id as `val` (see `scenario::delivery`). The identified listeners, the same list in every
//! worker, are what connection events pick from ([`Mix::set_connections`]).
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

use crate::identity::{mix64, Identities};
use crate::probe::{Encoder, Kind};

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    All,
    User,
    Connection,
}

struct Entry {
    to: To,
    weight: u64,
    encoder: Encoder,
}

/// The parsed `--mix`.
pub struct Mix {
    entries: Vec<Entry>,
    total: u64,
    /// Distinct users the user-targeted events pick from.
    users: usize,
    identities: Option<Arc<Identities>>,
    /// The listeners connection events pick from: (listener number, the broker's id for it),
    /// ascending by number; set once every listener that could has learnt its id.
    connections: OnceLock<Vec<(usize, String)>>,
}

/// What event `seq` is: its entry and, for a user event, the user number, for a connection
/// event the listener number (`None` when no listener has an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub entry: usize,
    pub user: Option<usize>,
    pub conn: Option<usize>,
}

/// The `property` of the MetaRequest by which a listener learns its connection id.
pub const ID_PROPERTY: &str = "loadtest-id";
/// What a connection event is addressed to when no listener has an id: well formed for no
/// broker, so it reaches no one (and is expected by no one).
const NOBODY: &str = "loadtest.nobody.0";

impl Mix {
    /// Parses `--mix` entries (`target=all|user|connection,type=N,weight=W`). `users` is the
    /// number of distinct users among the listeners.
    pub fn parse(
        specs: &[String],
        message_size: usize,
        run: &str,
        identities: Option<Arc<Identities>>,
        users: usize,
    ) -> anyhow::Result<Mix> {
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            let (mut to, mut event_type, mut weight) = (To::All, 10u64, 1u64);
            for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').ok_or_else(|| {
                    anyhow!(
                        "--mix `{spec}`: `{part}` is not KEY=VALUE (keys: target, type, weight)"
                    )
                })?;
                match k.trim() {
                    "target" => {
                        to = match v.trim() {
                            "all" => To::All,
                            "user" => To::User,
                            "connection" => To::Connection,
                            other => bail!(
                                "--mix `{spec}`: target `{other}` is not all, user or connection"
                            ),
                        }
                    }
                    "type" => {
                        event_type = v.trim().parse().map_err(|_| {
                            anyhow!("--mix `{spec}`: type `{v}` is not an eventType number")
                        })?
                    }
                    "weight" => {
                        weight = match v.trim().parse::<u64>() {
                            Ok(w) if w > 0 => w,
                            _ => {
                                bail!("--mix `{spec}`: weight `{v}` is not a whole number above 0")
                            }
                        }
                    }
                    other => {
                        bail!("--mix `{spec}`: unknown key `{other}` (keys: target, type, weight)")
                    }
                }
            }
            let mut event = Map::new();
            event.insert("eventType".into(), Value::from(event_type));
            event.insert("message".into(), Value::from("x".repeat(message_size)));
            if to == To::All && event_type == 10 {
                event.insert("broadcast".into(), Value::Bool(true));
            }
            entries.push(Entry {
                to,
                weight,
                encoder: Encoder::new(&event, run),
            });
        }
        if entries.is_empty() {
            bail!("--mix: no entries");
        }
        if entries.iter().any(|e| e.to == To::User) && (identities.is_none() || users == 0) {
            bail!(
                "--mix target=user needs per-connection identities (--jwt-secret or --token-file) \
                 and at least one listener"
            );
        }
        Ok(Mix {
            total: entries.iter().map(|e| e.weight).sum(),
            entries,
            users,
            identities,
            connections: OnceLock::new(),
        })
    }

    pub fn has_user_events(&self) -> bool {
        self.entries.iter().any(|e| e.to == To::User)
    }

    pub fn has_connection_events(&self) -> bool {
        self.entries.iter().any(|e| e.to == To::Connection)
    }

    /// Events for some listeners only (user or connection): each listener expects its own set.
    pub fn is_targeted(&self) -> bool {
        self.entries.iter().any(|e| e.to != To::All)
    }

    /// The identified listeners connection events go to: (listener number, connection id), the
    /// same list in every worker. Sorted here; only the first call counts.
    pub fn set_connections(&self, mut ids: Vec<(usize, String)>) {
        ids.sort();
        ids.dedup_by_key(|(n, _)| *n);
        let _ = self.connections.set(ids);
    }

    /// Listeners connection events can go to (0 before [`Mix::set_connections`]).
    pub fn connection_count(&self) -> usize {
        self.connections.get().map_or(0, Vec::len)
    }

    /// What event `seq` is.
    pub fn pick(&self, seq: u64) -> Pick {
        let h = mix64(seq);
        let mut at = h % self.total;
        let mut entry = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if at < e.weight {
                entry = i;
                break;
            }
            at -= e.weight;
        }
        let to = self.entries[entry].to;
        let user = (to == To::User).then(|| (mix64(h) % self.users.max(1) as u64) as usize);
        let conn = match (to, self.connections.get()) {
            (To::Connection, Some(list)) if !list.is_empty() => {
                Some(list[(mix64(h ^ 0x636f_6e6e) % list.len() as u64) as usize].0)
            }
            _ => None,
        };
        Pick { entry, user, conn }
    }

    /// The connection id of listener `n`, if it has one.
    fn id_of(&self, n: usize) -> Option<&str> {
        let list = self.connections.get()?;
        let at = list.binary_search_by_key(&n, |(k, _)| *k).ok()?;
        Some(list[at].1.as_str())
    }

    /// Event `seq`, sent at probe time `t_ns`, as a text frame.
    pub fn encode(&self, seq: u64, t_ns: u64) -> String {
        let p = self.pick(seq);
        let extra = match (p.user, &self.identities) {
            (Some(u), Some(ids)) => {
                let name = Value::from(ids.username(u)).to_string();
                format!("\"username\":{name},")
            }
            _ if self.entries[p.entry].to == To::Connection => {
                let id = p.conn.and_then(|n| self.id_of(n)).unwrap_or(NOBODY);
                format!("\"to\":{},", Value::from(id))
            }
            _ => String::new(),
        };
        self.entries[p.entry]
            .encoder
            .encode_with(Kind::Delivery, seq, t_ns, None, &extra)
    }
}

/// Expected receipts per listener, from the set of sent events.
pub struct Expectation {
    /// Events to everyone.
    pub all: u64,
    /// Events per user number.
    pub per_user: Vec<u64>,
    /// Events per listener number (connection events).
    pub per_conn: std::collections::HashMap<usize, u64>,
}

impl Expectation {
    pub fn of(mix: &Mix, sent: impl Iterator<Item = u64>) -> Self {
        let mut e = Expectation {
            all: 0,
            per_user: vec![0; mix.users],
            per_conn: std::collections::HashMap::new(),
        };
        for seq in sent {
            let p = mix.pick(seq);
            match (p.user, p.conn, mix.entries[p.entry].to) {
                (Some(u), _, _) => {
                    if let Some(n) = e.per_user.get_mut(u) {
                        *n += 1;
                    }
                }
                (_, Some(c), _) => *e.per_conn.entry(c).or_default() += 1,
                // A connection event with no listener to go to: nobody expects it.
                (None, None, To::Connection) => {}
                (None, None, _) => e.all += 1,
            }
        }
        e
    }

    /// Events user `u`'s listener should receive.
    pub fn for_user(&self, u: usize) -> u64 {
        self.all + self.per_user.get(u).copied().unwrap_or(0)
    }

    /// Events listener number `n` (of user `user`, with identities) should receive.
    pub fn for_listener(&self, n: usize, user: Option<usize>) -> u64 {
        let own = self.per_conn.get(&n).copied().unwrap_or(0);
        own + match user {
            Some(u) => self.for_user(u),
            None => self.all,
        }
    }
}

impl Mix {
    /// Whether listener `n` (of user `user`) should have received event `seq`: false for a
    /// user or connection event meant for another (a misdelivery when it arrives).
    pub fn is_for(&self, seq: u64, n: usize, user: Option<usize>) -> bool {
        let p = self.pick(seq);
        match (p.user, p.conn, self.entries[p.entry].to) {
            (Some(u), _, _) => user == Some(u),
            (_, Some(c), _) => c == n,
            (None, None, To::Connection) => false,
            (None, None, _) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights_and_spread_over_users() {
        use clap::Parser;
        let args = crate::cli::Cli::try_parse_from(["loadtest", "--jwt-secret", "s", "connect"])
            .expect("parses")
            .target;
        let ids = Identities::from_args(&args).expect("ok").map(Arc::new);
        let specs = [
            "target=user,type=1,weight=3".to_owned(),
            "target=all".to_owned(),
        ];
        let mix = Mix::parse(&specs, 4, "r", ids, 10).expect("valid");
        let picks: Vec<Pick> = (0..10_000).map(|s| mix.pick(s)).collect();
        let users = picks.iter().filter(|p| p.user.is_some()).count();
        assert!(
            (7000..8000).contains(&users),
            "{users} of 10000 user events"
        );
        assert!(picks.iter().filter_map(|p| p.user).all(|u| u < 10));
        let e = Expectation::of(&mix, 0..10_000);
        assert_eq!(e.all + e.per_user.iter().sum::<u64>(), 10_000);
        let text = mix.encode(
            picks.iter().position(|p| p.user == Some(3)).expect("some") as u64,
            1,
        );
        assert!(text.contains("\"username\":\"lt-user-3\""), "{text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["eventType"], 1);
        assert!(Mix::parse(&["target=user".into()], 4, "r", None, 10).is_err());
        assert!(Mix::parse(&["target=nobody".into()], 4, "r", None, 10).is_err());
        assert!(Mix::parse(&["weight=0".into()], 4, "r", None, 10).is_err());
    }

    #[test]
    fn connection_events_name_one_identified_listener() {
        let specs = [
            "target=connection,type=3,weight=1".to_owned(),
            "target=all".to_owned(),
        ];
        // No identities needed: any listener has a connection id.
        let mix = Mix::parse(&specs, 4, "r", None, 0).expect("valid");
        assert!(mix.has_connection_events() && mix.is_targeted());
        let first_conn = (0..100)
            .find(|&s| mix.pick(s).entry == 0)
            .expect("some connection event");
        // Before the ids are known a connection event goes to no one, and no one expects it.
        assert_eq!(mix.pick(first_conn).conn, None);
        assert!(mix
            .encode(first_conn, 1)
            .contains("\"to\":\"loadtest.nobody.0\""));
        mix.set_connections(vec![
            (7, "a.1.9".into()),
            (2, "a.1.3".into()),
            (5, "a.1.4".into()),
        ]);
        assert_eq!(mix.connection_count(), 3);
        let mut hit = std::collections::BTreeSet::new();
        for seq in 0..3000 {
            let p = mix.pick(seq);
            if let Some(c) = p.conn {
                assert!([2, 5, 7].contains(&c), "{c}");
                hit.insert(c);
                let text = mix.encode(seq, 1);
                let v: Value = serde_json::from_str(&text).expect("JSON");
                let id = match c {
                    2 => "a.1.3",
                    5 => "a.1.4",
                    _ => "a.1.9",
                };
                assert_eq!(v["to"], id, "{text}");
                assert_eq!(v["eventType"], 3);
                assert!(v.get("broadcast").is_none());
                assert!(mix.is_for(seq, c, None));
                assert!(!mix.is_for(seq, c + 1, None));
            } else {
                assert!(mix.is_for(seq, 0, None), "to everyone");
            }
        }
        assert_eq!(hit.len(), 3, "every identified listener gets some");
        let e = Expectation::of(&mix, 0..3000);
        let total: u64 = e.per_conn.values().sum();
        assert_eq!(e.all + total, 3000);
        assert_eq!(e.for_listener(5, None), e.all + e.per_conn[&5]);
        assert_eq!(
            e.for_listener(4, None),
            e.all,
            "unidentified: only the broadcasts"
        );
    }
}
