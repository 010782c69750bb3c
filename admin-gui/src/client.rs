//! The network worker: every call to the broker's admin API runs here, on a thread with its own
//! tokio runtime, never on the UI thread.
//!
//! The UI sends [`Command`]s and drains [`Update`]s once per frame; every update wakes the UI
//! (`request_repaint`). One *session* per ops URL and token does the live work:
//!
//! 1. `GET /admin/v1/stats` proves the URL and the token (401 stops the session: retrying a bad
//!    token only fills the broker's log, the operator has to fix it). A broker from before the
//!    API was versioned answers 404 there: the session then uses its unversioned `/admin/...`
//!    paths, which are the same version 1 routes;
//! 2. `GET /admin/v1/stream` (Server-Sent Events) is the live feed of connects, disconnects and
//!    once-a-second stats; a broker without it (404) is polled once a second instead;
//! 3. `GET /admin/v1/connections`, paged, is the full list: at start, every few seconds (the per
//!    connection counters are only in the list), and right after the filter changes.
//!
//! When the broker goes away the session retries with exponential backoff (1 s doubling to 30 s)
//! and reports each wait, so the UI can say what it is doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};

use admin_api::{
    percent_encode, route, ConnectionInfo, ConnectionPage, InjectRequest, InjectResponse,
    ListFilter, Stats, StreamMessage, Target,
};

/// Page size for `GET /admin/v1/connections` (the broker's maximum).
const PAGE: u64 = admin_api::MAX_PAGE;
/// Rows fetched at most per resync; past that the table says so and asks for a filter.
pub const MAX_ROWS: u64 = 50_000;
/// How often the full list is fetched again.
const RESYNC: Duration = Duration::from_secs(5);
/// The stream sends stats every second: this much silence means the link is dead.
const STREAM_IDLE: Duration = Duration::from_secs(10);
/// Deadline of one ordinary admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Filter edits within this window cause one request, not one per keystroke.
const FILTER_DEBOUNCE: Duration = Duration::from_millis(250);

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
    /// `POST /admin/events`.
    Inject { event: Value, target: Target },
    /// `DELETE /admin/connections/{id}`.
    Kick {
        id: String,
        code: u16,
        reason: String,
    },
    /// `POST /admin/drain`.
    Drain,
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
    Stats {
        stats: Stats,
        at: Instant,
    },
    /// The full list for `filter`, as fetched starting at `requested_at`.
    Snapshot(Snapshot),
    Connected {
        connection: ConnectionInfo,
        at: Instant,
    },
    Disconnected {
        id: String,
        reason: String,
        at: Instant,
    },
    /// The answer to an [`Command::Inject`], [`Command::Kick`] or [`Command::Drain`].
    Action(ActionOutcome),
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub filter: ListFilter,
    pub requested_at: Instant,
    /// Connections matching the filter on the broker (may exceed `connections.len()`).
    pub total: u64,
    pub connections: Vec<ConnectionInfo>,
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

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 401: the token was refused.
    Unauthorized(String),
    /// No answer: connection refused, DNS, TLS, timeout, the link dropped.
    Unreachable(String),
    /// An HTTP answer other than success or 401.
    Status { status: u16, message: String },
    /// A success status with a body that is not what the API documents.
    BadResponse(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized(m) => write!(f, "token refused (401): {m}"),
            ApiError::Unreachable(m) => f.write_str(m),
            ApiError::Status {
                status: 404,
                message,
            } => write!(
                f,
                "HTTP 404 ({message}): no admin API at this URL; is it the ops port, and is \
                 broker.admin.token set on the broker?"
            ),
            ApiError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            ApiError::BadResponse(m) => write!(f, "unexpected answer: {m}"),
        }
    }
}

