//! A connection's send queue, and the frames that travel through it.
//!
//! Fan-out is the hot path: one event goes to thousands of queues. So a frame is built once
//! for all recipients, WebSocket header included ([`WireFrame`]), and every queue gets a
//! reference-counted handle to the same bytes; the connection writes them to its socket
//! as they are, several frames per system call.
//!
//! The queue is a short critical section around a `VecDeque` (no allocation while it has
//! room, none at all for a connection that never receives anything), and the connection's
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
}

/// Why [`Outbox::push`] did not queue a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its bound already: the reader is too slow.
    Full,
    /// The connection has ended.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<WireFrame>,
    closed: bool,
}

/// A bounded multi-producer, single-consumer queue of frames with one waker.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    bound: usize,
    waker: AtomicWaker,
}

impl Outbox {
    pub fn new(bound: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            bound: bound.max(1),
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
            if q.closed {
                return Err(PushError::Closed);
            }
            if q.frames.len() >= self.bound {
                return Err(PushError::Full);
            }
            q.frames.push_back(frame.clone());
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

    /// Registers the consumer's waker for [`Outbox::notify`] and [`Outbox::push`].
    pub fn register(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Moves up to `max` frames into `out` without waiting; returns how many, and how many
    /// are still waiting.
    pub fn take(&self, out: &mut Vec<WireFrame>, max: usize) -> (usize, usize) {
        let mut q = self.lock();
        let n = q.frames.len().min(max);
        out.extend(q.frames.drain(..n));
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses further frames and drops the waiting ones (the connection has ended).
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.frames = VecDeque::new();
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
        let outbox = Outbox::new(3);
        let frame = WireFrame::text(&Utf8Bytes::from_static("{}"));
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
        outbox.close();
        assert!(outbox.is_empty());
        assert_eq!(outbox.push(&frame), Err(PushError::Closed));
    }
}
