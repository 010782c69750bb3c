//! A connection's send queue, and the frames that travel through it.
//!
//! Fan-out is the hot path: one event goes to thousands of queues. So a frame is built once
//! for all recipients, WebSocket header included ([`WireFrame`]), and every queue gets a
//! reference-counted handle to the same bytes; the connection writes them to its socket
//! as they are, several frames per system call.
//!
//! The queue is a short critical section around a `VecDeque` (no allocation while it has
//! room, none at all for a connection that never receives anything), bounded in bytes, and the
//! connection's task is woken only when the queue goes from empty to non-empty or a close is
//! requested, so a burst of events costs one wake-up per connection, not one per event. A
//! batch for a connection whose task is idle skips the queue and the wake-up altogether: it is
//! written to the socket directly ([`Outbox::offer_direct`]).

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Complete server-to-client text frames (unmasked, so the same bytes suit every recipient):
/// usually one, or several back to back (a [`FrameBatch`]), which travel and are written as one
/// piece.
#[derive(Debug, Clone)]
pub struct WireFrame {
    bytes: Bytes,
    /// The payloads' (the JSON texts') total length.
    payload_len: u32,
    frames: u32,
}

impl WireFrame {
    /// Frames `text` once, with tungstenite's own encoder.
    pub fn text(text: &Utf8Bytes) -> WireFrame {
        let frame = Frame::message(Bytes::from(text.clone()), OpCode::Data(Data::Text), true);
        let mut buf = Vec::with_capacity(frame.len());
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut buf);
        WireFrame {
            bytes: Bytes::from(buf),
            payload_len: saturating_u32(text.len()),
            frames: 1,
        }
    }

    /// Header and payload, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payloads' (the JSON texts') length, for the byte counters.
    pub fn payload_len(&self) -> usize {
        self.payload_len as usize
    }

    /// How many WebSocket frames these bytes are.
    pub fn frames(&self) -> usize {
        self.frames as usize
    }

    /// The rest of frames a direct write began (see [`Outbox::offer_direct`]): it must be
    /// written before anything else and is never dropped, or the peer would see a cut frame.
    /// Its frames and payload were counted when the write began.
    pub fn is_rest(&self) -> bool {
        self.frames == 0
    }

    fn rest_from(&self, written: usize) -> WireFrame {
        WireFrame {
            bytes: self.bytes.slice(written..),
            payload_len: 0,
            frames: 0,
        }
    }

    /// What a queued frame is charged against the queue's bound: its bytes on the wire plus the
    /// queue slot and handle it occupies, so that many tiny frames are bounded too.
    #[inline]
    pub fn cost(&self) -> usize {
        self.bytes.len() + 48
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Text frames framed back to back into one buffer, for the same recipients: what one read
/// of a sender's socket brought to everyone becomes one [`WireFrame`], one queue entry and one
/// write per recipient instead of one per event.
#[derive(Debug, Default)]
pub struct FrameBatch {
    buf: Vec<u8>,
    payload_len: usize,
    frames: u32,
}

impl FrameBatch {
    /// Appends `text` as one frame, with tungstenite's own encoder.
    pub fn push_text(&mut self, text: &Utf8Bytes) {
        let frame = Frame::message(Bytes::from(text.clone()), OpCode::Data(Data::Text), true);
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut self.buf);
        self.payload_len += text.len();
        self.frames += 1;
    }

    /// Bytes framed so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Frames so far.
    pub fn frames(&self) -> usize {
        self.frames as usize
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frames so far as one [`WireFrame`]; the batch starts again empty (keeping its buffer
    /// unless a burst grew it past 64 KiB).
    pub fn take(&mut self) -> WireFrame {
        let frame = WireFrame {
            bytes: Bytes::copy_from_slice(&self.buf),
            payload_len: saturating_u32(self.payload_len),
            frames: self.frames,
        };
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        self.payload_len = 0;
        self.frames = 0;
        frame
    }
}

/// Why [`Outbox::push`] did not queue a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its byte bound already: the reader is too slow.
    Full,
    /// The connection is closing or has ended.
    Closed,
}

/// What a queue still accepts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Takes frames.
    #[default]
    Open,
    /// Takes no new frames; the waiting ones are still written (a drain).
    Sealed,
    /// Takes nothing and holds nothing.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<WireFrame>,
    /// What the waiting frames cost (see [`WireFrame::cost`]).
    bytes: usize,
    /// WebSocket frames waiting (an entry may hold several, see [`WireFrame::frames`]).
    count: usize,
    state: State,
    /// What a direct write left unwritten: goes out first, whatever happens to the queue.
    /// (Boxed: it is rare, and every connection carries the field.)
    rest: Option<Box<WireFrame>>,
}

