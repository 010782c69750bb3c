//! Delivering one event to N recipients: encode once and share the frame, against serialize
//! per recipient. Throughput is in recipients.
//!
//! - `encode_once_registry`: serialize and frame the event once into a `WireFrame`, then
//!   `broker::registry::Registry::deliver_all` (sharded map, one outbox per connection).
//! - `encode_once_plain_queues`: the same shared frame offered to N plain tokio queues in turn
//!   on one thread: encode-once without the registry's sharding or parallel walk.
//! - `serialize_per_recipient`: for each of N plain tokio queues, `serde_json::to_string` of the
//!   event, then send: the straightforward design.
//!
//! What is timed: serializing and offering to every queue (`try_send`), nothing else. After
//! each call the queues are emptied outside the timed part, as the connections' writer tasks
//! would empty them; so the writers' work (and freeing the per-recipient strings) is not in the
//! figures, and the queues are empty at every call, as for clients that keep up.

use std::hint::black_box;
use std::time::{Duration, Instant};

use broker_benches::fanout::{
    drain, drain_outboxes, encode_once, event, frame_once, queues, registry_with,
    serialize_per_recipient, shared_to_plain_queues,
};
use criterion::{
    criterion_group, criterion_main, AxisScale, BenchmarkId, Criterion, PlotConfiguration,
    SamplingMode, Throughput,
};

/// Times `deliver` alone, `iters` times, running `drain` untimed after each call.
fn timed(iters: u64, mut deliver: impl FnMut() -> usize, mut drain: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        black_box(deliver());
        total += start.elapsed();
        drain();
    }
    total
}

fn fanout(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("fanout");
    group.plot_config(PlotConfiguration::default().summary_scale(AxisScale::Logarithmic));
    for n in [1usize, 10, 100, 1000, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        if n >= 1000 {
            group.sampling_mode(SamplingMode::Flat).sample_size(20);
        } else {
            group.sampling_mode(SamplingMode::Auto).sample_size(50);
        }

        let (registry, conns) = registry_with(n);
        group.bench_function(BenchmarkId::new("encode_once_registry", n), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || registry.deliver_all(&frame_once(black_box(&event)), None),
                    || assert_eq!(drain_outboxes(&conns), n),
                )
            })
        });
        drop((registry, conns));

        let (txs, mut rxs) = queues(n);
        group.bench_function(BenchmarkId::new("encode_once_plain_queues", n), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || shared_to_plain_queues(&encode_once(black_box(&event)), &txs),
                    || assert_eq!(drain(&mut rxs), n),
                )
            })
        });
        drop((txs, rxs));

        let (txs, mut rxs) = queues(n);
        group.bench_function(BenchmarkId::new("serialize_per_recipient", n), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || serialize_per_recipient(black_box(&event), &txs),
                    || assert_eq!(drain(&mut rxs), n),
                )
            })
        });
    }
    group.finish();
}

/// Short runs: a full `cargo bench -p broker-benches` takes a few minutes on two cores.
/// `--warm-up-time` and `--measurement-time` on the command line still override these.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
