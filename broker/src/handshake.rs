//! The HTTP side of the WebSocket port: reading one request head, what it asks for (upgrade,
//! origin, token, resume), and the plain HTTP answers (101, 4xx). Who may upgrade is decided
//! in [`crate::server`]; `POST /api/publish` is served by [`crate::publish`].
//!
//! The broker reads the upgrade request itself (with `httparse`) instead of letting the
//! WebSocket library do it, so that a refused origin is answered with a real HTTP 403 before
//! any upgrade, `POST /api/publish` can share the port, and each connection's WebSocket limits
//! (client or publisher) are known before the first frame is read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Request heads larger than this are refused with 431.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// One parsed request head, and whatever bytes came after it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Each header's name and value, as places in `raw` (not copied: a connection's handshake
    /// allocates nothing per header).
    headers: Vec<(Span, Span)>,
    /// Every byte read: the head, then the start of a body or of the first WebSocket frame.
    raw: Vec<u8>,
    head_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before a full request")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads bytes until one whole request head has arrived. The caller bounds the time.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            buf.reserve((buf.len()).min(MAX_HEAD - buf.len()));
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let span = |part: &[u8]| Span::within(&buf, part);
                let headers = req
                    .headers
                    .iter()
                    .map(|h| (span(h.name.as_bytes()), span(h.value)))
                    .collect();
                let request = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    headers,
                    raw: buf,
                    head_len: len,
                };
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

/// Where a part of the request head is in the bytes read.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `part`, a slice of `buf` (as httparse hands them out), as a place in it.
    fn within(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        // The head is at most MAX_HEAD bytes.
        let start = u32::try_from(start.min(buf.len())).unwrap_or(0);
        let end = u32::try_from((start as usize + part.len()).min(buf.len())).unwrap_or(start);
        Span { start, end }
    }

    fn of<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        raw.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl Request {
    /// The headers in order, as (name, value); names as sent (compare without case).
    fn fields(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|(n, v)| (n.of(&self.raw), v.of(&self.raw)))
    }

    /// The values of header `name` (lower case), in order.
    fn named<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Bytes read past the head: the start of a body or of the first WebSocket frame.
    pub fn rest(&self) -> &[u8] {
        &self.raw[self.head_len..]
    }

    /// Every byte read, the head included, to be read again by an HTTP server.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of header `name` (lower case), comma-separated lists split.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.named(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    }

    /// Checks how the request says its body is framed (RFC 9112 section 6): one
    /// `Content-Length`, or `Transfer-Encoding` ending in `chunked` and no `Content-Length`.
    pub fn framing_error(&self) -> Option<&'static str> {
        let mut lengths = self.values("content-length").peekable();
        let has_length = lengths.peek().is_some();
        let mut first = None;
        for v in lengths {
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Some("Content-Length is not a number");
            }
            match first {
                None => first = Some(v),
                Some(f) if f != v => return Some("Content-Length is given twice, differently"),
                Some(_) => {}
            }
        }
        let codings: Vec<&[u8]> = self.values("transfer-encoding").collect();
        if let Some(last) = codings.last() {
            if has_length {
                return Some("both Transfer-Encoding and Content-Length are given");
            }
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Some("Transfer-Encoding must end with chunked");
            }
        }
        None
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    fn header_has(&self, name: &str, token: &str) -> bool {
        self.named(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has("upgrade", "websocket")
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<&str> {
        let v = self.header_str("authorization")?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    /// The client's address: the peer, or with a trusted proxy in front, the last address in
    /// `X-Forwarded-For` that the proxy appended.
    pub fn client_ip(&self, peer: SocketAddr, trusted: &[IpAddr]) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !trusted.contains(&peer_ip) {
            return peer_ip;
        }
        // The proxy appends its own line (or extends the last one): only the last address
        // of the last line is the proxy's word; anything before it came from the client.
        self.named("x-forwarded-for")
            .next_back()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
            .map_or(peer_ip, |ip| ip.to_canonical())
    }

    /// Checks the parts of an upgrade request that RFC 6455 requires; returns the accept key.
    pub fn websocket_accept(&self) -> Result<String, &'static str> {
        if self.method != "GET" {
            return Err("a WebSocket upgrade must be a GET");
        }
        if !self.header_has("connection", "upgrade") {
            return Err("missing Connection: Upgrade");
        }
        if self.header("sec-websocket-version") != Some(b"13") {
            return Err("Sec-WebSocket-Version must be 13");
        }
        let key = self
            .header("sec-websocket-key")
            .ok_or("missing Sec-WebSocket-Key")?;
        Ok(derive_accept_key(key))
    }
}

