//! Events: the numeric `eventType` table, SIMD decoding, and the few encodings the broker makes.
//!
//! The broker never rebuilds an event it forwards: it decodes just enough to route it (type,
//! `username`, `to`, `broadcast`) and delivers the sender's own bytes, so fields it does not
//! know arrive exactly as they were sent. Decoding runs `simd-json` into a tape (a flat list of
//! nodes) over a per-thread scratch buffer, so a message costs one copy and no allocation.
//!
//! ```
//! let info = broker::event::decode(br#"{"eventType":10,"message":"hi","extra":[1]}"#).unwrap();
//! assert_eq!(info.event_type, broker::event::EventType::ECHO);
//! ```

use std::cell::RefCell;

use bytes::Bytes;
use simd_json::{Node, StaticNode};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A numeric `eventType`, as sent. Integral values (`10` or `10.0`) are integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventType {
    Int(i64),
    Other(f64),
}

impl EventType {
    pub const LOGIN: EventType = EventType::Int(1);
    pub const META_REQUEST: EventType = EventType::Int(9);
    pub const ECHO: EventType = EventType::Int(10);

    /// The name of a known type (1 to 10).
    pub fn name(self) -> Option<&'static str> {
        match self {
            EventType::Int(n @ 1..=10) => Some(NAMES[n as usize - 1]),
            _ => None,
        }
    }

    /// The metrics label for this type (`other` for anything unknown).
    pub fn label(self) -> &'static str {
        TYPE_LABELS[self.label_index()]
    }

    /// Where [`Self::label`] is in [`TYPE_LABELS`].
    pub fn label_index(self) -> usize {
        match self {
            EventType::Int(n @ 1..=10) => n as usize - 1,
            _ => TYPE_LABELS.len() - 1,
        }
    }

    /// Types 1 to 8: only publishers may send them.
    pub fn is_server_event(self) -> bool {
        matches!(self, EventType::Int(1..=8))
    }

    fn to_json(self) -> serde_json::Value {
        match self {
            EventType::Int(n) => n.into(),
            EventType::Other(f) => serde_json::Number::from_f64(f).map_or(0.into(), Into::into),
        }
    }
}

/// Names of the event types 1 to 10 (PROTOCOL.md).
const NAMES: [&str; 10] = [
    "Login",
    "Logout",
    "Activated",
    "Removed",
    "FilesUploaded",
    "FilesRemoved",
    "BucketUploaded",
    "BucketRemoved",
    "MetaRequest",
    "Echo",
];

/// Every metrics label of [`EventType::label`]: types 1 to 10 in order, then `other`.
pub const TYPE_LABELS: [&str; 11] = [
    "login",
    "logout",
    "activated",
    "removed",
    "files_uploaded",
    "files_removed",
    "bucket_uploaded",
    "bucket_removed",
    "meta_request",
    "echo",
    "other",
];

/// What routing needs to know of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInfo {
    pub event_type: EventType,
    pub username: Option<Box<str>>,
    pub to: Option<Box<str>>,
    /// Echo's `broadcast: true`.
    pub broadcast: bool,
}

/// Why a message was refused; each is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    NotJson,
    NotObject,
    NoEventType,
    UnknownEventType,
    WrongFieldType,
    NotAllowed,
    NoPublisher,
    /// Over the client's fan-out rate (broadcast Echoes and MetaRequests).
    RateLimited,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 8] = [
        ErrorReason::NotJson,
        ErrorReason::NotObject,
        ErrorReason::NoEventType,
        ErrorReason::UnknownEventType,
        ErrorReason::WrongFieldType,
        ErrorReason::NotAllowed,
        ErrorReason::NoPublisher,
        ErrorReason::RateLimited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorReason::NotJson => "not_json",
            ErrorReason::NotObject => "not_object",
            ErrorReason::NoEventType => "no_event_type",
            ErrorReason::UnknownEventType => "unknown_event_type",
            ErrorReason::WrongFieldType => "wrong_field_type",
            ErrorReason::NotAllowed => "not_allowed",
            ErrorReason::NoPublisher => "no_publisher",
            ErrorReason::RateLimited => "rate_limited",
        }
    }
}

/// A refused message: what to tell the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    /// The request's `eventType` when it had a numeric one.
    pub event_type: Option<EventType>,
    pub reason: ErrorReason,
    pub message: String,
}

impl EventError {
    pub fn new(
        event_type: Option<EventType>,
        reason: ErrorReason,
        message: impl Into<String>,
    ) -> Self {
        EventError {
            event_type,
            reason,
            message: message.into(),
        }
    }

    /// `{"eventType": <n or 0>, "error": "..."}` as a text frame payload.
    pub fn to_frame(&self) -> Utf8Bytes {
        let v = serde_json::json!({
            "eventType": self.event_type.map_or(0.into(), EventType::to_json),
            "error": self.message,
        });
        Utf8Bytes::from(v.to_string())
    }
}

