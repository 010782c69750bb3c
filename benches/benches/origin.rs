//! The origin check on every connection: the broker's one-pass multi-pattern regex against
//! the original design of trying each pattern in turn.
//!
//! For each allow-list size, two origins: one that only the last pattern approves (the worst
//! case for trying in turn; real traffic comes mostly from the listed tenants) and a look-alike
//! that none approves (every pattern must be tried).
//!
//! - `dfa`: `broker::origin::OriginPolicy::is_approved`.
//! - `each_precompiled`: every pattern compiled once at start-up with the `regex` crate, then
//!   `patterns.iter().any(|re| re.is_match(origin))`: the original design at its best.
//! - `each_compiled_per_connection`: every pattern compiled on every connection, as
//!   `origin.match(new RegExp(p))` did (compiled by the Rust `regex` crate, not by V8).

use std::hint::black_box;
use std::time::Duration;

use broker::origin::OriginPolicy;
use broker_benches::origin::{
    approved_origin, compile_each_and_match, patterns, OneAtATime, REFUSED_ORIGIN,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

fn origin(c: &mut Criterion) {
    for n in [7, 100, 1000] {
        let list = patterns(n);
        let policy = OriginPolicy::new(&list).expect("the benchmark patterns compile");
        let each = OneAtATime::new(&list);
        let approved = approved_origin(n);
        let mut group = c.benchmark_group(format!("origin_{n}_patterns"));
        for (label, origin) in [
            ("approved", approved.as_bytes()),
            ("refused", REFUSED_ORIGIN.as_bytes()),
        ] {
            group.sampling_mode(SamplingMode::Auto).sample_size(50);
            group.bench_with_input(BenchmarkId::new("dfa", label), origin, |b, o| {
                b.iter(|| policy.is_approved(black_box(o)))
            });
            group.bench_with_input(
                BenchmarkId::new("each_precompiled", label),
                origin,
                |b, o| b.iter(|| each.is_approved(black_box(o))),
            );
            // Milliseconds per call at 1,000 patterns: few samples, each of one or two calls.
            group.sampling_mode(SamplingMode::Flat).sample_size(10);
            group.bench_with_input(
                BenchmarkId::new("each_compiled_per_connection", label),
                origin,
                |b, o| b.iter(|| compile_each_and_match(&list, black_box(o))),
            );
        }
        group.finish();
    }
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
    targets = origin
}
criterion_main!(benches);
