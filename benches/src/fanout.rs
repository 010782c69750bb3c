//! Fan-out set-ups: the broker's registry, and plain queues for the straightforward design.
//!
//! The broker hands each recipient a pre-framed, shared `WireFrame` through its own bounded
//! outbox (`broker::registry::Conn::offer`). The plain designs use bounded tokio queues with
//! `try_send`: a shared `Utf8Bytes` (encode once, a reference-count bump per recipient), or a
//! fresh `String` per recipient (the straightforward design).

use std::net::SocketAddr;
use std::sync::Arc;

use broker::outbox::WireFrame;
use broker::registry::{Conn, NewConn, Registry};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event::{files_uploaded, FilesEvent};

/// The broker's default send-queue bound in bytes (`broker.limits.sendQueueBytes`).
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// The channel bound of the per-connection baseline: what 4 MiB hold of the ~1 KiB event.
pub const QUEUE_BOUND: usize = 4096;

/// The event every fan-out benchmark delivers: a FilesUploaded of two files, about 1 KiB.
pub fn event() -> FilesEvent {
    files_uploaded(2)
}

/// The broker's registry shard count on this machine: one per core, at least 2, a power of two.
pub fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(2)
        .next_power_of_two()
}

/// A registry with `n` anonymous client connections (whose outboxes are the queues).
pub fn registry_with(n: usize) -> (Registry, Vec<Arc<Conn>>) {
    let registry = Registry::new("bench", shard_count(), QUEUE_BYTES);
    let remote: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let receivers = (0..n)
        .map(|_| {
            registry.register(NewConn {
                remote,
                origin: Some("https://app.example.com".into()),
                user: None,
                publisher: false,
                positions: false,
                resuming: false,
            })
        })
        .collect();
    (registry, receivers)
}

/// Encode once: serialize the event a single time into a frame every recipient shares.
pub fn encode_once<T: Serialize>(event: &T) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(event).expect("serializes"))
}

/// The broker's encode once: serialize once, frame once.
pub fn frame_once<T: Serialize>(event: &T) -> WireFrame {
    WireFrame::text(&encode_once(event))
}

/// Empties every connection's outbox, as their tasks would; returns how many frames waited.
pub fn drain_outboxes(conns: &[Arc<Conn>]) -> usize {
    let mut batch = Vec::new();
    conns
        .iter()
        .map(|c| {
            batch.clear();
            c.outbox.take(&mut batch, usize::MAX).0
        })
        .sum()
}

/// `n` plain bounded queues of messages of type `M`.
pub fn queues<M>(n: usize) -> (Vec<mpsc::Sender<M>>, Vec<mpsc::Receiver<M>>) {
    (0..n).map(|_| mpsc::channel(QUEUE_BOUND)).unzip()
}

/// The straightforward design: serialize the event for each recipient, then send it.
pub fn serialize_per_recipient<T: Serialize>(event: &T, senders: &[mpsc::Sender<String>]) -> usize {
    senders
        .iter()
        .filter(|tx| {
            let json = serde_json::to_string(event).expect("serializes");
            tx.try_send(json).is_ok()
        })
        .count()
}

/// Encode once into plain queues, one after another on one thread: the registry's design
/// without its sharding or its parallel walk.
pub fn shared_to_plain_queues(frame: &Utf8Bytes, senders: &[mpsc::Sender<Utf8Bytes>]) -> usize {
    senders
        .iter()
        .filter(|tx| tx.try_send(frame.clone()).is_ok())
        .count()
}

/// Empties every queue, as the connections' writer tasks would; returns how many messages
/// were waiting.
pub fn drain<M>(receivers: &mut [mpsc::Receiver<M>]) -> usize {
    receivers
        .iter_mut()
        .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_about_one_kib() {
        let len = encode_once(&event()).len();
        assert!((900..=1200).contains(&len), "{len} bytes");
    }

    #[test]
    fn every_design_reaches_every_recipient_once() {
        let event = event();
        // Past the registry's parallel threshold too.
        for n in [1, 10, 5000] {
            let (registry, conns) = registry_with(n);
            assert_eq!(registry.deliver_all(&frame_once(&event), None), n);
            assert_eq!(drain_outboxes(&conns), n);
            assert_eq!(drain_outboxes(&conns), 0);

            let (txs, mut rxs) = queues(n);
            assert_eq!(serialize_per_recipient(&event, &txs), n);
            assert_eq!(drain(&mut rxs), n);

            let (txs, mut rxs) = queues(n);
            assert_eq!(shared_to_plain_queues(&encode_once(&event), &txs), n);
            assert_eq!(drain(&mut rxs), n);
        }
    }
}
