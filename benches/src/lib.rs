//! Inputs and baselines for the broker's hot-path benchmarks.
//!
//! The benchmarks themselves are in `benches/` (one criterion target per hot path); this library
//! holds what they measure against, so the inputs can be tested for what they claim: that the
//! approved origin is approved by the last pattern alone, that the baseline decoder routes every
//! event exactly as the broker does, that every recipient gets the event once.
//!
//! - [`origin`]: allow-lists of 7, 100 and 1,000 patterns, and the original one-at-a-time check.
//! - [`event`]: realistic events of types 1 to 10, and decoding with `serde_json`.
//! - [`fanout`]: a realistic FilesUploaded event and serialize-per-recipient delivery.

pub mod event;
pub mod fanout;
pub mod origin;