/// The handle the UI holds. Dropping it stops the worker.
pub struct Client {
    commands: Option<mpsc::UnboundedSender<Command>>,
    updates: std::sync::mpsc::Receiver<Update>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Starts the worker thread. `wake` is called after every update (the UI passes
    /// `ctx.request_repaint()`).
    pub fn spawn(wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<Client> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let outbox = Outbox {
            tx: up_tx,
            wake: Arc::new(wake),
        };
        let thread = std::thread::Builder::new()
            .name("admin-api".into())
            .spawn(move || {
                runtime.block_on(worker(cmd_rx, outbox));
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(Client {
            commands: Some(cmd_tx),
            updates: up_rx,
            thread: Some(thread),
        })
    }

    pub fn send(&self, command: Command) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
        }
    }

    /// Everything that arrived since the last call; never blocks.
    pub fn poll(&self) -> impl Iterator<Item = Update> + '_ {
        self.updates.try_iter()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.commands = None; // closes the channel: the worker's loop ends
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Outbox {
    tx: std::sync::mpsc::Sender<Update>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Outbox {
    fn send(&self, update: Update) {
        if self.tx.send(update).is_ok() {
            (self.wake)();
        }
    }

    fn status(&self, status: LinkStatus) {
        self.send(Update::Status(status));
    }

    fn outcome(&self, action: Action, result: Result<String, String>) {
        self.send(Update::Action(ActionOutcome { action, result }));
    }
}

struct Session {
    endpoint: Arc<Endpoint>,
    task: tokio::task::JoinHandle<()>,
    filter: watch::Sender<ListFilter>,
    retry_now: Arc<Notify>,
}

async fn worker(mut commands: mpsc::UnboundedReceiver<Command>, out: Outbox) {
    let mut session: Option<Session> = None;
    let mut filter = ListFilter::default();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Connect { url, token } => {
                if let Some(old) = session.take() {
                    old.task.abort();
                }
                out.send(Update::Reset);
                match Endpoint::new(&url, token) {
                    Ok(endpoint) => {
                        let endpoint = Arc::new(endpoint);
                        let (filter_tx, filter_rx) = watch::channel(filter.clone());
                        let retry_now = Arc::new(Notify::new());
                        let task = tokio::spawn(run_session(
                            endpoint.clone(),
                            filter_rx,
                            retry_now.clone(),
                            out.clone(),
                        ));
                        session = Some(Session {
                            endpoint,
                            task,
                            filter: filter_tx,
                            retry_now,
                        });
                    }
                    Err(message) => out.status(LinkStatus::InvalidUrl { message }),
                }
            }
            Command::Disconnect => {
                if let Some(old) = session.take() {
                    old.task.abort();
                }
                out.status(LinkStatus::Idle);
            }
            Command::RetryNow => {
                if let Some(s) = &session {
                    s.retry_now.notify_one();
                }
            }
            Command::SetFilter(f) => {
                filter = f;
                if let Some(s) = &session {
                    let _ = s.filter.send(filter.clone());
                }
            }
            Command::Inject { event, target } => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Inject) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep.inject(event, &target).await.map(|n| {
                        format!(
                            "Delivered to {n} recipient{}",
                            if n == 1 { "" } else { "s" }
                        )
                    });
                    out.outcome(Action::Inject, result.map_err(|e| e.to_string()));
                });
            }
            Command::Kick { id, code, reason } => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Kick) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep
                        .kick(&id, code, &reason)
                        .await
                        .map(|()| format!("Kicked {id} (close code {code})"))
                        .map_err(|e| match e {
                            ApiError::Status { status: 404, .. } => {
                                format!("{id} is no longer connected")
                            }
                            e => format!("kick {id} failed: {e}"),
                        });
                    out.outcome(Action::Kick, result);
                });
            }
            Command::Drain => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Drain) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep
                        .drain()
                        .await
                        .map(|()| "Drain started: the instance is closing its clients".to_string())
                        .map_err(|e| format!("drain failed: {e}"));
                    out.outcome(Action::Drain, result);
                });
            }
        }
    }
    if let Some(old) = session.take() {
        old.task.abort();
    }
}

fn endpoint_or_complain(
    session: &Option<Session>,
    out: &Outbox,
    action: Action,
) -> Option<Arc<Endpoint>> {
    match session {
        Some(s) => Some(s.endpoint.clone()),
        None => {
            out.outcome(action, Err("not connected to a broker".into()));
            None
        }
    }
}

/// Seconds to wait before retry `attempt` (1-based): 1, 2, 4, 8, 16, then 30.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

