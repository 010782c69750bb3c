//! Settings from the environment: every `BROKER_...` variable and the config key it sets,
//! `BROKER_X_FILE` for secrets mounted as files, and setting a key path in the JSON tree
//! before it is read.

use serde_json::Value;

use super::ConfigError;

/// How an environment variable's text becomes a JSON value.
#[derive(Clone, Copy)]
enum EnvKind {
    /// Taken verbatim as a string.
    Text,
    /// Parsed as JSON (numbers, booleans, arrays), with the file's comments and trailing commas.
    Json,
}

/// Every environment override: variable, config key path, how to read it.
const ENV_OVERRIDES: &[(&str, &str, EnvKind)] = &[
    ("BROKER_HOST", "websocket.host", EnvKind::Text),
    ("BROKER_PORT", "websocket.port", EnvKind::Json),
    (
        "BROKER_APPROVED_SOCKET_DOMAINS",
        "websocket.approvedSocketDomains",
        EnvKind::Json,
    ),
    (
        "BROKER_SOCKET_API_KEY",
        "websocket.socketApiKey",
        EnvKind::Text,
    ),
    ("BROKER_SSL", "ssl", EnvKind::Json),
    ("BROKER_SSL_KEY", "sslKey", EnvKind::Text),
    ("BROKER_SSL_CERT", "sslCert", EnvKind::Text),
    ("BROKER_SSL_ROOT", "sslRoot", EnvKind::Text),
    ("BROKER_SSL_INTERMEDIATE", "sslIntermediate", EnvKind::Text),
    (
        "BROKER_DELIVER_USER_EVENTS",
        "broker.deliverUserEvents",
        EnvKind::Text,
    ),
    ("BROKER_JWT_SECRET", "broker.jwtSecret", EnvKind::Text),
    ("BROKER_SHARDS", "broker.shards", EnvKind::Json),
    ("BROKER_INSTANCE_ID", "broker.instanceId", EnvKind::Text),
    ("BROKER_LOG_FORMAT", "broker.logFormat", EnvKind::Text),
    ("BROKER_DRAIN_WINDOW", "broker.drainWindow", EnvKind::Json),
    (
        "BROKER_CLIENT_BROADCAST",
        "broker.clientBroadcast",
        EnvKind::Json,
    ),
    ("BROKER_OPS_HOST", "broker.ops.host", EnvKind::Text),
    ("BROKER_OPS_PORT", "broker.ops.port", EnvKind::Json),
    ("BROKER_OPS_TLS", "broker.ops.tls", EnvKind::Json),
    ("BROKER_ADMIN_TOKEN", "broker.admin.token", EnvKind::Text),
    (
        "BROKER_ADMIN_READ_TOKEN",
        "broker.admin.readToken",
        EnvKind::Text,
    ),
    ("BROKER_CLUSTER_NATS", "broker.cluster.nats", EnvKind::Text),
    (
        "BROKER_CLUSTER_SUBJECT",
        "broker.cluster.subject",
        EnvKind::Text,
    ),
    (
        "BROKER_HISTORY_MAX_BYTES",
        "broker.history.maxBytes",
        EnvKind::Json,
    ),
    (
        "BROKER_HISTORY_MAX_AGE",
        "broker.history.maxAge",
        EnvKind::Json,
    ),
    (
        "BROKER_CLUSTER_QUEUE_BYTES",
        "broker.cluster.queueBytes",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_CONNECTIONS",
        "broker.limits.maxConnections",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_CONNECTIONS_PER_ADDRESS",
        "broker.limits.maxConnectionsPerAddress",
        EnvKind::Json,
    ),
    (
        "BROKER_PUBLISHER_RESERVE",
        "broker.limits.publisherReserve",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_PENDING_HANDSHAKES",
        "broker.limits.maxPendingHandshakes",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
        "broker.limits.maxPendingHandshakesPerAddress",
        EnvKind::Json,
    ),
    (
        "BROKER_TRUSTED_PROXIES",
        "broker.limits.trustedProxies",
        EnvKind::Json,
    ),
    (
        "BROKER_HANDSHAKE_TIMEOUT",
        "broker.limits.handshakeTimeout",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_MESSAGE_SIZE",
        "broker.limits.maxMessageSize",
        EnvKind::Json,
    ),
    (
        "BROKER_MAX_PUBLISHER_MESSAGE_SIZE",
        "broker.limits.maxPublisherMessageSize",
        EnvKind::Json,
    ),
    (
        "BROKER_SEND_QUEUE_BYTES",
        "broker.limits.sendQueueBytes",
        EnvKind::Json,
    ),
    (
        "BROKER_READ_BUFFER_BYTES",
        "broker.limits.readBufferBytes",
        EnvKind::Json,
    ),
    (
        "BROKER_SLOW_CONSUMER_TIMEOUT",
        "broker.limits.slowConsumerTimeout",
        EnvKind::Json,
    ),
    (
        "BROKER_CLOSE_GRACE",
        "broker.limits.closeGrace",
        EnvKind::Json,
    ),
    (
        "BROKER_CLIENT_FANOUT_PER_SECOND",
        "broker.limits.clientFanoutPerSecond",
        EnvKind::Json,
    ),
    (
        "BROKER_CLIENT_FANOUT_BYTES_PER_SECOND",
        "broker.limits.clientFanoutBytesPerSecond",
        EnvKind::Json,
    ),
    (
        "BROKER_ERROR_BUDGET",
        "broker.limits.errorBudget",
        EnvKind::Json,
    ),
    (
        "BROKER_ERROR_WINDOW",
        "broker.limits.errorWindow",
        EnvKind::Json,
    ),
    (
        "BROKER_MESSAGES_PER_SECOND",
        "broker.limits.messagesPerSecond",
        EnvKind::Json,
    ),
    (
        "BROKER_PING_INTERVAL",
        "broker.limits.pingInterval",
        EnvKind::Json,
    ),
    (
        "BROKER_IDLE_TIMEOUT",
        "broker.limits.idleTimeout",
        EnvKind::Json,
    ),
];

