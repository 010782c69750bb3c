//! The probe: a field `"lt"` that the tool adds to every event it sends and reads back on receipt.
//!
//! The broker keeps fields it does not know, so the probe travels with the event:
//! `"lt":{"run":"<run id>","seq":N,"t":<intended send time, ns>,"k":"b"}`. `run` separates this
//! run's traffic from anyone else's, `seq` lets receivers count receipts per sequence number (so
//! completeness is exact, and duplicates are seen), and `t` is the time the event was *meant* to
//! be sent, in nanoseconds on this process's monotonic clock, so latency measured from it includes
//! any delay the sender itself suffered (coordinated omission).
//!
//! Encoding is done by string concatenation onto a pre-serialized event prefix and decoding reads
//! only the probe object: at hundreds of thousands of receipts per second, parsing the whole event
//! into a `serde_json::Value` would cost more than everything else the receiver does.

use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a probe measures; one letter on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An echo request/reply (round trip).
    Echo,
    /// A fan-out delivery (broadcast or published event).
    Delivery,
    /// A warm-up delivery that proves every listener is registered; not measured.
    Warmup,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Echo => 'e',
            Kind::Delivery => 'b',
            Kind::Warmup => 'w',
        }
    }

    fn from_letter(s: &str) -> Option<Self> {
        match s {
            "e" => Some(Kind::Echo),
            "b" => Some(Kind::Delivery),
            "w" => Some(Kind::Warmup),
            _ => None,
        }
    }
}

/// Set by an agent for its worker: nanoseconds to add to this machine's monotonic clock to be
/// on the coordinator's (see [`crate::agent`]).
pub const CLOCK_OFFSET_ENV: &str = "LOADTEST_CLOCK_OFFSET_NS";

/// Nanoseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`, since boot), moved onto the
/// coordinator's scale in a worker of an agent ([`CLOCK_OFFSET_ENV`]).
///
/// The clock is the machine's, not the process's: with `--workers`, an event sent by one worker
/// process and received by another is timed on one scale; with `--agents`, every machine's
/// workers are put on the coordinator's scale at the start, to within half a round trip.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// The probe time of `at` (an intended send time), on the same scale as [`now_ns`].
pub fn ns_at(at: Instant) -> u64 {
    // `Instant` is CLOCK_MONOTONIC on Linux but opaque: pair one reading of each, once.
    static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();
    let (epoch, base) = *EPOCH.get_or_init(|| {
        let offset: i64 = std::env::var(CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (Instant::now(), monotonic_ns().saturating_add_signed(offset))
    });
    let since = if at >= epoch {
        u64::try_from((at - epoch).as_nanos()).unwrap_or(u64::MAX)
    } else {
        return base.saturating_sub(u64::try_from((epoch - at).as_nanos()).unwrap_or(u64::MAX));
    };
    base.saturating_add(since)
}

#[cfg(unix)]
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(not(unix))]
fn monotonic_ns() -> u64 {
    0
}

/// Turns events into probe-carrying text frames for one run.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The serialized event without its closing brace (and with a trailing comma if non-empty).
    prefix: String,
    run: String,
}

impl Encoder {
    /// `event` is a JSON object; any `lt` field in it is replaced by the probe.
    pub fn new(event: &Map<String, Value>, run: &str) -> Self {
        let mut event = event.clone();
        event.remove("lt");
        let body = Value::Object(event).to_string();
        let mut prefix = body[..body.len() - 1].to_owned();
        if prefix.len() > 1 {
            prefix.push(',');
        }
        Encoder {
            prefix,
            run: run.to_owned(),
        }
    }

    /// The default echo event: `{"eventType":10,"message":"xxx…"}` (+ `"broadcast":true`).
    pub fn echo(message_size: usize, broadcast: bool, run: &str) -> Self {
        Encoder::new(&echo_event(message_size, broadcast), run)
    }

    /// One event carrying `{"run","seq","t","k"}` (and `"c"`, the sender's connection index).
    pub fn encode(&self, kind: Kind, seq: u64, t_ns: u64, conn: Option<usize>) -> String {
        self.encode_with(kind, seq, t_ns, conn, "")
    }

    /// As [`Encoder::encode`], with `extra` (JSON members followed by a comma, such as
    /// `"username":"bob",`) inserted before the probe.
    pub fn encode_with(
        &self,
        kind: Kind,
        seq: u64,
        t_ns: u64,
        conn: Option<usize>,
        extra: &str,
    ) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.prefix.len() + extra.len() + self.run.len() + 72);
        s.push_str(&self.prefix);
        if !extra.is_empty() && !self.prefix.ends_with([',', '{']) {
            s.push(',');
        }
        s.push_str(extra);
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "\"lt\":{{\"run\":\"{}\",\"seq\":{seq},\"t\":{t_ns},\"k\":\"{}\"",
            self.run,
            kind.letter()
        );
        if let Some(c) = conn {
            let _ = write!(s, ",\"c\":{c}");
        }
        s.push_str("}}");
        s
    }
}

