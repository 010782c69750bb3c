//! The broker's admin API as Rust types: the paths, the requests and responses, the live
//! stream's messages, and the rules both ends apply (which close codes a kick may use, which
//! connections a list filter matches).
//!
//! The broker's routes serialise these types, the desktop app and loadtest deserialise them: a
//! change to the wire is a compile error in every crate that reads it, not a silent drift.
//!
//! **Versioning.** The API is served under `/admin/v1/...` ([`PREFIX`]); every admin response
//! carries the header [`VERSION_HEADER`] with [`VERSION`], and `stats` says `apiVersion`. The
//! unversioned `/admin/...` paths of the first release are the same routes (kept for older
//! apps). Within a version, the broker only adds fields; readers give every field a default
//! and ignore the ones they do not know, so an older app reads a newer broker. A change that
//! is not an addition gets `/admin/v2`, served next to v1.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the admin API these types describe.
pub const VERSION: u32 = 1;

/// The response header that names the admin API version of the broker that answered.
pub const VERSION_HEADER: &str = "admin-api-version";

/// Where version 1 of the API is served.
pub const PREFIX: &str = "/admin/v1";

/// Where the first release served the same routes, without a version (kept for older apps).
pub const LEGACY_PREFIX: &str = "/admin";

/// The routes, relative to [`PREFIX`] (the broker nests them under both prefixes).
pub mod route {
    /// `GET`: a page of connections ([`crate::ListQuery`] -> [`crate::ConnectionPage`]).
    pub const CONNECTIONS: &str = "/connections";
    /// `DELETE`: kick one connection ([`crate::KickQuery`] -> [`crate::KickResponse`]).
    pub const CONNECTION: &str = "/connections/{id}";
    /// `GET`: the instance's state and totals ([`crate::Stats`]).
    pub const STATS: &str = "/stats";
    /// `POST`: inject an event ([`crate::InjectRequest`] -> [`crate::InjectResponse`]).
    pub const EVENTS: &str = "/events";
    /// `POST`: drain this instance ([`crate::DrainResponse`]).
    pub const DRAIN: &str = "/drain";
    /// `GET`: Server-Sent Events, one [`crate::StreamMessage`] per `data:` line.
    pub const STREAM: &str = "/stream";
    /// `GET`: this instance's last minutes of stats, one sample a second
    /// ([`crate::StatsHistory`]), to seed charts.
    pub const STATS_HISTORY: &str = "/stats/history";
    /// `GET`: every instance of the fleet, with its health and stats
    /// ([`crate::InstanceList`]). One instance without NATS lists itself.
    pub const INSTANCES: &str = "/instances";
    /// `POST`: drain the named instance, wherever it is ([`crate::DrainResponse`]).
    pub const INSTANCE_DRAIN: &str = "/instances/{instance}/drain";
    /// `GET`: the named instance's [`crate::StatsHistory`], wherever it is.
    pub const INSTANCE_HISTORY: &str = "/instances/{instance}/history";
    /// `GET`: connections across the fleet ([`crate::ListQuery`] -> [`crate::FleetPage`]).
    pub const FLEET_CONNECTIONS: &str = "/fleet/connections";
}

/// The full path of a route: `path(route::STATS)` is `/admin/v1/stats`.
pub fn path(route: &str) -> String {
    format!("{PREFIX}{route}")
}

/// The path that kicks connection `id` (percent-encoded), without the query. The kick reaches
/// the connection on whichever instance holds it.
pub fn connection_path(id: &str) -> String {
    format!("{PREFIX}/connections/{}", percent_encode(id))
}

/// The path of a route about one instance (`route::INSTANCE_DRAIN`, `route::INSTANCE_HISTORY`).
pub fn instance_path(route: &str, instance: &str) -> String {
    format!(
        "{PREFIX}{}",
        route.replace("{instance}", &percent_encode(instance))
    )
}

/// A connection id (`<instance>.<run>.<n>`) split into the node that made it
/// (`<instance>.<run>`) and its number: the order of lists and of the `after` cursor.
pub fn id_key(id: &str) -> (&str, u64) {
    match id.rsplit_once('.') {
        Some((node, n)) => (node, n.parse().unwrap_or(0)),
        None => (id, 0),
    }
}

