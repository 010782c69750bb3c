//! The result of a run: one structure that is printed for people, serialized for `--json`, and
//! drawn by the report. Field names carry their unit (`_ms`, `_s`, `_per_s`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::context::{Outcome, RunCtx, StopReason};
use crate::progress::si;
use crate::stats::{Percentiles, Stats, Window};

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub run_id: String,
    pub url: String,
    /// The address the URL resolved to (every connection went there).
    pub target_addr: String,
    /// Whole run, ramp and drain included.
    pub elapsed_s: f64,
    /// The measured phase (after the ramp): what the rates are computed over.
    pub measured_s: f64,
    pub stopped_by: StopReason,
    pub connections: ConnectionSummary,
    pub messages: MessageSummary,
    /// Fan-out scenarios: receipts counted per sequence number and listener.
    pub delivery: Option<DeliverySummary>,
    /// By measure: `handshake`, `rtt`, `delivery`, `publish_request`, `broadcast`.
    pub latency: BTreeMap<String, LatencySummary>,
    /// Errors other than connection failures, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Soak: how latency and rates moved from the first to the last full window.
    pub drift: Option<Drift>,
    pub notes: Vec<String>,
    pub windows: Vec<Window>,
    /// Mixed: each phase's runs.
    pub phases: Vec<PhaseSummary>,
    /// `--server-pid`: the server's CPU time and memory per phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::server::ServerSummary>,
    /// `failover`: what the disruption cost the listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSummary>,
    /// Thresholds and the built-in failure rule: pass or fail (the binary exits 1 on fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
    /// `--workers`: the histograms, V2-serialised and base64-encoded, on their way from a worker
    /// to the parent (which merges them exactly); empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hdr: BTreeMap<String, String>,
    /// Full histograms for the report's plots (not serialized).
    #[serde(skip)]
    pub histograms: Vec<(String, Histogram<u64>)>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ConnectionSummary {
    /// Connections the scenario asked for.
    pub target: usize,
    /// Successful upgrades (reconnects included).
    pub established: u64,
    /// Failed attempts, by reason in `failures`.
    pub failed: u64,
    /// `refused_403`, `timeout`, `tcp_refused`, `ports_exhausted`, `fd_limit`, `http_NNN`, ...
    pub failures: BTreeMap<String, u64>,
    /// Established connections that the server or network ended before the run did.
    pub dropped: u64,
    /// By close code or error: `close_1008`, `close_1013`, `reset`, `eof`, ...
    pub drops: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Mixed: of `established`, connections taken over open from the phase before (no
    /// handshake, not ramped).
    #[serde(default)]
    pub reused: u64,
    pub peak_open: i64,
    /// Time until every connection of the ramp had succeeded or failed.
    pub ramp_s: f64,
    /// Established connections per second during the ramp (those carried over not counted).
    pub ramp_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MessageSummary {
    /// Messages (or published events) written by the tool.
    pub sent: u64,
    /// Probe messages received back (echo replies, deliveries).
    pub received: u64,
    pub errors: u64,
    pub sent_per_s: f64,
    pub received_per_s: f64,
}

/// Exact delivery accounting for fan-out scenarios.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DeliverySummary {
    /// Listeners connected when sending started (the completeness denominator uses these).
    pub listeners: usize,
    pub publishers: usize,
    /// Events whose write (or 202 answer) succeeded.
    pub sent: u64,
    /// `sent × listeners`.
    pub expected: u64,
    /// Distinct (listener, sequence) receipts of sent events.
    pub received: u64,
    /// Receipts of a sequence a listener had already seen.
    pub duplicates: u64,
    /// `expected − received`.
    pub missing: u64,
    /// `received / expected`; 1.0 means every listener got every event exactly once or more.
    pub completeness: f64,
    /// Listeners that received every sent event.
    pub complete_listeners: usize,
    /// Probes of other runs seen by the listeners (ignored).
    pub foreign: u64,
    /// `--mix` with user events: receipts of an event meant for another user (a routing error).
    #[serde(default)]
    pub misdelivered: u64,
    /// `--pause-share`: the paused and the steady listeners apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSummary>,
}

/// Slow consumers: a share of the listeners stopped reading for a while, then read on.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct PauseSummary {
    /// `--pause-share`.
    pub share: f64,
    /// Listeners chosen to pause (the share of `--listeners`, at least one).
    pub paused_listeners: usize,
    /// `--pause-at`: the pause began this long after sending started.
    pub at_s: f64,
    /// `--pause-for`: how long the paused listeners left their socket unread.
    pub for_s: f64,
    /// `--pause-rcvbuf`: SO_RCVBUF of the paused listeners' sockets (`null`: kernel default).
    pub rcvbuf_bytes: Option<u32>,
    /// The listeners that paused (those that connected).
    pub paused: ListenerGroup,
    /// The listeners that kept reading.
    pub steady: ListenerGroup,
    /// One entry per paused listener, and per steady one that lost events or was ended by the
    /// server; at most 1,000 (paused ones first).
    pub details: Vec<ListenerDetail>,
    /// Entries left out of `details` past that bound.
    pub details_omitted: usize,
}