/// `{"eventType":10,"message":<size bytes>}` with `"broadcast":true` when asked.
pub fn echo_event(message_size: usize, broadcast: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("eventType".into(), Value::from(10));
    m.insert("message".into(), Value::from("x".repeat(message_size)));
    if broadcast {
        m.insert("broadcast".into(), Value::Bool(true));
    }
    m
}

/// Parses a user-given `--event` into a JSON object with a numeric `eventType`.
pub fn parse_event(text: &str) -> anyhow::Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("--event is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        anyhow::bail!("--event must be a JSON object, like {{\"eventType\":1,\"message\":\"x\"}}");
    };
    if !map.get("eventType").is_some_and(Value::is_number) {
        anyhow::bail!(
            "--event needs a numeric \"eventType\" (the broker rejects events without one)"
        );
    }
    Ok(map)
}

/// A probe read back from a received event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub seq: u64,
    pub t_ns: u64,
    pub kind: Kind,
    pub conn: Option<usize>,
}

#[derive(Deserialize)]
struct RawProbe<'a> {
    #[serde(borrow)]
    run: &'a str,
    seq: u64,
    t: u64,
    #[serde(default, borrow)]
    k: Option<&'a str>,
    #[serde(default)]
    c: Option<usize>,
}

/// What a received text frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A probe of this run.
    Probe(Probe),
    /// A probe of another run (another tool instance or another scenario of a mixed file).
    Foreign,
    /// An error event from the server (`{"eventType":..,"error":".."}`).
    ErrorEvent,
    /// Anything else (events not sent by this tool).
    Other,
}

/// Classifies a received frame, reading only the probe when there is one.
pub fn classify(text: &str, run: &str) -> Received {
    if let Some(raw) = find_probe(text) {
        if raw.run != run {
            return Received::Foreign;
        }
        return match Kind::from_letter(raw.k.unwrap_or("b")) {
            Some(kind) => Received::Probe(Probe {
                seq: raw.seq,
                t_ns: raw.t,
                kind,
                conn: raw.c,
            }),
            None => Received::Foreign,
        };
    }
    if text.contains("\"error\"") {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) {
            if m.get("error").is_some() {
                return Received::ErrorEvent;
            }
        }
    }
    Received::Other
}

/// Finds `"lt"` followed by `:` and decodes just the object after it.
fn find_probe(text: &str) -> Option<RawProbe<'_>> {
    let mut from = 0;
    while let Some(pos) = text[from..].find("\"lt\"") {
        let after = from + pos + 4;
        let rest = text[after..].trim_start();
        if let Some(obj) = rest.strip_prefix(':') {
            let mut stream = serde_json::Deserializer::from_str(obj).into_iter::<RawProbe<'_>>();
            if let Some(Ok(raw)) = stream.next() {
                return Some(raw);
            }
        }
        from = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_probe_is_valid_json_and_reads_back() {
        let enc = Encoder::echo(5, true, "r1");
        let text = enc.encode(Kind::Delivery, 42, 1234, Some(7));
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["eventType"], 10);
        assert_eq!(v["broadcast"], true);
        assert_eq!(v["lt"]["seq"], 42);
        assert_eq!(
            classify(&text, "r1"),
            Received::Probe(Probe {
                seq: 42,
                t_ns: 1234,
                kind: Kind::Delivery,
                conn: Some(7)
            })
        );
        assert_eq!(classify(&text, "other"), Received::Foreign);
    }

    #[test]
    fn probe_is_found_after_reordering_and_whitespace() {
        let text = r#"{"eventType":10, "lt" : {"t":5,"seq":3,"run":"r","k":"e"}, "message":"lt"}"#;
        assert!(matches!(
            classify(text, "r"),
            Received::Probe(Probe {
                seq: 3,
                t_ns: 5,
                kind: Kind::Echo,
                conn: None
            })
        ));
    }

    #[test]
    fn empty_template_gets_no_leading_comma() {
        let enc = Encoder::new(&Map::new(), "r");
        let text = enc.encode(Kind::Echo, 1, 2, None);
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
    }

    #[test]
    fn error_events_and_others_are_told_apart() {
        assert_eq!(
            classify(r#"{"eventType":0,"error":"not JSON"}"#, "r"),
            Received::ErrorEvent
        );
        assert_eq!(
            classify(r#"{"eventType":1,"username":"bob"}"#, "r"),
            Received::Other
        );
    }

    #[test]
    fn events_are_validated() {
        assert!(parse_event(r#"{"eventType":1,"username":"bob"}"#).is_ok());
        assert!(parse_event("[1]").is_err());
        assert!(parse_event(r#"{"username":"bob"}"#).is_err());
        assert!(parse_event("{").is_err());
    }
}
