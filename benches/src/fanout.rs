//! Fan-out set-ups: the broker's registry, and plain queues for the straightforward design.
//!
//! Both designs hand each recipient a message through a bounded tokio queue with `try_send`,
//! the way `broker::registry::Conn::offer` does, so the difference measured is where the JSON
//! work happens: once per event (a shared `Utf8Bytes` whose clone is a reference-count bump)
//! or once per recipient (a fresh `String` each).

use std::net::SocketAddr;

use broker::registry::{NewConn, Registry};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event::{files_uploaded, FilesEvent};

/// The broker's default send-queue bound (`broker.limits.sendQueue`).
pub const QUEUE_BOUND: usize = 1024;

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

/// A registry with `n` anonymous client connections, and the receiving ends of their queues.
pub fn registry_with(n: usize) -> (Registry, Vec<mpsc::Receiver<Utf8Bytes>>) {
    let registry = Registry::new("bench", shard_count(), QUEUE_BOUND);
    let remote: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let receivers = (0..n)
        .map(|_| {
            registry
                .register(NewConn {
                    remote,
                    origin: Some("https://app.example.com".into()),
                    user: None,
                    publisher: false,
                })
                .1
        })
        .collect();
    (registry, receivers)
}

/// Encode once: serialize the event a single time into a frame every recipient shares.
pub fn encode_once<T: Serialize>(event: &T) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(event).expect("serializes"))
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
            let (registry, mut rxs) = registry_with(n);
            assert_eq!(registry.deliver_all(&encode_once(&event), None), n);
            assert_eq!(drain(&mut rxs), n);
            assert_eq!(drain(&mut rxs), 0);

            let (txs, mut rxs) = queues(n);
            assert_eq!(serialize_per_recipient(&event, &txs), n);
            assert_eq!(drain(&mut rxs), n);

            let (txs, mut rxs) = queues(n);
            assert_eq!(shared_to_plain_queues(&encode_once(&event), &txs), n);
            assert_eq!(drain(&mut rxs), n);
        }
    }
}
