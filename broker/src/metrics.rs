//! Prometheus metrics. The names, types and labels are listed in `docs/METRICS.md`; the
//! dashboards and alert rules depend on them, and a test checks that they agree.
//!
//! Every label has a small fixed set of values, so the series count never depends on traffic.
//! Counters on the per-message path are bumped once per batch, not once per frame.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::event::{ErrorReason, EventType, TYPE_LABELS};
use crate::registry::CloseReason;

/// Why a connection was refused before (or instead of) the upgrade: the `reason` label of
/// `broker_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoOrigin,
    Origin,
    ApiKey,
    Token,
    Limit,
    PerAddress,
    PendingLimit,
    PendingPerAddress,
    HandshakeTimeout,
    BadRequest,
}

impl Refused {
    pub const ALL: [Refused; 10] = [
        Refused::NoOrigin,
        Refused::Origin,
        Refused::ApiKey,
        Refused::Token,
        Refused::Limit,
        Refused::PerAddress,
        Refused::PendingLimit,
        Refused::PendingPerAddress,
        Refused::HandshakeTimeout,
        Refused::BadRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::NoOrigin => "no_origin",
            Refused::Origin => "origin",
            Refused::ApiKey => "api_key",
            Refused::Token => "token",
            Refused::Limit => "limit",
            Refused::PerAddress => "per_address",
            Refused::PendingLimit => "pending_limit",
            Refused::PendingPerAddress => "pending_per_address",
            Refused::HandshakeTimeout => "handshake_timeout",
            Refused::BadRequest => "bad_request",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub up_seconds: IntGauge,
    pub ready: IntGauge,
    pub connections_open: IntGaugeVec,
    pub connections_accepted: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub events: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub slow_consumer_disconnects: IntCounter,
    pub close_resets: IntCounter,
    pub send_queue_depth: Histogram,
    pub fanout_duration: Histogram,
    pub fanout_recipients: Histogram,
    pub handshake_duration: Histogram,
    pub publish_requests: IntCounterVec,
    pub admin_requests: IntCounterVec,
    pub cluster_connected: IntGauge,
    pub cluster_messages: IntCounterVec,
    pub history_events: IntGauge,
    pub history_bytes: IntGauge,
    pub history_oldest_seconds: IntGauge,
    pub resumes: IntCounterVec,
    /// `messages_received` for `client` and `publisher`, looked up once.
    pub received_by_kind: [IntCounter; 2],
    /// `events` in [`TYPE_LABELS`] order, looked up once.
    events_by_type: Vec<IntCounter>,
    /// `connections_refused` in [`Refused::ALL`] order, looked up once.
    refused_by_reason: Vec<IntCounter>,
    /// `connections_closed` in [`CloseReason::ALL`] order, looked up once.
    closed_by_reason: Vec<IntCounter>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    // Pre-create every series so dashboards see zeros, not gaps.
    for v in values {
        c.with_label_values(&[v]);
    }
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "broker_build_info",
                "The running broker version (always 1).",
            ),
            &["version"],
        )
        .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(info)).expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");

        let connections_open = IntGaugeVec::new(
            Opts::new("broker_connections_open", "Connections open now, by kind."),
            &["kind"],
        )
        .expect("valid metric");
        for k in ["client", "publisher"] {
            connections_open.with_label_values(&[k]);
        }
        r.register(Box::new(connections_open.clone()))
            .expect("unique metric");
        let latency = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let kinds = ["client", "publisher"];
        let error_labels: Vec<&str> = ErrorReason::ALL.iter().map(|r| r.label()).collect();
        let messages_received = counter_vec(
            &r,
            "broker_messages_received_total",
            "Frames received from connections, by kind.",
            "kind",
            &kinds,
        );
        let events = counter_vec(
            &r,
            "broker_events_total",
            "Events accepted for delivery, by type.",
            "type",
            &TYPE_LABELS,
        );
        let connections_refused = counter_vec(
            &r,
            "broker_connections_refused_total",
            "Upgrades refused before any upgrade, by reason.",
            "reason",
            &Refused::ALL.map(Refused::label),
        );
        let connections_closed = counter_vec(
            &r,
            "broker_connections_closed_total",
            "Connections ended, by reason.",
            "reason",
            &CloseReason::ALL.map(CloseReason::label),
        );
        Metrics {
            received_by_kind: [
                messages_received.with_label_values(&["client"]),
                messages_received.with_label_values(&["publisher"]),
            ],
            events_by_type: TYPE_LABELS
                .iter()
                .map(|t| events.with_label_values(&[t]))
                .collect(),
            messages_received,
            events,
            up_seconds: gauge(&r, "broker_up_seconds", "Seconds since the broker started."),
            ready: gauge(
                &r,
                "broker_ready",
                "1 while accepting connections, 0 while draining or stopping.",
            ),
            connections_open,
            connections_accepted: counter_vec(
                &r,
                "broker_connections_accepted_total",
                "Upgrades accepted, by kind.",
                "kind",
                &kinds,
            ),
            refused_by_reason: Refused::ALL
                .iter()
                .map(|r| connections_refused.with_label_values(&[r.label()]))
                .collect(),
            closed_by_reason: CloseReason::ALL
                .iter()
                .map(|r| connections_closed.with_label_values(&[r.label()]))
                .collect(),
            connections_refused,
            connections_closed,
            messages_sent: counter(
                &r,
                "broker_messages_sent_total",
                "Frames written to connections.",
            ),
            bytes_received: counter(&r, "broker_bytes_received_total", "Payload bytes received."),
            bytes_sent: counter(&r, "broker_bytes_sent_total", "Payload bytes written."),
            decode_errors: counter_vec(
                &r,
                "broker_decode_errors_total",
                "Bad messages answered with an error event, by reason.",
                "reason",
                &error_labels,
            ),
            slow_consumer_disconnects: counter(
                &r,
                "broker_slow_consumer_disconnects_total",
                "Connections closed because they read too slowly (queue over its bytes, or not drained in time).",
            ),
            close_resets: counter(
                &r,
                "broker_close_resets_total",
                "Closing connections whose TCP connection was reset: they could not take their last frames and close frame within the deadline.",
            ),
            send_queue_depth: histogram(
                &r,
                "broker_send_queue_depth",
                "Frames waiting in a connection's queue when its writer wakes.",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ],
            ),
            fanout_duration: histogram(
                &r,
                "broker_fanout_duration_seconds",
                "Time to hand one event to every recipient (its queue, or a non-blocking write to an idle listener's socket; a batch's time shared among its events).",
                latency.clone(),
            ),
            fanout_recipients: histogram(
                &r,
                "broker_fanout_recipients",
                "Recipients per delivered event.",
                vec![0.0, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0],
            ),
            handshake_duration: histogram(
                &r,
                "broker_handshake_duration_seconds",
                "From accept to upgrade complete or refused.",
                latency,
            ),
            publish_requests: counter_vec(
                &r,
                "broker_publish_requests_total",
                "POST /api/publish answers, by status.",
                "status",
                &["202", "400", "401", "403", "411", "413"],
            ),
            admin_requests: counter_vec(
                &r,
                "broker_admin_requests_total",
                "Admin API answers, by status.",
                "status",
                &["200", "202", "400", "401", "404"],
            ),
            cluster_connected: gauge(&r, "broker_cluster_connected", "1 while connected to NATS."),
            history_events: gauge(
                &r,
                "broker_history_events",
                "Events kept for resuming clients (this instance's memory history).",
            ),
            history_bytes: gauge(
                &r,
                "broker_history_bytes",
                "Bytes charged to the memory history (frames plus 64 bytes each).",
            ),
            history_oldest_seconds: gauge(
                &r,
                "broker_history_oldest_seconds",
                "Age of the oldest event in the memory history.",
            ),
            resumes: counter_vec(
                &r,
                "broker_resumes_total",
                "Connections that asked for positions, by result: complete (everything missed was replayed, or nothing was asked), incomplete (the position could not be resumed from).",
                "result",
                &["complete", "incomplete"],
            ),
            cluster_messages: counter_vec(
                &r,
                "broker_cluster_messages_total",
                "Events exchanged with other instances.",
                "direction",
                &["out", "in", "dropped"],
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// `ALL` lists each enum in declaration order, so a variant's number is its index.
    pub fn refused(&self, reason: Refused) {
        if let Some(c) = self.refused_by_reason.get(reason as usize) {
            c.inc();
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        if let Some(c) = self.closed_by_reason.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts one accepted event of type `t`.
    pub fn event(&self, t: EventType) {
        if let Some(c) = self.events_by_type.get(t.label_index()) {
            c.inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Which `kind` label a connection has.
pub fn kind_label(publisher: bool) -> &'static str {
    if publisher {
        "publisher"
    } else {
        "client"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row of `docs/METRICS.md` that documents `metric`.
    fn documented(metric: &str) -> &'static str {
        include_str!("../../docs/METRICS.md")
            .lines()
            .find(|l| l.starts_with(&format!("| `{metric}`")))
            .unwrap_or_else(|| panic!("{metric} is not in docs/METRICS.md"))
    }

    #[test]
    fn all_lists_each_enum_in_declaration_order() {
        for (i, r) in Refused::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn every_reason_and_type_label_is_exported_and_documented() {
        let m = Metrics::new();
        let text = m.render();
        let refused = documented("broker_connections_refused_total");
        for r in Refused::ALL {
            assert!(refused.contains(&format!("`{}`", r.label())), "{r:?}");
            m.refused(r);
            let series = format!(
                "broker_connections_refused_total{{reason=\"{}\"}} 1",
                r.label()
            );
            assert!(m.render().contains(&series), "{series}");
        }
        let closed = documented("broker_connections_closed_total");
        for r in CloseReason::ALL {
            assert!(closed.contains(&format!("`{}`", r.label())), "{r:?}");
            assert!(text.contains(&format!("reason=\"{}\"", r.label())), "{r:?}");
        }
        m.event(EventType::Int(42));
        m.event(EventType::ECHO);
        let text = m.render();
        assert!(
            text.contains("broker_events_total{type=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("broker_events_total{type=\"echo\"} 1"),
            "{text}"
        );
    }
}
