//! The live feed of the instance the session talks to: `GET .../stream` (Server-Sent Events)
//! with its connects, disconnects and once-a-second stats, or, from a broker without the
//! stream, stats polled once a second.
//!
//! The stream reports the connects and disconnects of its own instance only; the other
//! instances' reach the table through the list resync ([`super::sync`]).

use std::time::{Duration, Instant};

use admin_api::StreamMessage;

use super::http::{classify, ApiError, Endpoint};
use super::session::SessionControl;
use super::{Outbox, Update};

/// The stream sends stats every second: this much silence means the link is dead.
const STREAM_IDLE: Duration = Duration::from_secs(10);

/// Reads the stream until it fails.
pub(super) async fn read_stream(
    mut response: reqwest::Response,
    out: &Outbox,
    ctl: &SessionControl,
) -> ApiError {
    let mut parser = SseParser::default();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(STREAM_IDLE, response.chunk()).await {
            Err(_) => {
                return ApiError::Unreachable(format!(
                    "no data on the event stream for {} s",
                    STREAM_IDLE.as_secs()
                ))
            }
            Ok(Err(e)) => return classify(&e),
            Ok(Ok(None)) => {
                return ApiError::Unreachable("the broker closed the event stream".into())
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + nl];
            start += nl + 1;
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            if let Some(data) = parser.line(&line) {
                dispatch(&data, out, ctl);
            }
        }
        pending.drain(..start);
    }
}

/// Forwards one stream message to the UI; a `lagged` asks the list resync for a full walk.
fn dispatch(data: &str, out: &Outbox, ctl: &SessionControl) {
    let at = Instant::now();
    match serde_json::from_str::<StreamMessage>(data) {
        Ok(StreamMessage::Connect { connection }) => out.send(Update::Connected { connection, at }),
        Ok(StreamMessage::Disconnect { id, reason }) => {
            out.send(Update::Disconnected { id, reason, at })
        }
        Ok(StreamMessage::Stats { stats }) => {
            ctl.set_streamed(&stats.instance);
            out.send(Update::Stats { stats, at })
        }
        Ok(StreamMessage::Lagged { .. }) => ctl.lagged.notify_one(),
        Ok(StreamMessage::Other) | Err(_) => {}
    }
}

/// The parts of the Server-Sent Events format the admin stream uses: `data:` lines, joined
/// with newlines, dispatched at a blank line; comments (`:`) and other fields ignored.
#[derive(Default)]
pub struct SseParser {
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds one line (without its line ending); returns an event's data when one is complete.
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            return Some(std::mem::take(&mut self.data));
        }
        if let Some(value) = line.strip_prefix("data:") {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.has_data = true;
        }
        None
    }
}

/// A broker without the stream: its stats once a second.
pub(super) async fn poll_stats(ep: &Endpoint, out: &Outbox) -> ApiError {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match ep.stats().await {
            Ok(stats) => out.send(Update::Stats {
                stats,
                at: Instant::now(),
            }),
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_become_events() {
        let mut p = SseParser::default();
        assert_eq!(p.line(": keep-alive"), None);
        assert_eq!(
            p.line(""),
            None,
            "a blank line with no data dispatches nothing"
        );
        assert_eq!(p.line(r#"data: {"type":"stats"}"#), None);
        assert_eq!(p.line(""), Some(r#"{"type":"stats"}"#.to_string()));
        assert_eq!(p.line("event: x"), None);
        assert_eq!(p.line("data:a"), None);
        assert_eq!(p.line("data: b"), None);
        assert_eq!(p.line(""), Some("a\nb".to_string()));
    }
}
