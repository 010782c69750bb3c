//! Limits with safe defaults, each configurable (PROTOCOL.md part 5).

mod common;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client connecting through a proxy that says it is `ip` (`X-Forwarded-For`).
async fn forwarded_for(
    addr: std::net::SocketAddr,
    ip: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    connect_with(
        addr,
        "/",
        &[("origin", "http://localhost"), ("x-forwarded-for", ip)],
    )
    .await
}

async fn refused_count(b: &broker::app::RunningBroker, reason: &str) -> f64 {
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    metric(
        &m,
        &format!(r#"broker_connections_refused_total{{reason="{reason}"}}"#),
    )
}

#[tokio::test]
async fn total_connections_are_bounded_with_a_reserve_for_publishers() {
    // 4 slots, 1 % of them (at least one) reserved for publishers.
    let b = start_with(json!({"broker": {"limits": {"maxConnections": 4}}})).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(client(b.ws_addr()).await);
    }
    let r = connect_with(b.ws_addr(), "/", &[("origin", "http://localhost")]).await;
    assert_eq!(refused_status(r), 503);
    assert_eq!(refused_count(&b, "limit").await, 1.0);
    // Clients cannot take the last slot: the back end still gets in.
    let mut publ = publisher(b.ws_addr()).await;
    let r = connect_with(b.ws_addr(), "/", &[("users-api-key", API_KEY)]).await;
    assert_eq!(refused_status(r), 503, "the reserve is the last slot");
    send_json(&mut publ, &json!({"eventType": 6, "files": []})).await;
    assert_eq!(recv_json(&mut held[0]).await["eventType"], 6);
    // Every upgrade, refused or not, is timed: 3 clients, 1 refused, 1 publisher, 1 refused.
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(metric(&m, "broker_handshake_duration_seconds_count"), 6.0);
    // A slot frees when a client leaves.
    drop(held.pop());
    eventually("a slot is free again", || async {
        connect_with(b.ws_addr(), "/", &[("origin", "http://localhost")])
            .await
            .is_ok()
    })
    .await;
    b.shutdown().await;
}

#[tokio::test]
async fn connections_per_address_are_bounded_and_forwarded_for_is_believed_only_from_proxies() {
    let b = start_with(json!({"broker": {"limits": {"maxConnectionsPerAddress": 2, "trustedProxies": ["127.0.0.1"]}}})).await;
    let addr = b.ws_addr();
    let via = |ip: &'static str| forwarded_for(addr, ip);
    // Behind the trusted proxy 127.0.0.1, each forwarded address has its own budget.
    let _a1 = via("198.51.100.1").await.expect("first");
    let _a2 = via("198.51.100.1").await.expect("second");
    assert_eq!(refused_status(via("198.51.100.1").await), 429);
    let _b1 = via("198.51.100.2").await.expect("another address");
    assert_eq!(refused_count(&b, "per_address").await, 1.0);
    b.shutdown().await;

    // Without a trusted proxy the header is ignored: the peer address counts.
    let b = start_with(json!({"broker": {"limits": {"maxConnectionsPerAddress": 2}}})).await;
    let addr = b.ws_addr();
    let spoof = |ip: &'static str| forwarded_for(addr, ip);
    let _c1 = spoof("198.51.100.7").await.expect("first");
    let _c2 = spoof("198.51.100.8").await.expect("second");
    assert_eq!(refused_status(spoof("198.51.100.9").await), 429);
    b.shutdown().await;
}

#[tokio::test]
async fn a_slow_handshake_is_cut_off() {
    let b = start_with(json!({"broker": {"limits": {"handshakeTimeout": 0.5}}})).await;
    let mut ws = client(b.ws_addr()).await;
    // Slowloris: a request head that never ends.
    let mut s = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("cut off in time")
        .expect("read");
    assert!(
        out.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(refused_count(&b, "handshake_timeout").await, 1.0);
    // A silent socket is cut off the same way.
    let mut silent = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut out))
        .await
        .expect("cut off in time")
        .expect("read");
    assert!(out.starts_with(b"HTTP/1.1 408"));
    // Others were not held up.
    send_json(&mut ws, &json!({"eventType": 10, "message": "fine"})).await;
    assert_eq!(recv_json(&mut ws).await["message"], "fine");
    b.shutdown().await;
}

