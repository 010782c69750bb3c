//! Delivery guarantees over real sockets (docs/PROTOCOL.md "Delivery guarantees"):
//! one outgoing path per connection (order), closes that never cut a frame, drains that write
//! what was queued before 1001, and fairness: a flooder cannot get a paused client dropped.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A client whose socket has a tiny receive buffer and that does not read until told to:
/// backpressure reaches the broker after a few KiB instead of a few MiB.
async fn paused_client(addr: SocketAddr, headers: &[(&str, &str)]) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url(addr))
            .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("name"),
            v.parse().expect("value"),
        );
    }
    let (ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    ws
}

/// Reads every frame until the close frame: the JSON events in order, and the close code.
/// Any read error (a cut frame: "frame truncated", a reset) fails the test.
async fn read_to_close(ws: &mut Client, within: Duration) -> (Vec<Value>, u16) {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closed within the deadline")
            .expect("a close frame before the end of the stream");
        match msg {
            Ok(Message::Text(t)) => {
                events.push(serde_json::from_str(t.as_str()).expect("every frame is whole JSON"))
            }
            Ok(Message::Close(Some(f))) => return (events, u16::from(f.code)),
            Ok(Message::Close(None)) => return (events, 1005),
            Ok(_) => {}
            Err(e) => panic!(
                "read failed after {} whole events (a cut frame or a reset): {e}",
                events.len()
            ),
        }
    }
}

