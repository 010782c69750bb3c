//! One WebSocket connection: its reader, its writer and its send queue, in one task.
//!
//! A single task owns the socket and selects over three things: its outbox (frames queued by
//! fan-out, or a close request: kick, slow consumer, shutdown), frames from the peer, and the
//! ping timer. One task instead of a reader and a writer keeps an idle connection small and
//! avoids a lock around the socket. Queued frames arrive already framed and shared by every
//! recipient ([`WireFrame`]); the waiting ones are written with one vectored write, so a burst
//! costs one system call, not one per frame, and no copy into a per-connection buffer.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::event::{self, ErrorReason, EventError};
use crate::fanout::Routed;
use crate::outbox::WireFrame;
use crate::registry::{CloseReason, CloseRequest, Conn, Outgoing};
use crate::server::Shared;

/// At most this many queued frames go into one batch.
const WRITE_BATCH: usize = 256;
/// At most this many frames go into one `writev` (well under the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 64;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves `ws` until it ends, then takes the connection out of the registry.
pub async fn serve<S>(ws: WebSocketStream<S>, conn: Arc<Conn>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        ws,
        conn: conn.clone(),
        shared: shared.clone(),
        errors: ErrorBudget::new(&shared),
        rate: RateLimit::new(shared.config.broker.limits.messages_per_second),
    };
    let outcome = session.run().await;
    shared.registry.unregister(&conn);
    let m = &shared.metrics;
    m.connections_open
        .with_label_values(&[crate::metrics::kind_label(conn.publisher)])
        .dec();
    m.connections_closed
        .with_label_values(&[outcome.reason.label()])
        .inc();
    if outcome.reason == CloseReason::SlowConsumer {
        m.slow_consumer_disconnects.inc();
    }
    shared.events.disconnected(&conn, outcome.reason);
    tracing::debug!(id = %conn.wire_id, reason = outcome.reason.label(), code = outcome.code, "connection closed");
}

struct Session<S> {
    ws: WebSocketStream<S>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    errors: ErrorBudget,
    rate: RateLimit,
}

/// Bad messages within a fixed window; past the budget the connection is closed (1008).
struct ErrorBudget {
    budget: u32,
    window: Duration,
    count: u32,
    since: Instant,
}

impl ErrorBudget {
    fn new(shared: &Shared) -> Self {
        let l = &shared.config.broker.limits;
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

/// Messages per second from one client: a token bucket holding one second's worth.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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

/// How a session ended.
struct Outcome {
    reason: CloseReason,
    code: u16,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Outcome {
        let limits = &self.shared.config.broker.limits;
        let idle = limits.idle_timeout();
        let mut ping = tokio::time::interval(limits.ping_interval());
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        let mut batch: Vec<WireFrame> = Vec::new();
        let read_gate = ReadGate::new();
        let conn = self.conn.clone();
        // Shutdown reaches connections as a close request (see `server::start`); one that
        // registered after that sweep sees the token here.
        if self.shared.shutdown.is_cancelled() {
            conn.request_close(CloseRequest::shutdown());
        }

        let request = loop {
            tokio::select! {
                out = std::future::poll_fn(|cx| conn.poll_outgoing(cx, &mut batch, WRITE_BATCH)) => {
                    let n = match out {
                        Outgoing::Close(req) => break Some(req),
                        Outgoing::Frames { taken, waiting } => {
                            self.shared.metrics.send_queue_depth.observe((taken + waiting) as f64);
                            taken
                        }
                    };
                    let written = tokio::select! {
                        biased;
                        req = conn.close_requested() => break Some(req),
                        r = write_frames(&mut self.ws, &batch) => r,
                    };
                    batch.clear();
                    match written {
                        Ok(bytes) => {
                            let c = &self.conn.counters;
                            c.messages_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            c.bytes_out.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                            self.shared.metrics.messages_sent.inc_by(n as u64);
                            self.shared.metrics.bytes_sent.inc_by(bytes);
                        }
                        Err(_) => return Outcome { reason: CloseReason::Io, code: 1006 },
                    }
                }
                msg = std::future::poll_fn(|cx| read_gate.poll_next(cx, &mut self.ws)) => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(msg)) => {
                            if let Some(req) = self.on_message(msg).await {
                                break Some(req);
                            }
                        }
                        Some(Err(e)) => match read_error(e) {
                            Some(req) => break Some(req),
                            None => return Outcome { reason: CloseReason::Io, code: 1006 },
                        },
                        None => return Outcome { reason: CloseReason::Client, code: 1000 },
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= idle {
                        break Some(CloseRequest::new(CloseReason::Idle, 1001, "idle timeout"));
                    }
                    let sent = tokio::select! {
                        biased;
                        req = conn.close_requested() => break Some(req),
                        r = self.ws.send(Message::Ping(Default::default())) => r,
                    };
                    if sent.is_err() {
                        return Outcome { reason: CloseReason::Io, code: 1006 };
                    }
                }
            }
        };
        match request {
            Some(req) => {
                self.close(&req).await;
                Outcome {
                    reason: req.reason,
                    code: req.code,
                }
            }
            None => Outcome {
                reason: CloseReason::Io,
                code: 1006,
            },
        }
    }

