//! The sharded connection registry: every open connection's send queue and metadata.
//!
//! A `DashMap` keyed by connection number holds one `Arc<Conn>` per connection; its shards are
//! independent locks, so connects, disconnects and deliveries on different shards never wait
//! for each other, and a delivery holds only read locks. Users and publishers have small side
//! indexes so that a user event touches that user's connections only.
//!
//! Delivery never blocks and never grows memory: each connection has a bounded queue, and a
//! connection whose queue is full is told to close (a slow consumer), not waited for.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::outbox::{Offered, Outbox, PushError, WireFrame};

/// Why a connection ends, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Client,
    Idle,
    SlowConsumer,
    ErrorBudget,
    RateLimit,
    TooLarge,
    InvalidUtf8,
    Protocol,
    Kicked,
    Shutdown,
    Io,
    /// The connection's task failed (a bug in the broker): the socket is dropped.
    Internal,
}

impl CloseReason {
    pub const ALL: [CloseReason; 12] = [
        CloseReason::Client,
        CloseReason::Idle,
        CloseReason::SlowConsumer,
        CloseReason::ErrorBudget,
        CloseReason::RateLimit,
        CloseReason::TooLarge,
        CloseReason::InvalidUtf8,
        CloseReason::Protocol,
        CloseReason::Kicked,
        CloseReason::Shutdown,
        CloseReason::Io,
        CloseReason::Internal,
    ];

    /// The `reason` label of `broker_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Idle => "idle",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ErrorBudget => "error_budget",
            CloseReason::RateLimit => "rate_limit",
            CloseReason::TooLarge => "too_large",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::Protocol => "protocol",
            CloseReason::Kicked => "kicked",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Io => "io",
            CloseReason::Internal => "internal",
        }
    }
}

impl CloseReason {
    /// Whether the frames already queued are thrown away rather than written before the close
    /// frame: a slow consumer cannot take them (that is why it is closed), and an operator's kick
    /// means now. Every other close writes what was queued first, within its deadline.
    pub fn discards_queue(self) -> bool {
        matches!(self, CloseReason::SlowConsumer | CloseReason::Kicked)
    }

    /// Whether the peer gets a close frame (not when it closed first or the socket is gone).
    pub fn sends_close_frame(self) -> bool {
        !matches!(
            self,
            CloseReason::Client | CloseReason::Io | CloseReason::Internal
        )
    }
}

/// A request to close a connection: why, the close frame to send, and by when.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub reason: CloseReason,
    pub code: u16,
    pub text: String,
    /// By when the queued frames (unless discarded) and the close frame must be written; past
    /// it the TCP connection is reset. `None`: the connection's close grace from now.
    pub deadline: Option<tokio::time::Instant>,
}

impl CloseRequest {
    pub fn new(reason: CloseReason, code: u16, text: impl Into<String>) -> Self {
        CloseRequest {
            reason,
            code,
            text: text.into(),
            deadline: None,
        }
    }

    pub fn slow_consumer() -> Self {
        Self::new(
            CloseReason::SlowConsumer,
            1013,
            "send queue full: reading too slowly",
        )
    }

    pub fn shutdown() -> Self {
        Self::new(CloseReason::Shutdown, 1001, "server going away")
    }