#[tokio::test]
async fn huge_request_heads_are_refused() {
    let b = start().await;
    let mut s = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(head.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("answered in time");
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    b.shutdown().await;
}

#[tokio::test]
async fn message_rate_per_client_is_bounded() {
    let b = start_with(json!({"broker": {"limits": {"messagesPerSecond": 5}}})).await;
    let mut flood = client(b.ws_addr()).await;
    let mut calm = client(b.ws_addr()).await;
    for i in 0..50 {
        // The broker may close before all are sent.
        let _ = futures_util::SinkExt::send(
            &mut flood,
            tokio_tungstenite::tungstenite::Message::text(
                json!({"eventType": 10, "message": i.to_string()}).to_string(),
            ),
        )
        .await;
    }
    assert_eq!(close_code(&mut flood).await, 1008);
    send_json(&mut calm, &json!({"eventType": 10, "message": "calm"})).await;
    assert_eq!(recv_json(&mut calm).await["message"], "calm");
    eventually("the close is counted as rate_limit", || async {
        let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
        metric(
            &m,
            r#"broker_connections_closed_total{reason="rate_limit"}"#,
        ) == 1.0
    })
    .await;
    b.shutdown().await;
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_idle_timeout() {
    use futures_util::StreamExt;
    let b =
        start_with(json!({"broker": {"limits": {"pingInterval": 0.2, "idleTimeout": 0.6}}})).await;
    // A raw client that completes the upgrade, then never answers anything (no pongs).
    let mut raw = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, raw.read_to_end(&mut out))
        .await
        .expect("dropped in time")
        .expect("read");
    assert!(out.starts_with(b"HTTP/1.1 101"));
    // A real client answers the pings and stays.
    let mut ws = client(b.ws_addr()).await;
    let mut pings = 0;
    while pings < 5 {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("pinged in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            other => panic!("expected pings, got {other:?}"),
        }
    }
    send_json(&mut ws, &json!({"eventType": 10, "message": "alive"})).await;
    assert_eq!(recv_json(&mut ws).await["message"], "alive");
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_connections_closed_total{reason="idle"}"#),
        1.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_written_ipv4_mapped_is_the_same_proxy() {
    // `::ffff:127.0.0.1` in the config is the peer 127.0.0.1.
    let b = start_with(json!({"broker": {"limits": {"maxConnectionsPerAddress": 1, "trustedProxies": ["::ffff:127.0.0.1"]}}})).await;
    let addr = b.ws_addr();
    let via = |ip: &'static str| forwarded_for(addr, ip);
    let _a = via("198.51.100.1").await.expect("first");
    let _b = via("198.51.100.2")
        .await
        .expect("another forwarded address: the proxy is trusted");
    assert_eq!(refused_status(via("198.51.100.1").await), 429);
    b.shutdown().await;
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_64_and_behind_proxies_the_limit_is_on_by_default() {
    let b = start_with(json!({"broker": {"limits": {"maxConnectionsPerAddress": 2, "trustedProxies": ["127.0.0.1"]}}})).await;
    let addr = b.ws_addr();
    let via = |ip: &'static str| forwarded_for(addr, ip);
    // One host given a /64 is one address, however many of its addresses it uses.
    let _a = via("2001:db8:1:2::1").await.expect("first of the /64");
    let _b = via("2001:db8:1:2:ffff::9")
        .await
        .expect("second of the /64");
    assert_eq!(refused_status(via("2001:db8:1:2:1234::5").await), 429);
    let _c = via("2001:db8:1:3::1")
        .await
        .expect("the next /64 is another host");
    b.shutdown().await;

    // With trustedProxies and no maxConnectionsPerAddress, 1000 per address.
    let b = start_with(json!({"broker": {"limits": {"trustedProxies": ["127.0.0.1"]}}})).await;
    let addr = b.ws_addr();
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(
            connect_with(
                addr,
                "/",
                &[
                    ("origin", "http://localhost"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
            )
            .await
            .expect("within the default"),
        );
    }
    let r = connect_with(
        addr,
        "/",
        &[
            ("origin", "http://localhost"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(refused_status(r), 429);
    assert_eq!(refused_count(&b, "per_address").await, 1.0);
    b.shutdown().await;
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all loopback);
/// `None` if the broker reset it before the connect returned.
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind((std::net::Ipv4Addr::from(from), 0).into())
        .expect("bind a loopback source");
    match s.connect(addr).await {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect: {e}"),
    }
}

/// Whether the broker ended the socket without any answer (a reset or a bare close).
async fn ended_without_answer(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the socket was neither answered nor ended in time"),
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_bounded_before_the_handshake() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open files limit");
    let b = start_with(json!({"broker": {"limits": {
        "maxPendingHandshakes": 100, "maxPendingHandshakesPerAddress": 20, "maxConnections": 20,
        "handshakeTimeout": 30}}}))
    .await;
    let addr = b.ws_addr();
    let before = open_descriptors();
    // 1,500 sockets that never send a byte, 30 from each of 50 loopback addresses in turn.
    let mut silent = Vec::new();
    for i in 0..1500u32 {
        silent.push(connect_from([127, 1, 0, (i / 30) as u8 + 1], addr).await);
    }
    // The first five addresses keep 20 each, which reaches the total of 100; the first four
    // also had 10 each ended as over their share. 1,400 are ended at once, without a byte.
    let pending_refused = || async {
        refused_count(&b, "pending_limit").await + refused_count(&b, "pending_per_address").await
    };
    eventually("1,400 sockets ended before the handshake", || async {
        pending_refused().await == 1400.0
    })
    .await;
    assert_eq!(refused_count(&b, "pending_per_address").await, 40.0);
    // The broker holds 100 of them, the test 1,500: never one descriptor per socket on both
    // sides.
    let grew = open_descriptors() - before;
    assert!(grew <= 1500 + 100 + 16, "descriptors grew by {grew}");
    // Exactly the first 20 of each of the first five addresses are held, open and unanswered.
    let held = |i: usize| i < 150 && i % 30 < 20;
    for (i, s) in silent.iter_mut().enumerate() {
        match s {
            None => assert!(!held(i), "socket {i} was reset at connect"),
            Some(s) if held(i) => {
                let mut buf = [0u8; 8];
                let r = s.try_read(&mut buf);
                assert!(
                    matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                    "held socket {i}: {r:?}"
                );
            }
            Some(s) => assert!(ended_without_answer(s).await, "socket {i} was answered"),
        }
    }
    // Full: a newcomer from elsewhere is ended too, until the silent ones go.
    if let Some(mut late) = connect_from([127, 2, 0, 1], addr).await {
        assert!(ended_without_answer(&mut late).await);
    }
    drop(silent);
    eventually(
        "a client gets in once the silent sockets are gone",
        || async {
            connect_with(addr, "/", &[("origin", "http://localhost")])
                .await
                .is_ok()
        },
    )
    .await;
    b.shutdown().await;
}
