//! What the UI and the worker say to each other: [`Command`]s down, [`Update`]s up, and the
//! small types they carry (the token, the link state, a page of connections, an action's
//! outcome).

use std::time::Instant;

use serde_json::Value;

use admin_api::{ConnectionInfo, InstanceList, ListFilter, Stats, StatsHistory, Target};

/// The admin token. Its `Debug` never shows it, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the UI asks the worker to do.
#[derive(Debug)]
pub enum Command {
    /// (Re)connect to an ops URL (`http://host:port`) with a token; ends any previous session.
    Connect { url: String, token: Token },
    /// End the session.
    Disconnect,
    /// Skip the rest of a backoff wait.
    RetryNow,
    /// The connections to list from now on.
    SetFilter(ListFilter),
    /// The id ranges whose rows are on screen (or selected): their counters are refreshed
    /// every few seconds, the rest of the list only by the occasional full walk.
    Watch(Vec<RangeQuery>),
    /// `POST .../events`.
    Inject { event: Value, target: Target },
    /// `DELETE .../connections/{id}`: reaches the connection on whichever instance holds it.
    Kick {
        id: String,
        code: u16,
        reason: String,
    },
    /// `POST .../instances/{instance}/drain` (an older broker: `POST .../drain`).
    Drain { instance: String },
}

/// One slice of the connection list in id order: the rows after `after` (exclusive; empty
/// for the start), at most `limit` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub after: String,
    pub limit: u64,
}

/// Where the session stands, for the UI's status line.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkStatus {
    /// No session (never connected, or disconnected by the operator).
    Idle,
    /// First attempt in progress.
    Connecting { url: String },
    /// Connected; `streaming` is false when the broker has no event stream and is polled.
    Live { url: String, streaming: bool },
    /// The broker answered 401: the token is wrong. Not retried.
    Unauthorized { url: String, message: String },
    /// Never reached (or the URL is not an admin API); retrying at `retry_at`.
    Unreachable {
        url: String,
        error: String,
        attempt: u32,
        retry_at: Instant,
    },
    /// Was live, lost the link; retrying at `retry_at`.
    Reconnecting {
        url: String,
        error: String,
        attempt: u32,
        retry_at: Instant,
    },
    /// The URL cannot be used at all.
    InvalidUrl { message: String },
}

/// What the worker tells the UI.
#[derive(Debug)]
pub enum Update {
    /// A new session started: forget the previous broker's data.
    Reset,
    Status(LinkStatus),
    /// The stats of the instance the session talks to (from the stream, or polled).
    Stats {
        stats: Stats,
        at: Instant,
    },
    /// One slice of the connection list, as fetched starting at `requested_at`.
    Page(Page),
    Connected {
        connection: ConnectionInfo,
        at: Instant,
    },
    Disconnected {
        id: String,
        reason: String,
        at: Instant,
    },
    /// Every instance of the fleet (`GET .../instances`).
    Instances {
        list: InstanceList,
        at: Instant,
    },
    /// The last minutes of the instance the session talks to: seeds the charts.
    History(StatsHistory),
    /// The last minutes of one instance of the fleet: seeds its sparkline.
    InstanceHistory(StatsHistory),
    /// The answer to an [`Command::Inject`], [`Command::Kick`] or [`Command::Drain`].
    Action(ActionOutcome),
}

/// A slice of the connection list, in id order ([`admin_api::id_key`]): every connection
/// matching `filter` whose id is after `after` and at most `until` (to the end when `None`),
/// except on the `missing` instances, which did not answer.
#[derive(Debug, Clone)]
pub struct Page {
    pub filter: ListFilter,
    pub requested_at: Instant,
    pub after: String,
    pub until: Option<String>,
    /// Connections matching the filter on the broker, on all pages.
    pub total: u64,
    pub connections: Vec<ConnectionInfo>,
    /// Instances that did not answer: their rows in the range are unknown, not gone.
    pub missing: Vec<String>,
    /// This page ends a full walk of the list (the table is now in sync).
    pub walk_done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Inject,
    Kick,
    Drain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    pub action: Action,
    /// A one-line summary for the operator: what happened, or what went wrong.
    pub result: Result<String, String>,
}