    /// The same request with a deadline.
    pub fn by(mut self, deadline: tokio::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Per-connection traffic counters, updated by the connection's own task.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// One open connection as the rest of the broker sees it.
///
/// `repr(C)`, hot fields first: a broadcast to 10,000 listeners touches every connection, and
/// the fields it reads (`id`, `positions`, the outbox's writer and socket) then share one
/// cache line or two, which [`Registry::deliver_batch`] asks for ahead (their misses were most
/// of the broker's own CPU in that run).
#[derive(Debug)]
#[repr(C)]
pub struct Conn {
    pub id: u64,
    /// It asked for positions: events to all or to a user come with `"brokerPosition"`.
    pub positions: bool,
    pub counters: Counters,
    /// The send queue, bounded in bytes; its waker also carries close requests to the
    /// connection's task.
    pub outbox: Outbox,
    /// The id on the wire (`from`/`to` fields, admin API): `<instanceId>.<run>.<number>`.
    pub wire_id: Box<str>,
    pub remote: SocketAddr,
    pub origin: Option<Box<str>>,
    pub user: Option<Arc<str>>,
    pub publisher: bool,
    pub connected_at: SystemTime,
    pub shard: usize,
    close: OnceLock<CloseRequest>,
    /// While it resumes, positioned events are held here (with their sequence) until what it
    /// missed is queued first; see [`Conn::finish_resume`].
    resume: Mutex<Option<Vec<(u64, WireFrame)>>>,
    resuming: AtomicBool,
    /// The last position its resume covered: an event at or before it that arrives later
    /// (a cluster instance's own consumer can lag the stream it replayed from) was replayed.
    floor: AtomicU64,
}

/// What [`Registry::register`] needs to know of a new connection.
pub struct NewConn {
    pub remote: SocketAddr,
    pub origin: Option<Box<str>>,
    pub user: Option<Arc<str>>,
    pub publisher: bool,
    /// It asked for positions.
    pub positions: bool,
    /// It asked to resume: positioned events are held until [`Conn::finish_resume`].
    pub resuming: bool,
}

/// One event as its recipients get it: the plain frame, and for the connections that asked
/// for positions, the same event with its position (when it has one).
#[derive(Clone, Copy)]
pub struct Delivery<'a> {
    pub plain: &'a WireFrame,
    pub positioned: Option<(u64, &'a WireFrame)>,
}

impl<'a> From<&'a WireFrame> for Delivery<'a> {
    fn from(plain: &'a WireFrame) -> Self {
        Delivery {
            plain,
            positioned: None,
        }
    }
}

impl Conn {
    /// Hands this connection its variant of `d`.
    #[inline]
    pub fn take(&self, d: &Delivery<'_>) -> bool {
        match d.positioned {
            Some((seq, frame)) if self.positions => self.offer_at(seq, frame),
            _ => self.offer(d.plain),
        }
    }

    /// Hands a positioned frame over, or holds it while the connection resumes.
    fn offer_at(&self, seq: u64, frame: &WireFrame) -> bool {
        if seq <= self.floor.load(Acquire) {
            return false;
        }
        if self.resuming.load(Acquire) {
            let mut held = self.resume.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(held) = held.as_mut() {
                held.push((seq, frame.clone()));
                return true;
            }
        }
        self.offer(frame)
    }

    /// Ends a resume: queues `notice`, then what was missed (`replay`), then the events held
    /// meanwhile that come after `head` (those up to `head` are in the replay or were not for
    /// it); from then on events go straight to the queue.
    pub fn finish_resume(&self, notice: &WireFrame, replay: &[WireFrame], head: u64) {
        let mut held = self.resume.lock().unwrap_or_else(|e| e.into_inner());
        for frame in std::iter::once(notice).chain(replay) {
            self.offer(frame);
        }
        for (seq, frame) in held.take().unwrap_or_default() {
            if seq > head {
                self.offer(&frame);
            }
        }
        self.floor.store(head, Release);
        self.resuming.store(false, Release);
    }

    /// Hands `frame` to this connection's queue without waiting. A full queue closes the
    /// connection as a slow consumer; a closed one is already on its way out.
    #[inline]
    pub fn offer(&self, frame: &WireFrame) -> bool {
        match self.outbox.push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                self.request_close(CloseRequest::slow_consumer());
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// [`Conn::offer`], but written straight to the socket when the connection's task is idle
    /// (see [`Outbox::offer_direct`]), and then counted here; `None` when it was refused.
    #[inline]
    pub fn offer_direct(&self, frame: &WireFrame) -> Option<Offered> {
        match self.outbox.offer_direct(frame) {
            Ok(Offered::Written) => {
                self.counters
                    .messages_out
                    .fetch_add(frame.frames() as u64, Relaxed);
                self.counters
                    .bytes_out
                    .fetch_add(frame.payload_len() as u64, Relaxed);
                Some(Offered::Written)
            }
            Ok(Offered::Queued) => Some(Offered::Queued),
            Err(PushError::Full) => {
                self.request_close(CloseRequest::slow_consumer());
                None
            }
            Err(PushError::Closed) => None,
        }
    }

    /// Asks the connection's task to close with `req`; the first request wins. The queue takes
    /// no new frame from now on; a request that discards the queue empties it at once.
    /// Returns `None` when an earlier request won, else the frames discarded.
    pub fn request_close(&self, req: CloseRequest) -> Option<usize> {
        let discards = req.reason.discards_queue();
        if self.close.set(req).is_err() {
            return None;
        }
        let discarded = if discards {
            self.outbox.close()
        } else {
            self.outbox.seal();
            0
        };
        self.outbox.notify();
        Some(discarded)
    }

    /// The close request, once one was made.
    pub fn close_request(&self) -> Option<&CloseRequest> {
        self.close.get()
    }

    /// Frames waiting in the send queue now.
    pub fn queue_depth(&self) -> usize {
        self.outbox.len()
    }
}

/// Starts loading the first two cache lines of `conn` (the fields a broadcast reads and the
/// counters it updates); a hint, without effect on what the program does.
#[inline]
fn prefetch(conn: *const Conn) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = conn.cast::<i8>();
        // SAFETY: a prefetch never faults and reads nothing the program sees, whatever the
        // address; `conn` points into a live `Arc<Conn>` anyway.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = conn;
}

/// Registry statistics for `/admin/stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub clients: usize,
    pub publishers: usize,
}

