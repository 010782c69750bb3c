//! The whole broker: [`start`] builds one instance (its router, cluster link, listeners and
//! tasks) and [`RunningBroker`] stops it. The top of the stack: nothing imports this module.
//!
//! Every task is spawned on one tracker and watches one shutdown signal, so stopping is one
//! code path ([`crate::shutdown`]): cancel, then wait for the tracked tasks to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, Recent};
use crate::auth::TokenVerifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::gate::{Gate, GateLimits};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::Router;
use crate::server::{listen, ws_config};
use crate::shared::Shared;
use crate::shutdown::Shutdown;

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
        self.shared.shutdown.shut_down();
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
    let tls = config.tls_acceptor()?;
    let ops_tls = config.ops_tls_acceptor()?;
    let origin = config.origin_policy()?;
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
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new(metrics.ready.clone());
    let tasks = TaskTracker::new();
    let registry = Arc::new(Registry::new(
        &instance,
        config.shard_count(),
        limits.send_queue_bytes,
    ));
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
    let fleet = Arc::new(Fleet::new(
        registry.instance(),
        cluster.as_ref().map(Cluster::prefix),
    ));
    let router = Arc::new(Router::new(
        &config,
        registry.clone(),
        cluster,
        metrics.clone(),
        shutdown.token(),
        tasks.clone(),
    ));
    let activity = Arc::new(Activity::new());
    let connection_env = Arc::new(crate::connection::Env {
        router: router.clone(),
        activity: activity.clone(),
        limits: limits.clone(),
        client_broadcast: config.broker.client_broadcast,
        shutdown: shutdown.token(),
    });
    let publish_env = Arc::new(crate::publish::Env {
        router: router.clone(),
        api_key: config.websocket.socket_api_key.clone(),
        limits: limits.clone(),
        shutdown: shutdown.token(),
    });
    let shared = Arc::new(Shared {
        recent: Recent::default(),
        tls,
        router: router.clone(),
        tokens: TokenVerifier::new(config.broker.jwt_secret.as_deref()),
        metrics,
        activity,
        shutdown,
        started: Instant::now(),
        gate: Gate::new(&GateLimits {
            max_pending: limits.max_pending_handshakes,
            max_pending_per_address: limits.max_pending_handshakes_per_address,
            max_connections: limits.max_connections,
            publisher_reserve: limits.publisher_reserve(),
            max_per_address: limits.per_address(),
        }),
        client_ws: ws_config(limits.max_message_size, limits.read_buffer_bytes),
        // Publishers are few and send in bulk: fewer, larger reads.
        publisher_ws: ws_config(limits.max_publisher_message_size, 16 * 1024),
        connection_env,
        publish_env,
        tasks,
        origin,
        config,
    });

    let tracker = shared.tasks.clone();
    tracker.spawn(crate::server::accept_loop(listener, shared.clone()));
    tracker.spawn({
        let shared = shared.clone();
        async move {
            let grace = shared.config.broker.limits.close_grace();
            crate::shutdown::close_everyone_at_shutdown(&shared.shutdown, shared.registry(), grace)
                .await;
        }
    });
    tracker.spawn(crate::ops::serve(
        ops_listener,
        ops_tls,
        shared.clone(),
        fleet.clone(),
    ));
    tracker.spawn(crate::memory::trim_after_spikes(shared.clone()));
    tracker.spawn(crate::control::sample_every_second(shared.clone()));
    if let Some(task) = cluster_task {
        tracker.spawn(crate::cluster::run(task, router.clone()));
        tracker.spawn(crate::fleet::run(fleet, shared.clone()));
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
