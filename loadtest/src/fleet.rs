//! A fleet: many connections opened at a paced rate, each running the same body.
//!
//! Every connection is one task that sleeps until its slot in the ramp (`index / rate`), connects
//! (bounded by the target's in-flight limit and connect timeout), runs the scenario's body, and
//! optionally reconnects when the server drops it. Spawning all tasks up front and letting each
//! sleep to its own slot keeps the pacing exact without a spawner loop that could fall behind.
//!
//! Each task owns a piece of state `S` (a tally of what it received) that it hands back when it
//! ends, so results are gathered without any shared map.
//!
//! In a `mixed` run (`RunCtx::pool`), a fleet first takes the connections of its (role, index)
//! that the phase before parked (see [`crate::pool`]): those start at once, without a
//! handshake, and only the others are ramped at the paced rate. A body that is done with a
//! connection that is still open hands it back ([`Ended::Open`]); the fleet parks it for the
//! next phase, or closes it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ConnectFailure, Role, Target, Ws};
use crate::context::{RunCtx, CLOSE_GRACE};
use crate::pool::{Parked, Pool};
use crate::stats::Stats;

/// How a connection's body ended.
#[derive(Debug)]
pub enum Ended {
    /// The scenario asked it to stop (or it finished its share of work), and it is closed.
    Finished,
    /// The server or the network ended it; the label says how (`close_1008`, `reset`, ...).
    Dropped(String),
    /// The body is done and the connection still open: the fleet parks it for the next phase
    /// of a mixed run, or closes it (in the background; [`Fleet::finish`] waits for that).
    Open(Box<Ws>),
}

/// Picks the connections (by index) whose sockets get a receive buffer of the given size.
pub type RecvBufferFor = (u32, Arc<dyn Fn(usize) -> bool + Send + Sync>);

/// How many connections, of which kind.
#[derive(Clone)]
pub struct FleetSpec {
    pub count: usize,
    pub role: Role,
    /// Index of the first connection: selects source addresses and is unique within a run.
    pub first_index: usize,
    /// Reconnect (after a short pause) when the server drops a connection.
    pub reconnect: bool,
    /// `SO_RCVBUF` for the connections the function picks (by index); `None`: kernel default.
    pub recv_buffer: Option<RecvBufferFor>,
    /// `--stage`: when connection `index` opens, from the launch; `None`: paced at the rate.
    pub slots: Option<SlotFor>,
}

/// When connection `index` opens, as an offset from the launch.
pub type SlotFor = Arc<dyn Fn(usize) -> Duration + Send + Sync>;

impl FleetSpec {
    /// `count` connections of `role` from index `first_index`, paced at the run's rate, not
    /// reconnected, with the kernel's receive buffer: what most fleets are (the others change a
    /// field of this).
    pub fn paced(role: Role, first_index: usize, count: usize) -> Self {
        FleetSpec {
            count,
            role,
            first_index,
            reconnect: false,
            recv_buffer: None,
            slots: None,
        }
    }
}

/// The connection tasks of one fleet.
pub struct Fleet<S> {
    tasks: JoinSet<S>,
    attempts: mpsc::UnboundedReceiver<bool>,
    count: usize,
    settled: usize,
    established: usize,
    stop: CancellationToken,
    closing: Closing,
}

/// Result of waiting for the ramp.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    pub established: usize,
    pub failed: usize,
    pub took: Duration,
}

