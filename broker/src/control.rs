//! What an operator can do to this instance, whoever asks: list, stats, kick, drain, and the
//! last minutes of stats. The admin API's HTTP routes ([`crate::admin`]) and the fleet's NATS
//! requests ([`crate::fleet`]) both call these; neither transport has logic of its own.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admin_api::{
    Access, ConnectionPage, DrainResponse, KickQuery, KickResponse, ListQuery, OpenConnections,
    Stats, StatsSample, Totals,
};

use crate::activity::connection_info;
use crate::event;
use crate::event::TYPE_LABELS;
use crate::metrics::Refused;
use crate::registry::{CloseReason, CloseRequest};
use crate::shared::Shared;

/// A call that cannot be done: the HTTP status and the words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// The instance's state and totals, as a caller with `access` sees them.
pub fn stats(shared: &Shared, access: Access) -> Stats {
    let counts = shared.registry().counts();
    Stats {
        api_version: admin_api::VERSION,
        access,
        instance: shared.registry().instance().to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: shared.started.elapsed().as_secs(),
        ready: shared.is_ready(),
        connections: OpenConnections {
            clients: counts.clients as u64,
            publishers: counts.publishers as u64,
        },
        totals: totals(shared),
    }
}

fn totals(shared: &Shared) -> Totals {
    let m = &shared.metrics;
    let sum = |v: &prometheus::IntCounterVec, labels: &[&str]| -> u64 {
        labels.iter().map(|l| v.with_label_values(&[l]).get()).sum()
    };
    Totals {
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
    }
}

/// One page of this instance's connections that match `q`, in id order: after the cursor
/// `q.after`, then skipping `q.offset`. `total` counts every match, cursor or not.
pub fn list(shared: &Shared, q: &ListQuery) -> ConnectionPage {
    let filter = q.filter();
    let limit = q.limit();
    let mut total = 0u64;
    let mut skipped = 0u64;
    let mut connections = Vec::new();
    // The snapshot is in this instance's id order, which is `id_key` order within one node.
    for c in shared.registry().snapshot() {
        // The address is formatted only when a filter reads it: a list walks every connection.
        let remote = if filter.remote.is_empty() {
            String::new()
        } else {
            c.remote.to_string()
        };
        if !filter.matches_fields(
            &c.wire_id,
            c.origin.as_deref(),
            c.user.as_deref(),
            &remote,
            c.publisher,
        ) {
            continue;
        }
        total += 1;
        if !q.is_after_cursor(&c.wire_id) {
            continue;
        }
        if skipped < q.offset {
            skipped += 1;
            continue;
        }
        if (connections.len() as u64) < limit {
            connections.push(connection_info(&c));
        }
    }
    ConnectionPage {
        total,
        offset: q.offset,
        limit,
        connections,
    }
}

/// Closes connection `id` of this instance with the code and reason of `q`. Frames still
/// queued for it are dropped (the answer says how many), the one being written is finished,
/// then the close frame.
pub fn kick(shared: &Shared, id: &str, q: &KickQuery, who: &str) -> Result<KickResponse, Refusal> {
    let code = q.code.unwrap_or(admin_api::DEFAULT_KICK_CODE);
    if !admin_api::kick_code_allowed(code) {
        return Err(Refusal::new(400, admin_api::KICK_CODE_RULE));
    }
    let Some(conn) = shared.registry().get_wire(id) else {
        return Err(Refusal::new(
            404,
            format!(
                "no connection {id} on instance {}",
                shared.registry().instance()
            ),
        ));
    };
    let reason = admin_api::cut_close_reason(
        q.reason
            .clone()
            .unwrap_or_else(|| "kicked by an operator".into()),
    );
    let discarded =
        conn.request_close(CloseRequest::new(CloseReason::Kicked, code, reason.clone()));
    tracing::info!(who, action = "kick", id, code, reason = %reason, discarded, "admin kicked a connection");
    Ok(KickResponse {
        kicked: id.to_string(),
        discarded: discarded.unwrap_or(0) as u64,
        already_closing: discarded.is_none(),
    })
}

/// Starts draining this instance (in the background: the answer does not wait for it).
pub fn drain(shared: &Arc<Shared>, who: &str) -> DrainResponse {
    tracing::info!(who, action = "drain", "admin asked this instance to drain");
    let s = shared.clone();
    // Tracked, and cut short by a shutdown (which closes what is left at once).
    shared.tasks().spawn(async move {
        tokio::select! {
            () = s.drain() => {}
            () = s.shutdown.cancelled() => {}
        }
    });
    DrainResponse { draining: true }
}

/// Takes one sample a second into `shared.recent` until shutdown.
pub async fn sample_every_second(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = stats(&shared, Access::Admin);
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        shared.recent.push(StatsSample {
            at_ms,
            connections: s.connections,
            totals: s.totals,
        });
    }
}