/// `BROKER_X_FILE=/path` stands for `BROKER_X` with the file's content (its last line ending
/// dropped), for secrets mounted as files (Docker and Kubernetes secrets). Setting both is an
/// error, as is a file that cannot be read; either names the variable.
/// Each entry: the variable it stands for, the value, the variable to name in messages.
fn with_file_variables(
    env: &[(String, String)],
) -> Result<Vec<(String, String, String)>, ConfigError> {
    let mut out = Vec::with_capacity(env.len());
    for (var, value) in env {
        let Some(base) = var.strip_suffix("_FILE") else {
            out.push((var.clone(), value.clone(), var.clone()));
            continue;
        };
        let Some((_, key, _)) = ENV_OVERRIDES.iter().find(|(v, _, _)| *v == base) else {
            continue;
        };
        if env.iter().any(|(v, _)| v == base) {
            return Err(ConfigError::Invalid {
                key: key.to_string(),
                from: format!(" (from {base} and {var})"),
                message: "set one of them, not both".into(),
            });
        }
        let mut text = std::fs::read_to_string(value).map_err(|e| ConfigError::Invalid {
            key: key.to_string(),
            from: format!(" (from {var})"),
            message: format!("{value}: cannot read: {e}"),
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        out.push((base.to_string(), text, var.clone()));
    }
    Ok(out)
}

/// Applies the `BROKER_...` pairs of `env` to `root`. Returns, for each one applied, the
/// variable to name in messages and the key it set.
pub(super) fn apply(
    root: &mut Value,
    env: &[(String, String)],
) -> Result<Vec<(String, &'static str)>, ConfigError> {
    let env = with_file_variables(env)?;
    let mut from_env = Vec::new();
    for (var, value, shown) in &env {
        let Some((_, key, kind)) = ENV_OVERRIDES.iter().find(|(v, _, _)| v == var) else {
            continue;
        };
        let json = match kind {
            EnvKind::Text => Value::String(value.clone()),
            EnvKind::Json => crate::jsonc::parse(value).map_err(|e| ConfigError::Invalid {
                key: match &e.path {
                    Some(sub) if sub.starts_with('[') => format!("{key}{sub}"),
                    Some(sub) => format!("{key}.{sub}"),
                    None => key.to_string(),
                },
                from: format!(" (from {shown})"),
                message: format!("column {}: {}", e.column, e.message),
            })?,
        };
        set_path(root, key, json);
        from_env.push((shown.clone(), *key));
    }
    Ok(from_env)
}

/// The value at `a.b.c` in `root`.
pub(super) fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, k| v.get(k))
}

/// Sets `a.b.c` in `root`, creating objects on the way (replacing non-objects).
pub(super) fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Value::Object(map) = cur else {
            return;
        };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        cur = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}
