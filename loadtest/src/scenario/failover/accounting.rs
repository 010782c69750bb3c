//! The count: an event *reached the cluster* when at least one listener received it; each
//! listener's `missing` is counted against those, and published events that reached no listener
//! are `publish_lost`. Also what the disruption did, and the reconnects and recoveries.

use super::disrupt::Disruption;
use super::listeners::Listener;
use super::publisher::Published;
use crate::cli::{Disrupt, FailoverArgs};
use crate::context::SeqSet;
use crate::scenario::skeleton::Notes;
use crate::stats::{Percentiles, Stats};
use crate::summary::{DeliverySummary, FailoverSummary};

/// Distinct reasons of incomplete recoveries kept for the summary.
const MAX_REASONS: usize = 10;

/// When the disruption was carried out (seconds into sending), whether it happened, and the
/// answer or error.
pub(super) type Disrupted = (f64, bool, String);

/// What happened to the events and the listeners `counted` (those that connected at least
/// once): the failover figures and the delivery figures.
pub(super) fn count(
    args: &FailoverArgs,
    disruption: &Disruption,
    disrupted: Option<Disrupted>,
    published: &Published,
    counted: &[&Listener],
    stats: &Stats,
    notes: &mut Notes,
) -> (FailoverSummary, DeliverySummary) {
    let mut reached = SeqSet::default();
    for l in counted {
        reached.union_with(&l.seen);
    }
    let reached_n = reached.len();
    let sent = published.sent.len();
    let mut fo = FailoverSummary {
        listeners: counted.len(),
        published: sent,
        reached: reached_n,
        publish_lost: sent - published.sent.count_common(&reached),
        publisher_reconnects: published.reconnects,
        ..disruption_figures(args, disruption, disrupted)
    };
    let mut delivery = DeliverySummary {
        listeners: counted.len(),
        publishers: 1,
        sent,
        expected: reached_n * counted.len() as u64,
        ..DeliverySummary::default()
    };
    for l in counted {
        add_listener(&mut fo, &mut delivery, l, reached_n);
    }
    fo.reconnect_ms = stats
        .secondary
        .as_ref()
        .and_then(|m| Percentiles::of(&m.total()));
    delivery.duplicates = fo.duplicates;
    delivery.missing = fo.missing;
    delivery.completeness = if delivery.expected > 0 {
        delivery.received as f64 / delivery.expected as f64
    } else {
        0.0
    };
    notes.extend(loss_notes(&fo, published));
    (fo, delivery)
}

/// The disruption asked for and what it did.
fn disruption_figures(
    args: &FailoverArgs,
    disruption: &Disruption,
    disrupted: Option<Disrupted>,
) -> FailoverSummary {
    let none = matches!(disruption, Disruption::None);
    let mut fo = FailoverSummary {
        disrupt: match args.disrupt {
            Disrupt::Drain => "drain",
            Disrupt::Sigkill => "sigkill",
            Disrupt::None => "none",
        }
        .into(),
        how: disruption.describe(),
        disrupted: none,
        disrupt_result: if none {
            "not asked".into()
        } else {
            "not carried out (the run ended first)".into()
        },
        disrupted_at_s: None,
        recover: !args.no_recover,
        ..FailoverSummary::default()
    };
    if let Some((t, ok, result)) = disrupted {
        fo.disrupted = ok;
        fo.disrupt_result = result;
        fo.disrupted_at_s = Some(t);
    }
    fo
}

/// Adds one listener's receipts, losses, closes, reconnects and recoveries.
fn add_listener(fo: &mut FailoverSummary, d: &mut DeliverySummary, l: &Listener, reached: u64) {
    let missing = reached - l.seen.len();
    d.received += l.seen.len();
    d.foreign += l.foreign;
    d.complete_listeners += usize::from(missing == 0);
    fo.missing += missing;
    fo.missing_listeners += usize::from(missing > 0);
    fo.max_missing = fo.max_missing.max(missing);
    fo.duplicates += l.duplicates;
    fo.duplicate_listeners += usize::from(l.duplicates > 0);
    fo.out_of_order += l.out_of_order;
    fo.out_of_order_listeners += usize::from(l.out_of_order > 0);
    fo.closed_listeners += usize::from(!l.closed_by.is_empty());
    for (k, v) in &l.closed_by {
        *fo.closed_by.entry(k.clone()).or_default() += v;
    }
    fo.reconnects += l.reconnects;
    fo.reconnect_failures += l.failures;
    fo.not_reconnected += usize::from(l.down_since.is_some());
    fo.recoveries_complete += l.recoveries_complete;
    fo.recoveries_incomplete += l.recoveries_incomplete;
    fo.replayed += l.replayed;
    for r in &l.incomplete_reasons {
        if fo.incomplete_reasons.len() < MAX_REASONS || fo.incomplete_reasons.contains_key(r) {
            *fo.incomplete_reasons.entry(r.clone()).or_default() += 1;
        }
    }
}

/// Notes on events lost before they reached the cluster.
fn loss_notes(fo: &FailoverSummary, published: &Published) -> Notes {
    let mut notes = Notes::new();
    if fo.publish_lost > 0 {
        notes.push(format!(
            "{} published events reached no listener (lost between the publisher and the \
             cluster); `missing` counts only events the cluster had",
            fo.publish_lost
        ));
    }
    if published.failed > 0 {
        notes.push(format!(
            "{} events could not be written (the publisher's connection broke); not published",
            published.failed
        ));
    }
    notes
}
