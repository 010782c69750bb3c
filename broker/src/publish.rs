//! Plain HTTP on the WebSocket port, served by hyper: `POST /api/publish`, through which back
//! ends that would rather not hold a socket open publish one event, or an array of events, per
//! request.
//!
//! The broker reads the first request head itself (that is how it tells an upgrade apart); for
//! anything else it hands the socket, with the bytes already read, to hyper's HTTP/1.1 server.
//! hyper does the framing: `Content-Length` and chunked bodies, `Expect: 100-continue`,
//! keep-alive and pipelined requests, 400 for bad framing. The connection keeps its place among
//! the pending handshakes while it lives, and may wait at most `handshakeTimeout` for each
//! request head.
//!
//! A body is accepted whole or not at all: every event is checked before any is delivered, so
//! a 400 means nothing was sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::Limits;
use crate::event::{self, EventInfo};
use crate::gate::Pending;
use crate::handshake::{respond_error, secret_eq, Request as FirstRequest, MAX_HEAD};
use crate::router::Router;

/// What the publish API works with: the router, the publisher key, the limits, the stop signal.
pub struct Env {
    pub router: Arc<Router>,
    /// `websocket.socketApiKey`; without one every publish is refused.
    pub api_key: Option<String>,
    pub limits: Limits,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Serves HTTP/1.1 on `stream` until the client or the broker ends it. `already` holds every
/// byte read so far (the first request head and whatever followed it).
pub async fn serve<S>(mut stream: S, first: FirstRequest, pending: Pending, env: Arc<Env>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &env.limits;
    // hyper ends a connection whose first head frames its body wrongly without an answer when
    // more bytes follow the head: such a head is answered here.
    if let Some(why) = first.framing_error() {
        env.router
            .metrics
            .publish_requests
            .with_label_values(&["400"])
            .inc();
        let _ = respond_error(&mut stream, 400, why).await;
        linger(
            stream,
            limits.close_grace(),
            limits.max_publisher_message_size,
        )
        .await;
        return;
    }
    let track = Arc::new(Track::default());
    let io = TokioIo::new(Replay {
        already: Bytes::from(first.into_raw()),
        stream,
        track: track.clone(),
        stall_limit: limits.handshake_timeout(),
        stalled: None,
    });
    let service = {
        let env = env.clone();
        let track = track.clone();
        hyper::service::service_fn(move |req| {
            let env = env.clone();
            let track = track.clone();
            Box::pin(async move { Ok::<_, Infallible>(answer(req, &env, &track).await) })
                as Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>
        })
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout())
        .max_buf_size(MAX_HEAD.max(8192))
        .pipeline_flush(true)
        .serve_connection(io, service);
    let mut stopping = std::pin::pin!(env.shutdown.cancelled());
    let mut graceful = false;
    let ended = std::future::poll_fn(|cx| {
        if !graceful && stopping.as_mut().poll(cx).is_ready() {
            // Finish the request in progress, then close.
            graceful = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        conn.poll_without_shutdown(cx)
    });
    if let Err(e) = ended.await {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
    let mut stream = conn.into_parts().io.into_inner().stream;
    // hyper also ends a connection whose body breaks its framing (a bad chunk) without sending
    // the answer the service gave: if nothing was written since, it is sent here.
    let failed_at = track.body_failed_at.load(Ordering::Relaxed);
    if failed_at != NEVER && failed_at == track.written.load(Ordering::Relaxed) {
        let _ = respond_error(&mut stream, 400, "the body's framing is broken").await;
    }
    linger(
        stream,
        limits.close_grace(),
        limits.max_publisher_message_size,
    )
    .await;
    drop(pending);
}

/// Closes an HTTP connection the way a browser or proxy can read its last answer: the write
/// side first, then whatever the client still sends (a body that was refused unread) is read
/// and dropped, up to `max` bytes or `grace`. Closing with unread bytes would send a reset,
/// and a reset makes the client's kernel discard the answer it has not read yet.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, grace: Duration, max: usize) {
    let _ = tokio::time::timeout(grace, async {
        stream.shutdown().await?;
        let mut buf = [0u8; 8192];
        let mut read = 0;
        while read <= max {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

type Answer = Response<Full<Bytes>>;

async fn answer(req: Request<Incoming>, env: &Env, track: &Track) -> Answer {
    let is_publish = req.uri().path() == "/api/publish";
    if is_publish && req.method() == Method::POST {
        let (status, body) = match check(req, env, track).await {
            Ok(events) => {
                let mut delivered = 0;
                for (info, frame) in &events {
                    if let crate::router::Routed::Delivered(n) =
                        env.router.route_from_publisher(None, info, frame, None)
                    {
                        delivered += n;
                    }
                }
                (
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "accepted": events.len(), "delivered": delivered }),
                )
            }
            Err((status, message)) => (status, serde_json::json!({ "error": message })),
        };
        env.router
            .metrics
            .publish_requests
            .with_label_values(&[status.as_str()])
            .inc();
        return json(status, &body);
    }
    let upgrade = req
        .headers()
        .get_all(hyper::header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let mut answer = if is_publish {
        error(StatusCode::METHOD_NOT_ALLOWED, "use POST for /api/publish")
    } else if upgrade {
        error(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade must be the first request on its connection",
        )
    } else {
        error(
            StatusCode::UPGRADE_REQUIRED,
            "this port serves WebSocket upgrades (and POST /api/publish)",
        )
    };
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}

type Checked = Vec<(EventInfo, Utf8Bytes)>;

/// Authenticates, reads and checks one publish request. Nothing of the body is read (and so
/// no `100 Continue` is sent) before the key and the announced length are checked.
async fn check(
    req: Request<Incoming>,
    env: &Env,
    track: &Track,
) -> Result<Checked, (StatusCode, String)> {
    let Some(expected) = &env.api_key else {
        return Err((
            StatusCode::FORBIDDEN,
            "publishing is off: the broker has no websocket.socketApiKey".into(),
        ));
    };
    match req.headers().get("users-api-key") {
        None => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing users-api-key header".into(),
            ))
        }
        Some(key) if !secret_eq(key.as_bytes(), expected.as_bytes()) => {
            return Err((StatusCode::FORBIDDEN, "wrong users-api-key".into()))
        }
        Some(_) => {}
    }
    let limits = &env.limits;
    let limit = limits.max_publisher_message_size;
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if let Some(len) = announced.filter(|&len| len > limit as u64) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {len} bytes is over the limit of {limit}"),
        ));
    }
    let read = tokio::time::timeout(
        limits.handshake_timeout().max(Duration::from_secs(1)),
        Limited::new(req.into_body(), limit).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over the limit of {limit} bytes"),
            ))
        }
        Ok(Err(e)) => {
            track
                .body_failed_at
                .store(track.written.load(Ordering::Relaxed), Ordering::Relaxed);
            return Err((
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            ));
        }
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                "the body was not received in time".into(),
            ))
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let items = match value {
        serde_json::Value::Array(items) if items.is_empty() => {
            return Err((StatusCode::BAD_REQUEST, "the array holds no events".into()))
        }
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item.to_string();
            let info = event::decode(text.as_bytes()).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("event [{i}]: {}", e.message),
                )
            })?;
            Ok((info, Utf8Bytes::from(text)))
        })
        .collect()
}

fn json(status: StatusCode, body: &serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(status, &serde_json::json!({ "error": message }))
}

const NEVER: u64 = u64::MAX;

/// What a connection's stream and its service tell each other.
struct Track {
    /// Bytes written to the client so far.
    written: AtomicU64,
    /// `written` when a request body's framing broke; [`NEVER`] if none did.
    body_failed_at: AtomicU64,
}

impl Default for Track {
    fn default() -> Self {
        Track {
            written: AtomicU64::new(0),
            body_failed_at: AtomicU64::new(NEVER),
        }
    }
}

/// A stream whose first bytes were already read: they are read again first. A write that
/// makes no progress for `stall_limit` fails (a client that does not read its answers).
struct Replay<S> {
    already: Bytes,
    stream: S,
    track: Arc<Track>,
    stall_limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Replay<S> {
    /// Turns a pending write into an error once writes have been pending for `stall_limit`.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if p.is_ready() {
            self.stalled = None;
            return p;
        }
        let limit = self.stall_limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no byte of its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.already.is_empty() {
            let n = self.already.len().min(buf.remaining());
            let head = self.already.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = p {
            self.track.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.watch(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = p {
            self.track.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.watch(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