struct Scratch {
    input: Vec<u8>,
    buffers: simd_json::Buffers,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: Vec::new(),
        buffers: simd_json::Buffers::new(512),
    });
}

/// Decodes one message: a JSON object with a numeric `eventType`, and the routing fields of
/// the right types. It does not judge who may send what; the caller does.
pub fn decode(payload: &[u8]) -> Result<EventInfo, EventError> {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let Scratch { input, buffers } = &mut *guard;
        input.clear();
        input.extend_from_slice(payload);
        let tape = simd_json::to_tape_with_buffers(input, buffers).map_err(|e| {
            EventError::new(None, ErrorReason::NotJson, format!("not valid JSON: {e}"))
        })?;
        let result = inspect(&tape.0);
        // Keep a huge message from pinning memory in this thread for ever.
        if input.capacity() > 256 * 1024 {
            *input = Vec::new();
        }
        result
    })
}

/// How many tape nodes a value starting at `node` occupies.
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => 1 + count,
        _ => 1,
    }
}

fn number(node: &Node<'_>) -> Option<EventType> {
    match node {
        Node::Static(StaticNode::I64(n)) => Some(EventType::Int(*n)),
        Node::Static(StaticNode::U64(n)) => {
            Some(i64::try_from(*n).map_or(EventType::Other(*n as f64), EventType::Int))
        }
        Node::Static(StaticNode::F64(f)) => {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Some(EventType::Int(*f as i64))
            } else {
                Some(EventType::Other(*f))
            }
        }
        _ => None,
    }
}

