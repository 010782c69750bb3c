//! Echo to the sender, and broadcast echo to every client exactly once.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn echo_answers_the_sender_alone_with_unknown_fields_kept() {
    let b = start().await;
    let mut a = client(b.ws_addr()).await;
    let mut other = client(b.ws_addr()).await;
    let ev =
        json!({"eventType": 10, "message": "Hello world?", "extra": {"nested": [1, 2]}, "n": 1.5});
    send_json(&mut a, &ev).await;
    assert_eq!(recv_json(&mut a).await, ev);
    assert_nothing_pending(&mut other).await;
    b.shutdown().await;
}

#[tokio::test]
async fn binary_frames_holding_json_are_accepted() {
    use futures_util::SinkExt;
    let b = start().await;
    let mut a = client(b.ws_addr()).await;
    a.send(tokio_tungstenite::tungstenite::Message::binary(
        br#"{"eventType":10,"message":"bin"}"#.to_vec(),
    ))
    .await
    .expect("send");
    assert_eq!(
        recv_json(&mut a).await,
        json!({"eventType": 10, "message": "bin"})
    );
    b.shutdown().await;
}

#[tokio::test]
async fn broadcast_echo_reaches_every_client_exactly_once() {
    let b = start().await;
    let n = 50;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(client(b.ws_addr()).await);
    }
    let mut publ = publisher(b.ws_addr()).await;
    let ev = json!({"eventType": 10, "message": "to all", "broadcast": true});
    send_json(&mut clients[0], &ev).await;
    for ws in clients.iter_mut() {
        assert_eq!(recv_json(ws).await, ev);
    }
    // Publishers are connected clients too.
    assert_eq!(recv_json(&mut publ).await, ev);
    // Exactly once: nothing else is waiting on any of them.
    for ws in clients.iter_mut() {
        assert_nothing_pending(ws).await;
    }
    b.shutdown().await;
}

/// A client's read buffer is small (`broker.limits.readBufferBytes`, every idle connection
/// holds it); a message many times larger still arrives whole, and so does the next small one.
#[tokio::test]
async fn messages_larger_than_the_read_buffer_arrive_whole() {
    let b = start_with(json!({"broker": {"limits": {"readBufferBytes": 128}}})).await;
    let mut c = client(b.ws_addr()).await;
    let big = json!({"eventType": 10, "message": "x".repeat(40_000)});
    send_json(&mut c, &big).await;
    assert_eq!(recv_json(&mut c).await, big);
    let small = json!({"eventType": 10, "message": "after"});
    send_json(&mut c, &small).await;
    assert_eq!(recv_json(&mut c).await, small);
    b.shutdown().await;
}
