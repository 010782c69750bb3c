//! Resumable delivery (docs/PROTOCOL.md "Positions and resuming"): opt-in positions, a resume
//! that replays what was missed (for that client only) in order and once, then the live stream,
//! and a clear notice when that cannot be done.

mod common;
use common::*;
use serde_json::{json, Value};

/// A client that asked for positions or to resume, as `user` when given.
async fn positioned(
    addr: std::net::SocketAddr,
    query: &str,
    user: Option<&str>,
) -> (Client, Value) {
    let token = user
        .map(|u| format!("&token={}", user_token(u)))
        .unwrap_or_default();
    positioned_client(addr, &format!("{query}{token}")).await
}

fn position(v: &Value) -> String {
    v["brokerPosition"]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {v}"))
        .to_string()
}

/// `v` without its position: the event as published.
fn plain(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().map(|o| o.remove("brokerPosition"));
    v
}

#[tokio::test]
async fn positions_are_opt_in_and_other_clients_get_the_same_bytes_as_before() {
    let b = start().await;
    let mut old = client(b.ws_addr()).await;
    let (mut new, notice) = positioned(b.ws_addr(), "recover=1", None).await;
    assert_eq!(notice["brokerRecovery"]["complete"], true);
    assert_eq!(notice["brokerRecovery"]["replayed"], 0);
    // `since=` with no position asks the same.
    let (_, empty) = positioned(b.ws_addr(), "since=", None).await;
    assert_eq!(empty["brokerRecovery"]["complete"], true, "{empty}");
    let start = position(&notice);
    let mut publ = publisher(b.ws_addr()).await;
    let text = r#"{"eventType":6,"files":[{"name":"a.txt"}]}"#;
    send_text(&mut publ, text).await;
    // A client that did not ask gets the publisher's bytes, untouched.
    assert_eq!(recv_text(&mut old).await, text);
    let got = recv_json(&mut new).await;
    assert_eq!(
        plain(&got),
        serde_json::from_str::<Value>(text).expect("JSON")
    );
    assert_ne!(position(&got), start);
    // An Echo answer is the client's own: no position.
    let echo = json!({"eventType": 10, "message": "mine"});
    send_json(&mut new, &echo).await;
    assert_eq!(recv_json(&mut new).await, echo);
    b.shutdown().await;
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_for_that_client_in_order_once_then_live() {
    let b = start().await;
    let addr = b.ws_addr();
    let mut publ = publisher(addr).await;
    let (mut alice, _) = positioned(addr, "recover=1", Some("alice")).await;
    let first = json!({"eventType": 6, "files": [], "n": 0});
    send_json(&mut publ, &first).await;
    let got = recv_json(&mut alice).await;
    assert_eq!(plain(&got), first);
    let last_seen = position(&got);
    drop(alice);
    // While alice is away: broadcasts, one event for her, one for bob.
    let missed = [
        json!({"eventType": 6, "files": [], "n": 1}),
        json!({"eventType": 1, "username": "alice", "n": 2}),
        json!({"eventType": 1, "username": "bob", "n": 3}),
        json!({"eventType": 8, "bucket": {}, "n": 4}),
    ];
    for ev in &missed {
        send_json(&mut publ, ev).await;
    }
    // Make sure they were all handled before she comes back.
    send_json(&mut publ, &json!({"eventType": 10, "message": "sync"})).await;
    recv_json(&mut publ).await;
    let (mut alice, notice) = positioned(addr, &format!("since={last_seen}"), Some("alice")).await;
    assert_eq!(notice["brokerRecovery"]["complete"], true, "{notice}");
    assert_eq!(notice["brokerRecovery"]["replayed"], 3, "{notice}");
    assert_eq!(
        position(&notice),
        last_seen,
        "a cut-off replay resumes from here"
    );
    // Exactly what was meant for her, in order: not bob's event.
    let mut positions = vec![last_seen.clone()];
    for ev in [&missed[0], &missed[1], &missed[3]] {
        let got = recv_json(&mut alice).await;
        assert_eq!(&plain(&got), ev);
        positions.push(position(&got));
    }
    let seqs: Vec<u64> = positions
        .iter()
        .map(|p| {
            p.rsplit_once('-')
                .and_then(|(_, n)| n.parse().ok())
                .expect("seq")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Then the live stream, each event once.
    let live = json!({"eventType": 6, "files": [], "n": 5});
    send_json(&mut publ, &live).await;
    assert_eq!(plain(&recv_json(&mut alice).await), live);
    assert_nothing_pending(&mut alice).await;
    // Resuming again from the last position replays nothing.
    let last = position(&{
        send_json(&mut publ, &json!({"eventType": 6, "files": [], "n": 6})).await;
        recv_json(&mut alice).await
    });
    drop(alice);
    let (mut again, notice) = positioned(addr, &format!("since={last}"), Some("alice")).await;
    assert_eq!(notice["brokerRecovery"]["replayed"], 0, "{notice}");
    assert_nothing_pending(&mut again).await;
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_resumes_total{result="complete"}"#),
        3.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_position_that_cannot_be_resumed_from_gets_a_clear_notice() {
    // A history of about three small events.
    let b = start_with(json!({"broker": {"history": {"maxBytes": 300}}})).await;
    let addr = b.ws_addr();
    let mut publ = publisher(addr).await;
    let (mut ws, notice) = positioned(addr, "recover=1", None).await;
    let start = position(&notice);
    for n in 0..10 {
        send_json(&mut publ, &json!({"eventType": 6, "files": [], "n": n})).await;
        recv_json(&mut ws).await;
    }
    drop(ws);
    let cases = [
        (format!("since={start}"), "no longer kept"),
        ("since=0badc0de-1".to_string(), "another history"),
        ("since=garbage".to_string(), "since=\"garbage\""),
    ];
    for (query, why) in cases {
        let (mut ws, notice) = positioned(addr, &query, None).await;
        let recovery = &notice["brokerRecovery"];
        assert_eq!(recovery["complete"], false, "{query}: {notice}");
        assert!(
            recovery["reason"].as_str().is_some_and(|r| r.contains(why)),
            "{query}: {notice}"
        );
        // The client is served all the same, from now on.
        let ev = json!({"eventType": 6, "files": [], "after": query});
        send_json(&mut publ, &ev).await;
        assert_eq!(plain(&recv_json(&mut ws).await), ev);
    }
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_resumes_total{result="incomplete"}"#),
        3.0
    );
    assert!(metric(&m, "broker_history_events") <= 3.0);
    b.shutdown().await;
}

#[tokio::test]
async fn with_the_history_off_a_client_that_asks_is_told_and_served() {
    let b = start_with(json!({"broker": {"history": {"maxBytes": 0}}})).await;
    let (mut ws, notice) = positioned(b.ws_addr(), "recover=1", None).await;
    assert_eq!(notice["brokerRecovery"]["complete"], false);
    let mut publ = publisher(b.ws_addr()).await;
    let text = r#"{"eventType":6,"files":[]}"#;
    send_text(&mut publ, text).await;
    assert_eq!(recv_text(&mut ws).await, text);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_again_and_again_under_a_steady_stream_loses_and_repeats_nothing() {
    const EVENTS: u64 = 3000;
    let b = start().await;
    let addr = b.ws_addr();
    let (mut ws, notice) = positioned(addr, "recover=1", None).await;
    assert_eq!(notice["brokerRecovery"]["complete"], true);
    let publishing = tokio::spawn(async move {
        let mut publ = publisher(addr).await;
        for n in 0..EVENTS {
            send_json(&mut publ, &json!({"eventType": 6, "files": [], "n": n})).await;
        }
        publ
    });
    let mut seen = Vec::new();
    // Cut the connection every 250 events while the publisher keeps going, and resume.
    while seen.len() < EVENTS as usize {
        let got = recv_json(&mut ws).await;
        if got.get("brokerRecovery").is_some() {
            assert_eq!(got["brokerRecovery"]["complete"], true, "{got}");
        } else {
            seen.push(got["n"].as_u64().expect("n"));
        }
        let last = position(&got);
        if seen.len() % 250 == 0 && got.get("brokerRecovery").is_none() {
            drop(ws);
            ws = connect_with(
                addr,
                &format!("/?since={last}"),
                &[("origin", "http://localhost")],
            )
            .await
            .expect("reconnects");
        }
    }
    let _publ = publishing.await.expect("publisher");
    let expected: Vec<u64> = (0..EVENTS).collect();
    assert_eq!(seen, expected, "every event once, in order");
    b.shutdown().await;
}
