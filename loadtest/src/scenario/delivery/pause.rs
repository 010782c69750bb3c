//! `--pause-share`: when the paused listeners stop reading, how each catches up once it reads
//! on, and the paused and the steady listeners' figures apart ([`PauseSummary`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::listeners::Tally;
use crate::cli::PauseArgs;
use crate::context::{Gate, SeqSet};
use crate::summary::{CatchUp, ListenerDetail, ListenerGroup, PauseSummary};

/// When the paused listeners stop reading, and the reference for their catch-up.
pub(super) struct PausePlan {
    pub(super) at: Duration,
    pub(super) length: Duration,
    /// Opened at the start of the send phase (the publishers' gate).
    pub(super) gate: Gate,
    /// Events whose send succeeded so far (shared with the publishers).
    pub(super) sent_set: Arc<Mutex<SeqSet>>,
    /// The events sent before the paused listeners resumed: taken by the first one to resume
    /// (they all resume at the same moment). A listener has caught up once it has all of them.
    pub(super) backlog: OnceLock<Arc<SeqSet>>,
}

impl Tally {
    /// Resumed reading now: what is left to catch up on is the backlog it has not seen yet.
    pub(super) fn resume(&mut self, plan: &PausePlan) {
        let now = Instant::now();
        self.resumed_at = Some(now);
        let backlog = plan
            .backlog
            .get_or_init(|| {
                Arc::new(
                    plan.sent_set
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                )
            })
            .clone();
        let left = backlog.len() - backlog.count_common(&self.seen);
        if left == 0 {
            self.caught_up = Some(Duration::ZERO);
        } else {
            self.backlog_left = Some((backlog, left));
        }
    }

    /// Counts a first receipt of `seq` towards the catch-up.
    pub(super) fn on_new(&mut self, seq: u64) {
        let Some((backlog, left)) = &mut self.backlog_left else {
            return;
        };
        if backlog.contains(seq) {
            *left -= 1;
            if *left == 0 {
                self.caught_up = self.resumed_at.map(|r| r.elapsed());
                self.backlog_left = None;
            }
        }
    }
}

/// Entries in `pause.details` at most (the paused listeners first), so a run of 100,000
/// listeners keeps a JSON of a sensible size; the group figures always cover every listener.
const MAX_DETAILS: usize = 1000;

/// The note when the pause and the send phase did not overlap as asked: the pause was due after
/// sending stopped, or outlasted it.
pub(super) fn pause_note(p: &PauseArgs, measured: Duration) -> Option<String> {
    if p.pause_at >= measured {
        Some(format!(
            "the pause was due {:?} into sending, but sending stopped after {:.2} s: \
             the paused listeners paused after the events were sent",
            p.pause_at,
            measured.as_secs_f64()
        ))
    } else if p.pause_at + p.pause_for > measured {
        Some(format!(
            "the pause ({:?} from {:?}) outlasted sending ({:.2} s): the drain waited \
             up to --drain after the resume",
            p.pause_for,
            p.pause_at,
            measured.as_secs_f64()
        ))
    } else {
        None
    }
}

/// The paused and the steady listeners' figures, apart.
pub(super) fn pause_summary(
    args: &PauseArgs,
    paused_n: usize,
    tallies: &[Tally],
    (sent, sent_set): (u64, &SeqSet),
    start: Instant,
) -> PauseSummary {
    let mut steady = ListenerGroup::default();
    let mut paused = ListenerGroup::default();
    let mut catch_ups = Vec::new();
    let mut resumed = 0;
    let mut details = Vec::new();
    let mut sorted: Vec<&Tally> = tallies.iter().filter(|t| t.connected).collect();
    sorted.sort_by_key(|t| (!t.paused, t.index));
    for t in sorted {
        let got = t.seen.count_common(sent_set);
        let missing = sent.saturating_sub(got);
        let ended = t.ended.as_ref().map(|(label, _)| label.as_str());
        let group = if t.paused { &mut paused } else { &mut steady };
        group.add(got, missing, sent, ended);
        if t.paused {
            if t.resumed_at.is_some() {
                resumed += 1;
            }
            if let Some(c) = t.caught_up {
                catch_ups.push(c.as_secs_f64() * 1000.0);
            }
        }
        if t.paused || missing > 0 || ended.is_some() {
            details.push(ListenerDetail {
                index: t.index,
                paused: t.paused,
                received: got,
                missing,
                ended: ended.map(str::to_owned),
                close_code: ended.and_then(close_code),
                ended_at_s: t.ended.as_ref().map(|(_, at)| signed_secs(start, *at)),
                paused_at_s: t.paused_at.map(|at| signed_secs(start, at)),
                catch_up_ms: t.caught_up.map(|c| c.as_secs_f64() * 1000.0),
            });
        }
    }
    steady.finish();
    paused.finish();
    catch_ups.sort_by(f64::total_cmp);
    paused.catch_up = Some(CatchUp {
        resumed,
        caught_up: catch_ups.len(),
        min_ms: catch_ups.first().copied(),
        p50_ms: catch_ups.get(catch_ups.len() / 2).copied(),
        max_ms: catch_ups.last().copied(),
    });
    let details_omitted = details.len().saturating_sub(MAX_DETAILS);
    details.truncate(MAX_DETAILS);
    PauseSummary {
        share: args.pause_share,
        paused_listeners: paused_n,
        at_s: args.pause_at.as_secs_f64(),
        for_s: args.pause_for.as_secs_f64(),
        rcvbuf_bytes: args.pause_rcvbuf,
        paused,
        steady,
        details,
        details_omitted,
    }
}

