//! The admin API's HTTP routes on the ops listener: list, inject, kick, drain, a live stream,
//! and the fleet (every instance, connections across them, kick and drain wherever). The
//! work itself is [`crate::control`] (this instance) and [`crate::fleet`] (the others).
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
    route, Access, ErrorBody, InjectRequest, InjectResponse, KickQuery, ListQuery, StreamMessage,
    Target as ApiTarget,
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

use crate::control::{self, Refusal};
use crate::event;
use crate::fleet::Fleet;
use crate::handshake::secret_eq;
use crate::shared::Shared;
use crate::target::Target;

/// What the admin routes work with: this instance, and what it knows of the fleet.
#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
}

impl axum::extract::FromRef<AdminState> for Arc<Shared> {
    fn from_ref(s: &AdminState) -> Arc<Shared> {
        s.shared.clone()
    }
}

impl axum::extract::FromRef<AdminState> for Arc<Fleet> {
    fn from_ref(s: &AdminState) -> Arc<Fleet> {
        s.fleet.clone()
    }
}

/// The admin routes, or `None` when neither an admin nor a read-only token is configured.
pub fn routes(shared: &Arc<Shared>, fleet: Arc<Fleet>) -> Option<Router<Arc<Shared>>> {
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
    let api: Router<AdminState> = Router::new()
        .route(route::CONNECTIONS, get(list_connections))
        .route(route::CONNECTION, delete(kick))
        .route(route::STATS, get(get_stats))
        .route(route::EVENTS, post(inject))
        .route(route::DRAIN, post(drain))
        .route(route::STREAM, get(stream))
        .route(route::STATS_HISTORY, get(history))
        .route(route::INSTANCES, get(instances))
        .route(route::INSTANCE_DRAIN, post(drain_instance))
        .route(route::INSTANCE_HISTORY, get(instance_history))
        .route(route::FLEET_CONNECTIONS, get(fleet_connections));
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
            }))
            .with_state(AdminState {
                shared: shared.clone(),
                fleet,
            }),
    )
}

/// A short, stable name for a token in logs: `token:` and 8 hex digits of FNV-1a (the caller
/// prefixes the kind: `admin-token:…`, `read-token:…`).
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

fn refused(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    error(status, &r.message)
}

fn answer<T: serde::Serialize>(r: Result<T, Refusal>) -> Response {
    match r {
        Ok(body) => Json(body).into_response(),
        Err(r) => refused(r),
    }
}

async fn list_connections(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Response {
    Json(control::list(&shared, &q)).into_response()
}

async fn fleet_connections(
    State(shared): State<Arc<Shared>>,
    State(fleet): State<Arc<Fleet>>,
    Query(q): Query<ListQuery>,
) -> Response {
    Json(fleet.list(&shared, &q).await).into_response()
}

async fn instances(
    State(shared): State<Arc<Shared>>,
    State(fleet): State<Arc<Fleet>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    Json(fleet.instances(&shared, caller.access)).into_response()
}

async fn history(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.recent.history(shared.registry().instance())).into_response()
}

async fn instance_history(
    State(shared): State<Arc<Shared>>,
    State(fleet): State<Arc<Fleet>>,
    Path(instance): Path<String>,
) -> Response {
    answer(fleet.history(&shared, &instance).await)
}

async fn drain_instance(
    State(shared): State<Arc<Shared>>,
    State(fleet): State<Arc<Fleet>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
    Path(instance): Path<String>,
) -> Response {
    match fleet.drain(&shared, &instance, &who).await {
        Ok(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Err(r) => refused(r),
    }
}

async fn get_stats(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    Json(control::stats(&shared, caller.access)).into_response()
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
    let delivered = shared
        .router
        .deliver(&target, &Utf8Bytes::from(text), info.event_type);
    tracing::info!(who = %who, action = "inject", event_type = info.event_type.label(), target = ?target, delivered, "admin injected an event");
    (
        StatusCode::ACCEPTED,
        Json(InjectResponse {
            delivered: delivered as u64,
        }),
    )
        .into_response()
}

/// Kicks a connection on whichever instance holds it (the id names the instance).
async fn kick(
    State(shared): State<Arc<Shared>>,
    State(fleet): State<Arc<Fleet>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KickQuery>,
) -> Response {
    answer(fleet.kick(&shared, &id, &q, &who).await)
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller { who, .. }): axum::Extension<Caller>,
) -> Response {
    (StatusCode::ACCEPTED, Json(control::drain(&shared, &who))).into_response()
}

/// Server-Sent Events: connects and disconnects as they happen, and stats every second.
async fn stream(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let access = caller.access;
    let rx = shared.activity.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold(
        (rx, tick, shared),
        move |(mut rx, mut tick, shared)| async move {
            let line: String = tokio::select! {
                () = shared.shutdown.cancelled() => return None,
                _ = tick.tick() => line(&StreamMessage::Stats { stats: control::stats(&shared, access) }),
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
