//! One summary from the workers' summaries (`--workers`).
//!
//! Counts add up; latency figures come from the workers' HDR histograms added together, so a
//! merged p99 is the p99 of every sample of every worker, not an average of percentiles.
//! Delivery: every worker counted its own listeners against the same set of sent events (the
//! union over workers, see `workers`), so expected, received and missing add up and
//! completeness is received over expected, exact. What cannot be exact is said so: the
//! per-window latencies are the highest of the workers' (an upper bound), and `peak_open` is the
//! sum of the workers' peaks (they need not have peaked at the same moment).

use std::collections::BTreeMap;

use crate::context::StopReason;
use crate::stats::{Percentiles, Window};
use crate::summary::{Drift, PhaseSummary, Summary};

/// Merges the workers' summaries of one run (at least one).
pub fn merge(parts: Vec<Summary>) -> Summary {
    let mut parts = parts.into_iter();
    let Some(mut m) = parts.next() else {
        unreachable!("merge is called with at least one summary");
    };
    let rest: Vec<Summary> = parts.collect();
    if rest.is_empty() {
        return m;
    }
    for s in &rest {
        add(&mut m, s);
    }
    // Phases: the same phases and runs in every worker; merge run by run.
    if !m.phases.is_empty() {
        let phases = std::mem::take(&mut m.phases);
        m.phases = phases
            .into_iter()
            .enumerate()
            .map(|(i, p)| PhaseSummary {
                name: p.name,
                runs: p
                    .runs
                    .into_iter()
                    .enumerate()
                    .map(|(j, r)| {
                        let mut all = vec![r];
                        all.extend(
                            rest.iter()
                                .filter_map(|s| s.phases.get(i))
                                .filter_map(|p| p.runs.get(j).cloned()),
                        );
                        merge(all)
                    })
                    .collect(),
            })
            .collect();
    }
    finish(&mut m);
    m
}

/// Adds the counts and histograms of `s` into `m`.
fn add(m: &mut Summary, s: &Summary) {
    m.elapsed_s = m.elapsed_s.max(s.elapsed_s);
    m.measured_s = m.measured_s.max(s.measured_s);
    m.stopped_by = worse(m.stopped_by, s.stopped_by);

    let (c, o) = (&mut m.connections, &s.connections);
    c.target += o.target;
    c.established += o.established;
    c.failed += o.failed;
    c.dropped += o.dropped;
    c.reconnects += o.reconnects;
    c.reused += o.reused;
    c.peak_open += o.peak_open;
    c.ramp_s = c.ramp_s.max(o.ramp_s);
    add_map(&mut c.failures, &o.failures);
    add_map(&mut c.drops, &o.drops);

    m.messages.sent += s.messages.sent;
    m.messages.received += s.messages.received;
    m.messages.errors += s.messages.errors;
    add_map(&mut m.errors, &s.errors);

    match (&mut m.delivery, &s.delivery) {
        (Some(d), Some(o)) => {
            d.listeners += o.listeners;
            d.publishers += o.publishers;
            // Every worker counted against the same union of sent events.
            d.sent = d.sent.max(o.sent);
            d.expected += o.expected;
            d.received += o.received;
            d.duplicates += o.duplicates;
            d.missing += o.missing;
            d.complete_listeners += o.complete_listeners;
            d.foreign += o.foreign;
            d.misdelivered += o.misdelivered;
        }
        (None, Some(o)) => m.delivery = Some(o.clone()),
        _ => {}
    }

    for (name, h) in &s.histograms {
        match m.histograms.iter_mut().find(|(n, _)| n == name) {
            // Same bounds everywhere (`stats::new_histogram`); a failure would only lose samples.
            Some((_, mine)) => {
                let _ = mine.add(h);
            }
            None => m.histograms.push((name.clone(), h.clone())),
        }
    }
    for (name, l) in &s.latency {
        if let Some(mine) = m.latency.get_mut(name) {
            mine.corrected |= l.corrected;
        } else {
            m.latency.insert(name.clone(), l.clone());
        }
    }

    merge_windows(&mut m.windows, &s.windows);
    for note in &s.notes {
        if !m.notes.contains(note) {
            m.notes.push(note.clone());
        }
    }
}

