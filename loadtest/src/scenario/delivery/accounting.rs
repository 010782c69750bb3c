//! The count: what each listener received against what it was to receive, without estimation.
//!
//! The reference is the set of events whose send succeeded, of every worker ([`all_sent`]).
//! Without a targeted mix every listener is to receive every one of them; with user or
//! connection events in the `--mix`, the `all` events, its user's and its own connection's
//! ([`Reference::expect`]). Each listener hands back the set of sequence numbers it received
//! (its [`Tally`]); intersected with the reference, that gives completeness, and with a targeted
//! mix the events a listener received that were not for it (misdelivered).

use std::time::Duration;

use super::listeners::{Listen, Tally};
use super::plan::Plan;
use super::publishers::Publish;
use crate::cli::Rate;
use crate::context::{RunCtx, SeqSet, StopReason};
use crate::mix::{Expectation, Mix};
use crate::scenario::skeleton::{Measured, Notes};
use crate::summary::DeliverySummary;

/// What the count is against; filled in at the end of the send phase and in the drain.
#[derive(Default)]
pub(super) struct Reference {
    /// The events every worker sent (this worker's alone without workers).
    pub(super) all_sent: SeqSet,
    /// Events this worker sent.
    pub(super) own_sent: u64,
    /// With a targeted mix, what each listener is to receive.
    pub(super) expectation: Option<Expectation>,
    /// Receipts expected over all of this worker's listeners.
    pub(super) expected: u64,
}

impl Reference {
    /// Works out what this worker's listeners are to receive of `all_sent` (`established`: the
    /// listeners that connected).
    pub(super) fn expect(&mut self, plan: &Plan<'_>, listen: &Listen, established: usize) {
        self.expectation = plan
            .targeted()
            .map(|mix| Expectation::of(mix, self.all_sent.iter()));
        self.expected = match &self.expectation {
            Some(e) => listen
                .connected_ix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|&l| e.for_listener(l, plan.user_of(l)))
                .sum(),
            None => self.all_sent.len() * established as u64,
        };
    }
}

/// The completeness reference: the events every worker's publishers sent (this one's alone
/// without workers, or when the others' never arrive).
pub(super) async fn all_sent(ctx: &RunCtx, publish: &Publish, notes: &mut Notes) -> SeqSet {
    let own = publish
        .sent_set
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(link) = &ctx.link else {
        return own;
    };
    let key = format!("{}/sent", ctx.run_id);
    match link.exchange(&key, &own, &ctx.cancel).await {
        Some(all) => all,
        None => {
            notes.push(
                "the other workers' sent events never arrived: counted against this worker's \
                 alone"
                    .into(),
            );
            own
        }
    }
}

/// The delivery figures of the listeners' `tallies` against `reference`.
pub(super) fn count(
    ctx: &RunCtx,
    plan: &Plan<'_>,
    tallies: &[Tally],
    reference: &Reference,
    (listeners, publishers): (usize, usize),
) -> DeliverySummary {
    let d = DeliverySummary {
        listeners,
        publishers,
        sent: reference.all_sent.len(),
        expected: reference.expected,
        ..DeliverySummary::default()
    };
    match (&reference.expectation, plan.targeted()) {
        (Some(e), Some(mix)) => {
            let d = count_targeted(d, tallies, &reference.all_sent, (mix, e), |l| {
                plan.user_of(l)
            });
            ctx.stats.errors_n("misdelivered", d.misdelivered);
            d
        }
        _ => count_broadcasts(d, tallies, &reference.all_sent),
    }
}

/// Every listener is to receive every event of `sent_set` (`d.sent` of them): adds up what
/// the `tallies` received of them to `d` (which has the listeners, publishers, sent and
/// expected counts) and works out what is missing.
pub(crate) fn count_broadcasts<'t>(
    mut d: DeliverySummary,
    tallies: impl IntoIterator<Item = &'t Tally>,
    sent_set: &SeqSet,
) -> DeliverySummary {
    for t in tallies {
        let got = t.seen.count_common(sent_set);
        d.received += got;
        d.complete_listeners += usize::from(d.sent > 0 && got == d.sent);
        d.duplicates += t.duplicates;
        d.foreign += t.foreign;
    }
    completed(d)
}

/// A targeted mix: each connected listener is to receive what the mix addressed to it; what
/// it received of the others' events is misdelivered.
fn count_targeted(
    mut d: DeliverySummary,
    tallies: &[Tally],
    sent_set: &SeqSet,
    (mix, e): (&Mix, &Expectation),
    user_of: impl Fn(usize) -> Option<usize>,
) -> DeliverySummary {
    for t in tallies.iter().filter(|t| t.connected) {
        let u = user_of(t.index);
        let (mut got, mut wrong) = (0, 0);
        for seq in t.seen.iter().filter(|s| sent_set.contains(*s)) {
            if mix.is_for(seq, t.index, u) {
                got += 1;
            } else {
                wrong += 1;
            }
        }
        d.received += got;
        d.misdelivered += wrong;
        d.complete_listeners += usize::from(got == e.for_listener(t.index, u));
        d.duplicates += t.duplicates;
        d.foreign += t.foreign;
    }
    completed(d)
}

/// Missing receipts and completeness from the expected and received counts.
fn completed(mut d: DeliverySummary) -> DeliverySummary {
    d.missing = d.expected.saturating_sub(d.received);
    d.completeness = if d.expected > 0 {
        d.received as f64 / d.expected as f64
    } else {
        0.0
    };
    d
}

/// The note when this worker's publishers fell behind their share of the rate (not with
/// stages, whose schedule is not a fixed rate).
pub(super) fn publishers_note(plan: &Plan<'_>, m: &Measured, own_sent: u64) -> Option<String> {
    let (args, count) = (plan.args, plan.publishers.1);
    let own_rate = match args.rate {
        Rate::PerSecond(r) => Rate::PerSecond(r * count as f64 / args.publishers as f64),
        Rate::Max => Rate::Max,
    };
    behind_note(own_rate, m.took, own_sent, m.natural)
        .filter(|_| count > 0 && plan.stages.is_none())
}

/// The note when deliveries are still missing after the drain (not when the run was cut short).
pub(super) fn missing_note(ctx: &RunCtx, d: &DeliverySummary, drain: Duration) -> Option<String> {
    (d.missing > 0 && !ctx.cancel.is_cancelled())
        .then(|| format!("{} deliveries missing after a {drain:?} drain", d.missing))
}

/// A note when an open-loop sender fell behind its schedule: fewer events went out than the
/// rate asked for, because the server (or this machine) could not take them. The latencies of
/// the events that did go out include that delay.
fn behind_note(rate: Rate, measured: Duration, sent: u64, stopped: StopReason) -> Option<String> {
    let Rate::PerSecond(r) = rate else {
        return None;
    };
    if stopped != StopReason::Duration {
        return None;
    }
    let scheduled = (r * measured.as_secs_f64()).floor() as u64;
    (sent + sent / 100 + 1 < scheduled).then(|| {
        format!(
            "publishers fell behind: {sent} of {scheduled} scheduled events were sent \
             ({:.0}%); the latencies include the wait",
            sent as f64 * 100.0 / scheduled as f64
        )
    })
}