/// Delivery and endings of one group of listeners (paused or steady).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ListenerGroup {
    /// Listeners of the group that connected.
    pub listeners: usize,
    /// `sent × listeners`.
    pub expected: u64,
    /// Distinct receipts of sent events.
    pub received: u64,
    /// `expected − received`: the events the group lost in all.
    pub missing: u64,
    /// `received / expected`.
    pub completeness: f64,
    /// Listeners that received every sent event.
    pub complete_listeners: usize,
    /// Listeners that missed at least one sent event.
    pub lossy_listeners: usize,
    /// The most events one listener of the group missed.
    pub max_missing: u64,
    /// Listeners the server closed with a close frame, by its code (`"1013"`: slow consumer,
    /// `"1001"`: going away, `"1008"`: policy; `"1005"`: a close frame without a code).
    pub closed_by_server: BTreeMap<String, usize>,
    /// Listeners that ended without a close frame (1006: EOF, reset, a broken frame).
    pub no_close_frame: usize,
    /// The same by how they ended: `eof`, `reset`, `protocol` (e.g. a frame cut short), ...
    pub no_close_frame_by: BTreeMap<String, usize>,
    /// Listeners still open when the run closed them.
    pub open_at_end: usize,
    /// Paused listeners: how fast they caught up after resuming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

/// Time from resuming to having received every event sent before the resume.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct CatchUp {
    /// Paused listeners that reached the end of their pause while the run still went on.
    pub resumed: usize,
    /// Of those, listeners that then received every event sent before they resumed.
    pub caught_up: usize,
    /// Over the listeners that caught up; `null` when none did.
    pub min_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One listener's figures (paused listeners, and steady ones that lost events or were ended).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ListenerDetail {
    /// Listener number (0-based, in ramp order).
    pub index: usize,
    pub paused: bool,
    /// Distinct sent events it received.
    pub received: u64,
    /// Sent events it did not receive.
    pub missing: u64,
    /// How the server or the network ended it (`close_1013`, `eof`, `reset`, `protocol`, ...);
    /// `null` if it was open until the run closed it.
    pub ended: Option<String>,
    /// The close code when it ended with a close frame.
    pub close_code: Option<u16>,
    /// When it ended, in seconds since sending started (when it read the end: a paused
    /// listener sees a close only after it resumes).
    pub ended_at_s: Option<f64>,
    /// When it stopped reading, in seconds since sending started.
    pub paused_at_s: Option<f64>,
    /// Time from resuming to having every event sent before the resume.
    pub catch_up_ms: Option<f64>,
}

