//! The admin API on the ops listener: list, inject, kick, drain, and a live stream.
//!
//! Every call needs `Authorization: Bearer <token>`: `broker.admin.token` may do everything,
//! `broker.admin.readToken` only `GET` (list, stats, stream; anything else is 403). Without
//! either token the routes are not mounted at all (and the log says so), so an ops port that is
//! reachable by mistake exposes metrics and health, never control. Every call is logged with
//! who made it (`admin-token:…` or `read-token:…`, a short fingerprint, never the token) and
//! what it did. The types on the wire are the `admin_api` crate's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use admin_api::{
    route, Access, ConnectionPage, DrainResponse, ErrorBody, InjectRequest, InjectResponse,
    KickQuery, KickResponse, ListQuery, OpenConnections, Stats, StreamMessage, Target as ApiTarget,
    Totals,
};
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::Stream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event;
use crate::event::TYPE_LABELS;
use crate::fanout::Target;
use crate::handshake::secret_eq;
use crate::metrics::Refused;
use crate::ops::connection_info;
use crate::registry::{CloseReason, CloseRequest};
use crate::server::Shared;

/// The admin routes, or `None` when neither an admin nor a read-only token is configured.
pub fn routes(shared: &Arc<Shared>) -> Option<Router<Arc<Shared>>> {
    let admin = &shared.config.broker.admin;
    let mut tokens = Vec::new();
    if let Some(t) = &admin.token {
        tokens.push(Token::new(t, Access::Admin));
    }
    if let Some(t) = &admin.read_token {
        tokens.push(Token::new(t, Access::Read));
    }
    if tokens.is_empty() {
        tracing::warn!(
            "admin API is off: no broker.admin.token (BROKER_ADMIN_TOKEN) nor readToken is set"
        );
        return None;
    }
    let auth = AdminAuth {
        tokens: tokens.into(),
        shared: shared.clone(),
    };
    let api = Router::new()
        .route(route::CONNECTIONS, get(list_connections))
        .route(route::CONNECTION, delete(kick))
        .route(route::STATS, get(get_stats))
        .route(route::EVENTS, post(inject))
        .route(route::DRAIN, post(drain))
        .route(route::STREAM, get(stream));
    // Version 1 under its own prefix, and the same routes where the first release served
    // them (older desktop apps); every answer names the version.
    Some(
        Router::new()
            .nest(admin_api::PREFIX, api.clone())
            .nest(admin_api::LEGACY_PREFIX, api)
            .layer(middleware::from_fn_with_state(auth, authenticate))
            .layer(middleware::map_response(|mut r: Response| async move {
                r.headers_mut().insert(
                    admin_api::VERSION_HEADER,
                    HeaderValue::from(admin_api::VERSION),
                );
                r
            })),
    )
}

/// A short, stable name for a token in logs: `token:` and 8 hex digits of FNV-1a.
fn fingerprint(token: &str) -> String {
    let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("token:{:08x}", hash as u32)
}

/// One accepted bearer token, what it may do, and its name in logs.
struct Token {
    secret: Box<str>,
    access: Access,
    who: Arc<str>,
}

impl Token {
    fn new(secret: &str, access: Access) -> Token {
        let kind = match access {
            Access::Admin => "admin",
            Access::Read => "read",
        };
        Token {
            secret: secret.into(),
            access,
            who: format!("{kind}-{}", fingerprint(secret)).into(),
        }
    }
}

#[derive(Clone)]
struct AdminAuth {
    tokens: Arc<[Token]>,
    shared: Arc<Shared>,
}

/// Who made an admin call and what their token may do, for the handlers.
#[derive(Clone)]
struct Caller {
    who: Arc<str>,
    access: Access,
}

