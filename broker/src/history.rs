//! Resumable delivery: positions, and the history they point into.
//!
//! Every event meant for all clients or for one user is given a position when it is delivered
//! and kept in a history bounded in bytes and age. A client that opted in at connect receives
//! such events with `"brokerPosition"` added as their last field; reconnecting with the last
//! position it saw, it first receives what it missed that was meant for it, in order and once,
//! then a recovery notice, then the live stream.
//!
//! A position is `<epoch>-<sequence>`. The epoch names one history: 8 hex digits drawn at each
//! start when the history is in memory, the stream's creation time when it is in NATS
//! JetStream. A position from another epoch cannot be resumed from (the notice says so).
//!
//! Standalone, positions are handed out and events fanned out under one lock
//! ([`MemoryHistory::deliver`]), so every connection sees positions in increasing order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::{Mutex, MutexGuard};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Where a client is in the stream of events meant for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Box<str>,
    pub seq: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for Position {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s
            .rsplit_once('-')
            .ok_or("a position is <epoch>-<sequence>")?;
        if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("a position's epoch is 1 to 32 letters and digits");
        }
        let seq = seq
            .parse()
            .map_err(|_| "a position's sequence is a number")?;
        Ok(Position {
            epoch: epoch.into(),
            seq,
        })
    }
}

/// Who an event in the history was meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    User(Arc<str>),
}

/// One event in the history.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub scope: Scope,
    pub frame: Utf8Bytes,
}

impl Entry {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

/// What each entry is charged beyond its frame.
const ENTRY_OVERHEAD: usize = 64;

/// The part of a history a resuming client asked for.
#[derive(Debug)]
pub enum Replay {
    /// Every event after the position, up to and including `head`.
    Complete { entries: Vec<Entry>, head: u64 },
    /// The position cannot be resumed from; `head` is where the client is now.
    Incomplete { reason: String, head: u64 },
}

/// The history kept in memory (standalone), bounded in bytes and age.
pub struct MemoryHistory {
    epoch: Box<str>,
    max_bytes: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

impl MemoryHistory {
    /// The lock; a panic elsewhere while it was held leaves a usable history.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    entries: VecDeque<(Instant, Entry)>,
    bytes: usize,
    /// The sequence of the newest event (0: none yet).
    head: u64,
}

/// What a history holds, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub events: usize,
    pub bytes: usize,
    pub oldest_age: Duration,
}

impl MemoryHistory {
    pub fn new(epoch: &str, max_bytes: usize, max_age: Duration) -> MemoryHistory {
        MemoryHistory {
            epoch: epoch.into(),
            max_bytes,
            max_age,
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                bytes: 0,
                head: 0,
            }),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Gives `frame` the next position, keeps it, and runs `fan_out` with that position while
    /// no other event can be given one: connections see positions in increasing order.
    pub fn deliver<R>(&self, scope: Scope, frame: &Utf8Bytes, fan_out: impl FnOnce(u64) -> R) -> R {
        let mut inner = self.lock();
        inner.head += 1;
        let entry = Entry {
            seq: inner.head,
            scope,
            frame: frame.clone(),
        };
        let now = Instant::now();
        inner.bytes += entry.cost();
        inner.entries.push_back((now, entry));
        self.evict(&mut inner, now);
        let seq = inner.head;
        fan_out(seq)
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, e)) = inner.entries.front() {
            let too_big = inner.bytes > self.max_bytes;
            let too_old = now.duration_since(*at) > self.max_age;
            if !(too_big || too_old) {
                break;
            }
            inner.bytes -= e.cost();
            inner.entries.pop_front();
        }
    }

    /// The newest position.
    pub fn head(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            seq: self.lock().head,
        }
    }

    /// Everything after `since` that `wants` keeps, or why that cannot be had. `max_bytes`
    /// bounds what one resume may replay.
    pub fn since(
        &self,
        since: &Position,
        wants: impl Fn(&Scope) -> bool,
        max_bytes: usize,
    ) -> Replay {
        let mut inner = self.lock();
        self.evict(&mut inner, Instant::now());
        let head = inner.head;
        let oldest = inner.entries.front().map_or(head + 1, |(_, e)| e.seq);
        if let Some(reason) = unresumable(since, &self.epoch, oldest, head) {
            return Replay::Incomplete { reason, head };
        }
        let mut bytes = 0;
        let mut entries = Vec::new();
        for (_, e) in inner.entries.iter().filter(|(_, e)| e.seq > since.seq) {
            if wants(&e.scope) {
                bytes += e.frame.len();
                if bytes > max_bytes {
                    return Replay::Incomplete {
                        reason: format!(
                            "more was missed after {since} than one resume replays ({max_bytes} bytes)"
                        ),
                        head,
                    };
                }
                entries.push(e.clone());
            }
        }
        Replay::Complete { entries, head }
    }

    pub fn stats(&self) -> Stats {
        let mut inner = self.lock();
        self.evict(&mut inner, Instant::now());
        Stats {
            events: inner.entries.len(),
            bytes: inner.bytes,
            oldest_age: inner
                .entries
                .front()
                .map_or(Duration::ZERO, |(at, _)| at.elapsed()),
        }
    }
}