/// `failover`: one instance drained or killed mid-run, listeners reconnecting (and resuming).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct FailoverSummary {
    /// `drain`, `sigkill` or `none`.
    pub disrupt: String,
    /// How: `POST http://.../admin/v1/drain`, `SIGTERM to pid N`, `SIGKILL to pid N`.
    pub how: String,
    /// Whether the disruption was carried out (the drain answered 2xx, the signal was sent).
    pub disrupted: bool,
    /// The answer or the error, e.g. `HTTP 202` or `connection refused`.
    pub disrupt_result: String,
    /// Seconds after sending started.
    pub disrupted_at_s: Option<f64>,
    /// Listeners resumed with positions (`?recover=1`, then `?since=`); false: `--no-recover`.
    pub recover: bool,
    /// Listeners that connected.
    pub listeners: usize,
    /// Events whose write by the publisher succeeded.
    pub published: u64,
    /// Events (published or not) that reached at least one listener: the cluster had them.
    pub reached: u64,
    /// Published events that no listener received (lost between the publisher and the
    /// cluster, e.g. written to an instance that was killed).
    pub publish_lost: u64,
    /// Times the publisher connected again after its connection ended.
    pub publisher_reconnects: u64,
    /// Over all listeners: events that reached the cluster and that the listener did not get.
    pub missing: u64,
    /// Listeners that missed at least one event.
    pub missing_listeners: usize,
    /// The most events one listener missed.
    pub max_missing: u64,
    /// Receipts of an event the listener already had.
    pub duplicates: u64,
    pub duplicate_listeners: usize,
    /// First receipts whose position (without positions: sequence number) is below one the
    /// listener already received.
    pub out_of_order: u64,
    pub out_of_order_listeners: usize,
    /// Listeners whose connection ended during the run (closed by the server or broken).
    pub closed_listeners: usize,
    /// How their connections ended, by label (`close_1001`, `eof`, `reset`, ...).
    pub closed_by: BTreeMap<String, u64>,
    /// Listener connections made again after one ended.
    pub reconnects: u64,
    /// Reconnect attempts that failed (each retried after a backoff).
    pub reconnect_failures: u64,
    /// Listeners still without a connection at the end.
    pub not_reconnected: usize,
    /// Recovery notices after a reconnect with `?since=`: `complete: true` and `false`.
    pub recoveries_complete: u64,
    pub recoveries_incomplete: u64,
    /// Reasons of the incomplete ones, by text (at most 10 distinct).
    pub incomplete_reasons: BTreeMap<String, u64>,
    /// Events replayed by complete recoveries, in all.
    pub replayed: u64,
    /// From a listener's connection ending to its recovery notice (without positions: to its
    /// upgrade), backoff included; milliseconds.
    pub reconnect_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// Measured from the intended send time (open loop, coordinated omission corrected).
    pub corrected: bool,
}

/// First against last full window.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Drift {
    pub first_window_p99_ms: Option<f64>,
    pub last_window_p99_ms: Option<f64>,
    /// last / first; above 1 means latency grew over the run.
    pub p99_ratio: Option<f64>,
    pub first_window_received_per_s: f64,
    pub last_window_received_per_s: f64,
    pub errors_first_half: u64,
    pub errors_second_half: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    pub runs: Vec<Summary>,
}

impl Summary {
    /// Builds the summary from a finished run's statistics and the scenario's own outcome.
    pub fn from_run(ctx: &RunCtx, scenario: &str, outcome: Outcome) -> Self {
        let stats = &ctx.stats;
        let measured = outcome.measured.as_secs_f64();
        let per_s = |n: u64| {
            if measured > 0.0 {
                n as f64 / measured
            } else {
                0.0
            }
        };
        let sent = stats.sent.load(Ordering::Relaxed);
        let received = stats.received.load(Ordering::Relaxed);
        let established = stats.established.load(Ordering::Relaxed);
        // Connections carried over from the phase before were not part of the ramp.
        let reused = stats.reused.load(Ordering::Relaxed);

        let (latency, histograms) = latencies(stats);
        let ramp_s = outcome.ramp.as_secs_f64();
        let windows = stats.windows();
        let drift = (scenario == "soak").then(|| Drift::of(&windows));
        Summary {
            scenario: scenario.to_owned(),
            run_id: ctx.run_id.clone(),
            url: ctx.target.url().to_owned(),
            target_addr: ctx.target.addrs(),
            elapsed_s: stats.elapsed().as_secs_f64(),
            measured_s: measured,
            stopped_by: outcome.stopped_by,
            connections: ConnectionSummary {
                target: outcome.target_connections,
                established,
                failed: stats.failed.load(Ordering::Relaxed),
                failures: stats.failures(),
                dropped: stats.dropped.load(Ordering::Relaxed),
                drops: stats.drops(),
                reconnects: stats.reconnects.load(Ordering::Relaxed),
                reused,
                peak_open: stats.peak_open(),
                ramp_s,
                ramp_per_s: if ramp_s > 0.0 {
                    ((established.min(outcome.target_connections as u64)).saturating_sub(reused))
                        as f64
                        / ramp_s
                } else {
                    0.0
                },
            },
            messages: MessageSummary {
                sent,
                received,
                errors: stats.errors.load(Ordering::Relaxed),
                sent_per_s: per_s(sent),
                received_per_s: per_s(received),
            },
            delivery: outcome.delivery,
            latency,
            errors: stats.errors_by_kind(),
            drift,
            notes: outcome.notes,
            windows,
            phases: Vec::new(),
            server: None,
            failover: outcome.failover,
            verdict: None,
            hdr: BTreeMap::new(),
            histograms,
        }
    }

