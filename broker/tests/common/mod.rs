//! Test harness: a real broker on ephemeral loopback ports, and real WebSocket clients.
#![allow(dead_code)]

pub mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use broker::app::RunningBroker;
use broker::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const API_KEY: &str = "test-publisher-key";
pub const JWT_SECRET: &str = "test-secret-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// Starts a broker with the seed's example patterns plus the given `broker`/`websocket`
/// JSON merged over a loopback, ephemeral-port base.
pub async fn start_with(extra: Value) -> RunningBroker {
    let mut base = serde_json::json!({
        "websocket": {
            "host": "127.0.0.1",
            "port": 0,
            "socketApiKey": API_KEY,
            "approvedSocketDomains": ["localhost", "^ws://www.webinate.net:123$", "^webinate\\.net:80$",
                "^example\\.com$", "^.+\\.example\\.com$", "^example\\.org", "^.+\\.example\\.org"]
        },
        "broker": { "ops": { "host": "127.0.0.1", "port": 0 }, "jwtSecret": JWT_SECRET,
                    "admin": { "token": ADMIN_TOKEN }, "instanceId": "t1" }
    });
    merge(&mut base, extra);
    let config = Config::from_json_str(&base.to_string(), "test").expect("valid test config");
    broker::app::start(config).await.expect("broker starts")
}

pub async fn start() -> RunningBroker {
    start_with(serde_json::json!({})).await
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

/// Opens a WebSocket with the given extra headers.
pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, WsError> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| WsError::Io(std::io::Error::other("connect timed out")))??;
    Ok(ws)
}

/// A client with an approved origin.
pub async fn client(addr: SocketAddr) -> Client {
    connect_with(addr, "/", &[("origin", "http://localhost:3000")])
        .await
        .expect("client connects")
}

/// A publisher connection.
pub async fn publisher(addr: SocketAddr) -> Client {
    connect_with(addr, "/", &[("users-api-key", API_KEY)])
        .await
        .expect("publisher connects")
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(r: Result<Client, WsError>) -> u16 {
    match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, but the upgrade was accepted"),
    }
}

pub async fn send_json(ws: &mut Client, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

pub async fn send_text(ws: &mut Client, s: &str) {
    ws.send(Message::text(s)).await.expect("send");
}

/// The next text or binary frame as JSON, within the deadline.
pub async fn recv_json(ws: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("an event within the deadline")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Binary(b) => return serde_json::from_slice(&b).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// The next text frame, as sent (its exact bytes).
pub async fn recv_text(ws: &mut Client) -> String {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// A client that asked for positions or to resume (`query`: `recover=1`, `since=...`, and
/// any more parameters); returns it with its first frame, the recovery notice.
pub async fn positioned_client(addr: SocketAddr, query: &str) -> (Client, Value) {
    let mut ws = connect_with(
        addr,
        &format!("/?{query}"),
        &[("origin", "http://localhost")],
    )
    .await
    .expect("connects");
    let notice = recv_json(&mut ws).await;
    assert!(notice.get("brokerRecovery").is_some(), "{notice}");
    (ws, notice)
}

/// A user token (HS256 with the test secret, valid for 10 minutes).
pub fn user_token(name: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": name, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// Asserts that nothing arrives on `ws` before an echo round trip on it completes: the
/// broker handles a connection's frames in order, so anything queued for it earlier would
/// have come first.
pub async fn assert_nothing_pending(ws: &mut Client) {
    let marker = serde_json::json!({"eventType": 10, "message": "__marker__"});
    send_json(ws, &marker).await;
    let got = recv_json(ws).await;
    assert_eq!(got, marker, "expected nothing before the marker echo");
}

/// Waits for the close frame and returns its code (1006 when the socket just ended).
pub async fn close_code(ws: &mut Client) -> u16 {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed within the deadline")
        {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return 1006,
        }
    }
}

/// GET on the ops listener; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    http_request(
        addr,
        "GET",
        path,
        &[(
            "authorization",
            &bearer.map(|b| format!("Bearer {b}")).unwrap_or_default(),
        )],
        "",
    )
    .await
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        if !v.is_empty() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample in Prometheus text, e.g. `broker_connections_open{kind="client"}`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not in metrics"))
}

/// Polls `cond` until it holds or the deadline passes (for state observed from outside,
/// such as a gauge, that has no event to wait on).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The `broker` binary on ephemeral loopback ports, killed when dropped.
pub struct BrokerProcess {
    pub child: std::process::Child,
    pub ws: SocketAddr,
    pub ops: SocketAddr,
    /// Its log lines (stderr) after the `listening` line, as they come.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// Starts it with `BROKER_...` variables on top of loopback, ephemeral ports and a short
    /// drain window; waits for its `listening` line.
    pub fn spawn(env: &[(&str, &str)]) -> BrokerProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .env("BROKER_HOST", "127.0.0.1")
            .env("BROKER_PORT", "0")
            .env("BROKER_OPS_PORT", "0")
            .env("BROKER_DRAIN_WINDOW", "0.5")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawns");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let (ws, ops) = loop {
            let line = lines.next().expect("a listening line").expect("utf-8");
            if line.contains("listening") {
                let field = |name: &str| -> SocketAddr {
                    let start = line.find(&format!(" {name}=")).expect("field") + name.len() + 2;
                    line[start..]
                        .split_whitespace()
                        .next()
                        .expect("value")
                        .parse()
                        .expect("address")
                };
                break (field("ws"), field("ops"));
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe, keeping the lines.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        BrokerProcess {
            child,
            ws,
            ops,
            log,
        }
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The process's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the broker's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a VmRSS line")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its status code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(std::time::Instant::now() < deadline, "broker did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw upgraded socket (origin `http://localhost`), for frames a WebSocket library would not
/// send. `extra_headers` is inserted as is (each line ending in `\r\n`).
pub async fn raw_upgrade(addr: SocketAddr, extra_headers: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("101 answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "no extension is agreed to: {head}"
    );
    s
}

/// Writes one frame: `first` is the FIN/RSV/opcode byte; `masked` as clients must.
pub async fn raw_send(s: &mut TcpStream, first: u8, payload: &[u8], masked: bool) {
    use tokio::io::AsyncWriteExt;
    let mut frame = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n < 65536 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [7u8, 1, 3, 9];
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    let _ = s.write_all(&frame).await;
}

/// Reads server frames (unmasked) until a close frame; returns its code (1006 if the socket
/// ends without one). Text frames are collected into `texts` when given.
pub async fn raw_close_code(s: &mut TcpStream) -> u16 {
    raw_read_until_close(s, &mut Vec::new()).await
}

pub async fn raw_read_until_close(s: &mut TcpStream, texts: &mut Vec<String>) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if buf.len() >= 2 {
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= start + len {
                let payload = buf[start..start + len].to_vec();
                match buf[0] & 0x0f {
                    0x8 => {
                        return if payload.len() >= 2 {
                            u16::from_be_bytes([payload[0], payload[1]])
                        } else {
                            1005
                        }
                    }
                    0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                    _ => {}
                }
                buf.drain(..start + len);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("in time")
        {
            Ok(0) | Err(_) => return 1006,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
