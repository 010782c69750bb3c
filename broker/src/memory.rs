//! Handing memory back to the system after many connections have left.
//!
//! glibc's allocator keeps the pages that freed connections leave in its arenas: after a spike
//! of 19,000 connections the process kept ~210 MB of RSS with no client left, which an operator
//! reads as a leak and a container limit counts as real. When the number of connections has
//! fallen well below its recent peak, [`trim_after_spikes`] asks the allocator to return what
//! it holds free (`malloc_trim`, on a blocking thread: it walks every arena).

use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A trim follows a fall of at least this many connections from the peak since the last one...
const MIN_FALL: usize = 500;

/// ...that is also at least a quarter of that peak.
fn worth_trimming(peak: usize, now: usize) -> bool {
    let fall = peak.saturating_sub(now);
    fall >= MIN_FALL && fall * 4 >= peak
}

/// Runs until shutdown.
pub async fn trim_after_spikes(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The peak since the last trim: the registry keeps the exact high-water mark, so a spike
    // shorter than one look is seen too.
    let mut peak = 0;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (since_last_look, now) = shared.registry().take_peak();
        peak = peak.max(since_last_look);
        if worth_trimming(peak, now) {
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(
                peak,
                now,
                released,
                "memory handed back after connections left"
            );
            peak = now;
        }
    }
}

/// Returns the allocator's free memory to the system; whether any was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it only releases memory that is free.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_large_fall_only() {
        assert!(!worth_trimming(100, 0), "small spikes are not worth it");
        assert!(!worth_trimming(19_000, 18_000), "a fall of 5 % is churn");
        assert!(worth_trimming(19_000, 1_000));
        assert!(worth_trimming(2_000, 1_500));
        assert!(!worth_trimming(0, 0));
    }
}
