//! One session: one ops URL and token, from the first call until the operator disconnects.
//!
//! 1. `GET .../stats` proves the URL and the token (401 stops the session: retrying a bad
//!    token only fills the broker's log, the operator has to fix it);
//! 2. then three loops run side by side until one fails: the live feed ([`super::stream`]),
//!    the connection list ([`super::sync`]) and the fleet's instances ([`super::fleet`]);
//! 3. when the broker goes away the session retries with exponential backoff (1 s doubling to
//!    30 s) and reports each wait, so the UI can say what it is doing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use admin_api::ListFilter;

use super::http::{ApiError, Endpoint};
use super::{fleet, stream, sync, LinkStatus, Outbox, RangeQuery, Update};

/// What the session's loops tell each other.
#[derive(Default)]
pub(super) struct SessionControl {
    /// The stream lost messages: walk the whole list again now.
    pub lagged: Notify,
    /// The fleet changed where the stream cannot see (an instance came or went, or another
    /// instance's clients connected or left): walk the list again soon.
    pub fleet_changed: Notify,
    /// The instance whose connects and disconnects the stream reports.
    streamed: Mutex<Option<String>>,
}

impl SessionControl {
    pub fn set_streamed(&self, instance: &str) {
        if let Ok(mut s) = self.streamed.lock() {
            if s.as_deref() != Some(instance) {
                *s = Some(instance.to_string());
            }
        }
    }

    pub fn streamed(&self) -> Option<String> {
        self.streamed.lock().ok().and_then(|s| s.clone())
    }
}

/// The inputs of a session the UI may change while it runs.
pub(super) struct SessionInputs {
    pub filter: watch::Receiver<ListFilter>,
    pub watch: watch::Receiver<Vec<RangeQuery>>,
    pub retry_now: Arc<Notify>,
}

/// Seconds to wait before retry `attempt` (1-based): 1, 2, 4, 8, 16, then 30.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

pub(super) async fn run_session(ep: Arc<Endpoint>, mut inputs: SessionInputs, out: Outbox) {
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
                live(&ep, &mut inputs, &out).await
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
            () = inputs.retry_now.notified() => {}
        }
    }
}

/// Runs the live feed, the list resync and the fleet poll side by side until one fails.
async fn live(ep: &Endpoint, inputs: &mut SessionInputs, out: &Outbox) -> ApiError {
    let ctl = SessionControl::default();
    let feed = async {
        match ep.open_stream().await {
            Ok(response) => {
                out.status(LinkStatus::Live {
                    url: ep.base.clone(),
                    streaming: true,
                });
                stream::read_stream(response, out, &ctl).await
            }
            Err(ApiError::Status { status: 404, .. }) => {
                out.status(LinkStatus::Live {
                    url: ep.base.clone(),
                    streaming: false,
                });
                stream::poll_stats(ep, out).await
            }
            Err(e) => e,
        }
    };
    tokio::select! {
        e = feed => e,
        e = sync::run(ep, &mut inputs.filter, &inputs.watch, &ctl, out) => e,
        e = fleet::run(ep, &ctl, out) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