/// The instance a connection id names: `b1.3f9a0c2e` in `b1.3f9a0c2e.42` (the configured
/// `instanceId` and the part drawn at each start, as `Stats::instance` shows it).
pub fn id_instance(id: &str) -> &str {
    id_key(id).0
}

/// One connection as `GET .../connections` and the stream's `connect` messages show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionInfo {
    /// The fleet-wide id: `<instance>.<run>.<n>`.
    pub id: String,
    /// The instance that holds the connection.
    pub instance: String,
    pub remote_addr: String,
    pub origin: Option<String>,
    /// The user a token or a login named, if any.
    pub user: Option<String>,
    /// Authenticated with the publisher API key.
    pub publisher: bool,
    /// Unix seconds.
    pub connected_at: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames queued and not yet written.
    pub send_queue_depth: u64,
    /// Bytes queued and not yet written.
    pub send_queue_bytes: u64,
    /// Why the connection is closing, if it is (a close reason's label).
    pub closing: Option<String>,
    pub shard: u64,
}

/// One page of `GET .../connections`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionPage {
    /// How many connections match the filter (on all pages).
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub connections: Vec<ConnectionInfo>,
}

/// The largest page `GET .../connections` returns.
pub const MAX_PAGE: u64 = 1000;

/// The page size when the request names none.
pub const DEFAULT_PAGE: u64 = 100;

/// The query of `GET .../connections`: a [`ListFilter`]'s fields and a page. (Flat, not a
/// flattened `ListFilter`: query strings carry only strings, and serde's flatten would not
/// parse `publisher=true` from one.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub id: String,
    pub origin: String,
    pub user: String,
    pub remote: String,
    pub publisher: Option<bool>,
    /// A cursor: only connections after this id (in [`id_key`] order). Paging by `after`
    /// neither skips nor repeats a connection that stays open while the list changes; paging
    /// by `offset` may.
    pub after: String,
    pub offset: u64,
    /// At most [`MAX_PAGE`]; [`DEFAULT_PAGE`] when absent.
    pub limit: Option<u64>,
}

impl ListQuery {
    pub fn filter(&self) -> ListFilter {
        ListFilter {
            id: self.id.clone(),
            origin: self.origin.clone(),
            user: self.user.clone(),
            remote: self.remote.clone(),
            publisher: self.publisher,
        }
    }

    /// The page size asked for, within [`MAX_PAGE`].
    pub fn limit(&self) -> u64 {
        self.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE)
    }

    /// Whether `id` comes after the cursor.
    pub fn is_after_cursor(&self, id: &str) -> bool {
        self.after.is_empty() || id_key(id) > id_key(&self.after)
    }

    /// The query string, without the leading `?`.
    pub fn to_query(&self) -> String {
        let mut q = self.filter().query(self.offset, self.limit());
        if !self.after.is_empty() {
            q.push_str("&after=");
            q.push_str(&percent_encode(&self.after));
        }
        q
    }
}

/// One page of `GET .../fleet/connections`: every instance's matches, merged in [`id_key`]
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FleetPage {
    /// Matches on the instances that answered (on all pages).
    pub total: u64,
    pub limit: u64,
    pub connections: Vec<ConnectionInfo>,
    /// The `after` of the next page; absent on the last one.
    pub next: Option<String>,
    /// The instances that answered.
    pub answered: Vec<String>,
    /// Instances known to be in the fleet that did not answer in time: the list lacks theirs.
    pub missing: Vec<String>,
}

/// `GET .../instances`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceList {
    /// The instance that answered this call.
    pub answered_by: String,
    /// Whether it is in a cluster (NATS configured); without, it lists itself only.
    pub clustered: bool,
    pub instances: Vec<InstanceInfo>,
}

/// One instance of the fleet, as its last heartbeat described it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceInfo {
    pub instance: String,
    pub health: Health,
    /// Milliseconds since its last heartbeat (0 for the instance that answered).
    pub seen_ms_ago: u64,
    pub stats: Stats,
}

/// Whether an instance is heard from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Its heartbeats arrive (every 2 s).
    #[default]
    Up,
    /// No heartbeat for three intervals: gone, partitioned, or stopped. Listed for a minute,
    /// then dropped.
    Silent,
}

/// `GET .../stats/history`: one sample a second, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsHistory {
    pub instance: String,
    pub samples: Vec<StatsSample>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsSample {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub connections: OpenConnections,
    pub totals: Totals,
}

