//! Starts the real `floor-server` binary on a free loopback port and talks to it over real
//! sockets: tungstenite clients for the protocol, raw TCP for what a client library will not
//! do (split frames, a peer that leaves mid-frame). Every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(10);

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The server process, killed when the test ends however it ends.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn assert_running(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "floor-server exited"
        );
    }

    /// The server's open descriptors (listener, epoll, connections, std streams).
    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server's /proc entry")
            .count()
    }
}

fn start_server(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floor-server"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start floor-server");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    // Wrapped first, so the process is killed if it never says where it listens.
    let mut server = Server {
        child,
        addr: String::new(),
    };
    server.addr = rx
        .recv_timeout(DEADLINE)
        .expect("floor-server said `listening on ADDR` in time");
    server
}

async fn connect(server: &Server, origin: &str) -> Result<Client, WsError> {
    let mut request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("valid request");
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("valid header"));
    let (ws, _) = timeout(DEADLINE, connect_async(request))
        .await
        .expect("handshake in time")?;
    Ok(ws)
}

/// The next frame, whatever it is; fails after the deadline.
async fn next_frame(ws: &mut Client) -> Message {
    timeout(DEADLINE, ws.next())
        .await
        .expect("a frame in time")
        .expect("connection open")
        .expect("no protocol error")
}

/// The next text frame, skipping control frames.
async fn next_text(ws: &mut Client) -> String {
    loop {
        if let Message::Text(text) = next_frame(ws).await {
            return text.as_str().to_owned();
        }
    }
}

async fn send(ws: &mut Client, value: &Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// A registered, answering connection: an echo round trip done.
async fn ready(server: &Server, name: &str) -> Client {
    let mut ws = connect(server, "http://localhost").await.expect("upgrade");
    let hello = json!({"eventType": 10, "message": name});
    send(&mut ws, &hello).await;
    assert_eq!(next_text(&mut ws).await, hello.to_string());
    ws
}

#[tokio::test]
async fn upgrade_and_echo_verbatim() {
    let server = start_server(&[]);
    let mut ws = connect(&server, "http://localhost:3000")
        .await
        .expect("allowed origin");
    let probe = json!({"run": "abc", "seq": 7, "t": 123_456_789_u64, "k": "e"});
    let event = json!({"eventType": 10, "message": "Hello world?", "lt": probe});
    send(&mut ws, &event).await;
    assert_eq!(next_text(&mut ws).await, event.to_string());

    // A message long enough for the 64-bit length form, and several frames in one read.
    let long = json!({"eventType": 10, "message": "x".repeat(100_000)});
    for _ in 0..3 {
        send(&mut ws, &long).await;
    }
    for _ in 0..3 {
        assert_eq!(next_text(&mut ws).await, long.to_string());
    }

    // Binary frames holding UTF-8 are served as text, as plain-server does.
    ws.send(Message::binary(event.to_string().into_bytes()))
        .await
        .expect("send");
    assert_eq!(next_text(&mut ws).await, event.to_string());

    // Not an Echo: an error event.
    send(&mut ws, &json!({"eventType": 3, "message": "x"})).await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert!(reply["error"].is_string(), "{reply}");
}

#[tokio::test]
async fn broadcast_reaches_every_client_once() {
    let server = start_server(&[]);
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(ready(&server, &format!("c{i}")).await);
    }
    let event = json!({"eventType": 10, "message": "to all", "broadcast": true, "extra": [1, 2]});
    send(&mut clients[2], &event).await;
    for ws in &mut clients {
        assert_eq!(next_text(ws).await, event.to_string());
    }
    // Exactly once each: the next frame on every client is the answer to a fresh echo.
    for (i, ws) in clients.iter_mut().enumerate() {
        let again = json!({"eventType": 10, "message": format!("again {i}")});
        send(ws, &again).await;
        assert_eq!(next_text(ws).await, again.to_string());
    }
}