/// Writes the 101 answer that completes an upgrade. No extension (such as permessage-deflate)
/// and no subprotocol is agreed to.
pub async fn write_switching<S: AsyncWrite + Unpin>(
    s: &mut S,
    accept: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    s.flush().await
}

/// Writes a complete HTTP answer with a JSON body and closes the write side.
pub async fn respond_json<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.flush().await?;
    s.shutdown().await
}

/// An `{"error": "..."}` answer.
pub async fn respond_error<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    message: &str,
) -> std::io::Result<()> {
    respond_json(s, status, &serde_json::json!({ "error": message })).await
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Who an accepted upgrade is.
#[derive(Debug)]
pub struct Admission {
    pub publisher: bool,
    pub user: Option<Arc<str>>,
    pub origin: Option<Box<str>>,
    pub resume: Resume,
}

/// Whether a connection asked for positions (`?recover=1`), and to resume (`?since=<pos>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    Off,
    Fresh,
    Since(crate::history::Position),
    /// A `since` that is not a position: the connection starts afresh, and its recovery
    /// notice says why (a refusal would refuse every reconnect of a client that stored it).
    Unreadable(String),
}

impl Request {
    /// The connection's ask for positions, from the query.
    pub fn resume(&self) -> Resume {
        if let Some(since) = self.query("since") {
            // `since=` with nothing: a client that asks but has no position yet.
            if since.is_empty() {
                return Resume::Fresh;
            }
            return since
                .parse()
                .map(Resume::Since)
                .unwrap_or_else(|e| Resume::Unreadable(format!("since={since:?}: {e}")));
        }
        match self.query("recover").as_deref() {
            None | Some("0" | "false") => Resume::Off,
            Some(_) => Resume::Fresh,
        }
    }
}

/// Why an upgrade is refused: HTTP status, metrics reason, message for the body and log.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: crate::metrics::Refused,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, reason: crate::metrics::Refused, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Compares secrets without an early exit, so timing does not reveal a matching prefix.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: impl AsRef<[u8]>) -> Result<Request, HeadError> {
        let mut r = raw.as_ref();
        read_head(&mut r).await
    }

    #[tokio::test]
    async fn parses_upgrade_with_rest() {
        let req = parse(b"GET /x?token=a%2Bb&y=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x80")
            .await
            .expect("parses");
        assert!(req.is_websocket_upgrade());
        assert_eq!(req.path(), "/x");
        assert_eq!(req.query("token").as_deref(), Some("a+b"));
        assert_eq!(req.rest(), b"\x81\x80");
        assert_eq!(
            req.websocket_accept().as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    /// Header names match whatever their case; values are the bytes sent, first or last as
    /// asked, with a head read in several pieces.
    #[tokio::test]
    async fn headers_are_found_without_copies_whatever_their_case() {
        let head = b"GET / HTTP/1.1\r\nHOST: h\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\nOrigin: http://a.example\r\nAuthorization: Bearer  tok \r\n\r\n";
        let mut r = tokio::io::AsyncReadExt::chain(&head[..20], &head[20..]);
        let req = read_head(&mut r).await.expect("parses");
        assert_eq!(req.header("host"), Some(&b"h"[..]));
        assert_eq!(req.header_str("origin"), Some("http://a.example"));
        assert_eq!(req.header("x-forwarded-for"), Some(&b"10.0.0.1"[..]));
        assert_eq!(req.bearer(), Some("tok"));
        assert_eq!(req.header("cookie"), None);
        let proxy: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            req.client_ip("127.0.0.1:1".parse().expect("addr"), &[proxy]),
            "10.0.0.3".parse::<IpAddr>().expect("ip"),
            "the last address of the last line"
        );
    }

    #[tokio::test]
    async fn refuses_huge_and_broken_heads() {
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(&huge).await, Err(HeadError::TooLarge)));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\n").await,
            Err(HeadError::Closed)
        ));
    }

    #[tokio::test]
    async fn forwarded_for_only_from_trusted_proxies() {
        let req = parse("GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4, 10.9.8.7\r\n\r\n")
            .await
            .expect("parses");
        let proxy: SocketAddr = "127.0.0.5:4000".parse().expect("addr");
        assert_eq!(req.client_ip(proxy, &[]), proxy.ip());
        let trusted = [proxy.ip()];
        assert_eq!(
            req.client_ip(proxy, &trusted),
            "10.9.8.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"abcd"));
    }
}
