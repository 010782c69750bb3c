//! A high-throughput WebSocket event broker, wire-compatible with the Users WebSocket API.
//!
//! The file list is the architecture, a stack: each module uses only modules below it
//! (`tests/architecture.rs` fails otherwise). Top to bottom:
//!
//! - [`app`]: start one instance (build everything, spawn every task) and stop it.
//! - [`ops`]: the ops listener: `/metrics`, `/healthz`, `/readyz`, and the admin API under it.
//! - [`admin`]: the admin API's HTTP routes (tokens, versions, JSON); the work is below.
//! - [`fleet`]: the other instances: heartbeats, and admin requests between instances.
//! - [`control`]: what an operator can do to this instance (list, stats, kick, drain).
//! - [`memory`]: handing memory back to the system after many connections have left.
//! - [`server`]: the WebSocket port: accept, TLS, the request head, admission, the upgrade.
//! - [`shared`]: one instance's core, as the tasks above the connections see it.
//! - [`connection`]: one client's task: reader, writer, send queue, limits.
//! - [`publish`]: `POST /api/publish` (HTTP/1.1 with hyper).
//! - [`router`]: who receives an event, here and through the cluster; a resume's replay.
//! - [`cluster`]: the NATS link: sharing events, MetaRequests and the JetStream history.
//! - [`shutdown`]: readiness, drain and shutdown, one path for every cause.
//! - [`activity`]: what the admin API shows of connections, live, and the last minutes.
//! - [`handshake`]: the HTTP request head and what it asks for, plain HTTP answers.
//! - [`gate`]: limits before and at the upgrade: pending handshakes, slots, per-address counts.
//! - [`metrics`]: Prometheus metrics, reasons and labels as enums.
//! - [`registry`]: the sharded connection map, a connection's handle and its close requests.
//! - [`config`]: the Users `config.json` plus the broker's own settings and `BROKER_...` overrides.
//! - [`origin`]: the origin allow-list, compiled once into one multi-pattern regex.
//! - [`tls`]: rustls acceptors from certificate files.
//! - Leaves: [`jsregex`] (JavaScript patterns as byte regexes), [`jsonc`] (JSON as `JSON.parse`
//!   reads it, plus comments), [`event`] (the event table, SIMD decoding, the error event),
//!   [`auth`] (user tokens, HS256 JWT), [`history`] (positions, the in-memory history),
//!   [`outbox`] (a connection's send queue, bounded in bytes), [`target`] (who an event is for).

pub mod activity;
pub mod admin;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod event;
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
pub mod router;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod target;
pub mod tls;