async fn run_session(
    ep: Arc<Endpoint>,
    mut filter: watch::Receiver<ListFilter>,
    retry_now: Arc<Notify>,
    out: Outbox,
) {
    let url = ep.base.clone();
    let mut attempt: u32 = 0;
    let mut was_live = false;
    out.status(LinkStatus::Connecting { url: url.clone() });
    loop {
        let error = match ep.stats().await {
            Ok(stats) => {
                attempt = 0;
                was_live = true;
                out.send(Update::Stats {
                    stats,
                    at: Instant::now(),
                });
                live(&ep, &mut filter, &out).await
            }
            Err(e) => e,
        };
        if let ApiError::Unauthorized(message) = error {
            out.status(LinkStatus::Unauthorized { url, message });
            return;
        }
        attempt += 1;
        let delay = backoff(attempt);
        let retry_at = Instant::now() + delay;
        let error = error.to_string();
        out.status(if was_live {
            LinkStatus::Reconnecting {
                url: url.clone(),
                error,
                attempt,
                retry_at,
            }
        } else {
            LinkStatus::Unreachable {
                url: url.clone(),
                error,
                attempt,
                retry_at,
            }
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = retry_now.notified() => {}
        }
    }
}

/// Runs the live feed and the list resync side by side until either fails.
async fn live(ep: &Endpoint, filter: &mut watch::Receiver<ListFilter>, out: &Outbox) -> ApiError {
    // The stream asks for an early resync when it lost messages.
    let resync_now = Notify::new();
    let feed = async {
        match ep.open_stream().await {
            Ok(response) => {
                out.status(LinkStatus::Live {
                    url: ep.base.clone(),
                    streaming: true,
                });
                read_stream(response, out, &resync_now).await
            }
            Err(ApiError::Status { status: 404, .. }) => {
                out.status(LinkStatus::Live {
                    url: ep.base.clone(),
                    streaming: false,
                });
                poll_stats(ep, out).await
            }
            Err(e) => e,
        }
    };
    tokio::select! {
        e = feed => e,
        e = resync(ep, filter, &resync_now, out) => e,
    }
}

async fn read_stream(
    mut response: reqwest::Response,
    out: &Outbox,
    resync_now: &Notify,
) -> ApiError {
    let mut parser = SseParser::default();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(STREAM_IDLE, response.chunk()).await {
            Err(_) => {
                return ApiError::Unreachable(format!(
                    "no data on the event stream for {} s",
                    STREAM_IDLE.as_secs()
                ))
            }
            Ok(Err(e)) => return classify(&e),
            Ok(Ok(None)) => {
                return ApiError::Unreachable("the broker closed the event stream".into())
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + nl];
            start += nl + 1;
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            if let Some(data) = parser.line(&line) {
                if dispatch(&data, out) {
                    resync_now.notify_one();
                }
            }
        }
        pending.drain(..start);
    }
}

/// Forwards one stream message to the UI; true when the list must be fetched again.
fn dispatch(data: &str, out: &Outbox) -> bool {
    let at = Instant::now();
    match serde_json::from_str::<StreamMessage>(data) {
        Ok(StreamMessage::Connect { connection }) => out.send(Update::Connected { connection, at }),
        Ok(StreamMessage::Disconnect { id, reason }) => {
            out.send(Update::Disconnected { id, reason, at })
        }
        Ok(StreamMessage::Stats { stats }) => out.send(Update::Stats { stats, at }),
        Ok(StreamMessage::Lagged { .. }) => return true,
        Ok(StreamMessage::Other) | Err(_) => {}
    }
    false
}

/// The parts of the Server-Sent Events format the admin stream uses: `data:` lines, joined
/// with newlines, dispatched at a blank line; comments (`:`) and other fields ignored.
#[derive(Default)]
pub struct SseParser {
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds one line (without its line ending); returns an event's data when one is complete.
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            return Some(std::mem::take(&mut self.data));
        }
        if let Some(value) = line.strip_prefix("data:") {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.has_data = true;
        }
        None
    }
}

async fn poll_stats(ep: &Endpoint, out: &Outbox) -> ApiError {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match ep.stats().await {
            Ok(stats) => out.send(Update::Stats {
                stats,
                at: Instant::now(),
            }),
            Err(e) => return e,
        }
    }
}

async fn resync(
    ep: &Endpoint,
    filter: &mut watch::Receiver<ListFilter>,
    resync_now: &Notify,
    out: &Outbox,
) -> ApiError {
    loop {
        let current = filter.borrow_and_update().clone();
        let requested_at = Instant::now();
        match fetch_all(ep, &current).await {
            Ok((total, connections)) => out.send(Update::Snapshot(Snapshot {
                filter: current,
                requested_at,
                total,
                connections,
            })),
            Err(e) => return e,
        }
        // A slow list (a huge broker) is fetched less often, so the app never hogs it.
        let wait = RESYNC.max(requested_at.elapsed() * 4);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = resync_now.notified() => {}
            changed = filter.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(FILTER_DEBOUNCE).await;
            }
        }
    }
}

async fn fetch_all(
    ep: &Endpoint,
    filter: &ListFilter,
) -> Result<(u64, Vec<ConnectionInfo>), ApiError> {
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let page: ConnectionPage = ep
            .get(&format!(
                "{}?{}",
                ep.path(route::CONNECTIONS),
                filter.query(offset, PAGE)
            ))
            .await?;
        let n = page.connections.len() as u64;
        all.extend(page.connections);
        offset += n;
        if n == 0 || offset >= page.total || offset >= MAX_ROWS {
            return Ok((page.total, all));
        }
    }
}

/// One broker's admin API: base URL, token, and the HTTP client.
struct Endpoint {
    http: reqwest::Client,
    base: String,
    token: Token,
    /// The broker predates the versioned API: its routes are under `/admin`, not `/admin/v1`.
    legacy: std::sync::atomic::AtomicBool,
}

