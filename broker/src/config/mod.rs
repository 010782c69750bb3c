//! The broker's configuration: the Users server's `config.json`, plus the broker's own
//! `broker` object, plus `BROKER_...` environment overrides.
//!
//! One file serves both servers, so the reader is deliberately lenient about what is not ours
//! (unknown top-level and `websocket` keys are ignored) and strict about what is: every value we
//! read is typed, and a wrong one fails start-up with one line that names the key, and the
//! environment variable when the value came from one.
//!
//! The file is read as JSON exactly as Node's `JSON.parse` reads it (the same string escapes),
//! plus `//` and `/* */` comments and trailing commas ([`crate::jsonc`]), so the Users example
//! config (trailing commas inside arrays) loads as it is, and an escape JSON does not know
//! (`"\."`) is an error naming the key instead of silently becoming a bare `.`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The configuration compiled into the binary: port 8080 on all interfaces, approving only
/// browser pages served from this machine.
pub const EMBEDDED_DEFAULT: &str = r#"{
    // The broker's embedded default: local origins only, anchored at both ends.
    "websocket": {
        "port": 8080,
        "approvedSocketDomains": [
            "^(https?://)?(localhost|127\\.0\\.0\\.1|\\[::1\\])(:\\d+)?$",
        ],
    },
}"#;

/// A configuration problem, worded for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {error}")]
    Syntax {
        file: String,
        error: crate::jsonc::JsoncError,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{key}{from}: {message}")]
    Invalid {
        key: String,
        from: String,
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            from: String::new(),
            message: message.into(),
        }
    }
}

/// The longest `broker.drainWindow` accepted (seconds): larger values would overflow the
/// drain's timer arithmetic, and no rolling restart waits longer.
pub const MAX_DRAIN_WINDOW_SECS: f64 = 3600.0;

/// The whole effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Where this configuration came from (a path, or "embedded default"); not read from files.
    #[serde(skip)]
    pub source: String,
    #[serde(default)]
    pub websocket: WebsocketConfig,
    /// `ssl` and friends sit at the top level in the Users config.
    #[serde(default)]
    pub ssl: bool,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ssl_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ssl_cert: Option<PathBuf>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ssl_root: Option<PathBuf>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ssl_intermediate: Option<PathBuf>,
    #[serde(default)]
    pub broker: BrokerConfig,
    /// What validation compiled, for start-up to use as is.
    #[serde(skip)]
    compiled: Option<Compiled>,
}

/// What validation compiles from a configuration (the origin patterns into one DFA, the
/// certificates into TLS acceptors), kept so that start-up does not compile them again.
#[derive(Clone)]
struct Compiled {
    origin: Arc<crate::origin::OriginPolicy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ops_tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("tls", &self.tls.is_some())
            .field("ops_tls", &self.ops_tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The `websocket` object of the Users config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebsocketConfig {
    /// Address to bind; the original server bound every interface.
    #[serde(default = "default_host")]
    pub host: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Regular expressions matched against the `Origin` header with JavaScript
    /// `String.match` semantics (see [`crate::origin`]).
    #[serde(default)]
    pub approved_socket_domains: Vec<String>,
    /// The key that trusted publishers present in the `users-api-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_api_key: Option<String>,
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            host: default_host(),
            port: default_port(),
            approved_socket_domains: Vec::new(),
            socket_api_key: None,
        }
    }
}

/// Who receives an event that names a `username`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeliverUserEvents {
    /// That user's connections and the publishers (the broker's default).
    #[default]
    Owner,
    /// Every connection, as the original server did.
    All,
}

