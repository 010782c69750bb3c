//! The admin API on the ops listener: list, inject, kick, drain, and a live stream.
//!
//! Every call needs `Authorization: Bearer <broker.admin.token>`. Without a configured token the
//! routes are not mounted at all (and the log says so), so an ops port that is reachable by
//! mistake exposes metrics and health, never control. Every call is logged with who made it
//! (a short fingerprint of the token, never the token) and what it did.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event;
use crate::event::TYPE_LABELS;
use crate::fanout::Target;
use crate::handshake::secret_eq;
use crate::metrics::Refused;
use crate::ops::connection_json;
use crate::registry::{CloseReason, CloseRequest};
use crate::server::Shared;

/// The admin routes, or `None` when no admin token is configured.
pub fn routes(shared: &Arc<Shared>) -> Option<Router<Arc<Shared>>> {
    let Some(token) = shared.config.broker.admin.token.clone() else {
        tracing::warn!("admin API is off: no broker.admin.token (BROKER_ADMIN_TOKEN) is set");
        return None;
    };
    let who: Arc<str> = fingerprint(&token).into();
    let auth = AdminAuth {
        token: token.into(),
        who,
        shared: shared.clone(),
    };
    Some(
        Router::new()
            .route("/admin/connections", get(list_connections))
            .route("/admin/connections/{id}", delete(kick))
            .route("/admin/stats", get(stats))
            .route("/admin/events", post(inject))
            .route("/admin/drain", post(drain))
            .route("/admin/stream", get(stream))
            .layer(middleware::from_fn_with_state(auth, authenticate)),
    )
}

/// A short, stable name for a token in logs: `token:` and 8 hex digits of FNV-1a.
fn fingerprint(token: &str) -> String {
    let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("token:{:08x}", hash as u32)
}

#[derive(Clone)]
struct AdminAuth {
    token: Arc<str>,
    who: Arc<str>,
    shared: Arc<Shared>,
}

/// Who made an admin call, for the handlers' log lines.
#[derive(Clone)]
struct Caller(Arc<str>);

async fn authenticate(State(auth): State<AdminAuth>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let status;
    let response = if given.is_some_and(|t| secret_eq(t.trim().as_bytes(), auth.token.as_bytes())) {
        req.extensions_mut().insert(Caller(auth.who.clone()));
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let r = next.run(req).await;
        status = r.status();
        // Every call, with who made it: reads at debug (the desktop app polls), changes at info.
        if method == axum::http::Method::GET {
            tracing::debug!(who = %auth.who, %method, path, status = status.as_u16(), "admin call");
        } else {
            tracing::info!(who = %auth.who, %method, path, status = status.as_u16(), "admin call");
        }
        r
    } else {
        tracing::warn!(method = %req.method(), path = %req.uri().path(), "admin call refused: missing or wrong bearer token");
        status = StatusCode::UNAUTHORIZED;
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin bearer token",
        )
    };
    auth.shared
        .metrics
        .admin_requests
        .with_label_values(&[status.as_str()])
        .inc();
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    origin: Option<String>,
    user: Option<String>,
    publisher: Option<bool>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn list_connections(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).min(1000);
    let matching: Vec<_> = shared
        .registry
        .snapshot()
        .into_iter()
        .filter(|c| {
            q.origin
                .as_deref()
                .is_none_or(|o| c.origin.as_deref().is_some_and(|co| co.contains(o)))
                && q.user
                    .as_deref()
                    .is_none_or(|u| c.user.as_deref() == Some(u))
                && q.publisher.is_none_or(|p| c.publisher == p)
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(q.offset)
        .take(limit)
        .map(|c| connection_json(c))
        .collect();
    Json(json!({
        "total": matching.len(),
        "offset": q.offset,
        "limit": limit,
        "connections": page,
    }))
    .into_response()
}

/// The instance's state and totals, as `/admin/stats` and the stream's `stats` lines show it.
pub fn stats_json(shared: &Shared) -> Value {
    let m = &shared.metrics;
    let sum = |v: &prometheus::IntCounterVec, labels: &[&str]| -> u64 {
        labels.iter().map(|l| v.with_label_values(&[l]).get()).sum()
    };
    let counts = shared.registry.counts();
    json!({
        "instance": shared.registry.instance(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "ready": shared.is_ready(),
        "connections": { "clients": counts.clients, "publishers": counts.publishers },
        "totals": {
            "accepted": sum(&m.connections_accepted, &["client", "publisher"]),
            "refused": sum(&m.connections_refused, &Refused::ALL.map(Refused::label)),
            "closed": sum(&m.connections_closed, &CloseReason::ALL.map(CloseReason::label)),
            "messagesIn": sum(&m.messages_received, &["client", "publisher"]),
            "messagesOut": m.messages_sent.get(),
            "bytesIn": m.bytes_received.get(),
            "bytesOut": m.bytes_sent.get(),
            "slowConsumerDrops": m.slow_consumer_disconnects.get(),
            "decodeErrors": sum(&m.decode_errors, &event::ErrorReason::ALL.map(|r| r.label())),
            "events": sum(&m.events, &TYPE_LABELS),
        },
    })
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(stats_json(&shared)).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InjectTarget {
    Named(String),
    User { user: String },
    Connection { connection: String },
}

#[derive(Deserialize)]
struct Inject {
    event: Value,
    #[serde(default = "all_target")]
    target: InjectTarget,
}

fn all_target() -> InjectTarget {
    InjectTarget::Named("all".into())
}

async fn inject(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(who)): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req: Inject = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    let text = req.event.to_string();
    let info = match event::decode(text.as_bytes()) {
        Ok(info) => info,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("event: {}", e.message)),
    };
    let target = match &req.target {
        InjectTarget::Named(all) if all == "all" => Target::All { except: None },
        InjectTarget::Named(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("target must be \"all\", {{\"user\": ...}} or {{\"connection\": ...}}, not {other:?}"),
            )
        }
        InjectTarget::User { user } => Target::User { user, except: None },
        InjectTarget::Connection { connection } => Target::Connection(connection),
    };
    let delivered = shared.deliver(&target, &Utf8Bytes::from(text), info.event_type);
    tracing::info!(who = %who, action = "inject", event_type = info.event_type.label(), target = ?target, delivered, "admin injected an event");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "delivered": delivered })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct KickQuery {
    code: Option<u16>,
    reason: Option<String>,
}