pub struct Registry {
    instance: Box<str>,
    conns: DashMap<u64, Arc<Conn>>,
    users: DashMap<Arc<str>, Vec<Arc<Conn>>>,
    publishers: DashMap<u64, Arc<Conn>>,
    next_id: AtomicU64,
    next_publisher: AtomicUsize,
    queue_bound: usize,
    /// Connections that asked for positions: the positioned variant of an event is made only
    /// when there is one.
    positioned: AtomicUsize,
    /// How many publishers are connected, for whoever must know when it changes (the cluster
    /// takes MetaRequests from other instances only while there is one).
    publisher_count: tokio::sync::watch::Sender<usize>,
    /// Connections registered now, and the most there were since [`Registry::take_peak`].
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// 8 random hex digits, new for every registry (every start).
fn run_id() -> String {
    let mut b = [0u8; 4];
    if getrandom::getrandom(&mut b).is_err() {
        // No OS randomness (never seen on Linux): the process's randomly keyed hasher, the
        // clock and the pid still differ between starts.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        b = (h.finish() as u32).to_be_bytes();
    }
    format!("{:08x}", u32::from_be_bytes(b))
}

impl Registry {
    /// A registry for `instance` (`broker.instanceId`). Its connections' wire ids are
    /// `<instance>.<run>.<n>`: `<run>` is 8 hex digits drawn at random for each registry (each
    /// start), so a restart with the same `instanceId` never hands out an id again.
    pub fn new(instance: &str, shards: usize, queue_bound: usize) -> Registry {
        Registry {
            instance: format!("{instance}.{}", run_id()).into(),
            conns: DashMap::with_shard_amount(shards),
            users: DashMap::with_shard_amount(shards),
            publishers: DashMap::new(),
            next_id: AtomicU64::new(1),
            next_publisher: AtomicUsize::new(0),
            queue_bound,
            positioned: AtomicUsize::new(0),
            publisher_count: tokio::sync::watch::Sender::new(0),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// `<instanceId>.<run>`: the part of this registry's wire ids before the number.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Adds a connection.
    pub fn register(&self, new: NewConn) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let conn = Arc::new(Conn {
            id,
            wire_id: format!("{}.{id}", self.instance).into(),
            remote: new.remote,
            origin: new.origin,
            user: new.user,
            publisher: new.publisher,
            connected_at: SystemTime::now(),
            shard: self.conns.determine_map(&id),
            counters: Counters::default(),
            outbox: Outbox::new(self.queue_bound),
            close: OnceLock::new(),
            positions: new.positions || new.resuming,
            resume: Mutex::new(new.resuming.then(Vec::new)),
            resuming: AtomicBool::new(new.resuming),
            floor: AtomicU64::new(0),
        });
        if conn.positions {
            self.positioned.fetch_add(1, Relaxed);
        }
        let open = self.open.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(open, Relaxed);
        if let Some(user) = &conn.user {
            self.users
                .entry(user.clone())
                .or_default()
                .push(conn.clone());
        }
        if conn.publisher {
            self.publishers.insert(id, conn.clone());
            // Read inside the watch's lock: the last to send counts every change before it.
            self.publisher_count
                .send_modify(|n| *n = self.publishers.len());
        }
        self.conns.insert(id, conn.clone());
        conn
    }

    pub fn unregister(&self, conn: &Conn) {
        conn.outbox.close();
        self.open.fetch_sub(1, Relaxed);
        if conn.positions {
            self.positioned.fetch_sub(1, Relaxed);
        }
        self.conns.remove(&conn.id);
        if conn.publisher {
            self.publishers.remove(&conn.id);
            // Read inside the watch's lock: the last to send counts every change before it.
            self.publisher_count
                .send_modify(|n| *n = self.publishers.len());
        }
        if let Some(user) = &conn.user {
            self.users.remove_if_mut(user, |_, list| {
                list.retain(|c| c.id != conn.id);
                list.is_empty()
            });
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn counts(&self) -> Counts {
        let publishers = self.publishers.len();
        Counts {
            clients: self.conns.len().saturating_sub(publishers),
            publishers,
        }
    }

    /// The connection with this number.
    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.conns.get(&id).map(|c| c.clone())
    }

    /// Splits a wire id `<instanceId>.<run>.<n>` into `<instanceId>.<run>` and the number;
    /// `None` unless every part is well formed (so a `to` field can never name a NATS wildcard
    /// or another subject).
    pub fn parse_wire_id(wire_id: &str) -> Option<(&str, u64)> {
        let (node, n) = wire_id.rsplit_once('.')?;
        let (instance, run) = node.split_once('.')?;
        let ok = crate::config::valid_instance_id(instance)
            && !instance.is_empty()
            && run.len() == 8
            && run.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && !n.is_empty()
            && n.len() <= 20
            && n.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return None;
        }
        Some((node, n.parse().ok()?))
    }

    /// The local connection with this wire id.
    pub fn get_wire(&self, wire_id: &str) -> Option<Arc<Conn>> {
        match Self::parse_wire_id(wire_id) {
            Some((instance, id)) if instance == &*self.instance => self.get(id),
            _ => None,
        }
    }

    /// Every connection, for listings (a snapshot; order by id).
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut all: Vec<Arc<Conn>> = self.conns.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Offers `frame` to every connection except `except`; returns how many took it.
    ///
    /// One thread walks the shards in turn: an offer is a queue push and at most one wake-up,
    /// and the other cores are busy writing to the sockets. Spreading the walk over the cores
    /// with rayon was measured slower on two cores (0.92 against 0.88 us of server CPU per
    /// delivery at 10,000 listeners; see benches/README.md).
    pub fn deliver_all<'a>(&self, d: impl Into<Delivery<'a>>, except: Option<u64>) -> usize {
        let d = d.into();
        self.conns
            .iter()
            .filter(|e| except != Some(e.value().id) && e.value().take(&d))
            .count()
    }

