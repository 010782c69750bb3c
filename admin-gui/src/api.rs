//! The broker's admin API as JSON types, and the small pieces of logic that belong to the wire
//! format: list filters as query strings, targets as JSON, the event stream's messages.
//!
//! Every field the app reads has a serde default, so a broker that adds or drops a field does not
//! make the app fail to parse the rest: the operator still sees what is there.

use serde::Deserialize;
use serde_json::Value;

/// One connection as `GET /admin/connections` and the stream's `connect` messages show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionInfo {
    pub id: String,
    pub remote_addr: String,
    pub origin: Option<String>,
    pub user: Option<String>,
    pub publisher: bool,
    /// Unix seconds.
    pub connected_at: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub send_queue_depth: u64,
    pub shard: u64,
}

/// One page of `GET /admin/connections`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionPage {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub connections: Vec<ConnectionInfo>,
}

/// `GET /admin/stats`, and the stream's once-a-second `stats` message.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    pub instance: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub connections: OpenConnections,
    pub totals: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OpenConnections {
    pub clients: u64,
    pub publishers: u64,
}

/// Counters since the instance started; rates are computed from successive values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Totals {
    pub accepted: u64,
    pub refused: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_consumer_drops: u64,
    pub decode_errors: u64,
    pub events: u64,
}

/// One `data:` line of `GET /admin/stream`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamMessage {
    Connect {
        connection: ConnectionInfo,
    },
    Disconnect {
        id: String,
        #[serde(default)]
        reason: String,
    },
    Stats {
        stats: Stats,
    },
    /// The broker dropped `missed` messages for this reader (it fell behind): the list must
    /// be fetched again.
    Lagged {
        #[serde(default)]
        missed: u64,
    },
    /// A message type this version of the app does not know: ignored.
    #[serde(other)]
    Other,
}

/// Which connections `GET /admin/connections` returns. The same predicate is applied locally
/// to connections announced by the stream, so the table and the server agree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Substring of the origin (case-sensitive, as the broker matches it).
    pub origin: String,
    /// Exact user name.
    pub user: String,
    /// Publishers only, clients only, or both.
    pub publisher: Option<bool>,
}

impl ListFilter {
    pub fn is_empty(&self) -> bool {
        self.origin.is_empty() && self.user.is_empty() && self.publisher.is_none()
    }

    pub fn matches(&self, c: &ConnectionInfo) -> bool {
        (self.origin.is_empty()
            || c.origin
                .as_deref()
                .is_some_and(|o| o.contains(self.origin.as_str())))
            && (self.user.is_empty() || c.user.as_deref() == Some(self.user.as_str()))
            && self.publisher.is_none_or(|p| c.publisher == p)
    }

    /// The query string of one page, without the leading `?`.
    pub fn query(&self, offset: u64, limit: u64) -> String {
        let mut q = String::new();
        if !self.origin.is_empty() {
            q.push_str("origin=");
            q.push_str(&percent_encode(&self.origin));
            q.push('&');
        }
        if !self.user.is_empty() {
            q.push_str("user=");
            q.push_str(&percent_encode(&self.user));
            q.push('&');
        }
        if let Some(p) = self.publisher {
            q.push_str(if p {
                "publisher=true&"
            } else {
                "publisher=false&"
            });
        }
        q.push_str(&format!("offset={offset}&limit={limit}"));
        q
    }
}

/// Who an injected event goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    User(String),
    Connection(String),
}