async fn kick(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(who)): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KickQuery>,
) -> Response {
    let code = q.code.unwrap_or(1008);
    if !(code == 1000 || (3000..=4999).contains(&code) || (1001..=1014).contains(&code))
        || code == 1005
        || code == 1006
    {
        return error(
            StatusCode::BAD_REQUEST,
            "code must be 1000-1014 (not 1005/1006) or 3000-4999",
        );
    }
    let Some(conn) = shared.registry.get_wire(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no connection {id} on this instance"),
        );
    };
    let mut reason = q.reason.unwrap_or_else(|| "kicked by an operator".into());
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 123 {
        reason.pop();
    }
    // A kick means now: frames still queued for the connection are dropped (the reply says
    // how many), the one being written is finished, then the close frame.
    let discarded =
        conn.request_close(CloseRequest::new(CloseReason::Kicked, code, reason.clone()));
    tracing::info!(who = %who, action = "kick", id = %id, code, reason = %reason, discarded, "admin kicked a connection");
    match discarded {
        Some(n) => Json(json!({ "kicked": id, "discarded": n })).into_response(),
        None => {
            Json(json!({ "kicked": id, "discarded": 0, "alreadyClosing": true })).into_response()
        }
    }
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(who)): axum::Extension<Caller>,
) -> Response {
    tracing::info!(who = %who, action = "drain", "admin asked this instance to drain");
    tokio::spawn(async move { shared.drain().await });
    (StatusCode::ACCEPTED, Json(json!({ "draining": true }))).into_response()
}

/// Server-Sent Events: connects and disconnects as they happen, and stats every second.
async fn stream(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = shared.events.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold(
        (rx, tick, shared),
        |(mut rx, mut tick, shared)| async move {
            let line: String = tokio::select! {
                () = shared.shutdown.cancelled() => return None,
                _ = tick.tick() => json!({"type": "stats", "stats": stats_json(&shared)}).to_string(),
                r = rx.recv() => match r {
                    Ok(line) => line.to_string(),
                    // A reader that fell behind is told how much it missed, then goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => json!({"type": "lagged", "missed": n}).to_string(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(Event::default().data(line)), (rx, tick, shared)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
