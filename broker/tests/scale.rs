//! Many clients at once.

mod common;
use common::*;
use futures_util::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_clients_each_echo() {
    // Each client is two descriptors here: its socket and the broker's end.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open files limit");
    let b = start().await;
    let addr = b.ws_addr();
    let tasks = (0..1000).map(|i| {
        tokio::spawn(async move {
            let mut ws = client(addr).await;
            let ev = json!({"eventType": 10, "message": format!("client {i}"), "i": i});
            send_json(&mut ws, &ev).await;
            let got = recv_json(&mut ws).await;
            assert_eq!(got, ev, "client {i} got someone else's echo");
            ws
        })
    });
    let clients: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("client task"))
        .collect();
    assert_eq!(clients.len(), 1000);
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_connections_open{kind="client"}"#),
        1000.0
    );
    assert_eq!(metric(&m, r#"broker_events_total{type="echo"}"#), 1000.0);
    drop(clients);
    eventually("all connections closed", || async {
        let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
        metric(&m, r#"broker_connections_open{kind="client"}"#) == 0.0
    })
    .await;
    b.shutdown().await;
}
