//! One WebSocket connection: its reader, its writer and its send queue, in one task.
//!
//! A single task owns the socket. Every frame it sends goes through one path, in order: events
//! fanned out to it, its own Echo answers and error events all wait in its queue ([`Outbox`],
//! bounded in bytes), and the task writes them as they are, several frames per `writev`. Queued
//! frames arrive already framed and shared by every recipient ([`WireFrame`]), so a burst costs
//! one system call and no copy. The control frames tungstenite writes itself (the pong to a
//! ping, the close frame) are written only between two whole frames.
//!
//! The one exception keeps that order: while the task has nothing to write and waits, it
//! releases the socket, and a batch of events to all may be written to it directly by the
//! thread that delivers it (see [`Outbox::offer_direct`]); the task takes the socket back
//! before it reads or writes, and finishes first whatever such a write left.
//!
//! The task is one hand-written poll ([`Session::poll_step`]) rather than a `select!`, because
//! reading and writing share the socket and their order matters:
//! - a frame, once started, is always finished: a close request never cancels a write; it stops
//!   new frames from being queued, then (for a drain) lets the queued ones be written, or (for a
//!   slow consumer or a kick) drops those not yet started, and the close frame follows the last
//!   whole frame. Only when even that does not fit into the close's deadline is the TCP
//!   connection reset;
//! - the socket is read only between two whole frames and while the queue is under half its
//!   bound: a client that sends faster than it reads is slowed by TCP, not buffered;
//! - a client whose socket has taken no byte for `slowConsumerTimeout` while frames wait, or whose
//!   queue passes `sendQueueBytes`, is a slow consumer: closed with 1013, the others unaffected.
//!
//! One timer serves the pings, the idle check, the stall check and the close deadline.
//!
//! [`Outbox`]: crate::outbox::Outbox
//! [`Outbox::offer_direct`]: crate::outbox::Outbox::offer_direct

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::config::Limits;
use crate::event::{self, ErrorReason, EventError, EventType};
use crate::outbox::WireFrame;
use crate::registry::{CloseReason, CloseRequest, Conn};
use crate::router::{Batch, Routed, Router};

/// At most this many queued frames go into one batch.
const WRITE_BATCH: usize = 256;
/// At most this many frames go into one `writev` (well under the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 64;
/// How long a closed connection waits for the peer's close frame once its own is written.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A socket the broker serves WebSocket connections on: plain TCP or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes the coming close of the socket a reset (RST) instead of an orderly shutdown, for a
    /// peer that could not take even its close frame within the grace.
    fn reset_on_close(&self);

    /// The socket, when frames may be written to it as they are (plain TCP: see
    /// [`Outbox::offer_direct`]); `None` for TLS, which must encrypt them.
    ///
    /// [`Outbox::offer_direct`]: crate::outbox::Outbox::offer_direct
    fn direct_socket(&self) -> Option<std::os::fd::RawFd>;
}