/// Which connections a list returns. The broker applies it to its connections, the app to the
/// connections the stream announces, with this one predicate, so the table and the server
/// agree. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListFilter {
    /// Substring of the connection id (`b1.3f9a` finds that instance's run, `.42` a number).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Substring of the origin (case-sensitive).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// Exact user name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Substring of the remote address (`ip:port`, `[v6]:port`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote: String,
    /// Publishers only, clients only, or both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<bool>,
}

impl ListFilter {
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
            && self.origin.is_empty()
            && self.user.is_empty()
            && self.remote.is_empty()
            && self.publisher.is_none()
    }

    pub fn matches(&self, c: &ConnectionInfo) -> bool {
        self.matches_fields(
            &c.id,
            c.origin.as_deref(),
            c.user.as_deref(),
            &c.remote_addr,
            c.publisher,
        )
    }

    /// The predicate on the fields themselves (the broker has no [`ConnectionInfo`] at hand).
    pub fn matches_fields(
        &self,
        id: &str,
        origin: Option<&str>,
        user: Option<&str>,
        remote: &str,
        publisher: bool,
    ) -> bool {
        (self.id.is_empty() || id.contains(self.id.as_str()))
            && (self.origin.is_empty() || origin.is_some_and(|o| o.contains(self.origin.as_str())))
            && (self.user.is_empty() || user == Some(self.user.as_str()))
            && (self.remote.is_empty() || remote.contains(self.remote.as_str()))
            && self.publisher.is_none_or(|p| publisher == p)
    }

    /// The query string of one page, without the leading `?`.
    pub fn query(&self, offset: u64, limit: u64) -> String {
        let mut q = String::new();
        for (key, value) in [
            ("id", &self.id),
            ("origin", &self.origin),
            ("user", &self.user),
            ("remote", &self.remote),
        ] {
            if !value.is_empty() {
                q.push_str(key);
                q.push('=');
                q.push_str(&percent_encode(value));
                q.push('&');
            }
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

/// What the token of a call may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Every call (`broker.admin.token`; brokers from before read-only tokens had only this).
    #[default]
    Admin,
    /// `GET` calls only (`broker.admin.readToken`): list, stats, stream. Inject, kick and drain
    /// answer 403.
    Read,
}

impl Access {
    /// Whether a call with `method` (`GET`, `POST`, ...) is allowed.
    pub fn allows(self, method: &str) -> bool {
        self == Access::Admin || method.eq_ignore_ascii_case("GET")
    }
}

/// `GET .../stats`, and the stream's once-a-second `stats` message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    /// The admin API version of this broker (0: a broker from before versioning).
    pub api_version: u32,
    /// What the token that asked may do.
    pub access: Access,
    pub instance: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub connections: OpenConnections,
    pub totals: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenConnections {
    pub clients: u64,
    pub publishers: u64,
}

/// Counters since the instance started; rates are computed from successive values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Totals {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_consumer_drops: u64,
    pub decode_errors: u64,
    pub events: u64,
}

/// One `data:` line of `GET .../stream`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamMessage {
    Connect {
        connection: ConnectionInfo,
    },
    Disconnect {
        id: String,
        /// A close reason's label.
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
    /// A message type this reader does not know: ignored.
    #[serde(other)]
    Other,
}

