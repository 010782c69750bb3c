//! `POST /api/publish` on the WebSocket port: back ends that would rather not hold a socket
//! open publish one event, or an array of events, per request.
//!
//! A body is accepted whole or not at all: every event is checked before any is delivered, so
//! a 400 means nothing was sent.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event::{self, EventInfo};
use crate::handshake::{respond_error, respond_json, secret_eq, Request};
use crate::server::Shared;

/// Answers one publish request on `stream`.
pub async fn handle<S>(stream: &mut S, req: Request, shared: &Shared) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (status, body) = match check(stream, req, shared).await {
        Ok(events) => {
            let mut delivered = 0;
            for (info, frame) in &events {
                if let crate::fanout::Routed::Delivered(n) =
                    shared.route_from_publisher(None, info, frame)
                {
                    delivered += n;
                }
            }
            (
                202,
                serde_json::json!({ "accepted": events.len(), "delivered": delivered }),
            )
        }
        Err((status, message)) => (status, serde_json::json!({ "error": message })),
    };
    shared
        .metrics
        .publish_requests
        .with_label_values(&[&status.to_string()])
        .inc();
    respond_json(stream, status, &body).await
}

type Checked = Vec<(EventInfo, Utf8Bytes)>;

async fn check<S>(stream: &mut S, req: Request, shared: &Shared) -> Result<Checked, (u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(expected) = &shared.config.websocket.socket_api_key else {
        return Err((
            403,
            "publishing is off: the broker has no websocket.socketApiKey".into(),
        ));
    };
    match req.header("users-api-key") {
        None => return Err((401, "missing users-api-key header".into())),
        Some(key) if !secret_eq(key, expected.as_bytes()) => {
            return Err((403, "wrong users-api-key".into()))
        }
        Some(_) => {}
    }
    let limit = shared.config.broker.limits.max_publisher_message_size;
    let len: usize = req
        .header_str("content-length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or((411, "Content-Length is required".to_string()))?;
    if len > limit {
        return Err((
            413,
            format!("body of {len} bytes is over the limit of {limit}"),
        ));
    }
    let mut body = req.rest;
    body.truncate(len);
    let remaining = len - body.len();
    if remaining > 0 {
        let mut rest = Vec::with_capacity(remaining);
        let read = tokio::time::timeout(
            shared
                .config
                .broker
                .limits
                .handshake_timeout()
                .max(Duration::from_secs(1)),
            stream.take(remaining as u64).read_to_end(&mut rest),
        )
        .await;
        match read {
            Ok(Ok(n)) if n == remaining => body.extend_from_slice(&rest),
            _ => return Err((400, "the body ended before Content-Length bytes".into())),
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| (400, format!("the body is not valid JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) if items.is_empty() => {
            return Err((400, "the array holds no events".into()))
        }
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item.to_string();
            let info = event::decode(text.as_bytes())
                .map_err(|e| (400, format!("event [{i}]: {}", e.message)))?;
            Ok((info, Utf8Bytes::from(text)))
        })
        .collect()
}

/// A 405/404 for any other plain HTTP request on the WebSocket port.
pub async fn not_found<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
) -> std::io::Result<()> {
    if req.path() == "/api/publish" {
        respond_error(stream, 405, "use POST for /api/publish").await
    } else {
        respond_error(
            stream,
            426,
            "this port serves WebSocket upgrades (and POST /api/publish)",
        )
        .await
    }
}