/// Starts `spec.count` connection tasks; `init(index)` makes each one's state and
/// `body(index, ws, state, stop)` runs on each established connection.
pub fn launch<S, I, F, Fut>(ctx: &RunCtx, spec: FleetSpec, init: I, body: F) -> Fleet<S>
where
    S: Send + 'static,
    I: Fn(usize) -> S,
    F: Fn(usize, Ws, S, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, Ended)> + Send + 'static,
{
    let body = Arc::new(body);
    let stop = ctx.cancel.child_token();
    let (tx, attempts) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let closing = Closing::default();
    let start = Instant::now();
    let buffer_of = |index: usize| {
        spec.recv_buffer
            .as_ref()
            .and_then(|(bytes, pick)| pick(index).then_some(*bytes))
    };
    // Mixed runs: the connections the phase before left open for us (not those that need a
    // receive buffer set before connecting).
    let mut parked = match &ctx.pool {
        Some(pool) => pool.claim(
            spec.role,
            (spec.first_index..spec.first_index + spec.count).filter(|&i| buffer_of(i).is_none()),
        ),
        None => Default::default(),
    };
    let mut fresh = 0usize;
    for n in 0..spec.count {
        let index = spec.first_index + n;
        let reuse = parked.remove(&index);
        // Only the connections opened afresh are paced (stages keep their own times).
        let slot = match (&spec.slots, &reuse) {
            (Some(slot_of), _) => start + slot_of(index),
            (None, Some(_)) => start,
            (None, None) => {
                fresh += 1;
                start + Duration::from_secs_f64((fresh - 1) as f64 / ctx.connect_rate)
            }
        };
        let conn = Conn {
            index,
            role: spec.role,
            reconnect: spec.reconnect,
            recv_buffer: buffer_of(index),
            target: ctx.target.clone(),
            stats: ctx.stats.clone(),
            pool: ctx.pool.clone(),
            closing: closing.clone(),
            attempts: tx.clone(),
            stop: stop.clone(),
            body: body.clone(),
        };
        tasks.spawn(conn.run(init(index), slot, reuse));
    }
    Fleet {
        tasks,
        attempts,
        count: spec.count,
        settled: 0,
        established: 0,
        stop,
        closing,
    }
}

/// The closes of connections the bodies handed back ([`Ended::Open`]) outside a mixed run.
type Closing = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// One connection task: what it needs besides its state.
struct Conn<F> {
    index: usize,
    role: Role,
    reconnect: bool,
    recv_buffer: Option<u32>,
    target: Arc<Target>,
    stats: Arc<Stats>,
    pool: Option<Arc<Pool>>,
    closing: Closing,
    /// Tells the ramp how the first attempt went.
    attempts: mpsc::UnboundedSender<bool>,
    stop: CancellationToken,
    body: Arc<F>,
}

impl<F> Conn<F> {
    /// Sleeps until `slot`, connects (taking `reuse`, the connection a mixed run's phase before
    /// parked, when there is one), runs the body, and reconnects when asked to; returns the
    /// state.
    async fn run<S, Fut>(self, mut state: S, slot: Instant, mut reuse: Option<Parked>) -> S
    where
        F: Fn(usize, Ws, S, CancellationToken) -> Fut,
        Fut: Future<Output = (S, Ended)>,
    {
        let mut reported = false;
        let mut at = slot;
        loop {
            let connected = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = self.connect(at, &mut reuse) => r,
            };
            match connected {
                Ok((ws, handshake)) => {
                    match handshake {
                        Some(h) => self.stats.connected(h),
                        None => self.stats.reused(),
                    }
                    self.report(&mut reported, true);
                    let (s, ended) = (self.body)(self.index, ws, state, self.stop.clone()).await;
                    state = s;
                    self.stats.disconnected();
                    match ended {
                        Ended::Finished => break,
                        Ended::Open(ws) => {
                            self.hand_back(*ws);
                            break;
                        }
                        Ended::Dropped(reason) => {
                            if self.stop.is_cancelled() {
                                break;
                            }
                            self.stats.dropped(&reason);
                        }
                    }
                }
                Err(failure) => {
                    self.stats.connect_failed(&failure.reason());
                    self.report(&mut reported, false);
                }
            }
            if !self.reconnect || self.stop.is_cancelled() {
                break;
            }
            self.stats
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            at = Instant::now() + Duration::from_secs(1);
        }
        self.report(&mut reported, false);
        // Stopped before its turn came: the parked connection it was to take is closed.
        if let Some(p) = reuse.take() {
            p.close().await;
        }
        state
    }

    /// At `at`, the parked connection if it is still open (no handshake then), else a new one
    /// (and its handshake time).
    async fn connect(
        &self,
        at: Instant,
        reuse: &mut Option<Parked>,
    ) -> Result<(Ws, Option<Duration>), ConnectFailure> {
        tokio::time::sleep_until(at.into()).await;
        // A parked connection the server closed meanwhile is opened afresh.
        if let Some(p) = reuse.take() {
            if let Some(ws) = p.resume().await {
                return Ok((ws, None));
            }
        }
        self.target
            .connect_with(self.index, self.role, self.recv_buffer)
            .await
            .map(|(ws, h)| (ws, Some(h)))
    }

    /// Reports the first attempt to the ramp (later ones are not reported).
    fn report(&self, reported: &mut bool, ok: bool) {
        if !*reported {
            *reported = true;
            let _ = self.attempts.send(ok);
        }
    }

    /// The body is done with a connection that is still open: parked when the next phase of a
    /// mixed run wants it, else closed in the background ([`Fleet::finish`] waits for that).
    fn hand_back(&self, ws: Ws) {
        let ws = match &self.pool {
            Some(pool) => pool.park((self.role, self.index), ws),
            None => Some(ws),
        };
        if let Some(ws) = ws {
            let close = tokio::spawn(client::close(ws, client::CLOSE_TIMEOUT));
            self.closing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(close);
        }
    }
}

