//! `POST /api/publish` as an HTTP/1.1 server must serve it, over raw sockets: pipelined
//! requests, bad framing, the time between requests, and what follows on one connection.
//! (Chunked bodies, `Expect: 100-continue` and 10,000 keep-alive publishes from Node's own HTTP
//! client are in `compat/http-publish.test.js`.)

mod common;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Reads until the peer closes (bounded by the deadline); returns what came.
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the broker ended the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

async fn publish_count(b: &broker::app::RunningBroker, status: &str) -> f64 {
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    let series = format!(r#"broker_publish_requests_total{{status="{status}"}}"#);
    if m.contains(&series) {
        metric(&m, &series)
    } else {
        0.0
    }
}

fn statuses(answers: &str) -> Vec<&str> {
    answers
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answers[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
    // Three requests in one write, the last asking to close; the second is refused.
    let all = [
        post(r#"{"eventType":6,"files":[],"i":1}"#, ""),
        post("not json", ""),
        post(
            r#"{"eventType":6,"files":[],"i":3}"#,
            "Connection: close\r\n",
        ),
    ]
    .concat();
    s.write_all(all.as_bytes()).await.expect("write");
    let answers = read_all(&mut s).await;
    assert_eq!(statuses(&answers), ["202", "400", "202"], "{answers}");
    assert_eq!(recv_json(&mut ws).await["i"], 1);
    assert_eq!(recv_json(&mut ws).await["i"], 3);
    drop(s);
    b.shutdown().await;
}

#[tokio::test]
async fn bad_framing_is_answered_400_and_delivers_nothing() {
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let cases = [
        (
            "two different Content-Length values",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nContent-Length: 14\r\nContent-Length: 15\r\n\r\n{{\"eventType\":6}}"),
        ),
        (
            "a chunk size that is not hexadecimal",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding and Content-Length together (request smuggling)",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
        ),
        (
            "a Transfer-Encoding that does not end with chunked",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ),
        (
            "a Content-Length that is not a number",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nusers-api-key: {API_KEY}\r\nContent-Length: ten\r\n\r\n"),
        ),
    ];
    for (n, (what, raw)) in cases.into_iter().enumerate() {
        let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
        s.write_all(raw.as_bytes()).await.expect("write");
        let answer = read_all(&mut s).await;
        assert_eq!(statuses(&answer), ["400"], "{what}: {answer}");
        assert_eq!(
            publish_count(&b, "400").await,
            n as f64 + 1.0,
            "{what}: counted"
        );
    }
    // A body that is shorter than announced, then the client goes: nothing delivered.
    let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
    let raw = post(r#"{"eventType":6,"files":[]}"#, "");
    s.write_all(&raw.as_bytes()[..raw.len() - 5])
        .await
        .expect("write");
    s.shutdown().await.expect("half close");
    let _ = read_all(&mut s).await;
    drop(s);
    assert_nothing_pending(&mut ws).await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let b = start_with(json!({"broker": {"limits": {"handshakeTimeout": 0.5}}})).await;
    let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
    s.write_all(post(r#"{"eventType":6,"files":[]}"#, "").as_bytes())
        .await
        .expect("write");
    // Kept alive after the answer, then closed when no next request comes.
    let answers = read_all(&mut s).await;
    assert_eq!(statuses(&answers), ["202"], "{answers}");
    drop(s);
    b.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_after_a_publish_on_one_connection_is_refused_clearly() {
    let b = start().await;
    let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all((post(r#"{"eventType":6,"files":[]}"#, "") + upgrade).as_bytes())
        .await
        .expect("write");
    let answers = read_all(&mut s).await;
    assert_eq!(statuses(&answers), ["202", "400"], "{answers}");
    assert!(answers.contains("must be the first request"), "{answers}");
    drop(s);
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_keep_alive_connections() {
    let b = start().await;
    let mut s = TcpStream::connect(b.ws_addr()).await.expect("connect");
    s.write_all(post(r#"{"eventType":6,"files":[]}"#, "").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 202");
    let stopping = tokio::spawn(b.shutdown());
    let _ = read_all(&mut s).await;
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the broker stopped in time")
        .expect("shutdown task");
}
