//! What the admin API shows of connections: one connection as `ConnectionInfo`, and the live
//! feed of connects and disconnects its stream serves (formatted only while someone listens),
//! and the last minutes of the instance's stats.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use admin_api::{ConnectionInfo, StatsHistory, StatsSample, StreamMessage};
use tokio::sync::broadcast;

use crate::registry::{CloseReason, Conn};

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

    pub fn publish(&self, message: impl FnOnce() -> StreamMessage) {
        if self.tx.receiver_count() > 0 {
            match serde_json::to_string(&message()) {
                Ok(line) => {
                    let _ = self.tx.send(line.into());
                }
                Err(e) => tracing::error!(error = %e, "admin stream message did not serialise"),
            }
        }
    }

    pub fn connected(&self, conn: &Conn) {
        self.publish(|| StreamMessage::Connect {
            connection: connection_info(conn),
        });
    }

    pub fn disconnected(&self, conn: &Conn, reason: CloseReason) {
        self.publish(|| StreamMessage::Disconnect {
            id: conn.wire_id.to_string(),
            reason: reason.label().into(),
        });
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// One connection as the admin API shows it.
pub fn connection_info(c: &Conn) -> ConnectionInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let since = c
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ConnectionInfo {
        id: c.wire_id.to_string(),
        instance: admin_api::id_instance(&c.wire_id).to_owned(),
        remote_addr: c.remote.to_string(),
        origin: c.origin.as_deref().map(str::to_owned),
        user: c.user.as_deref().map(str::to_owned),
        publisher: c.publisher,
        connected_at: since,
        messages_in: c.counters.messages_in.load(Relaxed),
        messages_out: c.counters.messages_out.load(Relaxed),
        bytes_in: c.counters.bytes_in.load(Relaxed),
        bytes_out: c.counters.bytes_out.load(Relaxed),
        send_queue_depth: c.queue_depth() as u64,
        send_queue_bytes: c.outbox.bytes() as u64,
        closing: c.close_request().map(|r| r.reason.label().to_owned()),
        shard: c.shard as u64,
    }
}

/// How many one-second samples [`Recent`] keeps: ten minutes.
pub const RECENT_SAMPLES: usize = 600;

/// The last minutes of this instance's stats, one sample a second, so that a chart opened now
/// shows the minutes before it.
#[derive(Default)]
pub struct Recent {
    samples: Mutex<VecDeque<StatsSample>>,
}

impl Recent {
    pub fn history(&self, instance: &str) -> StatsHistory {
        StatsHistory {
            instance: instance.to_string(),
            samples: self.lock().iter().copied().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<StatsSample>> {
        // Samples are plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, sample: StatsSample) {
        let mut samples = self.lock();
        if samples.len() == RECENT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}