/// Who an injected event goes to. On the wire: `"all"`, `{"user": "..."}` or
/// `{"connection": "..."}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetWire", into = "TargetWire")]
pub enum Target {
    #[default]
    All,
    User(String),
    Connection(String),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TargetWire {
    Named(String),
    User { user: String },
    Connection { connection: String },
}

impl TryFrom<TargetWire> for Target {
    type Error = String;
    fn try_from(w: TargetWire) -> Result<Self, String> {
        match w {
            TargetWire::Named(all) if all == "all" => Ok(Target::All),
            TargetWire::Named(other) => Err(format!(
                "target must be \"all\", {{\"user\": ...}} or {{\"connection\": ...}}, not {other:?}"
            )),
            TargetWire::User { user } => Ok(Target::User(user)),
            TargetWire::Connection { connection } => Ok(Target::Connection(connection)),
        }
    }
}

impl From<Target> for TargetWire {
    fn from(t: Target) -> Self {
        match t {
            Target::All => TargetWire::Named("all".into()),
            Target::User(user) => TargetWire::User { user },
            Target::Connection(connection) => TargetWire::Connection { connection },
        }
    }
}

impl Target {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `POST .../events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InjectRequest {
    /// The event, as a client would receive it: an object with a numeric `eventType`.
    pub event: Value,
    /// `"all"` when absent.
    #[serde(default)]
    pub target: Target,
}

/// The answer to `POST .../events` (202): how many connections on this instance got it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InjectResponse {
    pub delivered: u64,
}

/// The query of `DELETE .../connections/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KickQuery {
    /// The close code; [`DEFAULT_KICK_CODE`] when absent. See [`kick_code_allowed`].
    pub code: Option<u16>,
    /// The close reason, cut to [`MAX_CLOSE_REASON`] bytes; a default when absent.
    pub reason: Option<String>,
}

/// The close code of a kick that names none: 1008, policy violation.
pub const DEFAULT_KICK_CODE: u16 = 1008;

/// A close frame's reason is at most 123 bytes (RFC 6455 5.5: 125 bytes of control payload).
pub const MAX_CLOSE_REASON: usize = 123;

/// The words for a refused close code.
pub const KICK_CODE_RULE: &str = "code must be 1000-1003, 1007-1014 or 3000-4999";

/// Whether a kick may close with `code`. RFC 6455 7.4: 1004 is reserved, 1005, 1006 and 1015
/// must never be sent in a close frame, 1016-2999 are for the protocol's future extensions,
/// 3000-4999 are for libraries and applications.
pub fn kick_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Cuts a close reason to at most [`MAX_CLOSE_REASON`] bytes, on a character boundary.
pub fn cut_close_reason(mut reason: String) -> String {
    while reason.len() > MAX_CLOSE_REASON {
        reason.pop();
    }
    reason
}

/// The answer to a kick.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KickResponse {
    pub kicked: String,
    /// Frames that were queued for the connection and dropped by the kick.
    pub discarded: u64,
    /// The connection was already closing (for another reason); nothing was dropped.
    pub already_closing: bool,
}

/// The answer to `POST .../drain` (202).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainResponse {
    pub draining: bool,
}

/// The body of every error answer (4xx, 5xx).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: String,
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