impl Endpoint {
    fn new(url: &str, token: Token) -> Result<Endpoint, String> {
        let base = normalize_url(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("broker-admin-gui/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Endpoint {
            http,
            base,
            token,
            legacy: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The path of `route` on this broker.
    fn path(&self, route: &str) -> String {
        if self.legacy.load(std::sync::atomic::Ordering::Relaxed) {
            format!("{}{route}", admin_api::LEGACY_PREFIX)
        } else {
            admin_api::path(route)
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let rb = self
            .request(reqwest::Method::GET, path)
            .timeout(CALL_TIMEOUT);
        json_body(send(rb).await?).await
    }

    /// The first call of a session: on a 404 for the versioned path, tries the unversioned one
    /// of older brokers, and keeps to it if it answers.
    async fn stats(&self) -> Result<Stats, ApiError> {
        match self.get(&self.path(route::STATS)).await {
            Err(ApiError::Status { status: 404, .. })
                if !self.legacy.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                let legacy = format!("{}{}", admin_api::LEGACY_PREFIX, route::STATS);
                let stats = self.get(&legacy).await?;
                self.legacy
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(stats)
            }
            other => other,
        }
    }

    async fn open_stream(&self) -> Result<reqwest::Response, ApiError> {
        // No overall timeout: the stream is meant to stay open. Silence is caught per chunk.
        let rb = self
            .request(reqwest::Method::GET, &self.path(route::STREAM))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        send(rb).await
    }

    async fn inject(&self, event: Value, target: &Target) -> Result<u64, ApiError> {
        let body = InjectRequest {
            event,
            target: target.clone(),
        };
        let rb = self
            .request(reqwest::Method::POST, &self.path(route::EVENTS))
            .timeout(CALL_TIMEOUT)
            .json(&body);
        let answer: InjectResponse = json_body(send(rb).await?).await?;
        Ok(answer.delivered)
    }

    async fn kick(&self, id: &str, code: u16, reason: &str) -> Result<(), ApiError> {
        let path = format!(
            "{}/{}?code={code}&reason={}",
            self.path(route::CONNECTIONS),
            percent_encode(id),
            percent_encode(reason)
        );
        let rb = self
            .request(reqwest::Method::DELETE, &path)
            .timeout(CALL_TIMEOUT);
        send(rb).await.map(drop)
    }

    async fn drain(&self) -> Result<(), ApiError> {
        let rb = self
            .request(reqwest::Method::POST, &self.path(route::DRAIN))
            .timeout(CALL_TIMEOUT);
        send(rb).await.map(drop)
    }
}

/// `host:port` becomes `http://host:port`; a trailing `/` goes.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("enter the broker's ops URL, e.g. http://127.0.0.1:9090".into());
    }
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{url}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url}: the ops URL must start with http:// or https://"
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Sends a request and turns transport failures and non-success answers into [`ApiError`].
async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
    let response = rb.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<admin_api::ErrorBody>(&body)
        .ok()
        .map(|e| e.error)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| {
            let text = body.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no reason").to_string()
            } else {
                text.chars().take(200).collect()
            }
        });
    if status == reqwest::StatusCode::UNAUTHORIZED {
        Err(ApiError::Unauthorized(message))
    } else {
        Err(ApiError::Status {
            status: status.as_u16(),
            message,
        })
    }
}

async fn json_body<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(|e| classify(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadResponse(e.to_string()))
}

/// A transport error in one line: the innermost cause says the most (`Connection refused`).
fn classify(e: &reqwest::Error) -> ApiError {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else {
        cause.to_string()
    };
    let message = if e.is_connect() {
        format!("cannot connect: {what}")
    } else if e.is_timeout() {
        "the broker did not answer in time".to_string()
    } else if e.is_body() || e.is_decode() {
        format!("the connection broke: {what}")
    } else {
        what
    };
    ApiError::Unreachable(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_become_events() {
        let mut p = SseParser::default();
        assert_eq!(p.line(": keep-alive"), None);
        assert_eq!(
            p.line(""),
            None,
            "a blank line with no data dispatches nothing"
        );
        assert_eq!(p.line(r#"data: {"type":"stats"}"#), None);
        assert_eq!(p.line(""), Some(r#"{"type":"stats"}"#.to_string()));
        assert_eq!(p.line("event: x"), None);
        assert_eq!(p.line("data:a"), None);
        assert_eq!(p.line("data: b"), None);
        assert_eq!(p.line(""), Some("a\nb".to_string()));
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("127.0.0.1:9090").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            normalize_url(" https://ops.example:9090/ ").unwrap(),
            "https://ops.example:9090"
        );
        assert!(normalize_url("").is_err());
        assert!(normalize_url("ftp://x").unwrap_err().contains("http://"));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("secret-123");
        assert!(!format!("{t:?}").contains("secret"));
        let c = Command::Connect {
            url: "http://x".into(),
            token: t,
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
