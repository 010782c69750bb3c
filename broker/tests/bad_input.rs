//! Bad input, exactly as PROTOCOL.md says: an error event to the sender, the connection kept;
//! repeat offenders closed with 1008; oversize 1009; invalid UTF-8 1007.

mod common;
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn each_bad_input_gets_an_error_event_and_the_connection_stays() {
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let mut bystander = client(b.ws_addr()).await;
    let cases: [(&str, i64, &str); 9] = [
        ("this is not json", 0, "not valid JSON"),
        ("[1,2,3]", 0, "must be a JSON object"),
        (r#""a string""#, 0, "must be a JSON object"),
        (r#"{"message":"no type"}"#, 0, "no eventType"),
        (
            r#"{"eventType":"10","message":"x"}"#,
            0,
            "eventType must be a number",
        ),
        (r#"{"eventType":42}"#, 42, "unknown eventType 42"),
        (
            r#"{"eventType":10,"message":123}"#,
            10,
            "message must be a string",
        ),
        (
            r#"{"eventType":10,"message":"x","broadcast":"yes"}"#,
            10,
            "broadcast must be a boolean",
        ),
        (
            r#"{"eventType":1,"username":"alice"}"#,
            1,
            "may only be sent by a publisher",
        ),
    ];
    for (input, event_type, needle) in cases {
        send_text(&mut ws, input).await;
        let err = recv_json(&mut ws).await;
        assert_eq!(err["eventType"], event_type, "for {input}: {err}");
        let text = err["error"].as_str().unwrap_or_default();
        assert!(
            text.contains(needle),
            "for {input}: {text:?} should mention {needle:?}"
        );
    }
    // MetaRequest with no publisher connected.
    send_json(&mut ws, &json!({"eventType": 9, "property": "p"})).await;
    let err = recv_json(&mut ws).await;
    assert_eq!(err["eventType"], 9);
    assert!(err["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no publisher"));
    // The connection still works, and nothing reached the bystander.
    send_json(&mut ws, &json!({"eventType": 10, "message": "still here"})).await;
    assert_eq!(recv_json(&mut ws).await["message"], "still here");
    assert_nothing_pending(&mut bystander).await;

    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_decode_errors_total{reason="not_json"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"broker_decode_errors_total{reason="not_object"}"#),
        2.0
    );
    assert_eq!(
        metric(&m, r#"broker_decode_errors_total{reason="no_event_type"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"broker_decode_errors_total{reason="unknown_event_type"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"broker_decode_errors_total{reason="wrong_field_type"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(&m, r#"broker_decode_errors_total{reason="not_allowed"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"broker_decode_errors_total{reason="no_publisher"}"#),
        1.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn repeat_offenders_are_closed_with_1008() {
    let b = start_with(json!({"broker": {"limits": {"errorBudget": 5, "errorWindow": 60}}})).await;
    let mut ws = client(b.ws_addr()).await;
    let mut other = client(b.ws_addr()).await;
    for i in 0..6 {
        send_text(&mut ws, "garbage").await;
        let err = recv_json(&mut ws).await;
        assert_eq!(err["eventType"], 0, "error event {i}");
    }
    assert_eq!(close_code(&mut ws).await, 1008);
    assert_nothing_pending(&mut other).await;
    b.shutdown().await;
}

#[tokio::test]
async fn oversize_message_is_closed_with_1009() {
    let b = start_with(json!({"broker": {"limits": {"maxMessageSize": 1024}}})).await;
    let mut ws = client(b.ws_addr()).await;
    let mut other = client(b.ws_addr()).await;
    let big = json!({"eventType": 10, "message": "x".repeat(2000)});
    // The broker may close before the whole frame is written; either way the code is 1009.
    let _ = ws.send(Message::text(big.to_string())).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    assert_nothing_pending(&mut other).await;
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_connections_closed_total{reason="too_large"}"#),
        1.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn publishers_may_send_larger_messages() {
    let b = start_with(json!({"broker": {"limits": {"maxMessageSize": 1024}}})).await;
    let mut publ = publisher(b.ws_addr()).await;
    let big = json!({"eventType": 10, "message": "x".repeat(50_000)});
    send_json(&mut publ, &big).await;
    assert_eq!(recv_json(&mut publ).await, big);
    b.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let b = start().await;
    let mut other = client(b.ws_addr()).await;
    let mut s = raw_upgrade(b.ws_addr(), "").await;
    raw_send(
        &mut s,
        0x81,
        b"{\"eventType\":10,\"message\":\"\xff\xfe\"}",
        true,
    )
    .await;
    assert_eq!(raw_close_code(&mut s).await, 1007);
    assert_nothing_pending(&mut other).await;
    b.shutdown().await;
}

#[tokio::test]
async fn garbage_and_refused_requests_do_not_hurt_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let mut s = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    s.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("answered");
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    send_json(&mut ws, &json!({"eventType": 10, "message": "ok"})).await;
    assert_eq!(recv_json(&mut ws).await["message"], "ok");
    b.shutdown().await;
}