impl Target {
    pub fn to_json(&self) -> Value {
        match self {
            Target::All => Value::from("all"),
            Target::User(u) => serde_json::json!({ "user": u }),
            Target::Connection(c) => serde_json::json!({ "connection": c }),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values and path
/// segments alike).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks what the operator typed as an event before it is sent: a JSON object with a numeric
/// `eventType`. The error says what is wrong in words an operator can act on.
pub fn validate_event(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not valid JSON: {} (line {}, column {})",
            strip_position(&e.to_string()),
            e.line(),
            e.column()
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(format!(
            "the event must be a JSON object, not {}",
            json_kind(&value)
        ));
    };
    match obj.get("eventType") {
        None => Err("the event has no \"eventType\" field".into()),
        Some(Value::Number(_)) => Ok(value),
        Some(other) => Err(format!(
            "\"eventType\" must be a number, not {}",
            json_kind(other)
        )),
    }
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let conn: ConnectionInfo = serde_json::from_str(
            r#"{"id":"a1b2c3d4.17","remoteAddr":"127.0.0.1:5555","origin":"http://localhost","user":null,
                "publisher":false,"connectedAt":1700000000,"messagesIn":1,"messagesOut":2,"bytesIn":3,
                "bytesOut":4,"sendQueueDepth":0,"shard":1,"somethingNew":true}"#,
        )
        .unwrap();
        assert_eq!(conn.id, "a1b2c3d4.17");
        assert_eq!(conn.origin.as_deref(), Some("http://localhost"));
        assert_eq!(conn.user, None);
        assert_eq!(conn.bytes_out, 4);

        let msg: StreamMessage = serde_json::from_str(
            r#"{"type":"stats","stats":{"instance":"a1","version":"0.1.0","uptimeSeconds":12,"ready":true,
                "connections":{"clients":3,"publishers":1},"totals":{"accepted":10,"refused":2,"messagesIn":5,
                "messagesOut":9,"bytesIn":100,"bytesOut":300,"slowConsumerDrops":0,"decodeErrors":1,"events":7}}}"#,
        )
        .unwrap();
        let StreamMessage::Stats { stats } = msg else {
            panic!("not stats")
        };
        assert_eq!(stats.connections.clients, 3);
        assert_eq!(stats.totals.messages_out, 9);

        let msg: StreamMessage =
            serde_json::from_str(r#"{"type":"disconnect","id":"x.1","reason":"kicked"}"#).unwrap();
        assert_eq!(
            msg,
            StreamMessage::Disconnect {
                id: "x.1".into(),
                reason: "kicked".into()
            }
        );
        let msg: StreamMessage = serde_json::from_str(r#"{"type":"lagged","missed":12}"#).unwrap();
        assert_eq!(msg, StreamMessage::Lagged { missed: 12 });
        let msg: StreamMessage = serde_json::from_str(r#"{"type":"hello"}"#).unwrap();
        assert_eq!(msg, StreamMessage::Other);
    }

    #[test]
    fn filter_query_and_predicate_agree() {
        let f = ListFilter {
            origin: "local host".into(),
            user: "ali&ce".into(),
            publisher: Some(false),
        };
        assert_eq!(
            f.query(0, 1000),
            "origin=local%20host&user=ali%26ce&publisher=false&offset=0&limit=1000"
        );
        assert_eq!(ListFilter::default().query(5, 10), "offset=5&limit=10");

        let c = ConnectionInfo {
            origin: Some("http://localhost:3000".into()),
            user: Some("alice".into()),
            ..Default::default()
        };
        let by_origin = ListFilter {
            origin: "localhost".into(),
            ..Default::default()
        };
        assert!(by_origin.matches(&c));
        let by_user = ListFilter {
            user: "ali".into(),
            ..Default::default()
        };
        assert!(!by_user.matches(&c), "user is an exact match");
        let publishers = ListFilter {
            publisher: Some(true),
            ..Default::default()
        };
        assert!(!publishers.matches(&c));
    }

    #[test]
    fn validates_events() {
        assert!(validate_event(r#"{"eventType":10,"message":"hi"}"#).is_ok());
        assert_eq!(
            validate_event("[1]").unwrap_err(),
            "the event must be a JSON object, not an array"
        );
        assert_eq!(
            validate_event(r#"{"message":"hi"}"#).unwrap_err(),
            "the event has no \"eventType\" field"
        );
        assert_eq!(
            validate_event(r#"{"eventType":"10"}"#).unwrap_err(),
            "\"eventType\" must be a number, not a string"
        );
        let err = validate_event("{\"eventType\": 10,\n}").unwrap_err();
        assert!(err.starts_with("not valid JSON: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn targets_as_json() {
        assert_eq!(Target::All.to_json(), serde_json::json!("all"));
        assert_eq!(
            Target::User("bob".into()).to_json(),
            serde_json::json!({"user":"bob"})
        );
        assert_eq!(
            Target::Connection("a.1".into()).to_json(),
            serde_json::json!({"connection":"a.1"})
        );
    }
}
