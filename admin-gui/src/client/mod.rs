//! The network side: every call to the broker's admin API runs on a worker thread with its
//! own tokio runtime, never on the UI thread.
//!
//! The UI holds a [`Client`], sends it [`Command`]s and drains its [`Update`]s once per frame;
//! every update wakes the UI (`request_repaint`). Where each part lives:
//!
//! - [`messages`]: the commands, updates and the types they carry (token, link state, pages);
//! - [`worker`]: the command loop, which starts and ends sessions and runs inject/kick/drain;
//! - [`session`]: one URL and token: first call, the three live loops, backoff and retry;
//! - [`stream`]: the live feed (Server-Sent Events, or polled stats from older brokers);
//! - [`sync`]: the connection list across the fleet (cursor walks, counter refreshes);
//! - [`fleet`]: the instances, and the history that seeds charts and sparklines;
//! - [`http`]: the routes, URLs and errors of one broker's admin API.

mod fleet;
pub mod http;
pub mod messages;
pub mod session;
pub mod stream;
pub mod sync;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use http::{normalize_url, ApiError};
pub use messages::{Action, ActionOutcome, Command, LinkStatus, Page, RangeQuery, Token, Update};
pub use session::backoff;
pub use stream::SseParser;
pub use sync::MAX_ROWS;

/// The handle the UI holds. Dropping it stops the worker.
pub struct Client {
    commands: Option<mpsc::UnboundedSender<Command>>,
    updates: std::sync::mpsc::Receiver<Update>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Starts the worker thread. `wake` is called after every update (the UI passes
    /// `ctx.request_repaint()`).
    pub fn spawn(wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<Client> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let outbox = Outbox {
            tx: up_tx,
            wake: Arc::new(wake),
        };
        let thread = std::thread::Builder::new()
            .name("admin-api".into())
            .spawn(move || {
                runtime.block_on(worker::worker(cmd_rx, outbox));
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(Client {
            commands: Some(cmd_tx),
            updates: up_rx,
            thread: Some(thread),
        })
    }

    pub fn send(&self, command: Command) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
        }
    }

    /// Everything that arrived since the last call; never blocks.
    pub fn poll(&self) -> impl Iterator<Item = Update> + '_ {
        self.updates.try_iter()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.commands = None; // closes the channel: the worker's loop ends
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the worker's tasks put their updates.
#[derive(Clone)]
struct Outbox {
    tx: std::sync::mpsc::Sender<Update>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Outbox {
    fn send(&self, update: Update) {
        if self.tx.send(update).is_ok() {
            (self.wake)();
        }
    }

    fn status(&self, status: LinkStatus) {
        self.send(Update::Status(status));
    }

    fn outcome(&self, action: Action, result: Result<String, String>) {
        self.send(Update::Action(ActionOutcome { action, result }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("secret-123");
        assert!(!format!("{t:?}").contains("secret"));
        let c = Command::Connect {
            url: "http://x".into(),
            token: t,
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