    /// The run's headline latency: the scenario's primary measure, else the handshake.
    pub fn headline_latency(&self) -> Option<(&str, &LatencySummary)> {
        ["delivery", "rtt", "publish_request", "handshake"]
            .into_iter()
            .find_map(|k| self.latency.get_key_value(k).map(|(k, v)| (k.as_str(), v)))
    }
}

/// Histograms by measure name.
type Histograms = Vec<(String, Histogram<u64>)>;

/// Each latency measure that has samples: its percentiles, and its histogram (for `--json`'s
/// `hdr` and the workers' merge).
fn latencies(stats: &Stats) -> (BTreeMap<String, LatencySummary>, Histograms) {
    let mut latency = BTreeMap::new();
    let mut histograms = Vec::new();
    let mut measures = vec![&stats.handshake];
    if stats.primary.name() != stats.handshake.name() {
        measures.push(&stats.primary);
    }
    measures.extend(stats.secondary.as_ref());
    measures.extend(stats.extra.as_ref());
    for m in measures {
        let total = m.total();
        if let Some(p) = Percentiles::of(&total) {
            latency.insert(
                m.name().to_owned(),
                LatencySummary {
                    percentiles: p,
                    corrected: m.corrected(),
                },
            );
            histograms.push((m.name().to_owned(), total));
        }
    }
    (latency, histograms)
}

impl Drift {
    pub(crate) fn of(windows: &[Window]) -> Self {
        // The last window is usually a partial one and the first holds the ramp: take the full
        // windows in between when there are some.
        let full: Vec<&Window> = if windows.len() > 2 {
            windows[1..windows.len() - 1].iter().collect()
        } else {
            windows.iter().collect()
        };
        let first = full.first();
        let last = full.last();
        let p99 = |w: Option<&&Window>| w.and_then(|w| w.latency.map(|p| p.p99_ms));
        let (f, l) = (p99(first), p99(last));
        let half = windows.len() / 2;
        Drift {
            first_window_p99_ms: f,
            last_window_p99_ms: l,
            p99_ratio: match (f, l) {
                (Some(f), Some(l)) if f > 0.0 => Some(l / f),
                _ => None,
            },
            first_window_received_per_s: first.map_or(0.0, |w| w.received_per_s),
            last_window_received_per_s: last.map_or(0.0, |w| w.received_per_s),
            errors_first_half: windows[..half].iter().map(|w| w.errors).sum(),
            errors_second_half: windows[half..].iter().map(|w| w.errors).sum(),
        }
    }
}

pub(crate) fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

/// The human lines of one listener group.
fn write_group(f: &mut fmt::Formatter<'_>, name: &str, g: &ListenerGroup) -> fmt::Result {
    let count_line = |m: &BTreeMap<String, usize>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    writeln!(
        f,
        "    {name:<10} {} listeners, completeness {:.4}%; {} lost events ({} missing in all, at most {} by one)",
        g.listeners,
        g.completeness * 100.0,
        g.lossy_listeners,
        g.missing,
        g.max_missing
    )?;
    writeln!(
        f,
        "               closed by server: {}; no close frame (1006): {}{}; open at end {}",
        count_line(&g.closed_by_server),
        g.no_close_frame,
        if g.no_close_frame > 0 {
            format!(" ({})", count_line(&g.no_close_frame_by))
        } else {
            String::new()
        },
        g.open_at_end
    )?;
    if let Some(c) = &g.catch_up {
        write!(
            f,
            "               caught up after resuming: {} of {} resumed",
            c.caught_up, c.resumed
        )?;
        match (c.min_ms, c.p50_ms, c.max_ms) {
            (Some(min), Some(p50), Some(max)) => {
                writeln!(f, ", min {}, p50 {}, max {}", ms(min), ms(p50), ms(max))?
            }
            _ => writeln!(f)?,
        }
    }
    Ok(())
}

