//! Publishers, user targeting, HTTP publish, MetaRequest, slow consumers and metrics
//! (PROTOCOL.md parts 2, 3 and 5).

mod common;
use common::*;
use serde_json::{json, Value};

fn token(user: &str, exp_offset: i64, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + exp_offset}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

async fn user_client(addr: std::net::SocketAddr, user: &str) -> Client {
    let path = format!("/?token={}", token(user, 600, JWT_SECRET));
    connect_with(addr, &path, &[("origin", "http://localhost")])
        .await
        .expect("user connects")
}

#[tokio::test]
async fn publisher_event_reaches_every_client_once() {
    let b = start().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(b.ws_addr()).await);
    }
    let mut publ = publisher(b.ws_addr()).await;
    let ev = json!({"eventType": 6, "files": [{"name": "a.txt"}], "custom": {"kept": true}});
    send_json(&mut publ, &ev).await;
    for ws in clients.iter_mut() {
        assert_eq!(recv_json(ws).await, ev);
        assert_nothing_pending(ws).await;
    }
    // Not echoed back to the publisher that sent it.
    assert_nothing_pending(&mut publ).await;
    b.shutdown().await;
}

#[tokio::test]
async fn user_events_reach_that_user_and_the_publishers_only() {
    let b = start().await;
    let addr = b.ws_addr();
    let mut alice1 = user_client(addr, "alice").await;
    let mut alice2 = user_client(addr, "alice").await;
    let mut bob = user_client(addr, "bob").await;
    let mut anon = client(addr).await;
    let mut publ1 = publisher(addr).await;
    let mut publ2 = publisher(addr).await;
    let ev = json!({"eventType": 1, "username": "alice"});
    send_json(&mut publ1, &ev).await;
    assert_eq!(recv_json(&mut alice1).await, ev);
    assert_eq!(recv_json(&mut alice2).await, ev);
    assert_eq!(recv_json(&mut publ2).await, ev);
    for ws in [&mut bob, &mut anon, &mut publ1] {
        assert_nothing_pending(ws).await;
    }
    // The same through HTTP publish.
    let ev2 = json!({"eventType": 5, "username": "bob", "files": []});
    let (status, _) = http_request(
        addr,
        "POST",
        "/api/publish",
        &[("users-api-key", API_KEY)],
        &ev2.to_string(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(recv_json(&mut bob).await, ev2);
    assert_eq!(recv_json(&mut publ1).await, ev2);
    assert_eq!(recv_json(&mut publ2).await, ev2);
    for ws in [&mut alice1, &mut alice2, &mut anon] {
        assert_nothing_pending(ws).await;
    }
    b.shutdown().await;
}

#[tokio::test]
async fn deliver_user_events_all_is_the_original_behaviour() {
    let b = start_with(json!({"broker": {"deliverUserEvents": "all"}})).await;
    let mut alice = user_client(b.ws_addr(), "alice").await;
    let mut anon = client(b.ws_addr()).await;
    let mut publ = publisher(b.ws_addr()).await;
    let ev = json!({"eventType": 2, "username": "alice"});
    send_json(&mut publ, &ev).await;
    assert_eq!(recv_json(&mut alice).await, ev);
    assert_eq!(recv_json(&mut anon).await, ev);
    b.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked_at_the_upgrade() {
    let b = start().await;
    let addr = b.ws_addr();
    let origin = [("origin", "http://localhost")];
    let expired = format!("/?token={}", token("alice", -3600, JWT_SECRET));
    assert_eq!(
        refused_status(connect_with(addr, &expired, &origin).await),
        401
    );
    let forged = format!(
        "/?token={}",
        token("alice", 600, "some-other-secret-of-length")
    );
    assert_eq!(
        refused_status(connect_with(addr, &forged, &origin).await),
        401
    );
    assert_eq!(
        refused_status(connect_with(addr, "/?token=garbage", &origin).await),
        401
    );
    // Authorization: Bearer works too.
    let bearer = format!("Bearer {}", token("carol", 600, JWT_SECRET));
    let mut carol = connect_with(
        addr,
        "/",
        &[("origin", "http://localhost"), ("authorization", &bearer)],
    )
    .await
    .expect("bearer token accepted");
    let mut publ = publisher(addr).await;
    send_json(&mut publ, &json!({"eventType": 3, "username": "carol"})).await;
    assert_eq!(recv_json(&mut carol).await["username"], "carol");
    // A wrong publisher key is refused too.
    assert_eq!(
        refused_status(connect_with(addr, "/", &[("users-api-key", "wrong")]).await),
        403
    );
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_connections_refused_total{reason="token"}"#),
        3.0
    );
    assert_eq!(
        metric(&m, r#"broker_connections_refused_total{reason="api_key"}"#),
        1.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn http_publish_checks_keys_and_bodies() {
    let b = start().await;
    let addr = b.ws_addr();
    let mut ws = client(addr).await;
    let key = [("users-api-key", API_KEY)];
    let post = |headers: Vec<(&'static str, &'static str)>, body: &'static str| async move {
        http_request(addr, "POST", "/api/publish", &headers, body).await
    };
    assert_eq!(post(vec![], r#"{"eventType":1}"#).await.0, 401);
    assert_eq!(
        post(vec![("users-api-key", "nope")], r#"{"eventType":1}"#)
            .await
            .0,
        403
    );
    let (status, body) = post(key.to_vec(), "not json").await;
    assert_eq!(status, 400);
    assert!(serde_json::from_str::<Value>(&body).expect("JSON error")["error"].is_string());
    assert_eq!(post(key.to_vec(), "[]").await.0, 400);
    // One bad event in an array: nothing is delivered.
    let (status, body) = post(
        key.to_vec(),
        r#"[{"eventType":1,"username":"x"},{"no":"type"}]"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("event [1]"), "{body}");
    assert_nothing_pending(&mut ws).await;
    // An array of good events: each delivered, in order.
    let (status, body) = post(
        key.to_vec(),
        r#"[{"eventType":6,"files":[1]},{"eventType":8,"bucket":{}}]"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(recv_json(&mut ws).await["eventType"], 6);
    assert_eq!(recv_json(&mut ws).await["eventType"], 8);
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_publish_requests_total{status="202"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"broker_publish_requests_total{status="400"}"#),
        3.0
    );
    assert_eq!(
        metric(&m, r#"broker_publish_requests_total{status="401"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"broker_publish_requests_total{status="403"}"#),
        1.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn meta_request_round_trip_through_a_publisher() {
    let b = start().await;
    let mut alice = user_client(b.ws_addr(), "alice").await;
    let mut other = client(b.ws_addr()).await;
    let mut publ = publisher(b.ws_addr()).await;
    send_json(
        &mut alice,
        &json!({"eventType": 9, "username": "mallory", "property": "theme", "val": null}),
    )
    .await;
    let req = recv_json(&mut publ).await;
    assert_eq!(req["eventType"], 9);
    assert_eq!(req["property"], "theme");
    assert_eq!(
        req["username"], "alice",
        "the signed-in user, not the claimed one"
    );
    let from = req["from"]
        .as_str()
        .expect("from is a connection id")
        .to_string();
    let reply = json!({"eventType": 9, "to": from, "username": "alice", "property": "theme", "val": "dark"});
    send_json(&mut publ, &reply).await;
    assert_eq!(recv_json(&mut alice).await, reply);
    assert_nothing_pending(&mut other).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_while_others_get_everything() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open files limit");
    let b = start_with(json!({"broker": {"limits": {"sendQueueBytes": 140_000}}})).await;
    let addr = b.ws_addr();
    // A client that never reads, with a tiny receive window so backpressure comes quickly.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url(addr))
            .expect("req");
    req.headers_mut()
        .insert("origin", "http://localhost".parse().expect("value"));
    let (slow, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("slow client connects");

    // Readers acknowledge each event, so the publisher never outruns them: only the client
    // that does not read at all can fill its queue.
    let acks = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut ws = client(addr).await;
        let acks = acks.clone();
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                let ev = recv_json(&mut ws).await;
                if ev["done"] == true {
                    return seqs;
                }
                seqs.push(ev["seq"].as_u64().expect("seq"));
                acks.add_permits(1);
            }
        }));
    }
    let mut publ = publisher(addr).await;
    let payload = "p".repeat(8 * 1024);
    let batch = 8;
    let mut sent = 0u64;
    let mut dropped = false;
    while sent < 4000 && !dropped {
        for _ in 0..batch {
            send_json(
                &mut publ,
                &json!({"eventType": 6, "files": [], "blob": payload, "seq": sent}),
            )
            .await;
            sent += 1;
        }
        let all_read = tokio::time::timeout(DEADLINE, acks.acquire_many(100 * batch as u32))
            .await
            .expect("readers keep up")
            .expect("semaphore open");
        all_read.forget();
        if sent.is_multiple_of(batch * 4) {
            let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
            dropped = metric(&m, "broker_slow_consumer_disconnects_total") == 1.0;
        }
    }
    assert!(
        dropped,
        "the non-reading client was not dropped after {sent} events"
    );
    send_json(
        &mut publ,
        &json!({"eventType": 6, "files": [], "done": true}),
    )
    .await;
    for r in readers {
        let seqs = r.await.expect("reader");
        assert_eq!(
            seqs,
            (0..sent).collect::<Vec<_>>(),
            "a reader missed or reordered events"
        );
    }
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(
            &m,
            r#"broker_connections_closed_total{reason="slow_consumer"}"#
        ),
        1.0
    );
    drop(slow);
    b.shutdown().await;
}

#[tokio::test]
async fn metrics_parse_and_move() {
    let b = start().await;
    let ops = b.ops_addr();
    let (status, text) = http_get(ops, "/metrics", None).await;
    assert_eq!(status, 200);
    let before = parse_prometheus(&text);
    let mut ws = client(b.ws_addr()).await;
    send_json(&mut ws, &json!({"eventType": 10, "message": "m"})).await;
    recv_json(&mut ws).await;
    let (_, text) = http_get(ops, "/metrics", None).await;
    let after = parse_prometheus(&text);
    let get = |m: &std::collections::HashMap<String, f64>, k: &str| {
        m.get(k).copied().unwrap_or_else(|| panic!("{k} missing"))
    };
    for series in [
        r#"broker_connections_accepted_total{kind="client"}"#,
        r#"broker_messages_received_total{kind="client"}"#,
        "broker_messages_sent_total",
        "broker_bytes_received_total",
        "broker_bytes_sent_total",
        r#"broker_events_total{type="echo"}"#,
        "broker_handshake_duration_seconds_count",
    ] {
        assert!(
            get(&after, series) > get(&before, series),
            "{series} did not move"
        );
    }
    assert_eq!(
        get(&after, r#"broker_connections_open{kind="client"}"#),
        1.0
    );
    assert!(get(&after, "process_resident_memory_bytes") > 0.0);
    assert_eq!(http_get(ops, "/healthz", None).await.0, 200);
    assert_eq!(http_get(ops, "/readyz", None).await.0, 200);
    b.shutdown().await;
}

/// A strict reader of the Prometheus text format: every line is a comment or
/// `name{labels} value`; returns series to value.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            assert!(
                rest.starts_with(" HELP ") || rest.starts_with(" TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}