/// Why `since` cannot be resumed from a history of `epoch` that holds `oldest..=head`, if it
/// cannot (both histories, memory and JetStream, decide the same way).
pub fn unresumable(since: &Position, epoch: &str, oldest: u64, head: u64) -> Option<String> {
    if *since.epoch != *epoch {
        return Some(format!(
            "the position is from another history (epoch {}, now {epoch}): the broker restarted, or its history was reset or recreated",
            since.epoch
        ));
    }
    if since.seq > head {
        return Some(format!(
            "the position {since} is ahead of this history ({head})"
        ));
    }
    if since.seq < head && since.seq + 1 < oldest {
        return Some(format!(
            "events after {since} are no longer kept (the history starts at {oldest})"
        ));
    }
    None
}

/// The event `frame` (a JSON object) with `"brokerPosition": "<pos>"` added as its last field,
/// for the clients that asked for positions. `None` if `frame` is not an object.
pub fn with_position(frame: &str, pos: &str) -> Option<Utf8Bytes> {
    let body = frame.trim_end();
    let inner = body.strip_suffix('}')?;
    let empty = inner.trim_start().strip_prefix('{')?.trim().is_empty();
    let mut out = String::with_capacity(body.len() + pos.len() + 20);
    out.push_str(inner);
    out.push_str(if empty { "" } else { "," });
    out.push_str("\"brokerPosition\":\"");
    out.push_str(pos);
    out.push_str("\"}");
    Some(Utf8Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_string())
    }

    fn pos(s: &str) -> Position {
        s.parse().expect("position")
    }

    #[test]
    fn positions_read_and_print() {
        assert_eq!(pos("0123abcd-42").to_string(), "0123abcd-42");
        for bad in [
            "",
            "12",
            "-3",
            "abc-",
            "abc-x",
            "a b-1",
            "a-b-7",
            "x-18446744073709551616",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_position_is_added_as_the_last_field() {
        let p = "e-1";
        assert_eq!(
            with_position(r#"{"eventType":6,"files":[]}"#, p).as_deref(),
            Some(r#"{"eventType":6,"files":[],"brokerPosition":"e-1"}"#)
        );
        assert_eq!(
            with_position("{ }\n", p).as_deref(),
            Some(r#"{ "brokerPosition":"e-1"}"#)
        );
        assert_eq!(with_position("[1]", p), None);
        let v: serde_json::Value =
            serde_json::from_str(&with_position(r#" {"a": {"b": "}"} } "#, p).expect("object"))
                .expect("still JSON");
        assert_eq!(v["brokerPosition"], "e-1");
        assert_eq!(v["a"]["b"], "}");
    }

    #[test]
    fn a_resume_gets_what_it_missed_for_it_alone_or_says_why_not() {
        let h = MemoryHistory::new("e1", 1 << 20, Duration::from_secs(60));
        let alice: Arc<str> = "alice".into();
        for (i, scope) in [
            Scope::All,
            Scope::User(alice.clone()),
            Scope::User("bob".into()),
            Scope::All,
        ]
        .into_iter()
        .enumerate()
        {
            let seq = h.deliver(scope, &frame(&format!("{{\"i\":{i}}}")), |seq| seq);
            assert_eq!(seq, i as u64 + 1);
        }
        let for_alice = |s: &Scope| match s {
            Scope::All => true,
            Scope::User(u) => **u == *"alice",
        };
        match h.since(&pos("e1-1"), for_alice, usize::MAX) {
            Replay::Complete { entries, head } => {
                assert_eq!(head, 4);
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                assert_eq!(seqs, [2, 4], "bob's event is not alice's");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.since(&pos("e1-4"), for_alice, usize::MAX),
            Replay::Complete { entries, head: 4 } if entries.is_empty()
        ));
        assert!(matches!(
            h.since(&pos("e0-1"), for_alice, usize::MAX),
            Replay::Incomplete { head: 4, .. }
        ));
        assert!(matches!(
            h.since(&pos("e1-9"), for_alice, usize::MAX),
            Replay::Incomplete { .. }
        ));
        assert!(matches!(
            h.since(&pos("e1-0"), for_alice, 5),
            Replay::Incomplete { .. }
        ));
    }

    #[test]
    fn the_history_is_bounded_in_bytes_and_a_lost_start_is_told() {
        let h = MemoryHistory::new("e", 3 * (10 + ENTRY_OVERHEAD), Duration::from_secs(60));
        for i in 0..10 {
            h.deliver(Scope::All, &frame(&format!("{{\"i\":{i:04}}}")), |_| ());
        }
        let s = h.stats();
        assert_eq!(s.events, 3);
        assert!(s.bytes <= 3 * (10 + ENTRY_OVERHEAD));
        assert!(matches!(
            h.since(&pos("e-7"), |_| true, usize::MAX),
            Replay::Complete { entries, .. } if entries.len() == 3
        ));
        assert!(matches!(
            h.since(&pos("e-6"), |_| true, usize::MAX),
            Replay::Incomplete { .. }
        ));
    }

    #[test]
    fn the_history_is_bounded_in_age() {
        let h = MemoryHistory::new("e", 1 << 20, Duration::ZERO);
        h.deliver(Scope::All, &frame("{}"), |_| ());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(h.stats().events, 0);
        assert!(matches!(
            h.since(&pos("e-0"), |_| true, usize::MAX),
            Replay::Incomplete { .. }
        ));
    }
}