/// Seconds from `start` to `at`, negative when `at` came first.
fn signed_secs(start: Instant, at: Instant) -> f64 {
    if at >= start {
        (at - start).as_secs_f64()
    } else {
        -(start - at).as_secs_f64()
    }
}

/// The close code in an end label: `close_1013` is 1013; a close frame without a code is
/// reported as 1005 (as RFC 6455 names it); anything else had no close frame.
pub(crate) fn close_code(label: &str) -> Option<u16> {
    match label.strip_prefix("close_")? {
        "no_code" => Some(1005),
        code => code.parse().ok(),
    }
}

impl ListenerGroup {
    /// Adds one listener that received `got` of the `sent` events and ended as `ended`.
    fn add(&mut self, got: u64, missing: u64, sent: u64, ended: Option<&str>) {
        self.listeners += 1;
        self.expected += sent;
        self.received += got;
        self.missing += missing;
        if missing == 0 && sent > 0 {
            self.complete_listeners += 1;
        }
        if missing > 0 {
            self.lossy_listeners += 1;
            self.max_missing = self.max_missing.max(missing);
        }
        match ended {
            None => self.open_at_end += 1,
            Some(label) => match close_code(label) {
                Some(code) => *self.closed_by_server.entry(code.to_string()).or_default() += 1,
                None => {
                    self.no_close_frame += 1;
                    *self.no_close_frame_by.entry(label.to_owned()).or_default() += 1;
                }
            },
        }
    }

    fn finish(&mut self) {
        self.completeness = if self.expected > 0 {
            self.received as f64 / self.expected as f64
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn close_labels_give_codes() {
        assert_eq!(close_code("close_1013"), Some(1013));
        assert_eq!(close_code("close_no_code"), Some(1005));
        assert_eq!(close_code("eof"), None);
        assert_eq!(close_code("protocol"), None);
    }

    #[test]
    fn groups_count_losses_and_ends() {
        let mut g = ListenerGroup::default();
        g.add(10, 0, 10, None);
        g.add(4, 6, 10, Some("close_1013"));
        g.add(7, 3, 10, Some("eof"));
        g.finish();
        assert_eq!(
            (g.listeners, g.expected, g.received, g.missing),
            (3, 30, 21, 9)
        );
        assert_eq!(
            (g.complete_listeners, g.lossy_listeners, g.max_missing),
            (1, 2, 6)
        );
        assert_eq!(g.closed_by_server, BTreeMap::from([("1013".to_owned(), 1)]));
        assert_eq!((g.no_close_frame, g.open_at_end), (1, 1));
        assert_eq!(g.no_close_frame_by, BTreeMap::from([("eof".to_owned(), 1)]));
        assert!((g.completeness - 0.7).abs() < 1e-9);
    }

    #[test]
    fn catch_up_counts_the_backlog_only() {
        let mut sent = SeqSet::default();
        for seq in 0..5 {
            sent.insert(seq);
        }
        let plan = PausePlan {
            at: Duration::ZERO,
            length: Duration::ZERO,
            gate: Gate::new(),
            sent_set: Arc::new(Mutex::new(sent)),
            backlog: OnceLock::new(),
        };
        let mut t = Tally::new(0, true);
        t.seen.insert(0);
        t.seen.insert(1);
        t.resume(&plan);
        assert!(t.caught_up.is_none());
        for seq in [2, 7, 3] {
            t.seen.insert(seq);
            t.on_new(seq);
        }
        assert!(
            t.caught_up.is_none(),
            "event 4 is still missing; 7 is not in the backlog"
        );
        t.seen.insert(4);
        t.on_new(4);
        assert!(t.caught_up.is_some());
    }
}
