//! The accept loop, the upgrade, and start-up and shutdown of the whole broker.
//!
//! Every task (acceptor, connections, ops listener) watches one cancellation token, so
//! stopping is one code path: cancel, then wait for the tracked tasks to finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::connection::Transport;
use crate::control::Recent;
use crate::fleet::Fleet;
use crate::gate::{Gate, GateLimits, Pending, Slot};
use crate::handshake::{self, Admission, HeadError, Refusal, Request, Resume};
use crate::history::MemoryHistory;
use crate::metrics::{kind_label, Metrics, Refused};
use crate::ops::Activity;
use crate::origin::OriginPolicy;
use crate::registry::{CloseReason, CloseRequest, NewConn, Registry};

/// State shared by every task of one broker.
pub struct Shared {
    pub config: Config,
    pub origin: OriginPolicy,
    pub registry: Registry,
    pub metrics: Metrics,
    pub tokens: TokenVerifier,
    pub events: Activity,
    /// The other instances, as the admin API sees them (this one alone without NATS).
    pub fleet: Fleet,
    /// The last minutes of this instance's stats, for charts.
    pub recent: Recent,
    /// Set when `ssl` is on: the WebSocket port serves `wss://` only.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Set in cluster mode: where events are shared with the other instances.
    pub cluster: Option<Cluster>,
    /// What clients that asked for positions resume from (off when `history.maxBytes` is 0).
    pub history: Option<MemoryHistory>,
    /// Cancelled when every task is to stop: connections close with 1001.
    pub shutdown: CancellationToken,
    /// Cancelled when the listener is to stop accepting (drain, then shutdown).
    stop_accepting: CancellationToken,
    pub started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Pending handshakes, connection slots, per-address counts.
    pub gate: Arc<Gate>,
    client_ws: WebSocketConfig,
    publisher_ws: WebSocketConfig,
    /// Every task of the broker (listeners, handshakes, connections), waited for at shutdown.
    tasks: TaskTracker,
}

impl Shared {
    /// Every task of the broker, waited for at shutdown: spawn on it, never bare.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// `/readyz` fails from now on.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.metrics.ready.set(0);
    }

    /// Drains this instance: not ready, stops accepting, closes the clients with 1001 spread
    /// over `broker.drainWindow` (so that they do not all reconnect elsewhere at once), then
    /// asks everything to stop. Calling it again while a drain runs does nothing.
    pub async fn drain(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.set_not_ready();
        self.stop_accepting.cancel();
        let conns = self.registry.snapshot();
        let window = Duration::from_secs_f64(self.config.broker.drain_window);
        tracing::info!(
            connections = conns.len(),
            window_secs = window.as_secs_f64(),
            "draining"
        );
        let start = tokio::time::Instant::now();
        // Each client is asked to close at its moment of the window, and has until the end of
        // the window plus the close grace to take what was queued for it, then its 1001.
        let deadline = start + window + self.config.broker.limits.close_grace();
        let n = conns.len().max(1) as u32;
        for (i, conn) in conns.iter().enumerate() {
            tokio::time::sleep_until(start + window * i as u32 / n).await;
            conn.request_close(
                CloseRequest::new(CloseReason::Shutdown, 1001, "server draining: reconnect")
                    .by(deadline),
            );
        }
        self.shutdown.cancel();
    }
}

/// A running broker, as returned by [`start`].
pub struct RunningBroker {
    ws_addr: SocketAddr,
    ops_addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl RunningBroker {
    /// Where the WebSocket port listens.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Where the ops listener (metrics, health, admin) listens.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, closes every client with 1001 (each first takes what was queued for
    /// it, within the close grace), and waits for the tasks to end.
    pub async fn shutdown(self) {
        self.shared.set_not_ready();
        self.shared.shutdown.cancel();
        self.tracker.close();
        // Every connection has the close grace to take its frames and close frame, then a
        // short wait for the peer's close frame; a little more for the tasks to finish.
        let limit = self.shared.config.broker.limits.close_grace() + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                seconds = limit.as_secs_f64(),
                "some connections did not close in time"
            );
        }
    }

    /// Resolves once shutdown has been requested (by a signal handler or the admin API).
    pub async fn stopping(&self) {
        self.shared.shutdown.cancelled().await;
    }

    /// Drains (see [`Shared::drain`]), then shuts down.
    pub async fn drain_and_shutdown(self) {
        self.shared.drain().await;
        self.shutdown().await;
    }
}