/// Checks what an operator typed as an event before it is sent: a JSON object with a numeric
/// `eventType`. The error says what is wrong in words an operator can act on. (The broker
/// checks again, with the same rules as a client's message.)
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
    fn parses_the_documented_shapes_and_ignores_unknown_fields() {
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
        assert_eq!(stats.api_version, 0, "a broker from before versioning");
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
    fn what_one_side_writes_the_other_reads() {
        let msg = StreamMessage::Connect {
            connection: ConnectionInfo {
                id: "i.1".into(),
                remote_addr: "[::1]:4000".into(),
                closing: Some("kicked".into()),
                ..Default::default()
            },
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert!(text.starts_with(
            r#"{"type":"connect","connection":{"id":"i.1","instance":"","remoteAddr""#
        ));
        assert_eq!(serde_json::from_str::<StreamMessage>(&text).unwrap(), msg);

        let page = ConnectionPage {
            total: 1,
            offset: 0,
            limit: 100,
            connections: vec![ConnectionInfo::default()],
        };
        let back: ConnectionPage =
            serde_json::from_str(&serde_json::to_string(&page).unwrap()).unwrap();
        assert_eq!(back, page);

        let kick = KickResponse {
            kicked: "i.1".into(),
            discarded: 3,
            already_closing: false,
        };
        assert_eq!(
            serde_json::to_value(&kick).unwrap(),
            serde_json::json!({"kicked":"i.1","discarded":3,"alreadyClosing":false})
        );
    }

    #[test]
    fn filter_query_and_predicate_agree() {
        let f = ListFilter {
            origin: "local host".into(),
            user: "ali&ce".into(),
            publisher: Some(false),
            ..Default::default()
        };
        assert_eq!(
            f.query(0, 1000),
            "origin=local%20host&user=ali%26ce&publisher=false&offset=0&limit=1000"
        );
        assert_eq!(ListFilter::default().query(5, 10), "offset=5&limit=10");

        let c = ConnectionInfo {
            origin: Some("http://localhost:3000".into()),
            user: Some("alice".into()),
            remote_addr: "10.1.2.3:5555".into(),
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
        let by_id = ListFilter {
            id: "b2.".into(),
            ..Default::default()
        };
        assert!(!by_id.matches(&c), "the connection's id is empty here");
        let by_remote = ListFilter {
            remote: "10.1.2.".into(),
            ..Default::default()
        };
        assert!(by_remote.matches(&c));
        assert_eq!(by_remote.query(0, 1), "remote=10.1.2.&offset=0&limit=1");
        let publishers = ListFilter {
            publisher: Some(true),
            ..Default::default()
        };
        assert!(!publishers.matches(&c));
    }

    #[test]
    fn list_query_reads_what_filter_query_writes() {
        let f = ListFilter {
            id: "i".into(),
            origin: "a".into(),
            user: "b".into(),
            remote: "c".into(),
            publisher: Some(true),
        };
        // The broker reads the query with serde_urlencoded; the same shape as JSON here (the
        // broker's own test reads a real query string).
        let q: ListQuery = serde_json::from_value(serde_json::json!({
            "id": "i", "origin": "a", "user": "b", "remote": "c", "publisher": true, "offset": 5,
            "limit": 10000
        }))
        .unwrap();
        assert_eq!(q.filter(), f);
        assert_eq!((q.offset, q.limit()), (5, MAX_PAGE));
    }

    #[test]
    fn ids_order_by_node_then_number_and_the_cursor_follows() {
        assert_eq!(id_key("b1.3f9a0c2e.42"), ("b1.3f9a0c2e", 42));
        assert_eq!(id_instance("b1.3f9a0c2e.42"), "b1.3f9a0c2e");
        assert!(
            id_key("b1.aaaaaaaa.9") < id_key("b1.aaaaaaaa.10"),
            "numbers, not text"
        );
        let q = ListQuery {
            after: "b1.aaaaaaaa.9".into(),
            ..Default::default()
        };
        assert!(q.is_after_cursor("b1.aaaaaaaa.10"));
        assert!(!q.is_after_cursor("b1.aaaaaaaa.9"));
        assert!(q.is_after_cursor("b2.aaaaaaaa.1"));
        assert!(ListQuery::default().is_after_cursor("anything"));
        assert_eq!(q.to_query(), "offset=0&limit=100&after=b1.aaaaaaaa.9");
        assert_eq!(
            instance_path(route::INSTANCE_DRAIN, "b 2"),
            "/admin/v1/instances/b%202/drain"
        );
    }

    #[test]
    fn a_read_token_reads_only() {
        assert!(Access::Read.allows("GET"));
        for m in ["POST", "DELETE", "PUT", "PATCH"] {
            assert!(!Access::Read.allows(m), "{m}");
            assert!(Access::Admin.allows(m), "{m}");
        }
        let s: Stats = serde_json::from_str(r#"{"access":"read"}"#).unwrap();
        assert_eq!(s.access, Access::Read);
        let s: Stats = serde_json::from_str("{}").unwrap();
        assert_eq!(
            s.access,
            Access::Admin,
            "older brokers had admin tokens only"
        );
    }

    #[test]
    fn kick_codes_follow_rfc_6455() {
        for ok in [1000, 1001, 1003, 1007, 1008, 1011, 1014, 3000, 4999] {
            assert!(kick_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!kick_code_allowed(bad), "{bad}");
        }
        let long = "é".repeat(100);
        let cut = cut_close_reason(long);
        assert!(cut.len() <= MAX_CLOSE_REASON && cut.len() >= MAX_CLOSE_REASON - 1);
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
    fn targets_on_the_wire() {
        assert_eq!(Target::All.to_json(), serde_json::json!("all"));
        assert_eq!(
            Target::User("bob".into()).to_json(),
            serde_json::json!({"user":"bob"})
        );
        assert_eq!(
            Target::Connection("a.1".into()).to_json(),
            serde_json::json!({"connection":"a.1"})
        );
        let req: InjectRequest = serde_json::from_str(r#"{"event":{"eventType":10}}"#).unwrap();
        assert_eq!(req.target, Target::All);
        let err = serde_json::from_str::<InjectRequest>(r#"{"event":{},"target":"everyone"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("target must be"), "{err}");
        assert_eq!(
            path(route::STATS),
            "/admin/v1/stats",
            "the versioned prefix"
        );
        assert_eq!(connection_path("a b.1"), "/admin/v1/connections/a%20b.1");
    }
}