#[tokio::test]
async fn a_listener_that_does_not_read_gets_everything_later_in_order() {
    let server = start_server(&[]);
    let mut publisher = ready(&server, "publisher").await;
    let mut slow = ready(&server, "slow").await;
    // 2,000 broadcasts of 4 KiB: far more than the socket buffers hold, so most of it waits in
    // the server's pending buffer for `slow`, which does not read until the end.
    let count = 2_000;
    let message = "y".repeat(4096);
    for seq in 0..count {
        let event = json!({"eventType": 10, "message": message, "broadcast": true, "seq": seq});
        publisher
            .feed(Message::text(event.to_string()))
            .await
            .expect("send");
    }
    publisher.flush().await.expect("flush");
    for seq in 0..count {
        let v: Value = serde_json::from_str(&next_text(&mut publisher).await).expect("JSON");
        assert_eq!(v["seq"], seq);
    }
    for seq in 0..count {
        let v: Value = serde_json::from_str(&next_text(&mut slow).await).expect("JSON");
        assert_eq!(v["seq"], seq);
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = start_server(&[]);
    let mut ws = connect(&server, "http://localhost").await.expect("upgrade");
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    match next_frame(&mut ws).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test]
async fn close_is_answered_with_close_then_the_socket_ends() {
    let server = start_server(&[]);
    let mut ws = connect(&server, "http://localhost").await.expect("upgrade");
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    match next_frame(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the close answer, got {other:?}"),
    }
    // Then the stream ends (the server closed the socket).
    let end = timeout(DEADLINE, ws.next()).await.expect("end in time");
    assert!(
        matches!(end, None | Some(Err(WsError::ConnectionClosed))),
        "{end:?}"
    );
}

#[tokio::test]
async fn refused_origins_get_403() {
    let server = start_server(&[]);
    for origin in ["http://evil.example", "http://localhost.evil.example"] {
        match connect(&server, origin).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 403, "{origin}"),
            Err(e) => panic!("{origin}: expected a 403, got {e}"),
            Ok(_) => panic!("{origin}: expected a 403, got an upgrade"),
        }
    }
    let request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("valid request");
    match timeout(DEADLINE, connect_async(request))
        .await
        .expect("answer in time")
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn config_file_origins() {
    let dir = std::env::temp_dir().join(format!("floor-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{
            // as compare.sh writes it
            "websocket": { "port": 1, "approvedSocketDomains": ["^http://trusted-host$",] },
            "broker": { "limits": { "maxConnections": 5 } },
        }"#,
    )
    .expect("write config");
    let server = start_server(&["--config", path.to_str().expect("utf-8 path")]);
    let mut ws = connect(&server, "http://trusted-host")
        .await
        .expect("origin from the file");
    let hi = json!({"eventType": 10, "message": "hi"});
    send(&mut ws, &hi).await;
    assert_eq!(next_text(&mut ws).await, hi.to_string());
    match connect(&server, "http://localhost").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("the defaults are replaced: {:?}", other.map(|_| ())),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- raw sockets ------------------------------------------------------------------------------

/// A TCP connection upgraded by hand; reads time out at the deadline.
fn raw_upgrade(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(&server.addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://localhost\r\n\r\n",
        server.addr
    )
    .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response in time");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's own example key and answer.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

/// A masked client text frame (payloads under 64 KiB).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// Reads one unmasked server text frame (payloads under 64 KiB).
fn read_text(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("frame in time");
    assert_eq!(head[0], 0x81, "a final text frame");
    let len = match head[1] {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).expect("length");
            u16::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("payload");
    payload
}

#[tokio::test]
async fn a_frame_split_across_reads_is_put_back_together() {
    let server = start_server(&[]);
    let mut s = raw_upgrade(&server);
    let text = json!({"eventType": 10, "message": "z".repeat(300)}).to_string();
    let frame = masked_text(text.as_bytes());
    // Header alone, then the rest in pieces. The pause only makes it likely that each piece
    // lands in its own read on the server; nothing waits on it, and the test holds either way.
    for piece in [
        &frame[..1],
        &frame[1..3],
        &frame[3..9],
        &frame[9..200],
        &frame[200..],
    ] {
        s.write_all(piece).expect("write");
        s.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_text(&mut s), text.as_bytes());
}

#[tokio::test]
async fn clients_that_leave_mid_frame_or_mid_request_do_not_stop_the_server() {
    let mut server = start_server(&[]);
    let mut listener = ready(&server, "listener").await;
    let open_before = server.open_descriptors();
    for _ in 0..20 {
        // Mid-frame: a header promising 300 bytes, then 10 of them, then gone.
        let mut s = raw_upgrade(&server);
        let frame = masked_text(&[b'a'; 300]);
        s.write_all(&frame[..18]).expect("write");
        drop(s);
        // Mid-request: half an upgrade request, then gone.
        let mut s = TcpStream::connect(&server.addr).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nUpgrade: webs")
            .expect("write");
        drop(s);
        // An echo request, then gone before the answer is read: the server's write may meet a
        // reset.
        let mut s = raw_upgrade(&server);
        s.write_all(&masked_text(b"{\"eventType\":10,\"message\":\"x\"}"))
            .expect("write");
        drop(s);
    }
    // Every one of them is closed on the server's side too (polled, with a deadline).
    let deadline = std::time::Instant::now() + DEADLINE;
    while server.open_descriptors() != open_before {
        assert!(
            std::time::Instant::now() < deadline,
            "{} descriptors open, {open_before} before",
            server.open_descriptors()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still serving: the old connection and a new one both answer, and a broadcast reaches both.
    let mut fresh = ready(&server, "fresh").await;
    let event = json!({"eventType": 10, "message": "still here", "broadcast": true});
    send(&mut fresh, &event).await;
    assert_eq!(next_text(&mut fresh).await, event.to_string());
    assert_eq!(next_text(&mut listener).await, event.to_string());
    server.assert_running();
}