/// `seq` fields, in arrival order.
fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// The connection's row in `GET /admin/connections`, found by origin marker.
async fn admin_row(ops: SocketAddr, origin: &str) -> Option<Value> {
    let (status, body) = http_get(ops, "/admin/connections?limit=1000", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let rows = v["connections"].as_array().cloned().unwrap_or_default();
    rows.into_iter().find(|r| r["origin"] == origin)
}

/// Publishes `n` events numbered `seq` 0..n with a `blob` of `size` bytes, then waits until
/// the broker has handled them all (see [`sync_publisher`]).
async fn publish_numbered(publ: &mut Client, n: u64, size: usize) {
    let blob = "b".repeat(size);
    for seq in 0..n {
        send_json(
            publ,
            &json!({"eventType": 6, "files": [], "blob": blob, "seq": seq}),
        )
        .await;
    }
    sync_publisher(publ).await;
}

/// Sends an Echo on a publisher and waits for it: everything the publisher sent before has
/// been handled (queued for its recipients) by then.
async fn sync_publisher(publ: &mut Client) {
    let marker = json!({"eventType": 10, "message": "__sync__"});
    send_json(publ, &marker).await;
    loop {
        if recv_json(publ).await == marker {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_resumes_sees_every_complete_frame_then_1013() {
    let b = start_with(json!({"broker": {"limits": {
        "sendQueueBytes": 256 * 1024, "closeGrace": 5
    }}}))
    .await;
    let origin = "http://localhost:4001";
    let mut slow = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut publ = publisher(b.ws_addr()).await;
    let blob = "s".repeat(16 * 1024);
    // The first event is written to the socket before the flood (otherwise, on a loaded
    // machine, the flood can fill the queue before the connection's task writes anything).
    send_json(
        &mut publ,
        &json!({"eventType": 6, "files": [], "blob": blob, "seq": 0}),
    )
    .await;
    let ops = b.ops_addr();
    eventually("the first event was written", || async move {
        admin_row(ops, origin)
            .await
            .is_some_and(|r| r["messagesOut"].as_u64() >= Some(1))
    })
    .await;
    // Until the broker gives up on the reader (kernel buffers take a few MiB first).
    let mut sent = 1u64;
    let mut closing = false;
    while !closing {
        assert!(sent < 4000, "the reader was never found slow");
        for _ in 0..32 {
            send_json(
                &mut publ,
                &json!({"eventType": 6, "files": [], "blob": blob, "seq": sent}),
            )
            .await;
            sent += 1;
        }
        sync_publisher(&mut publ).await;
        closing = admin_row(b.ops_addr(), origin)
            .await
            .is_some_and(|r| r["closing"] == "slow_consumer");
    }
    // The reader resumes within the close grace: every frame it gets is whole, in order, a
    // prefix of what was sent (the rest was dropped), then the close code.
    let (events, code) = read_to_close(&mut slow, DEADLINE).await;
    let got = seqs(&events);
    assert!(!got.is_empty(), "frames written before the close arrive");
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "a prefix of the events, in order"
    );
    assert!((got.len() as u64) < sent, "the rest was dropped");
    assert_eq!(code, 1013);
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(metric(&m, "broker_close_resets_total"), 0.0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_resumes_is_reset_after_the_grace() {
    let b = start_with(json!({"broker": {"limits": {
        "sendQueueBytes": 64 * 1024, "closeGrace": 0.5, "slowConsumerTimeout": 0.5
    }}}))
    .await;
    let origin = "http://localhost:4002";
    let _stuck = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut other = client(b.ws_addr()).await;
    let mut publ = publisher(b.ws_addr()).await;
    let blob = "r".repeat(16 * 1024);
    let mut sent = 0u64;
    loop {
        let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
        if metric(&m, "broker_close_resets_total") == 1.0 {
            break;
        }
        assert!(sent < 4000, "the stuck reader was never reset");
        send_json(
            &mut publ,
            &json!({"eventType": 6, "files": [], "blob": blob, "seq": sent}),
        )
        .await;
        sent += 1;
        assert_eq!(
            recv_json(&mut other).await["seq"],
            sent - 1,
            "others keep up"
        );
    }
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(metric(&m, "broker_slow_consumer_disconnects_total"), 1.0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_queued_event_before_1001() {
    let broker = BrokerProcess::spawn(&[
        ("BROKER_SOCKET_API_KEY", API_KEY),
        ("BROKER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("BROKER_SEND_QUEUE_BYTES", "33554432"),
        ("BROKER_DRAIN_WINDOW", "1"),
    ]);
    let origin = "http://localhost:4003";
    let mut behind = paused_client(broker.ws, &[("origin", origin)]).await;
    let mut publ = publisher(broker.ws).await;
    // 600 events of 16 KiB: far more than the kernel buffers hold, so most wait in the queue.
    publish_numbered(&mut publ, 600, 16 * 1024).await;
    let row = admin_row(broker.ops, origin).await.expect("listed");
    assert!(
        row["sendQueueBytes"].as_u64().unwrap_or(0) > 1024 * 1024,
        "events wait in the broker's queue at SIGTERM: {row}"
    );
    broker.terminate();
    let (events, code) = read_to_close(&mut behind, DEADLINE).await;
    assert_eq!(
        seqs(&events),
        (0..600).collect::<Vec<_>>(),
        "every queued event, in order"
    );
    assert_eq!(code, 1001);
    let mut broker = broker;
    assert_eq!(broker.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_drain_writes_every_queued_event_before_1001() {
    let b = start_with(json!({"broker": {"drainWindow": 0.5, "limits": {
        "sendQueueBytes": 32 * 1024 * 1024
    }}}))
    .await;
    let origin = "http://localhost:4004";
    let mut behind = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut publ = publisher(b.ws_addr()).await;
    publish_numbered(&mut publ, 400, 16 * 1024).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http_request(
        b.ops_addr(),
        "POST",
        "/admin/drain",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (events, code) = read_to_close(&mut behind, DEADLINE).await;
    assert_eq!(seqs(&events), (0..400).collect::<Vec<_>>());
    assert_eq!(code, 1001);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_discards_the_queue_says_how_much_and_cuts_no_frame() {
    let b = start_with(json!({"broker": {"limits": {
        "sendQueueBytes": 64 * 1024 * 1024, "closeGrace": 5
    }}}))
    .await;
    let origin = "http://localhost:4005";
    let mut kicked = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut publ = publisher(b.ws_addr()).await;
    publish_numbered(&mut publ, 800, 16 * 1024).await;
    let id = admin_row(b.ops_addr(), origin).await.expect("listed")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http_request(
        b.ops_addr(),
        "DELETE",
        &format!("/admin/connections/{id}?code=4000"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).expect("json");
    let discarded = reply["discarded"].as_u64().expect("discarded count");
    assert!(discarded > 0, "queued frames were dropped: {reply}");
    let (events, code) = read_to_close(&mut kicked, DEADLINE).await;
    let got = seqs(&events);
    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
    assert!(got.len() as u64 + discarded <= 800);
    assert_eq!(code, 4000);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_plain_and_broadcast_echoes_come_back_in_order() {
    // The fan-out limits are off: this test is about order, not fairness.
    let b = start_with(json!({"broker": {"limits": {
        "clientFanoutPerSecond": 0, "clientFanoutBytesPerSecond": 0
    }}}))
    .await;
    let ws = client(b.ws_addr()).await;
    let mut listener = client(b.ws_addr()).await;
    let (mut tx, mut rx) = ws.split();
    const N: u64 = 2000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let ev = json!({"eventType": 10, "message": format!("m{i}"), "broadcast": i.is_multiple_of(3)});
            tx.send(Message::text(ev.to_string())).await.expect("send");
        }
        tx
    });
    let mut order = Vec::new();
    while (order.len() as u64) < N {
        let msg = tokio::time::timeout(DEADLINE, rx.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            let m = v["message"].as_str().expect("an Echo answer");
            order.push(m[1..].parse::<u64>().expect("number"));
        }
    }
    let _tx = writer.await.expect("writer");
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert_eq!(inversions, 0, "answers overtook each other");
    assert_eq!(order, (0..N).collect::<Vec<_>>());
    // The other client sees the broadcast ones, in order, and nothing else.
    let mut seen = Vec::new();
    for _ in (0..N).filter(|i| i.is_multiple_of(3)) {
        let v = recv_json(&mut listener).await;
        seen.push(
            v["message"].as_str().expect("echo")[1..]
                .parse::<u64>()
                .expect("n"),
        );
    }
    assert_eq!(
        seen,
        (0..N).filter(|i| i.is_multiple_of(3)).collect::<Vec<_>>()
    );
    assert_nothing_pending(&mut listener).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_never_overtakes_queued_events() {
    let b = start().await;
    let origin = "http://localhost:4006";
    let mut ws = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut publ = publisher(b.ws_addr()).await;
    for seq in 0..50u64 {
        send_json(&mut publ, &json!({"eventType": 6, "files": [], "seq": seq})).await;
    }
    sync_publisher(&mut publ).await;
    // Now the client sends a bad message: its error event comes after the 50 events.
    send_text(&mut ws, "not json").await;
    let mut got = Vec::new();
    loop {
        let v = recv_json(&mut ws).await;
        if v.get("error").is_some() {
            break;
        }
        got.push(v["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    b.shutdown().await;
}

/// The scenario of the fairness promise, on the default limits: one anonymous client floods
/// broadcast Echoes of 32 KiB and MetaRequests as fast as it can while a listener and a
/// publisher stop reading for 5 s. The flooder is refused and closed (1008); the two paused
/// ones lose nothing and stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_cannot_get_a_paused_listener_or_publisher_dropped() {
    let b = start().await;
    let addr = b.ws_addr();
    let mut paused = paused_client(addr, &[("origin", "http://localhost:4007")]).await;
    let mut paused_publ = paused_client(addr, &[("users-api-key", API_KEY)]).await;
    let mut steady = client(addr).await;
    let paused_at = tokio::time::Instant::now();

    let flooder = client(addr).await;
    let (mut ftx, mut frx) = flooder.split();
    let blob = "f".repeat(32 * 1024);
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < 3000 {
            let ev = if sent.is_multiple_of(2) {
                json!({"eventType": 10, "message": blob, "broadcast": true, "seq": sent})
            } else {
                json!({"eventType": 9, "username": "x", "property": "p", "val": sent, "seq": sent})
            };
            if ftx.send(Message::text(ev.to_string())).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    // The flooder's own view: refusals, then its close.
    let (flooder_events, flooder_code) = read_to_close_lenient(&mut frx).await;
    let _ = flood.await;
    let refused = flooder_events
        .iter()
        .filter(|e| {
            e["error"]
                .as_str()
                .is_some_and(|s| s.contains("per second"))
        })
        .count();
    assert!(refused > 0, "the flooder was refused");
    assert_eq!(flooder_code, Some(1008), "the flooder is the one closed");

    // The steady listener saw every broadcast that was let through.
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    let broadcasts = metric(&m, r#"broker_events_total{type="echo"}"#) as usize;
    let metas = metric(&m, r#"broker_events_total{type="meta_request"}"#) as usize;
    assert!(broadcasts > 0 && metas > 0, "some were let through");
    let mut reference = Vec::new();
    for _ in 0..broadcasts {
        reference.push(recv_json(&mut steady).await["seq"].clone());
    }

    // Five seconds after they stopped reading, the paused ones resume and lose nothing.
    tokio::time::sleep_until(paused_at + Duration::from_secs(5)).await;
    let mut got = Vec::new();
    for _ in 0..broadcasts {
        got.push(recv_json(&mut paused).await["seq"].clone());
    }
    assert_eq!(got, reference, "the paused listener lost nothing");
    assert_nothing_pending(&mut paused).await;
    let (mut pub_broadcasts, mut pub_metas) = (0, 0);
    while pub_broadcasts < broadcasts || pub_metas < metas {
        let v = recv_json(&mut paused_publ).await;
        match v["eventType"].as_u64() {
            Some(10) => pub_broadcasts += 1,
            Some(9) => pub_metas += 1,
            _ => panic!("unexpected event {v}"),
        }
    }
    assert_eq!((pub_broadcasts, pub_metas), (broadcasts, metas));
    assert_nothing_pending(&mut paused_publ).await;
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(metric(&m, "broker_slow_consumer_disconnects_total"), 0.0);
    b.shutdown().await;
}

/// Reads a stream half until its close frame; `None` when it ended without one.
async fn read_to_close_lenient(
    rx: &mut futures_util::stream::SplitStream<Client>,
) -> (Vec<Value>, Option<u16>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("the flooder is closed within the deadline")
        {
            Some(Ok(Message::Text(t))) => {
                events.push(serde_json::from_str(t.as_str()).expect("json"))
            }
            Some(Ok(Message::Close(f))) => return (events, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (events, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_faster_than_it_reads_is_slowed_not_buffered() {
    let bound = 1024 * 1024;
    let b = start_with(json!({"broker": {"limits": {"sendQueueBytes": bound}}})).await;
    let origin = "http://localhost:4008";
    let ws = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let (mut tx, mut rx) = ws.split();
    const N: u64 = 1000;
    let blob = "e".repeat(16 * 1024);
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let ev = json!({"eventType": 10, "message": blob, "seq": i});
            tx.send(Message::text(ev.to_string())).await.expect("send");
        }
        tx
    });
    // While the client reads nothing, the broker stops reading it: its socket is full, and the
    // broker reads a connection only between whole frames and while less than half the bound
    // waits. Two samples in a row with the same count (a publisher round trip apart) show it.
    let mut publ = publisher(b.ws_addr()).await;
    let mut last = u64::MAX;
    let mut stable = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let row = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker kept reading"
        );
        sync_publisher(&mut publ).await;
        let row = admin_row(b.ops_addr(), origin).await.expect("listed");
        let n = row["messagesIn"].as_u64().expect("in");
        stable = if n == last && n > 0 { stable + 1 } else { 0 };
        last = n;
        if stable >= 5 {
            break row;
        }
    };
    assert!(
        row["messagesIn"].as_u64().expect("in") < N,
        "the rest waits in TCP, not in the broker: {row}"
    );
    assert!(
        row["sendQueueBytes"].as_u64().expect("bytes") <= (bound / 2 + 17 * 1024) as u64,
        "at most half the bound and one answer wait: {row}"
    );
    // Reading again, the client gets every answer, in order.
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        let msg = tokio::time::timeout(DEADLINE, rx.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            got.push(v["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let _tx = writer.await.expect("writer");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_broadcast_can_be_turned_off() {
    let b = start_with(json!({"broker": {"clientBroadcast": false}})).await;
    let mut ws = client(b.ws_addr()).await;
    let mut other = client(b.ws_addr()).await;
    send_json(
        &mut ws,
        &json!({"eventType": 10, "message": "to all", "broadcast": true}),
    )
    .await;
    let err = recv_json(&mut ws).await;
    assert_eq!(err["eventType"], 10);
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("clientBroadcast")),
        "{err}"
    );
    assert_nothing_pending(&mut other).await;
    // Publishers still broadcast.
    let mut publ = publisher(b.ws_addr()).await;
    let ev = json!({"eventType": 10, "message": "from the back end", "broadcast": true});
    send_json(&mut publ, &ev).await;
    assert_eq!(recv_json(&mut other).await, ev);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_holds_while_writes_to_the_client_are_blocked() {
    // The slow-consumer limit is far away: only the idle timeout can end this connection.
    let b = start_with(
        json!({"broker": {"limits": {"pingInterval": 0.2, "idleTimeout": 0.6,
        "slowConsumerTimeout": 60, "closeGrace": 0.5}}}),
    )
    .await;
    let origin = "http://localhost:4011";
    // Reads nothing (so answers no ping) while its socket is full.
    let _silent = paused_client(b.ws_addr(), &[("origin", origin)]).await;
    let mut publ = publisher(b.ws_addr()).await;
    publish_numbered(&mut publ, 100, 16 * 1024).await;
    eventually(
        "closed as idle, not left until the slow-consumer limit",
        || async {
            let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
            metric(&m, r#"broker_connections_closed_total{reason="idle"}"#) == 1.0
        },
    )
    .await;
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(
            &m,
            r#"broker_connections_closed_total{reason="slow_consumer"}"#
        ),
        0.0
    );
    b.shutdown().await;
}

/// Two publishers broadcast at once, events of 10 bytes to 40 KiB, to listeners that read at
/// full speed and to listeners behind 4 KiB socket buffers that read slowly. Whichever way each
/// event reaches a listener (written straight to its socket by the delivering thread, begun
/// there and finished by its task, or queued), every listener gets every event of each
/// publisher, whole and in that publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_reach_fast_and_slow_readers_whole_and_in_order() {
    let b = start_with(json!({"broker": {"limits": {"sendQueueBytes": 64 * 1024 * 1024}}})).await;
    const N: u64 = 300;
    let mut readers = Vec::new();
    for i in 0..8 {
        let slow = i % 2 == 0;
        let mut ws = if slow {
            paused_client(b.ws_addr(), &[("origin", "http://localhost:4010")]).await
        } else {
            client(b.ws_addr()).await
        };
        readers.push(tokio::spawn(async move {
            let mut seen = [Vec::new(), Vec::new()];
            let deadline = tokio::time::Instant::now() + 3 * DEADLINE;
            while (seen[0].len() + seen[1].len()) < 2 * N as usize {
                let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
                    panic!(
                        "reader {i} (slow: {slow}) got {} and {} events, not {N} of each, in time",
                        seen[0].len(),
                        seen[1].len()
                    );
                };
                let msg = msg.expect("open").expect("every frame whole");
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(t.as_str()).expect("whole JSON");
                let p = v["p"].as_u64().expect("p") as usize;
                let seq = v["seq"].as_u64().expect("seq");
                let blob = v["blob"].as_str().expect("blob");
                assert_eq!(blob.len() as u64, size(seq), "the event's body is whole");
                seen[p].push(seq);
                if slow && seq.is_multiple_of(10) {
                    // Pacing a slow reader, not waiting for anything.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            seen
        }));
    }
    fn size(seq: u64) -> u64 {
        [10, 300, 5_000, 40_000][(seq % 4) as usize]
    }
    let mut publishers = Vec::new();
    for p in 0..2u64 {
        // A publisher gets the other's events: it reads them (one that does not is slowed by
        // TCP, see a_client_that_sends_faster_than_it_reads_is_slowed_not_buffered).
        let (mut tx, mut rx) = publisher(b.ws_addr()).await.split();
        tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        publishers.push(tokio::spawn(async move {
            for seq in 0..N {
                let blob = "x".repeat(size(seq) as usize);
                let ev = json!({"eventType": 6, "files": [], "p": p, "seq": seq, "blob": blob});
                tx.send(Message::text(ev.to_string())).await.expect("send");
            }
            tx
        }));
    }
    for p in publishers {
        let _publ = p.await.expect("publisher");
    }
    for r in readers {
        let seen = r.await.expect("reader");
        for s in seen {
            assert_eq!(
                s,
                (0..N).collect::<Vec<_>>(),
                "each publisher's events, in order"
            );
        }
    }
    b.shutdown().await;
}