impl<S: Send + 'static> Fleet<S> {
    /// Waits until every connection's first attempt has succeeded or failed, or until `limit`
    /// or cancellation.
    pub async fn wait_connected(&mut self, limit: Instant, cancel: &CancellationToken) -> Ramp {
        let started = Instant::now();
        while self.settled < self.count {
            tokio::select! {
                r = self.attempts.recv() => match r {
                    Some(ok) => {
                        self.settled += 1;
                        self.established += usize::from(ok);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(limit.into()) => break,
                _ = cancel.cancelled() => break,
            }
        }
        Ramp {
            established: self.established,
            failed: self.settled - self.established,
            took: started.elapsed(),
        }
    }

    /// Waits for the paced ramp: until every first attempt has settled, the run's
    /// [`RunCtx::ramp_limit`] for this many connections, or cancellation.
    pub async fn wait_ramp(&mut self, ctx: &RunCtx) -> Ramp {
        let limit = ctx.ramp_limit(self.count);
        self.wait_connected(limit, &ctx.cancel).await
    }

    /// The token the bodies watch; cancelling it makes them close and end.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Lets the bodies end on their own for up to `patience`, then stops the rest, gives them
    /// [`CLOSE_GRACE`] to close, and aborts whatever is left. Returns the states of the tasks
    /// that ended (aborted ones are lost, and counted in the second value).
    pub async fn finish(mut self, patience: Duration) -> (Vec<S>, usize) {
        let mut states = Vec::with_capacity(self.count);
        let soft = Instant::now() + patience;
        self.join_until(soft, &mut states).await;
        self.stop.cancel();
        // Tens of thousands of polite closes take a while on a loaded machine: a task that has
        // not ended by then is lost with its state (a listener's receipts), so allow 1 ms for
        // every 5 connections on top.
        let hard = Instant::now() + CLOSE_GRACE + Duration::from_millis(self.count as u64 / 5);
        self.join_until(hard, &mut states).await;
        let lost = self.tasks.len();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // The polite closes of the connections the bodies handed back, within the same limit.
        let closes: Vec<_> =
            std::mem::take(&mut *self.closing.lock().unwrap_or_else(|e| e.into_inner()));
        for close in closes {
            let abort = close.abort_handle();
            if tokio::time::timeout_at(hard.into(), close).await.is_err() {
                abort.abort();
            }
        }
        (states, lost)
    }

    async fn join_until(&mut self, limit: Instant, states: &mut Vec<S>) {
        loop {
            match tokio::time::timeout_at(limit.into(), self.tasks.join_next()).await {
                Ok(Some(Ok(state))) => states.push(state),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