    /// Offers a batch of events to all (see `router::Batch`) to every connection except
    /// `except` and those that asked for positions (they take each event with its position,
    /// never from a batch); returns how many took it.
    ///
    /// Connections whose task is idle get it written straight to their socket; returns how
    /// many connections took it, and how many of them that way (for the sent counters).
    pub fn deliver_batch(&self, frame: &WireFrame, except: Option<u64>) -> (usize, usize) {
        let (mut took, mut written) = (0, 0);
        let mut conns = self.conns.iter();
        let mut next = conns.next();
        while let Some(e) = next.take() {
            // Ask for the next connection's memory now: it arrives while this one's frame is
            // written (with 10,000 listeners, a miss on each was most of the broker's own CPU).
            next = conns.next();
            if let Some(n) = &next {
                prefetch(Arc::as_ptr(n.value()));
            }
            let c = e.value();
            if except == Some(c.id) || c.positions {
                continue;
            }
            if let Some(offered) = c.offer_direct(frame) {
                took += 1;
                written += usize::from(offered == Offered::Written);
            }
        }
        (took, written)
    }

    /// Offers `frame` to `user`'s connections and to every publisher except `except`.
    pub fn deliver_user<'a>(
        &self,
        user: &str,
        d: impl Into<Delivery<'a>>,
        except: Option<u64>,
    ) -> usize {
        let d = d.into();
        let mut n = 0;
        if let Some(list) = self.users.get(user) {
            n += list
                .iter()
                .filter(|c| except != Some(c.id) && c.take(&d))
                .count();
        }
        n + self.deliver_publishers(d, except)
    }