/// Recomputes what is derived from the merged counts.
fn finish(m: &mut Summary) {
    let measured = m.measured_s;
    let per_s = |n: u64| {
        if measured > 0.0 {
            n as f64 / measured
        } else {
            0.0
        }
    };
    m.messages.sent_per_s = per_s(m.messages.sent);
    m.messages.received_per_s = per_s(m.messages.received);
    let c = &mut m.connections;
    c.ramp_per_s = if c.ramp_s > 0.0 {
        c.established.min(c.target as u64).saturating_sub(c.reused) as f64 / c.ramp_s
    } else {
        0.0
    };
    if let Some(d) = &mut m.delivery {
        d.completeness = if d.expected > 0 {
            d.received as f64 / d.expected as f64
        } else {
            0.0
        };
    }
    for (name, h) in &m.histograms {
        if let (Some(p), Some(l)) = (Percentiles::of(h), m.latency.get_mut(name)) {
            l.percentiles = p;
        }
    }
    if m.drift.is_some() {
        m.drift = Some(Drift::of(&m.windows));
    }
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Window by window (the workers started together, so window `i` covers the same time):
/// counts add up, latency percentiles are the highest of the workers'.
fn merge_windows(into: &mut Vec<Window>, from: &[Window]) {
    for (i, w) in from.iter().enumerate() {
        let Some(m) = into.get_mut(i) else {
            into.push(w.clone());
            continue;
        };
        m.open += w.open;
        m.connected += w.connected;
        m.connect_failures += w.connect_failures;
        m.drops += w.drops;
        m.sent += w.sent;
        m.received += w.received;
        m.errors += w.errors;
        m.sent_per_s += w.sent_per_s;
        m.received_per_s += w.received_per_s;
        m.latency = upper(m.latency, w.latency);
        m.secondary = upper(m.secondary, w.secondary);
    }
}

fn upper(a: Option<Percentiles>, b: Option<Percentiles>) -> Option<Percentiles> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Percentiles {
            count: a.count + b.count,
            min_ms: a.min_ms.min(b.min_ms),
            mean_ms: (a.mean_ms * a.count as f64 + b.mean_ms * b.count as f64)
                / (a.count + b.count).max(1) as f64,
            p50_ms: a.p50_ms.max(b.p50_ms),
            p90_ms: a.p90_ms.max(b.p90_ms),
            p99_ms: a.p99_ms.max(b.p99_ms),
            p999_ms: a.p999_ms.max(b.p999_ms),
            max_ms: a.max_ms.max(b.max_ms),
        }),
        (a, b) => a.or(b),
    }
}

/// The stop reason that says more: a deadline over an interrupt over a natural end.
fn worse(a: StopReason, b: StopReason) -> StopReason {
    let rank = |r: StopReason| match r {
        StopReason::Deadline => 3,
        StopReason::Interrupted => 2,
        StopReason::Duration => 1,
        StopReason::Count | StopReason::Completed => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{DeliverySummary, LatencySummary};

    fn summary(values: &[u64], established: u64, delivery: Option<(u64, u64, u64)>) -> Summary {
        let mut h = crate::stats::new_histogram();
        for v in values {
            h.record(*v).expect("in range");
        }
        let mut s: Summary = serde_json::from_value(serde_json::json!({
            "scenario": "broadcast", "run_id": "r", "url": "ws://x/", "target_addr": "127.0.0.1:1",
            "elapsed_s": 2.0, "measured_s": 1.0, "stopped_by": "count",
            "connections": {"target": established, "established": established, "failed": 1,
                "failures": {"timeout": 1}, "dropped": 0, "drops": {}, "reconnects": 0,
                "peak_open": established, "ramp_s": 0.5, "ramp_per_s": 10.0},
            "messages": {"sent": 10, "received": 100, "errors": 0, "sent_per_s": 10.0,
                "received_per_s": 100.0},
            "delivery": null, "latency": {}, "errors": {}, "drift": null, "notes": [],
            "windows": [], "phases": []
        }))
        .expect("a summary");
        s.latency.insert(
            "delivery".into(),
            LatencySummary {
                percentiles: Percentiles::of(&h).expect("samples"),
                corrected: true,
            },
        );
        s.histograms.push(("delivery".into(), h));
        s.delivery = delivery.map(|(sent, listeners, received)| DeliverySummary {
            listeners: listeners as usize,
            sent,
            expected: sent * listeners,
            received,
            missing: sent * listeners - received,
            ..DeliverySummary::default()
        });
        s
    }

    #[test]
    fn counts_add_and_histograms_merge_exactly() {
        let a = summary(&[100, 200, 300], 5, Some((10, 5, 50)));
        let b = summary(&[50, 9_000], 3, Some((10, 3, 29)));
        let m = merge(vec![a, b]);
        assert_eq!(m.connections.established, 8);
        assert_eq!(m.connections.failures["timeout"], 2);
        assert_eq!(m.messages.received, 200);
        let l = &m.latency["delivery"].percentiles;
        assert_eq!(l.count, 5, "every sample of both");
        assert!((l.max_ms - 9.0).abs() < 0.01, "max of both: {l:?}");
        assert!((l.min_ms - 0.05).abs() < 0.001, "min of both: {l:?}");
        assert!((l.p50_ms - 0.2).abs() < 0.001, "median of all five: {l:?}");
        let d = m.delivery.expect("delivery");
        assert_eq!(
            (d.listeners, d.sent, d.expected, d.received, d.missing),
            (8, 10, 80, 79, 1)
        );
        assert!((d.completeness - 79.0 / 80.0).abs() < 1e-12);
    }
}
