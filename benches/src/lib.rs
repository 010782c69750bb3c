//! Criterion benchmarks of the broker hot path live in `benches/`.