impl Transport for TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }

    fn direct_socket(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }

    fn direct_socket(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// What a connection's task works with: the router (and through it the registry and the
/// metrics), the admin feed, its limits, and the stop signal. One per instance, shared by every
/// connection.
pub struct Env {
    pub router: Arc<Router>,
    pub activity: Arc<Activity>,
    pub limits: Limits,
    /// Whether ordinary clients may send broadcast Echoes (`broker.clientBroadcast`).
    pub client_broadcast: bool,
    pub shutdown: CancellationToken,
}

/// Serves `ws` until it ends, then takes the connection out of the registry.
///
/// Not an `async fn`: the session is built here and moved into the future, so the task does not
/// also keep room for the arguments it was made from (a coroutine keeps its captured arguments
/// apart from its other state: with `async fn`, 352 more bytes for every open connection).
pub fn serve<S: Transport>(
    ws: WebSocketStream<S>,
    conn: Arc<Conn>,
    env: Arc<Env>,
) -> impl std::future::Future<Output = ()> + Send {
    let limits = &env.limits;
    let now = Instant::now();
    if let Some(fd) = ws.get_ref().direct_socket() {
        conn.outbox.share_socket(fd);
    }
    let mut session = Session {
        holds_socket: true,
        ws,
        conn: conn.clone(),
        errors: ErrorBudget::new(limits),
        rate: TokenBucket::new(f64::from(limits.messages_per_second), 0.0),
        fanout: FanoutLimit::new(limits),
        read_gate: ReadGate::new(),
        writer: Writer::default(),
        ws_dirty: false,
        timer: Box::pin(tokio::time::sleep_until(now + limits.ping_interval())),
        next_ping: now + limits.ping_interval(),
        last_heard: now,
        blocked_since: None,
        closing: None,
        high_water: limits.send_queue_bytes / 2,
        batch: Batch::default(),
        env: env.clone(),
    };
    let mut ending = Ending {
        conn,
        env,
        outcome: None,
    };
    async move {
        ending.outcome = Some(session.run().await);
        // Its drop ends the registration with that outcome.
        drop(ending);
    }
}

/// Ends a connection's registration however its task ends: with the session's outcome, or,
/// should the task panic, as `internal`, so that a failed task never stays listed, counted
/// open, or reachable by deliveries.
struct Ending {
    conn: Arc<Conn>,
    env: Arc<Env>,
    outcome: Option<Outcome>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let (conn, env) = (&self.conn, &self.env);
        let outcome = self.outcome.take().unwrap_or(Outcome {
            reason: CloseReason::Internal,
            code: 1011,
            reset: false,
        });
        if outcome.reason == CloseReason::Internal {
            tracing::error!(id = %conn.wire_id, "connection task failed; connection dropped");
        }
        env.router.registry.unregister(conn);
        let m = &env.router.metrics;
        m.connections_open
            .with_label_values(&[crate::metrics::kind_label(conn.publisher)])
            .dec();
        m.closed(outcome.reason);
        if outcome.reason == CloseReason::SlowConsumer {
            m.slow_consumer_disconnects.inc();
        }
        if outcome.reset {
            m.close_resets.inc();
        }
        env.activity.disconnected(conn, outcome.reason);
        tracing::debug!(id = %conn.wire_id, reason = outcome.reason.label(), code = outcome.code, reset = outcome.reset, "connection closed");
    }
}

struct Session<S> {
    /// The task may use the socket: deliverers do not write to it directly now.
    holds_socket: bool,
    ws: WebSocketStream<S>,
    conn: Arc<Conn>,
    env: Arc<Env>,
    errors: ErrorBudget,
    /// `messagesPerSecond`: every message from a client (off by default).
    rate: TokenBucket,
    /// What one client may push to others: broadcast Echoes and MetaRequests.
    fanout: FanoutLimit,
    read_gate: ReadGate,
    writer: Writer,
    /// tungstenite may hold bytes of its own (a pong, a ping): flush them before raw frames.
    ws_dirty: bool,
    /// The one timer: the earliest of the next ping, the stall limit and the close deadline.
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    last_heard: Instant,
    /// Since when the socket has taken no byte while frames wait.
    blocked_since: Option<Instant>,
    closing: Option<Closing>,
    /// Reading pauses while this many bytes or more wait in the queue.
    high_water: usize,
    /// Broadcasts from what was read so far, handed out when the read is done (see
    /// [`Batch`]): flushed before the task waits and before any other step is acted on.
    batch: Batch,
}

/// Ends direct writes to the socket before it is closed (see [`Outbox::retire_socket`]): a
/// `Drop` runs before the fields it owns are dropped, the socket among them, even in a panic.
///
/// [`Outbox::retire_socket`]: crate::outbox::Outbox::retire_socket
impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        self.conn.outbox.retire_socket();
    }
}

/// A close in progress: the request, and by when it must be on the wire.
struct Closing {
    req: CloseRequest,
    deadline: Instant,
}

/// Bad messages within a fixed window; past the budget the connection is closed (1008).
struct ErrorBudget {
    budget: u32,
    window: Duration,
    count: u32,
    since: Instant,
}

impl ErrorBudget {
    fn new(l: &Limits) -> Self {
        ErrorBudget {
            budget: l.error_budget,
            window: l.error_window(),
            count: 0,
            since: Instant::now(),
        }
    }

    /// Counts one error; true while still within budget.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) > self.window {
            self.since = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.budget
    }
}

