//! A weighted mix of events for `broadcast`/`publish` (`--mix`, or `[[phase.event]]` in a
//! scenario file): some to everyone, some to one user, in the proportions of production.
//!
//! `--mix target=user,type=1,weight=3 --mix target=all,type=10,weight=1`: three quarters of the
//! events are Login events (`eventType` 1) for one user each, a quarter Echo broadcasts. Which
//! entry, and which user, event number `seq` is, follows from `seq` alone (a fixed hash), so every
//! worker and every listener can tell what it should have received without being told: a listener
//! expects the events to everyone plus those to its own user, and any user event it gets that was
//! meant for another user is counted as `misdelivered`.
//!
//! User-targeted events need per-connection identities (`--jwt-secret` or `--token-file`) and
//! publisher connections (`--api-key`): the broker routes a publisher's event carrying a
//! top-level `username` to that user's connections.

use std::sync::Arc;

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

use crate::identity::{mix64, Identities};
use crate::probe::{Encoder, Kind};

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    All,
    User,
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
}

/// What event `seq` is: its entry and, for a user event, the user number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub entry: usize,
    pub user: Option<usize>,
}

impl Mix {
    /// Parses `--mix` entries (`target=all|user,type=N,weight=W`). `users` is the number of
    /// distinct users among the listeners.
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
                            "connection" => bail!(
                                "--mix `{spec}`: target=connection is not supported (the tool \
                                 does not learn its connections' ids); use all or user"
                            ),
                            other => bail!("--mix `{spec}`: target `{other}` is not all or user"),
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
        })
    }

    pub fn has_user_events(&self) -> bool {
        self.entries.iter().any(|e| e.to == To::User)
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
        let user = (self.entries[entry].to == To::User)
            .then(|| (mix64(h) % self.users.max(1) as u64) as usize);
        Pick { entry, user }
    }

    /// Event `seq`, sent at probe time `t_ns`, as a text frame.
    pub fn encode(&self, seq: u64, t_ns: u64) -> String {
        let p = self.pick(seq);
        let extra = match (p.user, &self.identities) {
            (Some(u), Some(ids)) => {
                let name = Value::from(ids.username(u)).to_string();
                format!("\"username\":{name},")
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
}

impl Expectation {
    pub fn of(mix: &Mix, sent: impl Iterator<Item = u64>) -> Self {
        let mut e = Expectation {
            all: 0,
            per_user: vec![0; mix.users],
        };
        for seq in sent {
            match mix.pick(seq).user {
                None => e.all += 1,
                Some(u) => {
                    if let Some(n) = e.per_user.get_mut(u) {
                        *n += 1;
                    }
                }
            }
        }
        e
    }

    /// Events user `u`'s listener should receive.
    pub fn for_user(&self, u: usize) -> u64 {
        self.all + self.per_user.get(u).copied().unwrap_or(0)
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
        assert!(Mix::parse(&["target=connection".into()], 4, "r", None, 10).is_err());
        assert!(Mix::parse(&["weight=0".into()], 4, "r", None, 10).is_err());
    }
}