async fn authenticate(State(auth): State<AdminAuth>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    // Every configured token is compared (in constant time each), whichever matches.
    let mut found = None;
    for t in auth.tokens.iter() {
        if given.is_some_and(|g| secret_eq(g.as_bytes(), t.secret.as_bytes())) {
            found = Some(t);
        }
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let status;
    let response = match found {
        Some(t) if t.access.allows(method.as_str()) => {
            req.extensions_mut().insert(Caller {
                who: t.who.clone(),
                access: t.access,
            });
            let r = next.run(req).await;
            status = r.status();
            // Every call, with who made it: reads at debug (the desktop app polls), changes
            // at info.
            if method == axum::http::Method::GET {
                tracing::debug!(who = %t.who, %method, path, status = status.as_u16(), "admin call");
            } else {
                tracing::info!(who = %t.who, %method, path, status = status.as_u16(), "admin call");
            }
            r
        }
        Some(t) => {
            tracing::warn!(who = %t.who, %method, path, "admin call refused: a read-only token may only GET");
            status = StatusCode::FORBIDDEN;
            error(
                status,
                "this token may only read (GET); changes need broker.admin.token",
            )
        }
        None => {
            tracing::warn!(%method, path, "admin call refused: missing or wrong bearer token");
            status = StatusCode::UNAUTHORIZED;
            error(status, "missing or wrong admin bearer token")
        }
    };
    auth.shared
        .metrics
        .admin_requests
        .with_label_values(&[status.as_str()])
        .inc();
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn list_connections(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let filter = q.filter();
    let limit = q.limit();
    let mut total = 0u64;
    let mut connections = Vec::new();
    for c in shared.registry.snapshot() {
        let remote = c.remote.to_string();
        if !filter.matches_fields(c.origin.as_deref(), c.user.as_deref(), &remote, c.publisher) {
            continue;
        }
        if total >= q.offset && (connections.len() as u64) < limit {
            connections.push(connection_info(&c));
        }
        total += 1;
    }
    Json(ConnectionPage {
        total,
        offset: q.offset,
        limit,
        connections,
    })
    .into_response()
}

/// The instance's state and totals, as `/admin/v1/stats` and the stream's `stats` lines show it
/// to a caller with `access`.
pub fn stats(shared: &Shared, access: Access) -> Stats {
    let m = &shared.metrics;
    let sum = |v: &prometheus::IntCounterVec, labels: &[&str]| -> u64 {
        labels.iter().map(|l| v.with_label_values(&[l]).get()).sum()
    };
    let counts = shared.registry.counts();
    Stats {
        api_version: admin_api::VERSION,
        access,
        instance: shared.registry.instance().to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: shared.started.elapsed().as_secs(),
        ready: shared.is_ready(),
        connections: OpenConnections {
            clients: counts.clients as u64,
            publishers: counts.publishers as u64,
        },
        totals: Totals {
            accepted: sum(&m.connections_accepted, &["client", "publisher"]),
            refused: sum(&m.connections_refused, &Refused::ALL.map(Refused::label)),
            closed: sum(
                &m.connections_closed,
                &CloseReason::ALL.map(CloseReason::label),
            ),
            messages_in: sum(&m.messages_received, &["client", "publisher"]),
            messages_out: m.messages_sent.get(),
            bytes_in: m.bytes_received.get(),
            bytes_out: m.bytes_sent.get(),
            slow_consumer_drops: m.slow_consumer_disconnects.get(),
            decode_errors: sum(
                &m.decode_errors,
                &event::ErrorReason::ALL.map(|r| r.label()),
            ),
            events: sum(&m.events, &TYPE_LABELS),
        },
    }
}

async fn get_stats(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    Json(stats(&shared, caller.access)).into_response()
}

async fn inject(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req: InjectRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    let text = req.event.to_string();
    let info = match event::decode(text.as_bytes()) {
        Ok(info) => info,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("event: {}", e.message)),
    };
    let target = match &req.target {
        ApiTarget::All => Target::All { except: None },
        ApiTarget::User(user) => Target::User { user, except: None },
        ApiTarget::Connection(connection) => Target::Connection(connection),
    };
    let delivered = shared.deliver(&target, &Utf8Bytes::from(text), info.event_type);
    tracing::info!(who = %who, action = "inject", event_type = info.event_type.label(), target = ?target, delivered, "admin injected an event");
    (
        StatusCode::ACCEPTED,
        Json(InjectResponse {
            delivered: delivered as u64,
        }),
    )
        .into_response()
}

async fn kick(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KickQuery>,
) -> Response {
    let code = q.code.unwrap_or(admin_api::DEFAULT_KICK_CODE);
    if !admin_api::kick_code_allowed(code) {
        return error(StatusCode::BAD_REQUEST, admin_api::KICK_CODE_RULE);
    }
    let Some(conn) = shared.registry.get_wire(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no connection {id} on this instance"),
        );
    };
    let reason =
        admin_api::cut_close_reason(q.reason.unwrap_or_else(|| "kicked by an operator".into()));
    // A kick means now: frames still queued for the connection are dropped (the reply says
    // how many), the one being written is finished, then the close frame.
    let discarded =
        conn.request_close(CloseRequest::new(CloseReason::Kicked, code, reason.clone()));
    tracing::info!(who = %who, action = "kick", id = %id, code, reason = %reason, discarded, "admin kicked a connection");
    Json(KickResponse {
        kicked: id,
        discarded: discarded.unwrap_or(0) as u64,
        already_closing: discarded.is_none(),
    })
    .into_response()
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
) -> Response {
    tracing::info!(who = %who, action = "drain", "admin asked this instance to drain");
    tokio::spawn(async move { shared.drain().await });
    (StatusCode::ACCEPTED, Json(DrainResponse { draining: true })).into_response()
}

/// Server-Sent Events: connects and disconnects as they happen, and stats every second.
async fn stream(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let access = caller.access;
    let rx = shared.events.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold(
        (rx, tick, shared),
        move |(mut rx, mut tick, shared)| async move {
            let line: String = tokio::select! {
                () = shared.shutdown.cancelled() => return None,
                _ = tick.tick() => line(&StreamMessage::Stats { stats: stats(&shared, access) }),
                r = rx.recv() => match r {
                    Ok(line) => line.to_string(),
                    // A reader that fell behind is told how much it missed, then goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => line(&StreamMessage::Lagged { missed }),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(Event::default().data(line)), (rx, tick, shared)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn line(message: &StreamMessage) -> String {
    serde_json::to_string(message).unwrap_or_default()
}
