//! The activity log: connects, disconnects, link changes, fleet changes and the results of the
//! operator's actions, as one line each.

use std::collections::VecDeque;

use crate::client::LinkStatus;

/// Lines kept in the activity log.
const ACTIVITY_LINES: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Success,
    Warning,
    Error,
}

/// One line of the activity log.
#[derive(Clone, Debug)]
pub struct ActivityLine {
    pub unix: u64,
    pub level: Level,
    pub text: String,
}

/// Appends a line, dropping the oldest past [`ACTIVITY_LINES`].
pub fn log(activity: &mut VecDeque<ActivityLine>, level: Level, text: String) {
    if activity.len() == ACTIVITY_LINES {
        activity.pop_front();
    }
    activity.push_back(ActivityLine {
        unix: crate::format::now_unix(),
        level,
        text,
    });
}

/// A log line for a change of link state worth telling (not every retry).
pub fn describe_transition(old: &LinkStatus, new: &LinkStatus) -> Option<(Level, String)> {
    use LinkStatus as L;
    match (old, new) {
        (L::Live { .. }, L::Live { .. }) => None,
        (_, L::Live { url, streaming }) => Some((
            Level::Success,
            if *streaming {
                format!("connected to {url} (live stream)")
            } else {
                format!("connected to {url} (no event stream on this broker: polling stats)")
            },
        )),
        (_, L::Unauthorized { url, message }) => Some((
            Level::Error,
            format!("{url} refused the admin token: {message}"),
        )),
        (L::Live { .. }, L::Reconnecting { error, .. }) => {
            Some((Level::Error, format!("lost the broker: {error}")))
        }
        (L::Unreachable { .. }, L::Unreachable { .. })
        | (L::Reconnecting { .. }, L::Reconnecting { .. }) => None,
        (_, L::Unreachable { url, error, .. }) => {
            Some((Level::Error, format!("cannot reach {url}: {error}")))
        }
        (_, L::InvalidUrl { message }) => Some((Level::Error, message.clone())),
        (L::Idle, L::Idle) => None,
        (_, L::Idle) => Some((Level::Info, "disconnected".into())),
        _ => None,
    }
}
