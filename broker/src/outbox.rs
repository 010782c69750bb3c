//! A connection's send queue, and the frames that travel through it.
//!
//! Fan-out is the hot path: one event goes to thousands of queues. So a frame is built once
//! for all recipients, WebSocket header included ([`WireFrame`]), and every queue gets a
//! reference-counted handle to the same bytes; the connection writes them to its socket
//! as they are, several frames per system call.
//!
//! The queue is a short critical section around a `VecDeque` (no allocation while it has
//! room, none at all for a connection that never receives anything), bounded in bytes, and the
//! connection's
//! task is woken only when the queue goes from empty to non-empty or a close is requested, so
//! a burst of events costs one wake-up per connection, not one per event.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A complete server-to-client text frame (unmasked, so the same bytes suit every recipient).
#[derive(Debug, Clone)]
pub struct WireFrame {
    bytes: Bytes,
    payload_len: usize,
}

impl WireFrame {
    /// Frames `text` once, with tungstenite's own encoder.
    pub fn text(text: &Utf8Bytes) -> WireFrame {
        let payload_len = text.len();
        let frame = Frame::message(Bytes::from(text.clone()), OpCode::Data(Data::Text), true);
        let mut buf = Vec::with_capacity(frame.len());
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut buf);
        WireFrame {
            bytes: Bytes::from(buf),
            payload_len,
        }
    }

    /// Header and payload, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload (the JSON text) length, for the byte counters.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// What a queued frame is charged against the queue's bound: its bytes on the wire plus the
    /// queue slot and handle it occupies, so that many tiny frames are bounded too.
    #[inline]
    pub fn cost(&self) -> usize {
        self.bytes.len() + 48
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
    state: State,
}

/// A multi-producer, single-consumer queue of frames with one waker, bounded in bytes.
///
/// The bound is in bytes rather than frames, so that it bounds memory whatever the frame size:
/// a thousand 64 KiB broadcasts and a thousand 20-byte events are not the same load.
#[derive(Debug)]
pub struct Outbox {
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
        }
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
            q.frames.len() == 1
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

    /// Moves up to `max` frames into `out`; `Pending` (with the waker registered) when there
    /// are none. Ready with (frames taken, frames still waiting).
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<WireFrame>,
        max: usize,
    ) -> Poll<(usize, usize)> {
        // Register before looking, so that a push between the look and the return still wakes.
        self.waker.register(cx.waker());
        match self.take(out, max) {
            (0, _) => Poll::Pending,
            taken => Poll::Ready(taken),
        }
    }

    /// Moves up to `max` frames into `out` without waiting; returns how many, and how many
    /// are still waiting.
    pub fn take(&self, out: &mut Vec<WireFrame>, max: usize) -> (usize, usize) {
        let mut q = self.lock();
        let n = q.frames.len().min(max);
        let mut cost = 0;
        out.extend(q.frames.drain(..n).inspect(|f| cost += f.cost()));
        q.bytes -= cost;
        if q.frames.is_empty() && q.frames.capacity() > 64 {
            // A burst grew the queue: give the memory back once it has drained.
            q.frames = VecDeque::new();
        }
        (n, q.frames.len())
    }

    /// Frames waiting now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Bytes waiting now (see [`WireFrame::cost`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses further frames but keeps the waiting ones for the consumer (a drain).
    pub fn seal(&self) {
        let mut q = self.lock();
        if q.state == State::Open {
            q.state = State::Sealed;
        }
    }

    /// Refuses further frames and drops the waiting ones; returns how many were dropped.
    pub fn close(&self) -> usize {
        let mut q = self.lock();
        q.state = State::Closed;
        q.bytes = 0;
        std::mem::take(&mut q.frames).len()
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
}
