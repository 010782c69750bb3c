//! Connection ids never repeat, not even across a restart with a fixed `instanceId`.

mod common;
use std::net::SocketAddr;

use broker::registry::{NewConn, Registry};
use common::*;
use serde_json::json;

fn new_conn() -> NewConn {
    NewConn {
        remote: "127.0.0.1:1".parse().expect("addr"),
        origin: None,
        user: None,
        publisher: false,
        positions: false,
        resuming: false,
    }
}

#[test]
fn two_registries_with_the_same_instance_id_never_share_an_id() {
    let first = Registry::new("fixed", 2, 8);
    let second = Registry::new("fixed", 2, 8);
    let a = first.register(new_conn());
    let b = second.register(new_conn());
    assert_ne!(a.wire_id, b.wire_id);
    for id in [&a.wire_id, &b.wire_id] {
        let parts: Vec<&str> = id.split('.').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "fixed");
        assert_eq!(parts[1].len(), 8, "{id}");
        assert!(parts[1].bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(parts[2], "1");
    }
    assert!(first.get_wire(&a.wire_id).is_some());
    assert!(
        first.get_wire(&b.wire_id).is_none(),
        "the other run's id is not ours"
    );
}

/// The `from` id the broker gives a client's MetaRequest.
async fn client_id(addr: SocketAddr) -> (String, Client) {
    let mut c = client(addr).await;
    let mut publ = publisher(addr).await;
    send_json(&mut c, &json!({"eventType": 9, "property": "p"})).await;
    let req = recv_json(&mut publ).await;
    (req["from"].as_str().expect("from").to_string(), c)
}

#[tokio::test]
async fn a_restart_with_the_same_instance_id_never_reissues_an_id() {
    let b = start_with(json!({"broker": {"instanceId": "fixed"}})).await;
    let (before, _c) = client_id(b.ws_addr()).await;
    b.shutdown().await;
    let b = start_with(json!({"broker": {"instanceId": "fixed"}})).await;
    let (after, mut c) = client_id(b.ws_addr()).await;
    assert!(before.starts_with("fixed.") && after.starts_with("fixed."));
    assert_ne!(
        before, after,
        "a late reply to {before} must not reach a new client"
    );
    // A reply addressed to the old run's id reaches no one.
    let mut publ = publisher(b.ws_addr()).await;
    send_json(
        &mut publ,
        &json!({"eventType": 9, "to": before, "property": "p", "val": 1}),
    )
    .await;
    assert_nothing_pending(&mut c).await;
    b.shutdown().await;
}

#[test]
fn an_instance_id_outside_the_safe_alphabet_is_refused() {
    for id in ["a.b", "all.*", ">", "a b", "é", &"x".repeat(65)] {
        let err = broker::config::Config::from_json_str(
            &json!({"broker": {"instanceId": id}}).to_string(),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("broker.instanceId"), "{err}");
    }
}