/// The broker's own settings: the `broker` object, which the Users server ignores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerConfig {
    pub deliver_user_events: DeliverUserEvents,
    /// HMAC-SHA256 secret for user tokens; without it, every connection is anonymous and a
    /// presented token is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// Shards of the connection registry; 0 means one per core.
    pub shards: usize,
    /// This instance's name in connection ids, logs and metrics; random when empty.
    pub instance_id: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    pub ops: OpsConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub history: HistoryConfig,
    pub limits: Limits,
    /// Seconds over which a draining instance closes its clients (spread, not all at once).
    pub drain_window: f64,
    /// Whether ordinary clients may send broadcast Echoes (the original server let them).
    pub client_broadcast: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            deliver_user_events: DeliverUserEvents::Owner,
            jwt_secret: None,
            shards: 0,
            instance_id: String::new(),
            log_format: LogFormat::Text,
            ops: OpsConfig::default(),
            admin: AdminConfig::default(),
            cluster: ClusterConfig::default(),
            history: HistoryConfig::default(),
            limits: Limits::default(),
            drain_window: 5.0,
            client_broadcast: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The operations listener: metrics, health, admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpsConfig {
    pub host: IpAddr,
    pub port: u16,
    /// Serve the ops listener over TLS (HTTPS), with the certificate of `sslKey`/`sslCert`
    /// (also when `ssl` itself is off, e.g. when a load balancer terminates the public TLS).
    pub tls: bool,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 9090,
            tls: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdminConfig {
    /// Bearer token for the admin API (every call); without it and `readToken` the admin API
    /// is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Bearer token that may only read (`GET`: list, stats, stream); a change made with it is
    /// refused with 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_token: Option<String>,
}

/// `broker.limits.readBufferBytes` by default: what an idle client connection holds for reading.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 512;

/// `broker.cluster.queueBytes` by default: 64 MiB of events waiting to be published to NATS.
pub const DEFAULT_CLUSTER_QUEUE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma separated; empty means standalone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<String>,
    /// Subject prefix shared by the instances of one deployment.
    pub subject: String,
    /// Bytes of events waiting to be published to NATS at most; past it they are not shared.
    pub queue_bytes: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: None,
            subject: String::new(),
            queue_bytes: DEFAULT_CLUSTER_QUEUE_BYTES,
        }
    }
}

/// The history that clients who asked for positions resume from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HistoryConfig {
    /// Bytes kept at most (frames plus 64 bytes each); 0 turns positions and resuming off.
    pub max_bytes: usize,
    /// Seconds an event is kept at most.
    pub max_age: f64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_bytes: 16 * 1024 * 1024,
            max_age: 300.0,
        }
    }
}

impl HistoryConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.max_age)
    }
}

/// Limits, each with a safe default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Open connections at most (clients and publishers).
    pub max_connections: usize,
    /// Open client connections per address (IPv6: per /64) at most; 0 turns the check off.
    /// Unset: [`DEFAULT_PER_ADDRESS_BEHIND_PROXIES`] when `trustedProxies` is set, else off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
    /// Connection slots that only publishers may take. Unset: 1 % of `maxConnections`, at
    /// least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_reserve: Option<usize>,
    /// Sockets still in their handshake (TLS and request head) at most; more are reset at once.
    pub max_pending_handshakes: usize,
    /// The same per address (IPv6: per /64; 0: no per-address bound); a trusted proxy's
    /// sockets count in the total only.
    pub max_pending_handshakes_per_address: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Seconds a socket has from its accept to the end of its request head (TLS included), and
    /// an HTTP connection between two requests.
    pub handshake_timeout: f64,
    /// Bytes in one message from an ordinary client at most.
    pub max_message_size: usize,
    /// Bytes in one message (or publish body) from a publisher at most.
    pub max_publisher_message_size: usize,
    /// Bytes waiting for one connection at most (frames on the wire plus 48 bytes each); past
    /// it the connection is closed as a slow consumer (1013).
    pub send_queue_bytes: usize,
    /// Bytes a client connection holds for reading while idle; a larger frame grows it while
    /// it arrives. Small, because every idle connection holds it (publishers get 16 KiB).
    pub read_buffer_bytes: usize,
    /// Seconds a connection's socket may take no byte while frames wait for it; then it is
    /// closed as a slow consumer (1013).
    pub slow_consumer_timeout: f64,
    /// Seconds a closing connection has to take its last frames and close frame before its TCP
    /// connection is reset (a drain adds `drainWindow`).
    pub close_grace: f64,
    /// Replaced by `sendQueueBytes`; kept only to name the replacement when it is set.
    #[serde(skip_serializing)]
    pub send_queue: Option<serde_json::Value>,
    /// Bad messages tolerated per `error_window` seconds before closing with 1008.
    pub error_budget: u32,
    pub error_window: f64,
    /// Messages per second one client may send (0: no limit); publishers are not limited.
    pub messages_per_second: u32,
    /// Broadcast Echoes and MetaRequests per second one ordinary client may send (0: no limit);
    /// past it they are refused with an error event. Publishers are not limited.
    pub client_fanout_per_second: u32,
    /// Bytes per second of broadcast Echoes and MetaRequests from one ordinary client (0: no
    /// limit); one message of `maxMessageSize` always fits.
    pub client_fanout_bytes_per_second: usize,
    /// Seconds between server pings.
    pub ping_interval: f64,
    /// Seconds without any frame from a client before it is dropped.
    pub idle_timeout: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_connections_per_address: None,
            publisher_reserve: None,
            max_pending_handshakes: 8192,
            max_pending_handshakes_per_address: 1024,
            trusted_proxies: Vec::new(),
            handshake_timeout: 10.0,
            max_message_size: 64 * 1024,
            max_publisher_message_size: 1024 * 1024,
            send_queue_bytes: 4 * 1024 * 1024,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            slow_consumer_timeout: 10.0,
            close_grace: 2.0,
            send_queue: None,
            error_budget: 20,
            error_window: 10.0,
            messages_per_second: 0,
            client_fanout_per_second: 20,
            client_fanout_bytes_per_second: 64 * 1024,
            ping_interval: 30.0,
            idle_timeout: 75.0,
        }
    }
}

