//! How an instance stops, one path for every cause. A drain (`POST /admin/v1/drain`, a fleet
//! drain, SIGTERM through [`crate::app::RunningBroker::drain_and_shutdown`]) stops readiness and
//! accepting, then asks each connection to close with 1001, spread over the drain window, then
//! ends. A shutdown ends at once: every connection still open is asked to close (its queued
//! frames first, within the close grace). Either way each connection ends through its own
//! close request ([`crate::registry::Conn::request_close`]), the same path a kick takes, and
//! every task watches [`Shutdown::cancelled`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::registry::{CloseReason, CloseRequest, Registry};

/// The instance's stop signals and readiness.
pub struct Shutdown {
    /// Cancelled when every task is to stop.
    token: CancellationToken,
    /// Cancelled when the listener is to stop accepting (drain, then shutdown).
    stop_accepting: CancellationToken,
    ready: AtomicBool,
    draining: AtomicBool,
    /// `broker_ready`.
    ready_gauge: IntGauge,
}

impl Shutdown {
    pub fn new(ready_gauge: IntGauge) -> Shutdown {
        let token = CancellationToken::new();
        ready_gauge.set(1);
        Shutdown {
            stop_accepting: token.child_token(),
            token,
            ready: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            ready_gauge,
        }
    }

    /// A token that is cancelled at shutdown, for tasks that keep their own handle.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the listener is to stop accepting.
    pub fn accepting_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop_accepting.cancelled()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// `/readyz` fails from now on.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.ready_gauge.set(0);
    }

    /// Ends at once: not ready, and every task is told to stop (see
    /// [`close_everyone_at_shutdown`]).
    pub fn shut_down(&self) {
        self.set_not_ready();
        self.token.cancel();
    }

    /// Drains: not ready, stops accepting, closes the connections of `registry` with 1001
    /// spread over `window` (so that they do not all reconnect elsewhere at once; each has
    /// until the end of the window plus `grace` to take what was queued for it), then shuts
    /// down. Calling it again while a drain runs does nothing.
    pub async fn drain(&self, registry: &Registry, window: Duration, grace: Duration) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.set_not_ready();
        self.stop_accepting.cancel();
        let conns = registry.snapshot();
        tracing::info!(
            connections = conns.len(),
            window_secs = window.as_secs_f64(),
            "draining"
        );
        let start = tokio::time::Instant::now();
        let deadline = start + window + grace;
        let n = conns.len().max(1) as u32;
        for (i, conn) in conns.iter().enumerate() {
            tokio::time::sleep_until(start + window * i as u32 / n).await;
            conn.request_close(
                CloseRequest::new(CloseReason::Shutdown, 1001, "server draining: reconnect")
                    .by(deadline),
            );
        }
        self.token.cancel();
    }
}

/// At shutdown, every connection still open is asked to close, with `grace` to take its
/// queued frames. Each connection's task then waits on nothing shared, so a wake-up never
/// touches a lock that every connection uses.
pub async fn close_everyone_at_shutdown(shutdown: &Shutdown, registry: &Registry, grace: Duration) {
    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + grace;
    for conn in registry.snapshot() {
        conn.request_close(CloseRequest::shutdown().by(deadline));
    }
}