/// Who writes to the connection's socket (see [`Outbox::offer_direct`]). `IDLE` means more:
/// nothing is queued, no rest waits and the queue is open; whoever changes one of these moves
/// the writer off `IDLE` first (under the queue's lock), so a deliverer needs one
/// compare-and-swap, not the lock, to know it may write.
///
/// The connection's task owns the socket.
const TASK: u8 = 0;
/// Nobody writes: the task released the socket and waits.
const IDLE: u8 = 1;
/// A deliverer writes, for one system call.
const DIRECT: u8 = 2;
/// A deliverer writes, and the task takes over when it is done: frames were queued meanwhile,
/// the queue was sealed or closed, or the task wants the socket.
const HANDOFF: u8 = 3;

/// What became of a frame offered with [`Outbox::offer_direct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Written to the socket (at least begun: the rest waits for the connection's task).
    Written,
    /// Queued for the connection's task.
    Queued,
}

/// A multi-producer, single-consumer queue of frames with one waker, bounded in bytes.
///
/// The bound is in bytes rather than frames, so that it bounds memory whatever the frame size:
/// a thousand 64 KiB broadcasts and a thousand 20-byte events are not the same load.
///
/// While the connection's task has nothing to write and waits, a deliverer may write a batch
/// straight to the socket ([`Outbox::offer_direct`]), as a raw server would, instead of
/// queuing it and waking the task: most listeners take a broadcast without their task running
/// at all. Who writes is one atomic: the task (from the start, and whenever it has anything to
/// write or reads: tungstenite may answer a ping while it reads), nobody (the task released
/// the socket: its queue was empty and it waits), or one deliverer, for one system call.
///
/// `repr(C)`: the writer and the socket first, next to the queue's lock (see [`Conn`]).
///
/// [`Conn`]: crate::registry::Conn
#[derive(Debug)]
#[repr(C)]
pub struct Outbox {
    /// `TASK`, `IDLE` or `DIRECT`.
    writer: AtomicU8,
    /// The socket a deliverer may write to while the task is idle: plain TCP only; -1 for none.
    fd: AtomicI32,
    queue: Mutex<Queue>,
    bound: usize,
    waker: AtomicWaker,
}

