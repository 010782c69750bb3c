//! Decoding one incoming message for routing: the broker's `simd-json` tape decoder against
//! `serde_json` into a `Value` tree followed by the same field checks, for every event type at
//! realistic sizes. Throughput is in bytes of message.

use std::hint::black_box;
use std::time::Duration;

use broker_benches::event::{decode_serde_json, fixtures};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.sample_size(50);
    for f in fixtures() {
        group.throughput(Throughput::Bytes(f.payload.len() as u64));
        group.bench_with_input(BenchmarkId::new("simd_json", f.name), &f.payload, |b, p| {
            b.iter(|| broker::event::decode(black_box(p)).is_ok())
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json", f.name),
            &f.payload,
            |b, p| b.iter(|| decode_serde_json(black_box(p)).is_ok()),
        );
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
    targets = decode
}
criterion_main!(benches);