/// A token bucket: `per_second` tokens a second, holding at most `capacity` (at least one
/// second's worth). A rate of 0 lets everything through.
struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(per_second: f64, capacity: f64) -> Self {
        let capacity = capacity.max(per_second);
        TokenBucket {
            per_second,
            capacity,
            tokens: capacity,
            last: std::time::Instant::now(),
        }
    }

    fn is_off(&self) -> bool {
        self.per_second == 0.0
    }

    /// Whether `cost` tokens are there now (then taken).
    fn allow(&mut self, cost: f64) -> bool {
        if self.is_off() {
            return true;
        }
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// What one ordinary client may make the broker send to others (broadcast Echoes, reaching
/// every connection, and MetaRequests, reaching a publisher): messages and bytes per second.
/// Over either, the message is refused with an error event, which spends the error budget.
struct FanoutLimit {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl FanoutLimit {
    fn new(limits: &crate::config::Limits) -> Self {
        FanoutLimit {
            messages: TokenBucket::new(f64::from(limits.client_fanout_per_second), 0.0),
            // One message of the largest size a client may send must always fit.
            bytes: TokenBucket::new(
                limits.client_fanout_bytes_per_second as f64,
                limits.max_message_size as f64,
            ),
        }
    }

    /// Takes one message of `bytes` from both buckets, or from neither.
    fn allow(&mut self, bytes: usize) -> bool {
        // Refill the byte bucket first (a zero-cost take), so the look below is current.
        self.bytes.allow(0.0);
        if !self.bytes.is_off() && self.bytes.tokens < bytes as f64 {
            return false;
        }
        self.messages.allow(1.0) && self.bytes.allow(bytes as f64)
    }
}

/// Polls the socket for reading only when its reader was woken.
///
/// The loop waits on the outbox and the socket at once, and most wake-ups (a fan-out queuing
/// a frame) have nothing to do with reading; polling the reader anyway costs a zeroed read
/// buffer, a readiness check and a waker registration each time. The gate gives the reader a
/// waker of its own that raises a flag before waking the task, and polls the reader only when
/// the flag is up, or when the last poll produced a frame (more may be buffered).
struct ReadGate {
    flag: Arc<ReadFlag>,
    waker: Waker,
}

struct ReadFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ReadGate {
    fn new() -> Self {
        let flag = Arc::new(ReadFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        ReadGate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    fn poll_next<S>(
        &self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<S>,
    ) -> Poll<Option<Result<Message, WsError>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        match ws.poll_next_unpin(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(msg) => {
                self.flag.woken.store(true, Ordering::Release);
                Poll::Ready(msg)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The frames being written: a batch taken from the queue, and how far it has got.
#[derive(Default)]
struct Writer {
    batch: Vec<WireFrame>,
    /// Position: frame `i`, byte `off` within it.
    i: usize,
    off: usize,
}

impl Writer {
    fn is_empty(&self) -> bool {
        self.i >= self.batch.len()
    }

    /// Whether the frame at `i` was begun (here, or by a direct write: a rest).
    fn started(&self) -> bool {
        self.off > 0 || self.batch.get(self.i).is_some_and(WireFrame::is_rest)
    }

    /// Between two whole frames (nothing half-written).
    fn at_boundary(&self) -> bool {
        !self.started()
    }

    /// Drops the frames not yet started; returns how many.
    fn drop_unstarted(&mut self) -> usize {
        let keep = self.i + usize::from(self.started());
        let dropped = self.batch.len().saturating_sub(keep);
        self.batch.truncate(keep);
        dropped
    }

    fn clear(&mut self) {
        self.batch.clear();
        self.i = 0;
        self.off = 0;
    }

    /// Writes until the batch is done (`Ready(Ok(true))`) or the socket is full (`Pending`).
    /// `progress` is raised when any byte was written.
    fn poll_write<S: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        progress: &mut bool,
    ) -> Poll<std::io::Result<()>> {
        while self.i < self.batch.len() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for (j, frame) in self.batch[self.i..].iter().take(MAX_IOV).enumerate() {
                let start = if j == 0 { self.off } else { 0 };
                slices[k] = IoSlice::new(&frame.as_bytes()[start..]);
                k += 1;
            }
            let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..k]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *progress = true;
            let mut left = written;
            while left > 0 && self.i < self.batch.len() {
                let rest = self.batch[self.i].as_bytes().len() - self.off;
                if left >= rest {
                    left -= rest;
                    self.i += 1;
                    self.off = 0;
                } else {
                    self.off += left;
                    left = 0;
                }
            }
        }
        // TLS streams hold encrypted records until flushed; for TCP this does nothing.
        ready!(Pin::new(&mut *stream).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Payload bytes of the whole batch, for the counters.
    fn payload_bytes(&self) -> u64 {
        self.batch.iter().map(|f| f.payload_len() as u64).sum()
    }

    /// WebSocket frames in the whole batch, for the counters.
    fn frames(&self) -> usize {
        self.batch.iter().map(WireFrame::frames).sum()
    }
}

/// What woke the connection's task, for [`Session::run`] to act on.
enum Step {
    /// A close was requested (by anyone: fan-out, an operator, a drain, the task itself).
    Close(CloseRequest),
    /// A batch was written whole.
    Wrote { frames: usize, bytes: u64 },
    /// A frame from the peer, an error, or the end of the stream.
    Read(Option<Result<Message, WsError>>),
    /// The timer fired: a ping, the idle limit, the stall limit or the close deadline is due.
    Timer,
    /// Closing, and every frame to be written is written.
    Flushed,
    /// The socket failed.
    Failed,
}

/// How a session ended.
struct Outcome {
    reason: CloseReason,
    code: u16,
    /// The TCP connection was reset: the peer could not take its frames within the deadline.
    reset: bool,
}

impl Outcome {
    fn new(reason: CloseReason, code: u16) -> Self {
        Outcome {
            reason,
            code,
            reset: false,
        }
    }
}

impl<S: Transport> Session<S> {
    async fn run(&mut self) -> Outcome {
        // Shutdown reaches connections as a close request (see `server::start`); one that
        // registered after that sweep sees the token here.
        if self.env.shutdown.is_cancelled() {
            self.conn
                .request_close(CloseRequest::shutdown().by(Instant::now() + self.grace()));
        }
        loop {
            let step = std::future::poll_fn(|cx| self.poll_step(cx)).await;
            if !matches!(
                step,
                Step::Read(Some(Ok(Message::Text(_) | Message::Binary(_))))
            ) {
                self.flush();
            }
            match step {
                Step::Close(req) => self.begin_close(req),
                Step::Wrote { frames, bytes } => {
                    use std::sync::atomic::Ordering::Relaxed;
                    let c = &self.conn.counters;
                    c.messages_out.fetch_add(frames as u64, Relaxed);
                    c.bytes_out.fetch_add(bytes, Relaxed);
                    self.env.router.metrics.messages_sent.inc_by(frames as u64);
                    self.env.router.metrics.bytes_sent.inc_by(bytes);
                }
                Step::Read(msg) => {
                    self.last_heard = Instant::now();
                    self.ws_dirty = true;
                    match msg {
                        Some(Ok(Message::Close(_))) => {
                            // tungstenite has queued the reply; flushing sends it. No frame is
                            // half-written: the socket is read only between whole frames.
                            // Boxed, like the close below: a path taken once, whose state every
                            // idle connection's task would otherwise carry inline.
                            let _ =
                                Box::pin(tokio::time::timeout(CLOSE_WAIT, self.ws.flush())).await;
                            return Outcome::new(CloseReason::Client, 1000);
                        }
                        Some(Ok(msg)) => {
                            if let Some(req) = self.on_message(msg) {
                                self.flush();
                                self.conn.request_close(req);
                            }
                        }
                        Some(Err(e)) => match read_error(e) {
                            Some(req) => {
                                self.conn.request_close(req);
                            }
                            None => return Outcome::new(CloseReason::Io, 1006),
                        },
                        None => return Outcome::new(CloseReason::Client, 1000),
                    }
                }
                Step::Timer => {
                    if let Some(outcome) = self.on_timer() {
                        return outcome;
                    }
                }
                Step::Flushed => return Box::pin(self.finish_close()).await,
                Step::Failed => return Outcome::new(CloseReason::Io, 1006),
            }
        }
    }

    fn grace(&self) -> Duration {
        self.env.limits.close_grace()
    }

    /// Hands out the broadcasts read so far (see [`Batch`]).
    fn flush(&mut self) {
        self.env.router.flush(&mut self.batch);
    }

    /// Everything the task waits for, polled in one place (see the module docs for the order).
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.closing.is_none() {
            self.conn.outbox.register(cx);
            if let Some(req) = self.conn.close_request() {
                return Poll::Ready(Step::Close(req.clone()));
            }
        }
        // Reading may write too (tungstenite answers pings): take the socket back from the
        // deliverers first. A direct write under way wakes the task when it ends.
        if !self.holds_socket {
            if self.conn.outbox.poll_acquire(cx).is_pending() {
                return Poll::Pending;
            }
            self.holds_socket = true;
        }
        // Writing: tungstenite's own bytes first, then the queued frames.
        if self.ws_dirty {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.ws_dirty = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Failed),
                Poll::Pending => {}
            }
        }
        if !self.ws_dirty {
            if self.writer.is_empty() {
                self.writer.clear();
                if let Poll::Ready((taken, waiting)) =
                    self.conn
                        .outbox
                        .poll_take(cx, &mut self.writer.batch, WRITE_BATCH)
                {
                    self.env
                        .router
                        .metrics
                        .send_queue_depth
                        .observe((taken + waiting) as f64);
                }
            }
            if !self.writer.is_empty() {
                let mut progress = false;
                let polled = self.writer.poll_write(cx, self.ws.get_mut(), &mut progress);
                if progress {
                    self.blocked_since = None;
                }
                match polled {
                    Poll::Ready(Ok(())) => {
                        let step = Step::Wrote {
                            frames: self.writer.frames(),
                            bytes: self.writer.payload_bytes(),
                        };
                        self.writer.clear();
                        return Poll::Ready(step);
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Step::Failed),
                    Poll::Pending => {
                        if self.blocked_since.is_none() {
                            self.blocked_since = Some(Instant::now());
                            self.arm_timer();
                        }
                    }
                }
            }
        }
        if self.closing.is_some() {
            if !self.ws_dirty && self.writer.is_empty() && self.conn.outbox.is_empty() {
                return Poll::Ready(Step::Flushed);
            }
        } else if self.writer.at_boundary()
            && (self.writer.is_empty() || self.conn.outbox.bytes() < self.high_water)
        {
            if let Poll::Ready(msg) = self.read_gate.poll_next(cx, &mut self.ws) {
                return Poll::Ready(Step::Read(msg));
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Timer);
        }
        // Nothing more to read now: what it brought goes out before the task waits.
        self.flush();
        // Nothing to write either: deliverers may write to the socket while the task waits.
        if self.closing.is_none()
            && !self.ws_dirty
            && self.writer.is_empty()
            && self.conn.outbox.release()
        {
            self.holds_socket = false;
        }
        Poll::Pending
    }

    /// Sets the timer to the earliest thing due.
    fn arm_timer(&mut self) {
        let limits = &self.env.limits;
        let mut due = self.next_ping;
        if let Some(since) = self.blocked_since {
            due = due.min(since + limits.slow_consumer_timeout());
        }
        if let Some(closing) = &self.closing {
            due = due.min(closing.deadline);
        }
        self.timer.as_mut().reset(due);
    }

    /// A close was requested: no new frames; the ones already started are finished, the queued
    /// ones written (a drain) or dropped (a slow consumer, a kick); then the close frame.
    fn begin_close(&mut self, req: CloseRequest) {
        if req.reason.discards_queue() {
            // The queue itself was emptied by `Conn::request_close`.
            self.writer.drop_unstarted();
        }
        let deadline = req
            .deadline
            .unwrap_or_else(|| Instant::now() + self.grace());
        tracing::debug!(id = %self.conn.wire_id, reason = req.reason.label(), "closing");
        self.closing = Some(Closing { req, deadline });
        self.arm_timer();
    }

    fn on_timer(&mut self) -> Option<Outcome> {
        let now = Instant::now();
        let limits = &self.env.limits;
        if let Some(closing) = &self.closing {
            if now >= closing.deadline {
                return Some(self.reset(closing.req.reason, closing.req.code));
            }
        }
        if let Some(since) = self.blocked_since {
            if now >= since + limits.slow_consumer_timeout() && self.closing.is_none() {
                self.conn.request_close(CloseRequest::new(
                    CloseReason::SlowConsumer,
                    1013,
                    "send queue not drained in time: reading too slowly",
                ));
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + limits.ping_interval();
            if self.closing.is_none() {
                if now.duration_since(self.last_heard) >= limits.idle_timeout() {
                    self.conn.request_close(CloseRequest::new(
                        CloseReason::Idle,
                        1001,
                        "idle timeout",
                    ));
                } else if self.writer.is_empty() && !self.ws_dirty {
                    // A busy connection needs no ping: its writes show it is there.
                    let ws = Pin::new(&mut self.ws);
                    if ws.start_send(Message::Ping(Default::default())).is_ok() {
                        self.ws_dirty = true;
                    }
                }
            }
        }
        self.arm_timer();
        None
    }

    /// Every frame that was to be written is written: the close frame, then a short wait for
    /// the peer's own close frame, within the deadline.
    async fn finish_close(&mut self) -> Outcome {
        let Some(Closing { req, deadline }) = self.closing.take() else {
            return Outcome::new(CloseReason::Io, 1006);
        };
        if !req.reason.sends_close_frame() {
            return Outcome::new(req.reason, req.code);
        }
        let frame = CloseFrame {
            code: CloseCode::from(req.code),
            reason: req.text.as_str().into(),
        };
        let sent =
            tokio::time::timeout_at(deadline, self.ws.send(Message::Close(Some(frame)))).await;
        match sent {
            Ok(Ok(())) => {
                // Until the peer's close frame: what a peer sent before it learnt of a drain
                // (a publisher's events) is still routed; after any other close it is dropped.
                let route = req.reason == CloseReason::Shutdown;
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(msg)) = self.ws.next().await {
                        match msg {
                            Message::Close(_) => break,
                            msg @ (Message::Text(_) | Message::Binary(_)) if route => {
                                let _ = self.on_message(msg);
                                self.flush();
                            }
                            _ => {}
                        }
                    }
                })
                .await;
                Outcome::new(req.reason, req.code)
            }
            Ok(Err(_)) => Outcome::new(req.reason, req.code),
            Err(_) => self.reset(req.reason, req.code),
        }
    }

    /// The peer could not take its frames within the deadline: reset the TCP connection.
    fn reset(&mut self, reason: CloseReason, code: u16) -> Outcome {
        self.ws.get_ref().reset_on_close();
        Outcome {
            reason,
            code,
            reset: true,
        }
    }

    /// Handles one frame from the peer; a returned request closes the connection.
    fn on_message(&mut self, msg: Message) -> Option<CloseRequest> {
        let frame = match msg {
            Message::Text(t) => t,
            Message::Binary(b) => match event::text_from_binary(b) {
                Some(t) => t,
                None => {
                    self.count_in(0);
                    let err = EventError::new(
                        None,
                        ErrorReason::NotJson,
                        "a binary frame must hold UTF-8 JSON",
                    );
                    return self.reject(err);
                }
            },
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {
                return None
            }
        };
        self.count_in(frame.len());
        if !self.conn.publisher && !self.rate.allow(1.0) {
            return Some(CloseRequest::new(
                CloseReason::RateLimit,
                1008,
                "too many messages per second",
            ));
        }
        let info = match event::decode(frame.as_bytes()) {
            Ok(info) => info,
            Err(err) => return self.reject(err),
        };
        let routed = if self.conn.publisher {
            Ok(self.env.router.route_from_publisher(
                Some(&self.conn),
                &info,
                &frame,
                Some(&mut self.batch),
            ))
        } else {
            self.check_fanout(&info, frame.len()).and_then(|()| {
                self.env
                    .router
                    .route_from_client(&self.conn, &info, &frame, Some(&mut self.batch))
            })
        };
        match routed {
            Ok(Routed::Reply(reply)) => {
                self.flush();
                self.conn.offer(&WireFrame::text(&reply));
                None
            }
            Ok(Routed::Delivered(_)) => None,
            Err(err) => self.reject(err),
        }
    }

    /// What an ordinary client may push to others: broadcast Echoes (if allowed at all) and
    /// MetaRequests, within `clientFanoutPerSecond` and `clientFanoutBytesPerSecond`.
    fn check_fanout(&mut self, info: &event::EventInfo, bytes: usize) -> Result<(), EventError> {
        let broadcast = info.event_type == EventType::ECHO && info.broadcast;
        if !broadcast && info.event_type != EventType::META_REQUEST {
            return Ok(());
        }
        if broadcast && !self.env.client_broadcast {
            return Err(EventError::new(
                Some(info.event_type),
                ErrorReason::NotAllowed,
                "broadcast Echo from clients is turned off (broker.clientBroadcast)",
            ));
        }
        if self.fanout.allow(bytes) {
            Ok(())
        } else {
            Err(EventError::new(
                Some(info.event_type),
                ErrorReason::RateLimited,
                "too many broadcasts or MetaRequests per second (broker.limits.clientFanoutPerSecond, clientFanoutBytesPerSecond)",
            ))
        }
    }

    fn count_in(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.conn.counters;
        c.messages_in.fetch_add(1, Relaxed);
        c.bytes_in.fetch_add(bytes as u64, Relaxed);
        let m = &self.env.router.metrics;
        m.received_by_kind[usize::from(self.conn.publisher)].inc();
        m.bytes_received.inc_by(bytes as u64);
    }

    /// Answers the sender with an error event (through its queue, after what waits there), and
    /// closes it once it has used its budget.
    fn reject(&mut self, err: EventError) -> Option<CloseRequest> {
        self.env
            .router
            .metrics
            .decode_errors
            .with_label_values(&[err.reason.label()])
            .inc();
        tracing::debug!(id = %self.conn.wire_id, reason = err.reason.label(), error = %err.message, "bad message");
        // After what this connection sent before, to everyone and to itself.
        self.flush();
        self.conn.offer(&WireFrame::text(&err.to_frame()));
        if self.errors.spend() {
            None
        } else {
            Some(CloseRequest::new(
                CloseReason::ErrorBudget,
                1008,
                "too many bad messages",
            ))
        }
    }
}

/// The close that a read error calls for; `None` when the socket is simply gone.
fn read_error(e: WsError) -> Option<CloseRequest> {
    match e {
        WsError::Capacity(c) => Some(CloseRequest::new(
            CloseReason::TooLarge,
            1009,
            format!("message too large: {c}"),
        )),
        WsError::Utf8(_) => Some(CloseRequest::new(
            CloseReason::InvalidUtf8,
            1007,
            "invalid UTF-8 in a text frame",
        )),
        WsError::Protocol(p) => Some(CloseRequest::new(
            CloseReason::Protocol,
            1002,
            format!("protocol error: {p}"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker on loopback, its connection env, and a client connection registered in it.
    async fn broker_with_a_registered_connection(
    ) -> (crate::app::RunningBroker, Arc<Env>, Arc<Conn>) {
        let config = crate::config::Config::from_json_str(
            r#"{"websocket":{"host":"127.0.0.1","port":0},"broker":{"ops":{"port":0}}}"#,
            "test",
        )
        .expect("config");
        let broker = crate::app::start(config).await.expect("starts");
        let env = broker.shared().connection_env.clone();
        let conn = env.router.registry.register(crate::registry::NewConn {
            remote: "127.0.0.1:1".parse().expect("addr"),
            origin: None,
            user: Some("u".into()),
            publisher: false,
            positions: false,
            resuming: false,
        });
        (broker, env, conn)
    }

    #[tokio::test]
    async fn a_panicking_connection_task_leaves_no_trace() {
        let (broker, env, conn) = broker_with_a_registered_connection().await;
        let registry = env.router.registry.clone();
        env.router
            .metrics
            .connections_open
            .with_label_values(&["client"])
            .inc();
        let wire_id = conn.wire_id.clone();
        let task = tokio::spawn({
            let env = env.clone();
            async move {
                let _ending = Ending {
                    conn,
                    env,
                    outcome: None,
                };
                panic!("a bug in a connection task");
            }
        });
        assert!(task.await.expect_err("it panicked").is_panic());
        assert!(registry.get_wire(&wire_id).is_none());
        assert_eq!(registry.len(), 0);
        let m = &env.router.metrics;
        assert_eq!(m.connections_open.with_label_values(&["client"]).get(), 0);
        assert_eq!(
            m.connections_closed.with_label_values(&["internal"]).get(),
            1
        );
        broker.shutdown().await;
    }

    /// What one idle connection's task carries inline stays small: every open connection holds
    /// it for its whole life (1,440 bytes before the closing paths were boxed and `serve` built
    /// its session outside the future; 872 after).
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let (broker, env, conn) = broker_with_a_registered_connection().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (server, _)) = (client.expect("connect"), server.expect("accept"));
        let ws = WebSocketStream::from_raw_socket(
            server,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let fut = serve(ws, conn.clone(), env.clone());
        let (task, handle) = (std::mem::size_of_val(&fut), std::mem::size_of::<Conn>());
        drop(fut);
        assert!(task <= 1024, "the connection future grew to {task} bytes");
        assert!(
            handle <= 512,
            "a connection's handle grew to {handle} bytes"
        );
        env.router.registry.unregister(&conn);
        broker.shutdown().await;
    }
}
