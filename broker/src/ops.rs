//! The operations listener: `/metrics`, `/healthz`, `/readyz`, and the admin API.
//!
//! It is a separate port, on loopback by default, so that nothing operational is reachable
//! through the public WebSocket port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::registry::{CloseReason, Conn};
use crate::server::Shared;

/// Connects and disconnects, for the admin API's live stream. Lines are JSON, formatted only
/// while someone listens.
pub struct Activity {
    tx: broadcast::Sender<Arc<str>>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            tx: broadcast::channel(1024).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    pub fn publish(&self, line: impl FnOnce() -> serde_json::Value) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(line().to_string().into());
        }
    }

    pub fn connected(&self, conn: &Conn) {
        self.publish(
            || serde_json::json!({"type": "connect", "connection": connection_json(conn)}),
        );
    }

    pub fn disconnected(&self, conn: &Conn, reason: CloseReason) {
        self.publish(|| serde_json::json!({"type": "disconnect", "id": &*conn.wire_id, "reason": reason.label()}));
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// One connection as the admin API shows it.
pub fn connection_json(c: &Conn) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let since = c
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "id": &*c.wire_id,
        "remoteAddr": c.remote.to_string(),
        "origin": c.origin.as_deref(),
        "user": c.user.as_deref(),
        "publisher": c.publisher,
        "connectedAt": since,
        "messagesIn": c.counters.messages_in.load(Relaxed),
        "messagesOut": c.counters.messages_out.load(Relaxed),
        "bytesIn": c.counters.bytes_in.load(Relaxed),
        "bytesOut": c.counters.bytes_out.load(Relaxed),
        "sendQueueDepth": c.queue_depth(),
        "sendQueueBytes": c.outbox.bytes(),
        "closing": c.close_request().map(|r| r.reason.label()),
        "shard": c.shard,
    })
}

/// Serves the ops listener until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let token = shared.shutdown.clone();
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "ops listener failed");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if let Some(admin) = crate::admin::routes(&shared) {
        router = router.merge(admin);
    }
    router.with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .metrics
        .up_seconds
        .set(shared.started.elapsed().as_secs() as i64);
    if let Some(h) = &shared.history {
        let s = h.stats();
        let m = &shared.metrics;
        m.history_events.set(s.events as i64);
        m.history_bytes.set(s.bytes as i64);
        m.history_oldest_seconds.set(s.oldest_age.as_secs() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// 200 while accepting, 503 while draining. The body says how the cluster link is: an
/// instance without NATS still serves its own clients, so it stays ready, but says so.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (status, state) = if shared.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    };
    let cluster = match &shared.cluster {
        None => "standalone",
        Some(c) if c.is_connected() => "connected to NATS",
        Some(_) => "NATS unreachable: delivering to local clients only",
    };
    let history = match (&shared.cluster, &shared.history) {
        (Some(c), _) if c.history().is_some() => "JetStream (clients resume on any instance)",
        (_, Some(_)) => "in memory (clients resume on this instance)",
        (_, None) => "off",
    };
    (
        status,
        format!("{state}\ncluster: {cluster}\nhistory: {history}\n"),
    )
}