/// The human lines of a failover run.
fn write_failover(f: &mut fmt::Formatter<'_>, fo: &FailoverSummary) -> fmt::Result {
    let at = fo
        .disrupted_at_s
        .map(|t| format!(" at {t:.2} s into sending"))
        .unwrap_or_default();
    writeln!(
        f,
        "  failover     {} ({}: {}){at}; listeners {}",
        fo.disrupt,
        fo.how,
        fo.disrupt_result,
        if fo.recover {
            "resume with positions (?recover=1, then ?since=)"
        } else {
            "reconnect WITHOUT positions (--no-recover)"
        }
    )?;
    writeln!(
        f,
        "    publisher  {} published, {} reached the cluster, {} lost before it; {} reconnects",
        fo.published, fo.reached, fo.publish_lost, fo.publisher_reconnects
    )?;
    let by = if fo.closed_by.is_empty() {
        String::new()
    } else {
        format!(" ({})", map_line(&fo.closed_by))
    };
    writeln!(
        f,
        "    listeners  {}; {} closed{by}, {} reconnects, {} failed attempts, {} not reconnected at the end",
        fo.listeners, fo.closed_listeners, fo.reconnects, fo.reconnect_failures, fo.not_reconnected
    )?;
    writeln!(
        f,
        "    missing    {} (at most {} by one listener; {} listeners affected)",
        fo.missing, fo.max_missing, fo.missing_listeners
    )?;
    writeln!(
        f,
        "    duplicates {} ({} listeners); out of order {} ({} listeners)",
        fo.duplicates, fo.duplicate_listeners, fo.out_of_order, fo.out_of_order_listeners
    )?;
    if fo.recover {
        writeln!(
            f,
            "    recoveries {} complete ({} events replayed), {} incomplete{}",
            fo.recoveries_complete,
            fo.replayed,
            fo.recoveries_incomplete,
            if fo.incomplete_reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", map_line(&fo.incomplete_reasons))
            }
        )?;
    }
    match &fo.reconnect_ms {
        Some(p) => writeln!(
            f,
            "    reconnect  p50 {}, p90 {}, p99 {}, max {} over {} reconnects (close to {})",
            ms(p.p50_ms),
            ms(p.p90_ms),
            ms(p.p99_ms),
            ms(p.max_ms),
            p.count,
            if fo.recover {
                "recovery notice"
            } else {
                "upgrade"
            }
        ),
        None => writeln!(f, "    reconnect  none"),
    }
}

fn map_line(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_body(f)?;
        if let Some(v) = self.verdict.as_ref().filter(|v| !v.checks.is_empty()) {
            let failed = v.failures().count();
            writeln!(
                f,
                "  verdict      {}",
                if v.passed {
                    format!("PASSED ({} checks)", v.checks.len())
                } else {
                    format!("FAILED ({failed} of {} checks)", v.checks.len())
                }
            )?;
            for line in v.to_string().lines() {
                writeln!(f, "               {line}")?;
            }
        }
        Ok(())
    }
}