fn default_host() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

fn default_port() -> u16 {
    8080
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(PathBuf::from))
}

impl Config {
    /// The embedded default with no environment applied.
    pub fn embedded_default() -> Config {
        Self::from_json_str(EMBEDDED_DEFAULT, "embedded default")
            .expect("the embedded default configuration is valid")
    }

    /// Loads the file at `path` (or the embedded default), then applies `BROKER_...`
    /// variables from the process environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (text, name) = match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
                (text, name)
            }
            None => (EMBEDDED_DEFAULT.to_string(), "embedded default".to_string()),
        };
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("BROKER_"))
            .collect();
        Self::from_parts(&text, &name, &env)
    }

    /// Parses configuration text without consulting the environment (used by tests and tools).
    pub fn from_json_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        Self::from_parts(text, name, &[])
    }

    /// Parses `text`, applies the given `BROKER_...` pairs, and validates.
    pub fn from_parts(
        text: &str,
        name: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut root = crate::jsonc::parse(text).map_err(|error| ConfigError::Syntax {
            file: name.to_string(),
            error,
        })?;
        if !root.is_object() {
            return Err(ConfigError::Parse {
                file: name.to_string(),
                message: "the top level must be a JSON object".into(),
            });
        }
        let from_env = env::apply(&mut root, env)?;
        let from_env: Vec<(&str, &str)> = from_env.iter().map(|(v, k)| (v.as_str(), *k)).collect();
        let mut config = Self::from_value(root, name, &from_env)?;
        config.source = name.to_string();
        // Compared with the peer's canonical address: `::ffff:127.0.0.1` is `127.0.0.1`.
        for ip in &mut config.broker.limits.trusted_proxies {
            *ip = ip.to_canonical();
        }
        // A range error names the variable too, when the value came from one.
        let compiled = config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, from, message } if from.is_empty() => {
                let from = from_env
                    .iter()
                    .find(|(_, k)| key == *k || key.starts_with(&format!("{k}[")))
                    .map(|(v, _)| format!(" (from {v})"))
                    .unwrap_or_default();
                ConfigError::Invalid { key, from, message }
            }
            other => other,
        })?;
        config.compiled = Some(compiled);
        Ok(config)
    }

    fn from_value(
        root: Value,
        name: &str,
        from_env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut unknown = BTreeSet::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| {
            let p = path.to_string();
            if p.starts_with("broker.") {
                unknown.insert(p);
            }
        };
        let de = serde_ignored::Deserializer::new(root, &mut on_unknown);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let from = from_env
                .iter()
                .find(|(_, k)| *k == key)
                .map(|(v, _)| format!(" (from {v})"))
                .unwrap_or_default();
            ConfigError::Invalid {
                key: format!("{name}: {key}"),
                from,
                message: e.into_inner().to_string(),
            }
        })?;
        for key in unknown {
            tracing::warn!(
                file = name,
                key,
                "unknown key in the broker object, ignored"
            );
        }
        Ok(config)
    }

    /// Checks what types alone cannot: ranges, files, patterns. What it compiles on the way
    /// (origin patterns, TLS acceptors) is kept for start-up.
    fn validate(&self) -> Result<Compiled, ConfigError> {
        let origin = crate::origin::OriginPolicy::new(&self.websocket.approved_socket_domains)
            .map_err(|e| ConfigError::invalid("websocket.approvedSocketDomains", e.to_string()))?;
        if let Some(key) = &self.websocket.socket_api_key {
            if key.is_empty() {
                return Err(ConfigError::invalid(
                    "websocket.socketApiKey",
                    "must not be empty (leave it out to have no publishers)",
                ));
            }
        }
        let l = &self.broker.limits;
        positive_secs("broker.limits.handshakeTimeout", l.handshake_timeout)?;
        positive_secs("broker.limits.errorWindow", l.error_window)?;
        positive_secs("broker.limits.pingInterval", l.ping_interval)?;
        positive_secs("broker.limits.idleTimeout", l.idle_timeout)?;
        positive_secs("broker.limits.slowConsumerTimeout", l.slow_consumer_timeout)?;
        positive_secs("broker.limits.closeGrace", l.close_grace)?;
        positive_secs("broker.history.maxAge", self.broker.history.max_age)?;
        if l.send_queue.is_some() {
            return Err(ConfigError::invalid(
                "broker.limits.sendQueue",
                "was replaced by broker.limits.sendQueueBytes (a bound in bytes, default 4194304) and broker.limits.slowConsumerTimeout (seconds, default 10): remove sendQueue",
            ));
        }
        if !(l.drain_window_ok(self.broker.drain_window)) {
            return Err(ConfigError::invalid(
                "broker.drainWindow",
                format!(
                    "{} is not a number of seconds from 0 to {MAX_DRAIN_WINDOW_SECS} (an hour); write e.g. 30",
                    self.broker.drain_window
                ),
            ));
        }
        for (key, v) in [
            ("broker.limits.maxConnections", l.max_connections),
            (
                "broker.limits.maxPendingHandshakes",
                l.max_pending_handshakes,
            ),
            ("broker.limits.maxMessageSize", l.max_message_size),
            (
                "broker.limits.maxPublisherMessageSize",
                l.max_publisher_message_size,
            ),
            ("broker.limits.sendQueueBytes", l.send_queue_bytes),
            ("broker.cluster.queueBytes", self.broker.cluster.queue_bytes),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if !(128..=1 << 20).contains(&l.read_buffer_bytes) {
            return Err(ConfigError::invalid(
                "broker.limits.readBufferBytes",
                "must be between 128 and 1048576",
            ));
        }
        if let Some(r) = l.publisher_reserve {
            if r >= l.max_connections {
                return Err(ConfigError::invalid(
                    "broker.limits.publisherReserve",
                    format!(
                        "{r} leaves no slot for clients: it must be less than broker.limits.maxConnections ({})",
                        l.max_connections
                    ),
                ));
            }
        }
        if l.idle_timeout <= l.ping_interval {
            return Err(ConfigError::invalid(
                "broker.limits.idleTimeout",
                format!(
                    "must be longer than broker.limits.pingInterval ({}s), or every client is dropped between pings",
                    l.ping_interval
                ),
            ));
        }
        let id = &self.broker.instance_id;
        if !valid_instance_id(id) {
            return Err(ConfigError::invalid(
                "broker.instanceId",
                format!("{id:?}: use at most 64 ASCII letters, digits, '-' or '_' (it is part of connection ids and NATS subjects), or leave it empty for a random one"),
            ));
        }
        let subject = &self.broker.cluster.subject;
        if subject
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
            && !subject.is_empty()
        {
            return Err(ConfigError::invalid(
                "broker.cluster.subject",
                format!("{subject:?} is not a valid NATS subject prefix"),
            ));
        }
        if self.broker.shards > 1 << 16 {
            return Err(ConfigError::invalid("broker.shards", "at most 65536"));
        }
        if let Some(secret) = &self.broker.jwt_secret {
            if secret.len() < 16 {
                return Err(ConfigError::invalid(
                    "broker.jwtSecret",
                    "must be at least 16 bytes long",
                ));
            }
        }
        for (key, token) in [
            ("broker.admin.token", &self.broker.admin.token),
            ("broker.admin.readToken", &self.broker.admin.read_token),
        ] {
            if token.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(ConfigError::invalid(
                    key,
                    "must be at least 16 characters long",
                ));
            }
        }
        if self.broker.admin.token.is_some()
            && self.broker.admin.token == self.broker.admin.read_token
        {
            return Err(ConfigError::invalid(
                "broker.admin.readToken",
                "must differ from broker.admin.token (it would grant every call)",
            ));
        }
        if self.broker.ops.tls && (self.ssl_key.is_none() || self.ssl_cert.is_none()) {
            return Err(ConfigError::invalid(
                "broker.ops.tls",
                "needs sslKey and sslCert (the ops listener serves the same certificate as wss://)",
            ));
        }
        if self.ssl || self.broker.ops.tls {
            for (key, v) in [("sslKey", &self.ssl_key), ("sslCert", &self.ssl_cert)] {
                match v {
                    None => return Err(ConfigError::invalid(key, "is required when ssl is true")),
                    Some(p) if !p.is_file() => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{}: no such file", p.display()),
                        ))
                    }
                    Some(_) => {}
                }
            }
            for (key, v) in [
                ("sslRoot", &self.ssl_root),
                ("sslIntermediate", &self.ssl_intermediate),
            ] {
                if let Some(p) = v {
                    if !p.is_file() {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{}: no such file", p.display()),
                        ));
                    }
                }
            }
        }
        Ok(Compiled {
            origin: Arc::new(origin),
            tls: self.build_tls(self.ssl)?,
            ops_tls: self.build_tls(self.broker.ops.tls)?,
        })
    }

    fn tls_files(&self) -> crate::tls::Files<'_> {
        crate::tls::Files {
            key: self.ssl_key.as_deref(),
            cert: self.ssl_cert.as_deref(),
            root: self.ssl_root.as_deref(),
            intermediate: self.ssl_intermediate.as_deref(),
        }
    }

    fn tls_error(e: crate::tls::TlsError) -> ConfigError {
        ConfigError::Invalid {
            key: e.key.to_string(),
            from: String::new(),
            message: e.message,
        }
    }

    fn build_tls(&self, on: bool) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
        if !on {
            return Ok(None);
        }
        crate::tls::acceptor(self.tls_files())
            .map(Some)
            .map_err(Self::tls_error)
    }

    /// What validation compiled; compiled now if this configuration was not made by loading.
    fn compiled(&self) -> Result<Compiled, ConfigError> {
        match &self.compiled {
            Some(c) => Ok(c.clone()),
            None => self.validate(),
        }
    }

    /// The origin allow-list, compiled once into one multi-pattern DFA.
    pub fn origin_policy(&self) -> Result<Arc<crate::origin::OriginPolicy>, ConfigError> {
        Ok(self.compiled()?.origin)
    }

    /// The acceptor of the WebSocket port (`wss://`), or `None` when `ssl` is off.
    pub fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
        Ok(self.compiled()?.tls)
    }

    /// The acceptor of the ops listener (`broker.ops.tls`): the same certificate as `wss://`.
    pub fn ops_tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
        Ok(self.compiled()?.ops_tls)
    }

    /// Registry shards: the configured count, or one per core, rounded up to a power of two
    /// (the registry's hashing needs one).
    pub fn shard_count(&self) -> usize {
        let n = if self.broker.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.broker.shards
        };
        n.max(2).next_power_of_two()
    }

    /// The effective configuration as pretty JSON with secrets masked (for `check-config`).
    pub fn to_display_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for path in [
            "websocket.socketApiKey",
            "broker.jwtSecret",
            "broker.admin.token",
            "broker.admin.readToken",
        ] {
            if env::get_path(&v, path).is_some() {
                env::set_path(&mut v, path, Value::String("********".into()));
            }
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// `maxConnectionsPerAddress` when it is unset and `trustedProxies` is set.
pub const DEFAULT_PER_ADDRESS_BEHIND_PROXIES: usize = 1000;

impl Limits {
    /// Client connections per address at most (0: no limit), the default applied.
    pub fn per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or(if self.trusted_proxies.is_empty() {
                0
            } else {
                DEFAULT_PER_ADDRESS_BEHIND_PROXIES
            })
    }

    /// Slots only publishers may take, the default applied.
    pub fn publisher_reserve(&self) -> usize {
        self.publisher_reserve
            .unwrap_or(self.max_connections.div_ceil(100))
            .min(self.max_connections.saturating_sub(1))
    }

    fn drain_window_ok(&self, w: f64) -> bool {
        w.is_finite() && (0.0..=MAX_DRAIN_WINDOW_SECS).contains(&w)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout)
    }
    pub fn error_window(&self) -> Duration {
        Duration::from_secs_f64(self.error_window)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout)
    }
    pub fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.slow_consumer_timeout)
    }
    pub fn close_grace(&self) -> Duration {
        Duration::from_secs_f64(self.close_grace)
    }
}

/// `broker.instanceId`: at most 64 of `[A-Za-z0-9_-]` (empty: a random one). No `.`, `*`, `>`
/// or space, so it is one NATS subject token and one part of a wire id.
pub fn valid_instance_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn positive_secs(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{v} is not a positive number of seconds"),
        ))
    }
}

mod env;
#[cfg(test)]
mod tests;
