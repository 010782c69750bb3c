//! A high-throughput WebSocket event broker, wire-compatible with the Users WebSocket API.
//!
//! The file list is the architecture:
//! - [`config`]: the Users `config.json` plus the broker's own settings and `BROKER_...` overrides.
//! - [`jsonc`]: JSON as `JSON.parse` reads it, plus comments and trailing commas.
//! - [`jsregex`]: JavaScript patterns translated to byte regexes with the same matches, or refused.
//! - [`origin`]: the origin allow-list, compiled once into one multi-pattern regex.
//! - [`event`]: the event table, SIMD decoding, the error event.
//! - [`gate`]: limits before and at the upgrade: pending handshakes, slots, per-address counts.
//! - [`handshake`]: the HTTP request head and what it asks for, plain HTTP answers.
//! - [`auth`]: user tokens (HS256 JWT).
//! - [`tls`]: `wss://` with rustls, from the Users config's `ssl*` keys.
//! - [`connection`]: one client: reader, writer, send queue.
//! - [`registry`]: the sharded connection map, a connection's handle and its close requests.
//! - [`outbox`]: a connection's send queue, bounded in bytes.
//! - [`fanout`]: routing and delivering one encoded event to many.
//! - [`history`]: positions and the history a resuming client replays.
//! - [`publish`]: `POST /api/publish`.
//! - [`metrics`], [`ops`], [`admin`]: Prometheus metrics, health, the admin API's HTTP routes.
//! - [`control`]: what an operator can do to this instance (list, stats, kick, drain), whoever
//!   asks; [`fleet`]: the other instances, heartbeats and admin requests between them.
//! - [`cluster`]: sharing events with the other instances through NATS.
//! - [`memory`]: handing memory back to the system after many connections have left.
//! - [`server`]: the accept loop, start-up and shutdown.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod event;
pub mod fanout;
pub mod fleet;
pub mod gate;
pub mod handshake;
pub mod history;
pub mod jsonc;
pub mod jsregex;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod origin;
pub mod outbox;
pub mod publish;
pub mod registry;
pub mod server;
pub mod tls;