fn kind_name(node: &Node<'_>) -> &'static str {
    match node {
        Node::String(_) => "a string",
        Node::Object { .. } => "an object",
        Node::Array { .. } => "an array",
        Node::Static(StaticNode::Null) => "null",
        Node::Static(StaticNode::Bool(_)) => "a boolean",
        Node::Static(_) => "a number",
    }
}

fn inspect(tape: &[Node<'_>]) -> Result<EventInfo, EventError> {
    let Some(Node::Object { len, .. }) = tape.first() else {
        let what = tape.first().map_or("nothing", kind_name);
        return Err(EventError::new(
            None,
            ErrorReason::NotObject,
            format!("an event must be a JSON object, not {what}"),
        ));
    };
    // First pass: the fields we route on. Later duplicates win, as in JSON.parse.
    let mut event_type_node = None;
    let mut fields: [Option<&Node<'_>>; 6] = [None; 6];
    const FIELDS: [&str; 6] = ["username", "to", "broadcast", "message", "files", "bucket"];
    let mut i = 1;
    for _ in 0..*len {
        let (Some(Node::String(key)), Some(value)) = (tape.get(i), tape.get(i + 1)) else {
            break;
        };
        if *key == "eventType" {
            event_type_node = Some(value);
        } else if let Some(slot) = FIELDS.iter().position(|f| f == key) {
            fields[slot] = Some(value);
        }
        i += 1 + span(value);
    }
    let event_type = match event_type_node {
        None => {
            return Err(EventError::new(
                None,
                ErrorReason::NoEventType,
                "the event has no eventType",
            ))
        }
        Some(node) => number(node).ok_or_else(|| {
            EventError::new(
                None,
                ErrorReason::NoEventType,
                format!("eventType must be a number, not {}", kind_name(node)),
            )
        })?,
    };
    let wrong = |field: &str, want: &str, got: &Node<'_>| {
        EventError::new(
            Some(event_type),
            ErrorReason::WrongFieldType,
            format!("{field} must be {want}, not {}", kind_name(got)),
        )
    };
    let string = |slot: usize| -> Result<Option<Box<str>>, EventError> {
        match fields[slot] {
            None | Some(Node::Static(StaticNode::Null)) => Ok(None),
            Some(Node::String(s)) => Ok(Some((*s).into())),
            Some(other) => Err(wrong(FIELDS[slot], "a string", other)),
        }
    };
    let username = string(0)?;
    let to = string(1)?;
    let broadcast = match fields[2] {
        None | Some(Node::Static(StaticNode::Null)) => false,
        Some(Node::Static(StaticNode::Bool(b))) => *b,
        Some(other) => return Err(wrong("broadcast", "a boolean", other)),
    };
    match (event_type, fields[3], fields[4], fields[5]) {
        (EventType::ECHO, None, _, _) => {
            return Err(EventError::new(
                Some(event_type),
                ErrorReason::WrongFieldType,
                "an Echo needs a string message",
            ))
        }
        (EventType::ECHO, Some(m), _, _) if !matches!(m, Node::String(_)) => {
            return Err(wrong("message", "a string", m))
        }
        (EventType::Int(5 | 6), _, Some(f), _) if !matches!(f, Node::Array { .. }) => {
            return Err(wrong("files", "an array", f))
        }
        (EventType::Int(7 | 8), _, _, Some(b)) if !matches!(b, Node::Object { .. }) => {
            return Err(wrong("bucket", "an object", b))
        }
        _ => {}
    }
    Ok(EventInfo {
        event_type,
        username,
        to,
        broadcast,
    })
}

/// A MetaRequest as forwarded to a publisher: the client's object with `from` set to the
/// client's connection id and, for a signed-in client, `username` set to its user.
pub fn with_sender(payload: &[u8], from: &str, user: Option<&str>) -> Option<Utf8Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    v.insert("from".into(), from.into());
    if let Some(user) = user {
        v.insert("username".into(), user.into());
    }
    serde_json::to_string(&v).ok().map(Utf8Bytes::from)
}

/// A text payload from a binary frame, when it is UTF-8.
pub fn text_from_binary(b: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> EventError {
        decode(s.as_bytes()).expect_err(s)
    }

    #[test]
    fn decodes_routing_fields_and_skips_nested_values() {
        let info = decode(
            br#"{"files":[{"eventType":3,"username":"x"}],"bucket":{"to":"nope"},"eventType":5,"username":"bob","to":"i.1"}"#,
        )
        .expect("valid");
        assert_eq!(info.event_type, EventType::Int(5));
        assert_eq!(info.username.as_deref(), Some("bob"));
        assert_eq!(info.to.as_deref(), Some("i.1"));
        assert!(!info.broadcast);

        let echo = decode(br#"{"eventType":10.0,"message":"hi","broadcast":true}"#).expect("valid");
        assert_eq!(echo.event_type, EventType::ECHO);
        assert!(echo.broadcast);
        assert_eq!(EventType::ECHO.name(), Some("Echo"));
    }

    #[test]
    fn every_bad_input_case_has_its_reason() {
        assert_eq!(err("hello").reason, ErrorReason::NotJson);
        assert_eq!(err("{\"eventType\":10,").reason, ErrorReason::NotJson);
        assert_eq!(err("[1,2]").reason, ErrorReason::NotObject);
        assert_eq!(err("42").reason, ErrorReason::NotObject);
        assert_eq!(err(r#"{"message":"x"}"#).reason, ErrorReason::NoEventType);
        let e = err(r#"{"eventType":"10"}"#);
        assert_eq!((e.reason, e.event_type), (ErrorReason::NoEventType, None));
        let e = err(r#"{"eventType":10,"message":5}"#);
        assert_eq!(e.reason, ErrorReason::WrongFieldType);
        assert_eq!(e.event_type, Some(EventType::ECHO));
        assert!(
            e.message.contains("message must be a string"),
            "{}",
            e.message
        );
        assert_eq!(
            err(r#"{"eventType":10}"#).reason,
            ErrorReason::WrongFieldType
        );
        assert_eq!(
            err(r#"{"eventType":10,"message":"x","broadcast":"yes"}"#).reason,
            ErrorReason::WrongFieldType
        );
        assert_eq!(
            err(r#"{"eventType":1,"username":7}"#).reason,
            ErrorReason::WrongFieldType
        );
        assert_eq!(
            err(r#"{"eventType":5,"files":"a"}"#).reason,
            ErrorReason::WrongFieldType
        );
        assert_eq!(
            err(r#"{"eventType":7,"bucket":[]}"#).reason,
            ErrorReason::WrongFieldType
        );
    }

    #[test]
    fn error_frame_carries_the_request_type() {
        let e = err(r#"{"eventType":10,"message":5}"#);
        let v: serde_json::Value = serde_json::from_str(e.to_frame().as_str()).expect("json");
        assert_eq!(v["eventType"], 10);
        assert!(v["error"].is_string());
        let e = err("nope");
        let v: serde_json::Value = serde_json::from_str(e.to_frame().as_str()).expect("json");
        assert_eq!(v["eventType"], 0);
        let e = EventError::new(
            Some(EventType::Other(2.5)),
            ErrorReason::UnknownEventType,
            "x",
        );
        let v: serde_json::Value = serde_json::from_str(e.to_frame().as_str()).expect("json");
        assert_eq!(v["eventType"], 2.5);
    }

    #[test]
    fn invalid_utf8_in_json_is_not_json() {
        assert_eq!(
            decode(b"{\"eventType\":10,\"message\":\"\xff\"}")
                .unwrap_err()
                .reason,
            ErrorReason::NotJson
        );
    }

    #[test]
    fn meta_request_gets_sender() {
        let out = with_sender(
            br#"{"eventType":9,"property":"p","username":"mallory","x":1}"#,
            "a.7",
            Some("bob"),
        )
        .expect("object");
        let v: serde_json::Value = serde_json::from_str(out.as_str()).expect("json");
        assert_eq!(v["from"], "a.7");
        assert_eq!(v["username"], "bob");
        assert_eq!(v["x"], 1);
    }
}