impl Summary {
    fn fmt_body(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loadtest {}  run {}  {} ({})",
            self.scenario, self.run_id, self.url, self.target_addr
        )?;
        writeln!(
            f,
            "  time         {:.2} s total, {:.2} s measured, stopped: {}",
            self.elapsed_s, self.measured_s, self.stopped_by
        )?;
        if !self.phases.is_empty() {
            for (i, phase) in self.phases.iter().enumerate() {
                writeln!(f, "\n== phase {} `{}` ==", i + 1, phase.name)?;
                for run in &phase.runs {
                    writeln!(f, "{run}")?;
                }
            }
            return Ok(());
        }
        write_connections(f, &self.connections)?;
        write_messages(f, &self.messages, &self.errors)?;
        if let Some(fo) = &self.failover {
            write_failover(f, fo)?;
        }
        if let Some(d) = self.delivery.as_ref().filter(|_| self.failover.is_none()) {
            write_delivery(f, d)?;
        }
        write_latency(f, &self.latency)?;
        if let Some(d) = &self.drift {
            write_drift(f, d)?;
        }
        write_windows(f, &self.windows)?;
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// The connections line, and the failures and drops by reason.
fn write_connections(f: &mut fmt::Formatter<'_>, c: &ConnectionSummary) -> fmt::Result {
    write!(
        f,
        "  connections  {}/{} established, {} failed, {} dropped, peak open {}",
        c.established.min(c.target as u64),
        c.target,
        c.failed,
        c.dropped,
        c.peak_open
    )?;
    if c.reconnects > 0 {
        write!(f, ", {} reconnects", c.reconnects)?;
    }
    if c.reused > 0 {
        write!(f, ", {} carried over from the phase before", c.reused)?;
    }
    writeln!(f, ", ramp {:.2} s ({}/s)", c.ramp_s, si(c.ramp_per_s))?;
    if !c.failures.is_empty() {
        writeln!(f, "    failures   {}", map_line(&c.failures))?;
    }
    if !c.drops.is_empty() {
        writeln!(f, "    drops      {}", map_line(&c.drops))?;
    }
    Ok(())
}

/// The messages line, and the errors by kind.
fn write_messages(
    f: &mut fmt::Formatter<'_>,
    m: &MessageSummary,
    errors: &BTreeMap<String, u64>,
) -> fmt::Result {
    if m.sent > 0 || m.received > 0 {
        writeln!(
            f,
            "  messages     sent {} ({}/s), received {} ({}/s), errors {}",
            m.sent,
            si(m.sent_per_s),
            m.received,
            si(m.received_per_s),
            m.errors
        )?;
    }
    if !errors.is_empty() {
        writeln!(f, "    errors     {}", map_line(errors))?;
    }
    Ok(())
}

/// The delivery figures, and the paused and steady listeners apart.
fn write_delivery(f: &mut fmt::Formatter<'_>, d: &DeliverySummary) -> fmt::Result {
    if d.expected == d.sent * d.listeners as u64 {
        writeln!(
            f,
            "  delivery     {} listeners x {} sent = {} expected; received {}, missing {}, duplicates {}",
            d.listeners, d.sent, d.expected, d.received, d.missing, d.duplicates
        )?;
    } else {
        // A --mix with user or connection events: each listener expects the events to
        // all, its user's and its connection's.
        writeln!(
            f,
            "  delivery     {} listeners, {} sent, {} expected (to all, and to each listener's user or connection); received {}, missing {}, duplicates {}, misdelivered {}",
            d.listeners, d.sent, d.expected, d.received, d.missing, d.duplicates, d.misdelivered
        )?;
    }
    writeln!(
        f,
        "    completeness {:.4}%  ({} of {} listeners got every event)",
        d.completeness * 100.0,
        d.complete_listeners,
        d.listeners
    )?;
    if let Some(p) = &d.pause {
        write!(
            f,
            "  pause        {} of {} listeners stopped reading {:.2} s into sending for {:.2} s",
            p.paused_listeners, d.listeners, p.at_s, p.for_s
        )?;
        match p.rcvbuf_bytes {
            Some(b) => writeln!(f, " (SO_RCVBUF {b} B)")?,
            None => writeln!(f)?,
        }
        for (name, g) in [("paused", &p.paused), ("steady", &p.steady)] {
            write_group(f, name, g)?;
        }
    }
    Ok(())
}

/// The latency table.
fn write_latency(
    f: &mut fmt::Formatter<'_>,
    latency: &BTreeMap<String, LatencySummary>,
) -> fmt::Result {
    if latency.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "  latency      {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "p50", "p90", "p99", "p99.9", "max", "count"
    )?;
    for (name, l) in latency {
        let p = &l.percentiles;
        let label = if l.corrected {
            format!("{name}*")
        } else {
            name.clone()
        };
        writeln!(
            f,
            "               {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            label,
            ms(p.p50_ms),
            ms(p.p90_ms),
            ms(p.p99_ms),
            ms(p.p999_ms),
            ms(p.max_ms),
            p.count
        )?;
    }
    if latency.values().any(|l| l.corrected) {
        writeln!(
            f,
            "               * measured from the intended send time (coordinated omission corrected)"
        )?;
    }
    Ok(())
}

/// The drift line of a soak.
fn write_drift(f: &mut fmt::Formatter<'_>, d: &Drift) -> fmt::Result {
    let show = |v: Option<f64>| v.map_or_else(|| "-".into(), ms);
    writeln!(
        f,
        "  drift        p99 first window {} -> last {}{}; errors first half {}, second half {}",
        show(d.first_window_p99_ms),
        show(d.last_window_p99_ms),
        d.p99_ratio
            .map(|r| format!(" (x{r:.2})"))
            .unwrap_or_default(),
        d.errors_first_half,
        d.errors_second_half
    )?;
    Ok(())
}

/// Up to a dozen of the windows.
fn write_windows(f: &mut fmt::Formatter<'_>, windows: &[Window]) -> fmt::Result {
    if windows.len() <= 1 {
        return Ok(());
    }
    writeln!(
        f,
        "  windows      {:>7} {:>7} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "t(s)", "open", "sent/s", "recv/s", "p50", "p99", "errors"
    )?;
    let step = windows.len().div_ceil(12);
    for w in windows.iter().step_by(step) {
        let (p50, p99) = w
            .latency
            .map(|p| (ms(p.p50_ms), ms(p.p99_ms)))
            .unwrap_or_else(|| ("-".into(), "-".into()));
        writeln!(
            f,
            "               {:>7.1} {:>7} {:>9} {:>9} {:>10} {:>10} {:>7}",
            w.t_s,
            w.open,
            si(w.sent_per_s),
            si(w.received_per_s),
            p50,
            p99,
            w.errors
        )?;
    }
    Ok(())
}