    /// Offers `frame` to every publisher except `except`.
    pub fn deliver_publishers<'a>(&self, d: impl Into<Delivery<'a>>, except: Option<u64>) -> usize {
        let d = d.into();
        self.publishers
            .iter()
            .filter(|e| except != Some(*e.key()) && e.value().take(&d))
            .count()
    }

    /// Whether any connection asked for positions.
    pub fn any_positioned(&self) -> bool {
        self.positioned.load(Relaxed) > 0
    }

    /// The most connections there were since the last call (or the start), and the count now;
    /// the peak starts again from now.
    pub fn take_peak(&self) -> (usize, usize) {
        let now = self.open.load(Relaxed);
        (self.peak.swap(now, Relaxed).max(now), now)
    }

    /// Watches how many publishers are connected.
    pub fn watch_publishers(&self) -> tokio::sync::watch::Receiver<usize> {
        self.publisher_count.subscribe()
    }

    /// One publisher, taking turns, for MetaRequests.
    pub fn pick_publisher(&self) -> Option<Arc<Conn>> {
        let n = self.publishers.len();
        if n == 0 {
            return None;
        }
        let skip = self.next_publisher.fetch_add(1, Relaxed) % n;
        self.publishers
            .iter()
            .nth(skip)
            .or_else(|| self.publishers.iter().next())
            .map(|e| e.value().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> WireFrame {
        WireFrame::text(&tokio_tungstenite::tungstenite::Utf8Bytes::from_static(
            text,
        ))
    }

    fn take_all(c: &Conn) -> usize {
        c.outbox.take(&mut Vec::new(), usize::MAX).0
    }

    fn new_conn(user: Option<&str>, publisher: bool) -> NewConn {
        NewConn {
            remote: "127.0.0.1:1".parse().expect("addr"),
            origin: None,
            user: user.map(Arc::from),
            publisher,
            positions: false,
            resuming: false,
        }
    }

    #[test]
    fn user_and_publisher_targeting() {
        let r = Registry::new("t", 4, 1 << 20);
        let alice = r.register(new_conn(Some("alice"), false));
        let bob = r.register(new_conn(Some("bob"), false));
        let anon = r.register(new_conn(None, false));
        let publ = r.register(new_conn(None, true));
        let frame = frame("{}");
        assert_eq!(r.deliver_user("alice", &frame, None), 2);
        assert_eq!(take_all(&alice), 1);
        assert_eq!(take_all(&publ), 1);
        assert_eq!(take_all(&bob), 0);
        assert_eq!(take_all(&anon), 0);
        assert_eq!(r.deliver_user("alice", &frame, Some(publ.id)), 1);
        assert_eq!(r.deliver_all(&frame, Some(alice.id)), 3);
        assert_eq!(r.counts().publishers, 1);
        assert_eq!(r.counts().clients, 3);
        r.unregister(&alice);
        assert_eq!(r.deliver_user("alice", &frame, Some(publ.id)), 0);
        assert!(r.get_wire(&alice.wire_id).is_none());
        assert!(r.get_wire(&publ.wire_id).is_some());
    }

    #[test]
    fn full_queue_requests_close_once() {
        let frame = frame("x");
        let r = Registry::new("t", 2, 2 * frame.cost());
        let c = r.register(new_conn(None, false));
        assert!(c.offer(&frame));
        assert!(c.offer(&frame));
        assert_eq!(c.queue_depth(), 2);
        assert!(!c.offer(&frame));
        assert_eq!(
            c.close_request().map(|r| r.reason),
            Some(CloseReason::SlowConsumer)
        );
        assert_eq!(c.queue_depth(), 0, "a slow consumer's queue is dropped");
        assert!(
            c.request_close(CloseRequest::shutdown()).is_none(),
            "first request wins"
        );
    }

    #[test]
    fn large_broadcast_reaches_everyone_once() {
        let r = Registry::new("t", 8, 1 << 20);
        let conns: Vec<_> = (0..5000)
            .map(|_| r.register(new_conn(None, false)))
            .collect();
        assert_eq!(r.deliver_all(&frame("y"), None), 5000);
        for c in &conns {
            assert_eq!(take_all(c), 1);
        }
        r.unregister(&conns[0]);
        assert_eq!(r.deliver_all(&frame("z"), None), 4999);
        assert!(
            !conns[0].offer(&frame("z")),
            "an ended connection takes nothing"
        );
    }
}