    /// Handles one frame from the peer; a returned request closes the connection.
    async fn on_message(&mut self, msg: Message) -> Option<CloseRequest> {
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
                    return self.reject(err).await;
                }
            },
            Message::Close(_) => {
                // tungstenite has queued the reply; flushing sends it.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.flush()).await;
                return Some(CloseRequest::new(CloseReason::Client, 1000, ""));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
        };
        self.count_in(frame.len());
        if !self.conn.publisher && !self.rate.allow() {
            return Some(CloseRequest::new(
                CloseReason::RateLimit,
                1008,
                "too many messages per second",
            ));
        }
        let info = match event::decode(frame.as_bytes()) {
            Ok(info) => info,
            Err(err) => return self.reject(err).await,
        };
        let routed = if self.conn.publisher {
            Ok(self
                .shared
                .route_from_publisher(Some(&self.conn), &info, &frame))
        } else {
            self.shared.route_from_client(&self.conn, &info, &frame)
        };
        match routed {
            Ok(Routed::Reply(reply)) => self.send_now(Message::Text(reply)).await,
            Ok(Routed::Delivered(_)) => None,
            Err(err) => self.reject(err).await,
        }
    }

    fn count_in(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.conn.counters;
        c.messages_in.fetch_add(1, Relaxed);
        c.bytes_in.fetch_add(bytes as u64, Relaxed);
        let m = &self.shared.metrics;
        m.received_by_kind[usize::from(self.conn.publisher)].inc();
        m.bytes_received.inc_by(bytes as u64);
    }

    /// Answers the sender with an error event, and closes it once it has used its budget.
    async fn reject(&mut self, err: EventError) -> Option<CloseRequest> {
        self.shared
            .metrics
            .decode_errors
            .with_label_values(&[err.reason.label()])
            .inc();
        tracing::debug!(id = %self.conn.wire_id, reason = err.reason.label(), error = %err.message, "bad message");
        if let Some(req) = self.send_now(Message::Text(err.to_frame())).await {
            return Some(req);
        }
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

    /// Writes one frame to this connection now (replies and errors skip the queue).
    async fn send_now(&mut self, msg: Message) -> Option<CloseRequest> {
        let len = msg.len() as u64;
        let conn = self.conn.clone();
        let result = tokio::select! {
            biased;
            req = conn.close_requested() => return Some(req),
            r = self.ws.send(msg) => r,
        };
        match result {
            Ok(()) => {
                use std::sync::atomic::Ordering::Relaxed;
                self.conn.counters.messages_out.fetch_add(1, Relaxed);
                self.conn.counters.bytes_out.fetch_add(len, Relaxed);
                self.shared.metrics.messages_sent.inc();
                self.shared.metrics.bytes_sent.inc_by(len);
                None
            }
            Err(_) => Some(CloseRequest::new(CloseReason::Io, 1006, "")),
        }
    }

    /// Sends a close frame (unless the socket is gone) and waits briefly for the peer's reply,
    /// so that the peer reads the close code rather than a reset.
    async fn close(&mut self, req: &CloseRequest) {
        if matches!(req.reason, CloseReason::Io | CloseReason::Client) {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::from(req.code),
            reason: req.text.as_str().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// Writes the pre-framed `frames` to the socket, as many per system call as fit, and returns
/// the payload bytes.
///
/// The frames bypass tungstenite's write buffer, so whatever tungstenite holds (a pong, say) is
/// flushed first, whole: frames never interleave. tungstenite refuses the flush once the
/// connection is closing, which ends the writes too.
async fn write_frames<S>(ws: &mut WebSocketStream<S>, frames: &[WireFrame]) -> Result<u64, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.flush().await?;
    let stream = ws.get_mut();
    // Position: frame `i`, byte `off` within it.
    let (mut i, mut off) = (0, 0);
    while i < frames.len() {
        let written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for (j, frame) in frames[i..].iter().take(MAX_IOV).enumerate() {
                let start = if j == 0 { off } else { 0 };
                slices[k] = IoSlice::new(&frame.as_bytes()[start..]);
                k += 1;
            }
            Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        if written == 0 {
            return Err(WsError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        // Advance over what was written.
        let mut left = written;
        while left > 0 && i < frames.len() {
            let rest = frames[i].as_bytes().len() - off;
            if left >= rest {
                left -= rest;
                i += 1;
                off = 0;
            } else {
                off += left;
                left = 0;
            }
        }
    }
    // TLS streams hold encrypted records until flushed; for TCP this does nothing.
    stream.flush().await?;
    Ok(frames.iter().map(|f| f.payload_len() as u64).sum())
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