impl Outbox {
    /// A queue holding at most `bound` bytes of frames (see [`WireFrame::cost`]); whatever the
    /// bound, one frame always fits into an empty queue.
    pub fn new(bound: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            bound,
            waker: AtomicWaker::new(),
            writer: AtomicU8::new(TASK),
            fd: AtomicI32::new(-1),
        }
    }

    /// Lets deliverers write to `fd` while the task is idle. The task must call
    /// [`Outbox::retire_socket`] before the socket is closed.
    pub fn share_socket(&self, fd: RawFd) {
        self.fd.store(fd, Ordering::Release);
    }

    /// No more direct writes: waits for one under way to end (a single non-blocking system
    /// call), and keeps the socket for the task from now on.
    pub fn retire_socket(&self) {
        self.fd.store(-1, Ordering::Release);
        loop {
            match self
                .writer
                .compare_exchange(IDLE, TASK, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(TASK) => return,
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// The connection's task takes the socket: `Pending` while a deliverer writes to it (the
    /// task is woken when the write ends).
    pub fn poll_acquire(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self
                .writer
                .compare_exchange(IDLE, TASK, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(TASK) => return Poll::Ready(()),
                Err(_) => {
                    // Register before asking for the hand-off: the deliverer wakes after it.
                    self.waker.register(cx.waker());
                    match self.writer.compare_exchange(
                        DIRECT,
                        HANDOFF,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) | Err(HANDOFF) => return Poll::Pending,
                        // It changed meanwhile: look again.
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Moves the writer off `IDLE` (to the task, or to a hand-off after a direct write under
    /// way), before anything that `IDLE` rules out: a queued frame, a seal, a close. Called
    /// with the queue's lock held.
    fn hand_to_task(&self) {
        loop {
            let from = match self.writer.load(Ordering::Acquire) {
                IDLE => IDLE,
                DIRECT => DIRECT,
                _ => return,
            };
            let to = if from == IDLE { TASK } else { HANDOFF };
            if self
                .writer
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// The task has nothing to write and will wait: deliverers may write to the socket until it
    /// acquires it again. False (the task keeps it) when something waits in the queue, the
    /// queue is sealed or closed, or there is no socket to share.
    pub fn release(&self) -> bool {
        let q = self.lock();
        if !q.frames.is_empty()
            || q.rest.is_some()
            || q.state != State::Open
            || self.fd.load(Ordering::Acquire) < 0
        {
            return false;
        }
        self.writer.store(IDLE, Ordering::Release);
        true
    }

    /// Writes `frame` straight to the socket when the task is idle with nothing queued (one
    /// non-blocking system call; what the socket does not take waits for the task, which is
    /// woken), else queues it as [`Outbox::push`] does.
    pub fn offer_direct(&self, frame: &WireFrame) -> Result<Offered, PushError> {
        if self
            .writer
            .compare_exchange(IDLE, DIRECT, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return self.push(frame).map(|()| Offered::Queued);
        }
        let bytes = frame.as_bytes();
        let fd = self.fd.load(Ordering::Acquire);
        let written = if fd < 0 {
            // Retired just now: the task has it.
            0
        } else {
            // SAFETY: `fd` is the connection's open socket: the task closes it only after
            // `retire_socket`, which waits while the writer is DIRECT or HANDOFF, as it is
            // until below. The `ManuallyDrop` keeps this borrowed handle from closing it.
            let socket =
                std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
            // Non-blocking (the runtime set O_NONBLOCK); std sends with MSG_NOSIGNAL. An error
            // or a full socket leaves the frame to the task, which meets the same on its own
            // write.
            (&*socket).write(bytes).unwrap_or(0)
        };
        if written == bytes.len() {
            if self
                .writer
                .compare_exchange(DIRECT, IDLE, Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                // A hand-off was asked for meanwhile.
                self.writer.store(TASK, Ordering::Release);
                self.waker.wake();
            }
            return Ok(Offered::Written);
        }
        let offered = {
            let mut q = self.lock();
            let offered = if written > 0 {
                q.rest = Some(Box::new(frame.rest_from(written)));
                Ok(Offered::Written)
            } else if q.state == State::Open {
                // First in line: it came before anything queued while it was being written.
                q.frames.push_front(frame.clone());
                q.bytes += frame.cost();
                q.count += frame.frames();
                Ok(Offered::Queued)
            } else {
                Err(PushError::Closed)
            };
            self.writer.store(TASK, Ordering::Release);
            offered
        };
        self.waker.wake();
        offered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a consistent VecDeque; carry on.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting.
    #[inline]
    pub fn push(&self, frame: &WireFrame) -> Result<(), PushError> {
        let was_empty = {
            let mut q = self.lock();
            if q.state != State::Open {
                return Err(PushError::Closed);
            }
            let cost = frame.cost();
            if q.bytes + cost > self.bound && !q.frames.is_empty() {
                return Err(PushError::Full);
            }
            q.frames.push_back(frame.clone());
            q.bytes += cost;
            q.count += frame.frames();
            let was_empty = q.frames.len() == 1;
            if was_empty {
                self.hand_to_task();
            }
            was_empty
        };
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Wakes the consumer without queuing anything (a close request, say).
    pub fn notify(&self) {
        self.waker.wake();
    }

    /// Registers the consumer's waker for [`Outbox::notify`] and [`Outbox::push`].
    pub fn register(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Moves up to `max` entries into `out`; `Pending` (with the waker registered) when there
    /// are none. Ready with (WebSocket frames taken, frames still waiting).
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<WireFrame>,
        max: usize,
    ) -> Poll<(usize, usize)> {
        // Register before looking, so that a push between the look and the return still wakes.
        self.waker.register(cx.waker());
        let before = out.len();
        let taken = self.take(out, max);
        if out.len() == before {
            Poll::Pending
        } else {
            Poll::Ready(taken)
        }
    }

    /// Moves up to `max` entries into `out` without waiting; returns how many WebSocket frames
    /// they hold, and how many frames are still waiting.
    pub fn take(&self, out: &mut Vec<WireFrame>, max: usize) -> (usize, usize) {
        let mut q = self.lock();
        // A rest counts no frame: they were counted when its write began.
        out.extend(q.rest.take().map(|rest| *rest));
        let n = q.frames.len().min(max);
        let (mut cost, mut frames) = (0, 0);
        out.extend(q.frames.drain(..n).inspect(|f| {
            cost += f.cost();
            frames += f.frames();
        }));
        q.bytes -= cost;
        q.count -= frames;
        if q.frames.is_empty() && q.frames.capacity() > 64 {
            // A burst grew the queue: give the memory back once it has drained.
            q.frames = VecDeque::new();
        }
        (frames, q.count)
    }

    /// WebSocket frames waiting now.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Bytes waiting now (see [`WireFrame::cost`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Nothing waits: no frame, and no rest of a direct write.
    pub fn is_empty(&self) -> bool {
        let q = self.lock();
        q.frames.is_empty() && q.rest.is_none()
    }

    /// Refuses further frames but keeps the waiting ones for the consumer (a drain).
    pub fn seal(&self) {
        let mut q = self.lock();
        if q.state == State::Open {
            q.state = State::Sealed;
        }
        self.hand_to_task();
    }

    /// Refuses further frames and drops the waiting ones; returns how many were dropped.
    pub fn close(&self) -> usize {
        let mut q = self.lock();
        q.state = State::Closed;
        self.hand_to_task();
        q.bytes = 0;
        drop(std::mem::take(&mut q.frames));
        std::mem::take(&mut q.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn frames_are_framed_once_with_tungstenite() {
        let f = WireFrame::text(&Utf8Bytes::from_static("{\"eventType\":10}"));
        assert_eq!(f.payload_len(), 16);
        // FIN + text opcode, unmasked 7-bit length, then the payload.
        assert_eq!(&f.as_bytes()[..2], &[0x81, 16]);
        assert_eq!(&f.as_bytes()[2..], b"{\"eventType\":10}");
        let long = "x".repeat(300);
        let f = WireFrame::text(&Utf8Bytes::from(long));
        assert_eq!(&f.as_bytes()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.as_bytes().len(), 304);
    }

    #[test]
    fn one_wake_per_burst_and_a_bound() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let frame = WireFrame::text(&Utf8Bytes::from_static("{}"));
        let outbox = Outbox::new(3 * frame.cost());
        let mut out = Vec::new();
        assert_eq!(outbox.poll_take(&mut cx, &mut out, 10), Poll::Pending);
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(outbox.push(&frame), Err(PushError::Full));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken once for the burst"
        );
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.poll_take(&mut cx, &mut out, 2), Poll::Ready((2, 1)));
        assert_eq!(outbox.poll_take(&mut cx, &mut out, 2), Poll::Ready((1, 0)));
        assert_eq!(out.len(), 3);
        assert_eq!(outbox.poll_take(&mut cx, &mut out, 2), Poll::Pending);
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(outbox.bytes(), frame.cost());
        assert_eq!(outbox.close(), 1, "closing drops what waits");
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes(), 0);
        assert_eq!(outbox.push(&frame), Err(PushError::Closed));
    }

    #[test]
    fn bound_in_bytes_and_one_frame_always_fits() {
        let big = WireFrame::text(&Utf8Bytes::from("x".repeat(1000)));
        let small = WireFrame::text(&Utf8Bytes::from_static("{}"));
        let outbox = Outbox::new(100);
        assert_eq!(
            outbox.push(&big),
            Ok(()),
            "an empty queue takes any one frame"
        );
        assert_eq!(outbox.push(&small), Err(PushError::Full));
        outbox.take(&mut Vec::new(), 1);
        assert_eq!(outbox.bytes(), 0);
        assert_eq!(outbox.push(&small), Ok(()));
        assert_eq!(
            outbox.push(&small),
            Err(PushError::Full),
            "100 bytes hold one small frame"
        );
    }

    #[test]
    fn a_sealed_queue_keeps_what_waits_and_takes_nothing_new() {
        let frame = WireFrame::text(&Utf8Bytes::from_static("{}"));
        let outbox = Outbox::new(1 << 20);
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(outbox.push(&frame), Ok(()));
        outbox.seal();
        assert_eq!(outbox.push(&frame), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(outbox.take(&mut out, 10), (2, 0));
    }

    /// A connected loopback pair: the server side non-blocking (as the runtime leaves it),
    /// with a small send buffer when `sndbuf` is given.
    fn socket_pair(sndbuf: Option<usize>) -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        if let Some(size) = sndbuf {
            socket2::SockRef::from(&server)
                .set_send_buffer_size(size)
                .expect("sndbuf");
            socket2::SockRef::from(&client)
                .set_recv_buffer_size(size)
                .expect("rcvbuf");
        }
        (client, server)
    }

    fn read_exactly(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).expect("read");
        buf
    }

    #[test]
    fn an_idle_task_s_socket_takes_a_batch_directly_and_a_busy_one_queues_it() {
        let (mut client, server) = socket_pair(None);
        let outbox = Outbox::new(1 << 20);
        let mut batch = FrameBatch::default();
        batch.push_text(&Utf8Bytes::from_static("{\"a\":1}"));
        batch.push_text(&Utf8Bytes::from_static("{\"b\":2}"));
        let frame = batch.take();
        assert_eq!((frame.frames(), frame.payload_len()), (2, 14));
        // No socket shared yet, then shared but held by the task: queued.
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
        outbox.share_socket(std::os::fd::AsRawFd::as_raw_fd(&server));
        assert!(
            !outbox.release(),
            "the task keeps the socket while frames wait"
        );
        outbox.take(&mut Vec::new(), 10);
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
        outbox.take(&mut Vec::new(), 10);
        // Released: written to the socket, both frames back to back, nothing queued.
        assert!(outbox.release());
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Written));
        assert!(outbox.is_empty());
        assert_eq!(
            read_exactly(&mut client, frame.as_bytes().len()),
            b"\x81\x07{\"a\":1}\x81\x07{\"b\":2}"
        );
        // The task takes the socket back: queued again; once retired, never written again.
        let waker = std::task::Waker::noop();
        assert!(outbox
            .poll_acquire(&mut Context::from_waker(waker))
            .is_ready());
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
        outbox.take(&mut Vec::new(), 10);
        assert!(outbox.release());
        // A frame queued while the task is idle hands the socket back to the task (it is
        // woken to write it): nothing may be written before it.
        assert_eq!(outbox.push(&frame), Ok(()));
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
        assert!(outbox
            .poll_acquire(&mut Context::from_waker(waker))
            .is_ready());
        outbox.take(&mut Vec::new(), 10);
        // A sealed queue is not written to directly either.
        assert!(outbox.release());
        outbox.seal();
        assert_eq!(outbox.offer_direct(&frame), Err(PushError::Closed));
        assert!(
            !outbox.release(),
            "a sealed queue keeps the socket with the task"
        );
        outbox.retire_socket();
        assert_eq!(outbox.offer_direct(&frame), Err(PushError::Closed));
        let mut client_bytes = [0u8; 1];
        client.set_nonblocking(true).expect("non-blocking");
        assert!(
            std::io::Read::read(&mut client, &mut client_bytes).is_err(),
            "nothing was written after the first batch"
        );
    }

    #[test]
    fn a_retired_socket_is_the_task_s_alone() {
        let (_client, server) = socket_pair(None);
        let outbox = Outbox::new(1 << 20);
        let frame = WireFrame::text(&Utf8Bytes::from_static("{}"));
        outbox.share_socket(std::os::fd::AsRawFd::as_raw_fd(&server));
        assert!(outbox.release());
        outbox.retire_socket();
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
        outbox.take(&mut Vec::new(), 10);
        assert!(!outbox.release());
        assert_eq!(outbox.offer_direct(&frame), Ok(Offered::Queued));
    }

    #[test]
    fn what_a_full_socket_does_not_take_goes_first_and_is_never_dropped() {
        let (mut client, server) = socket_pair(Some(4096));
        let outbox = Outbox::new(1 << 20);
        outbox.share_socket(std::os::fd::AsRawFd::as_raw_fd(&server));
        assert!(outbox.release());
        let big = WireFrame::text(&Utf8Bytes::from("x".repeat(1 << 20)));
        let small = WireFrame::text(&Utf8Bytes::from_static("{}"));
        // The socket takes a part; the rest waits for the task, which is woken.
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        outbox.register(&mut Context::from_waker(&waker));
        assert_eq!(outbox.offer_direct(&big), Ok(Offered::Written));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(!outbox.is_empty());
        // Not written directly while a rest waits; a slow consumer's close keeps the rest.
        assert_eq!(outbox.offer_direct(&small), Ok(Offered::Queued));
        assert_eq!(outbox.close(), 1, "the queued frame is dropped");
        let mut out = Vec::new();
        outbox.take(&mut out, 10);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_rest() && out[0].frames() == 0);
        let rest = out[0].as_bytes().len();
        assert!(rest > 0 && rest < big.as_bytes().len());
        // What the socket took and the rest are the frame, byte for byte.
        let head = read_exactly(&mut client, big.as_bytes().len() - rest);
        assert_eq!(head[..], big.as_bytes()[..head.len()]);
        assert_eq!(out[0].as_bytes(), &big.as_bytes()[head.len()..]);
    }
}