fn ws_config(max_message: usize) -> WebSocketConfig {
    // Small buffers: an idle connection should cost a few KiB, not tungstenite's default
    // 128 KiB read buffer. Writes batch up to 64 KiB before going to the socket.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Pending connections the kernel may hold for the WebSocket listener (it caps this at
/// `net.core.somaxconn`). The usual 128 overflows when thousands of clients reconnect at once
/// after a restart or a drain elsewhere; an overflow costs each client a one-second SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn random_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// Binds both listeners and starts serving. Fails if a port cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<RunningBroker> {
    let tls = crate::tls::acceptor(&config)?;
    let ops_tls = crate::tls::ops_acceptor(&config)?;
    let origin = OriginPolicy::new(&config.websocket.approved_socket_domains)?;
    for warning in origin.warnings() {
        tracing::warn!("{warning}");
    }
    let instance = if config.broker.instance_id.is_empty() {
        random_instance_id()
    } else {
        config.broker.instance_id.clone()
    };
    let ws_bind = SocketAddr::new(config.websocket.host, config.websocket.port);
    let listener = listen(ws_bind)
        .with_context(|| format!("cannot listen on {ws_bind} (websocket.host, websocket.port)"))?;
    let ops_bind = SocketAddr::new(config.broker.ops.host, config.broker.ops.port);
    let ops_listener = TcpListener::bind(ops_bind).await.with_context(|| {
        format!("cannot listen on {ops_bind} (broker.ops.host, broker.ops.port)")
    })?;
    let ws_addr = listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;

    let limits = &config.broker.limits;
    let shutdown = CancellationToken::new();
    let registry = Registry::new(&instance, config.shard_count(), limits.send_queue_bytes);
    let (cluster, cluster_task) = match &config.broker.cluster.nats {
        Some(url) => {
            let (c, t) = Cluster::with_queue(
                url,
                &config.broker.cluster.subject,
                registry.instance(),
                config.broker.cluster.queue_bytes,
                (config.broker.history.max_bytes > 0).then(|| {
                    (
                        config.broker.history.max_bytes,
                        config.broker.history.max_age(),
                    )
                }),
            );
            (Some(c), Some(t))
        }
        None => (None, None),
    };
    let history = (config.broker.history.max_bytes > 0).then(|| {
        // The epoch: this start's random part of the connection ids.
        let run = registry.instance().rsplit('.').next().unwrap_or("0");
        MemoryHistory::new(
            run,
            config.broker.history.max_bytes,
            config.broker.history.max_age(),
        )
    });
    let fleet = Fleet::new(registry.instance(), cluster.as_ref().map(Cluster::prefix));
    let shared = Arc::new(Shared {
        fleet,
        recent: Recent::default(),
        tls,
        cluster,
        history,
        registry,
        tokens: TokenVerifier::new(config.broker.jwt_secret.as_deref()),
        metrics: Metrics::new(),
        events: Activity::new(),
        shutdown: shutdown.clone(),
        stop_accepting: shutdown.child_token(),
        started: Instant::now(),
        ready: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        gate: Gate::new(&GateLimits {
            max_pending: limits.max_pending_handshakes,
            max_pending_per_address: limits.max_pending_handshakes_per_address,
            max_connections: limits.max_connections,
            publisher_reserve: limits.publisher_reserve(),
            max_per_address: limits.per_address(),
        }),
        client_ws: ws_config(limits.max_message_size),
        publisher_ws: ws_config(limits.max_publisher_message_size),
        tasks: TaskTracker::new(),
        origin,
        config,
    });
    shared.metrics.ready.set(1);

    let tracker = shared.tasks.clone();
    tracker.spawn(accept_loop(listener, shared.clone(), tracker.clone()));
    // Shutdown reaches each connection as a close request: its task then waits on nothing
    // shared, so a wake-up never touches a lock that every connection uses.
    tracker.spawn({
        let shared = shared.clone();
        async move {
            shared.shutdown.cancelled().await;
            let deadline = tokio::time::Instant::now() + shared.config.broker.limits.close_grace();
            for conn in shared.registry.snapshot() {
                conn.request_close(CloseRequest::shutdown().by(deadline));
            }
        }
    });
    tracker.spawn(crate::ops::serve(ops_listener, ops_tls, shared.clone()));
    tracker.spawn(crate::memory::trim_after_spikes(shared.clone()));
    tracker.spawn(crate::control::sample_every_second(shared.clone()));
    if let Some(task) = cluster_task {
        tracker.spawn(crate::cluster::run(task, shared.clone()));
    }
    tracing::info!(
        instance = %instance,
        ws = %ws_addr,
        ops = %ops_addr,
        patterns = shared.origin.patterns().len(),
        shards = shared.config.shard_count(),
        "listening"
    );
    Ok(RunningBroker {
        ws_addr,
        ops_addr,
        shared,
        tracker,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Counted before any byte is read: a socket that never finishes its handshake
                // holds one of a bounded number of places, and only until its deadline.
                let peer_ip = peer.ip().to_canonical();
                let from_proxy = shared
                    .config
                    .broker
                    .limits
                    .trusted_proxies
                    .contains(&peer_ip);
                match shared.gate.pending(peer_ip, !from_proxy) {
                    Ok(pending) => {
                        tracker.spawn(serve_socket(stream, peer, pending, shared.clone()));
                    }
                    Err(closed) => {
                        shared.metrics.refused(closed.refused());
                        tracing::debug!(peer = %peer, reason = closed.refused().label(), "reset before the handshake");
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// One accepted socket: TLS first when `ssl` is on, then the request. TLS and the request head
/// share one deadline, `handshakeTimeout` from the accept.
async fn serve_socket(stream: TcpStream, peer: SocketAddr, pending: Pending, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let deadline =
        tokio::time::Instant::from_std(started) + shared.config.broker.limits.handshake_timeout();
    let Some(acceptor) = shared.tls.clone() else {
        return handle_socket(stream, peer, pending, started, shared).await;
    };
    let accepted = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
    };
    match accepted {
        Ok(Ok(tls)) => handle_socket(tls, peer, pending, started, shared).await,
        Ok(Err(e)) => {
            shared.metrics.refused(Refused::BadRequest);
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => shared.metrics.refused(Refused::HandshakeTimeout),
    }
}

/// One socket (plain or TLS): read its request, then upgrade it, publish, or refuse it.
/// `started` is its accept: the handshake's deadline and its measured duration count from it.
async fn handle_socket<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    pending: Pending,
    started: Instant,
    shared: Arc<Shared>,
) {
    let deadline =
        tokio::time::Instant::from_std(started) + shared.config.broker.limits.handshake_timeout();
    let head = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout_at(deadline, handshake::read_head(&mut stream)) => r,
    };
    let req = match head {
        Ok(Ok(req)) => req,
        Ok(Err(HeadError::Closed | HeadError::Io(_))) => return,
        Ok(Err(e @ HeadError::TooLarge)) => {
            shared.metrics.refused(Refused::BadRequest);
            let _ = handshake::respond_error(&mut stream, 431, &e.to_string()).await;
            return;
        }
        Ok(Err(e)) => {
            shared.metrics.refused(Refused::BadRequest);
            let _ = handshake::respond_error(&mut stream, 400, &e.to_string()).await;
            return;
        }
        Err(_) => {
            shared.metrics.refused(Refused::HandshakeTimeout);
            let _ = handshake::respond_error(&mut stream, 408, "request head not received in time")
                .await;
            return;
        }
    };
    if req.is_websocket_upgrade() {
        // The handshake is over: what is left (the answer) does not wait on the client.
        drop(pending);
        upgrade(stream, peer, req, shared, started).await;
    } else {
        crate::publish::serve(stream, req, pending, shared).await;
    }
}

/// Decides whether `req` may upgrade, and as whom.
fn admit(req: &Request, shared: &Shared) -> Result<Admission, Refusal> {
    let origin = req.header("origin");
    let publisher = match (
        req.header("users-api-key"),
        &shared.config.websocket.socket_api_key,
    ) {
        (None, _) => false,
        (Some(given), Some(key)) if handshake::secret_eq(given, key.as_bytes()) => true,
        (Some(_), _) => return Err(Refusal::new(403, Refused::ApiKey, "wrong users-api-key")),
    };
    if !publisher {
        match origin {
            None => {
                return Err(Refusal::new(
                    403,
                    Refused::NoOrigin,
                    "an Origin header is required",
                ))
            }
            Some(o) if !shared.origin.is_approved(o) => {
                return Err(Refusal::new(403, Refused::Origin, "origin not approved"))
            }
            Some(_) => {}
        }
    }
    let token = req
        .query("token")
        .or_else(|| req.bearer().map(str::to_string));
    let user = match token {
        None => None,
        Some(t) => Some(
            shared
                .tokens
                .verify(&t)
                .map_err(|why| Refusal::new(401, Refused::Token, why))?,
        ),
    };
    let resume = req.resume();
    Ok(Admission {
        publisher,
        user,
        origin: origin.map(|o| String::from_utf8_lossy(o).into()),
        resume,
    })
}

async fn upgrade<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    req: Request,
    shared: Arc<Shared>,
    started: Instant,
) {
    let m = &shared.metrics;
    let refuse =
        |status: u16, reason: Refused, message: String| Refusal::new(status, reason, message);
    let accept_key = req.websocket_accept();
    let admitted = accept_key
        .map_err(|why| refuse(400, Refused::BadRequest, why.into()))
        .and_then(|key| admit(&req, &shared).map(|a| (key, a)));
    let (accept_key, admission) = match admitted {
        Ok(ok) => ok,
        Err(r) => {
            m.refused(r.reason);
            tracing::info!(peer = %peer, origin = req.header_str("origin").unwrap_or("-"), reason = r.reason.label(), "refused: {}", r.message);
            let _ = handshake::respond_error(&mut stream, r.status, &r.message).await;
            m.handshake_duration
                .observe(started.elapsed().as_secs_f64());
            return;
        }
    };
    let ip = req.client_ip(peer, &shared.config.broker.limits.trusted_proxies);
    let slot: Slot = match shared.gate.connection(ip, admission.publisher) {
        Ok(slot) => slot,
        Err(closed) => {
            m.refused(closed.refused());
            let (status, message) = match closed {
                crate::gate::Closed::PerAddress => (429, "too many connections from this address"),
                _ => (503, "too many connections"),
            };
            let _ = handshake::respond_error(&mut stream, status, message).await;
            m.handshake_duration
                .observe(started.elapsed().as_secs_f64());
            return;
        }
    };
    if handshake::write_switching(&mut stream, &accept_key)
        .await
        .is_err()
    {
        return;
    }
    let ws_config = if admission.publisher {
        shared.publisher_ws
    } else {
        shared.client_ws
    };
    let ws = WebSocketStream::from_partially_read(
        stream,
        req.rest().to_vec(),
        Role::Server,
        Some(ws_config),
    )
    .await;
    let publisher = admission.publisher;
    let positions = admission.resume != Resume::Off && shared.history.is_some();
    let conn = shared.registry.register(NewConn {
        remote: SocketAddr::new(ip, peer.port()),
        origin: admission.origin,
        user: admission.user,
        publisher,
        positions,
        resuming: positions,
    });
    let resume = admission.resume;
    m.connections_accepted
        .with_label_values(&[kind_label(publisher)])
        .inc();
    m.connections_open
        .with_label_values(&[kind_label(publisher)])
        .inc();
    m.handshake_duration
        .observe(started.elapsed().as_secs_f64());
    shared.events.connected(&conn);
    tracing::debug!(id = %conn.wire_id, peer = %peer, publisher, user = conn.user.as_deref().unwrap_or("-"), "connected");
    // The connection gets a task of its own, sized for serving alone: the handshake's state
    // (request head, TLS set-up, admission) is freed now instead of being carried, unused, for
    // the connection's whole life.
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        if resume != Resume::Off {
            // Boxed: the resume (a JetStream read) is a large future that every connection
            // task would otherwise carry for its whole life, resuming or not.
            Box::pin(shared.resume(&conn, &resume)).await;
        }
        crate::connection::serve(ws, conn, shared).await;
        drop(slot);
    });
}
