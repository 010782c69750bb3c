//! One instance's core, as the tasks above the connections see it: its configuration, the
//! admission checks (origins, tokens, the gate), the router, the admin feed, the stop signals.
//! The accept loop ([`crate::server`]) and the operations side ([`crate::ops`],
//! [`crate::admin`], [`crate::control`], [`crate::fleet`], [`crate::memory`]) take it;
//! connections and the publish API take the smaller [`crate::connection::Env`] and
//! [`crate::publish::Env`], and the cluster's task the router.

use std::sync::Arc;
use std::time::Instant;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, Recent};
use crate::auth::TokenVerifier;
use crate::config::Config;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::registry::Registry;
use crate::router::Router;
use crate::shutdown::Shutdown;

pub struct Shared {
    pub config: Config,
    pub origin: Arc<OriginPolicy>,
    pub tokens: TokenVerifier,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// Connects and disconnects, for the admin API's live stream.
    pub activity: Arc<Activity>,
    /// The last minutes of this instance's stats, for charts.
    pub recent: Recent,
    /// Set when `ssl` is on: the WebSocket port serves `wss://` only.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Readiness, draining, and the stop signals every task watches.
    pub shutdown: Shutdown,
    pub started: Instant,
    /// Pending handshakes, connection slots, per-address counts.
    pub gate: Arc<Gate>,
    pub client_ws: WebSocketConfig,
    pub publisher_ws: WebSocketConfig,
    /// What every connection's task works with.
    pub connection_env: Arc<crate::connection::Env>,
    /// What the publish API works with.
    pub publish_env: Arc<crate::publish::Env>,
    /// Every task of the broker (listeners, handshakes, connections), waited for at shutdown.
    pub(crate) tasks: TaskTracker,
}

impl Shared {
    /// Every task of the broker, waited for at shutdown: spawn on it, never bare.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn registry(&self) -> &Registry {
        &self.router.registry
    }

    pub fn is_ready(&self) -> bool {
        self.shutdown.is_ready()
    }

    /// Drains this instance (see [`Shutdown::drain`]) over `broker.drainWindow`.
    pub async fn drain(&self) {
        let window = std::time::Duration::from_secs_f64(self.config.broker.drain_window);
        self.shutdown
            .drain(
                self.registry(),
                window,
                self.config.broker.limits.close_grace(),
            )
            .await;
    }
}
