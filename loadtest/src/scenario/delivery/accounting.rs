//! What the count says besides the receipts: whether the publishers kept up with the schedule.

use std::time::Duration;

use crate::cli::Rate;
use crate::context::StopReason;

/// A note when an open-loop sender fell behind its schedule: fewer events went out than the
/// rate asked for, because the server (or this machine) could not take them. The latencies of
/// the events that did go out include that delay.
pub(super) fn behind_note(
    rate: Rate,
    measured: Duration,
    sent: u64,
    stopped: StopReason,
) -> Option<String> {
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
