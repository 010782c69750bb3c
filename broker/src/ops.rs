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
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::shared::Shared;

/// Serves the ops listener until shutdown, over TLS when `broker.ops.tls` is on.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
) {
    let token = shared.shutdown.token();
    let app = router(shared, fleet);
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }
        Some(tls) => {
            let listener = TlsListener::new(listener, tls, token.clone());
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "ops listener failed");
    }
}

/// Handshakes in progress on the ops listener at most; more wait in the kernel's backlog.
const OPS_TLS_HANDSHAKES: usize = 64;
/// A TLS handshake on the ops listener that takes longer is dropped.
const OPS_TLS_DEADLINE: Duration = Duration::from_secs(10);

/// The ops listener over TLS. A task accepts TCP connections and runs each handshake in a task
/// of its own, under a deadline and a cap on how many run at once, so a client that stalls
/// its handshake delays nobody; finished streams reach axum through a channel.
struct TlsListener {
    local: std::io::Result<SocketAddr>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: TlsAcceptor, shutdown: CancellationToken) -> TlsListener {
        let local = listener.local_addr();
        let (tx, ready) = mpsc::channel(OPS_TLS_HANDSHAKES);
        let slots = Arc::new(Semaphore::new(OPS_TLS_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait a little, as axum does.
                            tracing::warn!(error = %e, "ops listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(OPS_TLS_DEADLINE, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "ops listener: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "ops listener: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn router(shared: Arc<Shared>, fleet: Arc<Fleet>) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if let Some(admin) = crate::admin::routes(&shared, fleet) {
        router = router.merge(admin);
    }
    router.with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .metrics
        .up_seconds
        .set(shared.started.elapsed().as_secs() as i64);
    if let Some(h) = &shared.router.history {
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
    let cluster = match &shared.router.cluster {
        None => "standalone",
        Some(c) if c.is_connected() => "connected to NATS",
        Some(_) => "NATS unreachable: delivering to local clients only",
    };
    let history = match (&shared.router.cluster, &shared.router.history) {
        (Some(c), _) if c.history().is_some() => "JetStream (clients resume on any instance)",
        (_, Some(_)) => "in memory (clients resume on this instance)",
        (_, None) => "off",
    };
    (
        status,
        format!("{state}\ncluster: {cluster}\nhistory: {history}\n"),
    )
}
