//! Several brokers sharing events through a real `nats-server` (PROTOCOL.md part 4).

mod common;

use broker::app::RunningBroker;
use common::nats::*;
use common::BrokerProcess;
use common::*;
use serde_json::{json, Value};

/// Reads `ws` until `ev` arrives, then checks with an echo round trip that it did not come
/// twice.
async fn expect_once(ws: &mut Client, ev: &Value) {
    assert_eq!(&recv_json(ws).await, ev);
    assert_nothing_pending(ws).await;
}

async fn user(addr: std::net::SocketAddr, name: &str) -> Client {
    let token = user_token(name);
    connect_with(
        addr,
        &format!("/?token={token}"),
        &[("origin", "http://localhost")],
    )
    .await
    .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_matching_client_on_every_instance_exactly_once() {
    let nats = Nats::start(free_port());
    let bs = instances(&nats, &["a", "b", "c"]).await;
    let mut clients = Vec::new();
    for b in &bs {
        clients.push(client(b.ws_addr()).await);
        clients.push(client(b.ws_addr()).await);
    }
    let mut publ = publisher(bs[0].ws_addr()).await;

    // A publisher's broadcast on a.
    let ev = json!({"eventType": 6, "files": ["f"], "from": "publisher on a"});
    send_json(&mut publ, &ev).await;
    for ws in clients.iter_mut() {
        expect_once(ws, &ev).await;
    }
    // A broadcast Echo from a client on b reaches everyone, the sender included, once.
    let echo = json!({"eventType": 10, "message": "hi all", "broadcast": true});
    send_json(&mut clients[2], &echo).await;
    for ws in clients.iter_mut() {
        expect_once(ws, &echo).await;
    }
    assert_eq!(recv_json(&mut publ).await, echo);
    // The admin API on c.
    let inj = json!({"eventType": 2, "username": "x"});
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _) = http_request(
        bs[2].ops_addr(),
        "POST",
        "/admin/events",
        &[("authorization", &auth)],
        &json!({"event": inj, "target": "all"}).to_string(),
    )
    .await;
    assert_eq!(status, 202);
    for ws in clients.iter_mut() {
        expect_once(ws, &inj).await;
    }
    // "all" from the admin API includes the publishers.
    expect_once(&mut publ, &inj).await;

    // A user event: alice on b and c, bob on a; published on a.
    let mut alice_b = user(bs[1].ws_addr(), "alice").await;
    let mut alice_c = user(bs[2].ws_addr(), "alice").await;
    let mut bob_a = user(bs[0].ws_addr(), "bob").await;
    let mut publ_c = publisher(bs[2].ws_addr()).await;
    let login = json!({"eventType": 1, "username": "alice"});
    send_json(&mut publ, &login).await;
    expect_once(&mut alice_b, &login).await;
    expect_once(&mut alice_c, &login).await;
    expect_once(&mut publ_c, &login).await;
    assert_nothing_pending(&mut bob_a).await;
    for ws in clients.iter_mut() {
        assert_nothing_pending(ws).await;
    }

    // `to` a connection on another instance: alice on c asks, the publisher on a answers.
    send_json(&mut alice_c, &json!({"eventType": 9, "property": "p"})).await;
    let req = recv_json(&mut publ_c).await;
    let from = req["from"].as_str().expect("from").to_string();
    assert!(from.starts_with("c."), "{from}");
    let reply = json!({"eventType": 9, "to": from, "property": "p", "val": 1});
    send_json(&mut publ, &reply).await;
    expect_once(&mut alice_c, &reply).await;
    assert_nothing_pending(&mut alice_b).await;

    for b in bs {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_keeps_local_delivery_and_resumes_when_it_returns() {
    let mut nats = Nats::start(free_port());
    let bs = instances(&nats, &["a", "b"]).await;
    let mut on_a = client(bs[0].ws_addr()).await;
    let mut on_b = client(bs[1].ws_addr()).await;
    let mut publ = publisher(bs[0].ws_addr()).await;

    nats.stop();
    eventually("a notices NATS is gone", || async {
        !cluster_connected(&bs[0]).await
    })
    .await;
    let (status, body) = http_get(bs[0].ops_addr(), "/readyz", None).await;
    assert_eq!(status, 200, "still serving its own clients");
    assert!(body.contains("NATS unreachable"), "{body}");
    let local = json!({"eventType": 6, "files": [], "n": "while NATS is down"});
    send_json(&mut publ, &local).await;
    expect_once(&mut on_a, &local).await;
    assert_nothing_pending(&mut on_b).await;
    let (_, m) = http_get(bs[0].ops_addr(), "/metrics", None).await;
    assert!(metric(&m, r#"broker_cluster_messages_total{direction="dropped"}"#) >= 1.0);

    let _nats = Nats::start(nats.port);
    for b in &bs {
        eventually("reconnected to NATS", || cluster_connected(b)).await;
    }
    let back = json!({"eventType": 6, "files": [], "n": "after NATS returned"});
    send_json(&mut publ, &back).await;
    expect_once(&mut on_a, &back).await;
    expect_once(&mut on_b, &back).await;
    for b in bs {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_sends_its_clients_elsewhere() {
    let nats = Nats::start(free_port());
    let mut bs = instances(&nats, &["a", "b"]).await;
    let mut on_a = client(bs[0].ws_addr()).await;
    let mut on_b = client(bs[1].ws_addr()).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _) = http_request(
        bs[0].ops_addr(),
        "POST",
        "/admin/drain",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(close_code(&mut on_a).await, 1001);
    let drained = bs.remove(0);
    drained.stopping().await;
    drained.shutdown().await;
    // The client reconnects to the instance that is left, which kept serving throughout.
    let mut again = client(bs[0].ws_addr()).await;
    let ev = json!({"eventType": 10, "message": "still here", "broadcast": true});
    send_json(&mut on_b, &ev).await;
    expect_once(&mut on_b, &ev).await;
    expect_once(&mut again, &ev).await;
    bs.remove(0).shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_broker_processes_share_events_and_survive_a_sigterm() {
    let nats = Nats::start(free_port());
    let url = nats.url();
    let spawn = |name: &'static str| {
        BrokerProcess::spawn(&[
            ("BROKER_INSTANCE_ID", name),
            ("BROKER_CLUSTER_NATS", &url),
            ("BROKER_SOCKET_API_KEY", API_KEY),
            ("BROKER_ADMIN_TOKEN", ADMIN_TOKEN),
        ])
    };
    let mut procs = vec![spawn("p1"), spawn("p2"), spawn("p3")];
    for p in &procs {
        eventually("the process joined the cluster", || async {
            let (_, m) = http_get(p.ops, "/metrics", None).await;
            metric(&m, "broker_cluster_connected") == 1.0
        })
        .await;
    }
    let mut clients = Vec::new();
    for p in &procs {
        clients.push(client(p.ws).await);
    }
    let mut publ = publisher(procs[2].ws).await;
    let ev = json!({"eventType": 4, "username": null, "note": "from p3"});
    send_json(&mut publ, &ev).await;
    for ws in clients.iter_mut() {
        expect_once(ws, &ev).await;
    }
    // p1 goes away on SIGTERM; its client sees 1001 and reconnects to p2.
    procs[0].terminate();
    assert_eq!(close_code(&mut clients[0]).await, 1001);
    assert_eq!(procs[0].exit_code().await, Some(0));
    clients[0] = client(procs[1].ws).await;
    let ev = json!({"eventType": 6, "files": [], "after": "p1 left"});
    send_json(&mut publ, &ev).await;
    for ws in clients.iter_mut() {
        expect_once(ws, &ev).await;
    }
    procs.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_named_all_gets_replies_for_one_client_not_a_broadcast() {
    // `instanceId: "all"` once made `<prefix>.conn.all` read as the broadcast subject.
    let nats = Nats::start(free_port());
    let bs = instances(&nats, &["all", "user"]).await;
    let mut asker = client(bs[0].ws_addr()).await;
    let mut bystander = client(bs[0].ws_addr()).await;
    let mut on_user = client(bs[1].ws_addr()).await;
    let mut publ_all = publisher(bs[0].ws_addr()).await;
    let mut publ_user = publisher(bs[1].ws_addr()).await;
    send_json(&mut asker, &json!({"eventType": 9, "property": "p"})).await;
    let req = recv_json(&mut publ_all).await;
    let from = req["from"].as_str().expect("from").to_string();
    assert!(from.starts_with("all."), "{from}");
    let reply = json!({"eventType": 9, "to": from, "property": "p", "val": 1});
    send_json(&mut publ_user, &reply).await;
    expect_once(&mut asker, &reply).await;
    assert_nothing_pending(&mut bystander).await;
    assert_nothing_pending(&mut on_user).await;
    assert_nothing_pending(&mut publ_all).await;
    for b in bs {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_holds_up_neither_start_nor_sigterm() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let env = [
        ("BROKER_CLUSTER_NATS", url.as_str()),
        ("BROKER_DRAIN_WINDOW", "0"),
    ];
    // Nothing listens on the NATS port: the broker starts (spawn waits for its listening
    // line), serves its own clients and says in /readyz that the cluster link is down.
    let mut alone = BrokerProcess::spawn(&env);
    let (status, body) = http_get(alone.ops, "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("NATS unreachable"), "{body}");
    let mut ws = client(alone.ws).await;
    let ev = json!({"eventType": 10, "message": "local"});
    send_json(&mut ws, &ev).await;
    assert_eq!(recv_json(&mut ws).await, ev);
    // SIGTERM is not held up by a NATS connection that never came (it used to take 10 s).
    let asked = std::time::Instant::now();
    alone.terminate();
    assert_eq!(close_code(&mut ws).await, 1001);
    assert_eq!(alone.exit_code().await, Some(0));
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(4),
        "exit took {:?}",
        asked.elapsed()
    );
    // An instance that started without NATS joins when NATS comes.
    let joining = BrokerProcess::spawn(&env);
    let _nats = Nats::start(port);
    eventually("joined once NATS came", || async {
        let (_, body) = http_get(joining.ops, "/readyz", None).await;
        body.contains("connected to NATS")
    })
    .await;
}

async fn history_in_jetstream(b: &RunningBroker) -> bool {
    let (_, body) = http_get(b.ops_addr(), "/readyz", None).await;
    body.contains("history: JetStream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_from_one_instance_resumes_on_another_exactly() {
    const EVENTS: u64 = 2000;
    let nats = Nats::start_js(free_port());
    let mut bs = instances(&nats, &["a", "b"]).await;
    for b in &bs {
        eventually("the history is in JetStream", || history_in_jetstream(b)).await;
    }
    let (a, b) = (bs[0].ws_addr(), bs[1].ws_addr());
    let (mut ws, notice) = positioned_client(a, "recover=1").await;
    assert_eq!(notice["brokerRecovery"]["complete"], true, "{notice}");
    // A publisher on b, events to everyone and to alice (whom this anonymous client must not
    // see), while the client is moved from a to b and back every 400 events.
    let publishing = tokio::spawn(async move {
        let mut publ = publisher(b).await;
        for n in 0..EVENTS {
            send_json(&mut publ, &json!({"eventType": 6, "files": [], "n": n})).await;
            if n % 100 == 0 {
                send_json(
                    &mut publ,
                    &json!({"eventType": 1, "username": "alice", "n": -1}),
                )
                .await;
            }
        }
        publ
    });
    let mut seen = Vec::new();
    let mut on_a = true;
    while seen.len() < EVENTS as usize {
        let got = recv_json(&mut ws).await;
        if got.get("brokerRecovery").is_some() {
            assert_eq!(got["brokerRecovery"]["complete"], true, "{got}");
        } else {
            seen.push(got["n"].as_i64().expect("n"));
        }
        if seen.len() % 400 == 0 && got.get("brokerRecovery").is_none() {
            let last = got["brokerPosition"]
                .as_str()
                .expect("position")
                .to_string();
            drop(ws);
            on_a = !on_a;
            let next = if on_a { a } else { b };
            ws = connect_with(
                next,
                &format!("/?since={last}"),
                &[("origin", "http://localhost")],
            )
            .await
            .expect("reconnects");
        }
    }
    let _publ = publishing.await.expect("publisher");
    let expected: Vec<i64> = (0..EVENTS as i64).collect();
    assert_eq!(
        seen, expected,
        "every broadcast once, in order; none of alice's"
    );
    // Instance a goes away (SIGTERM's path): its client resumes on b with nothing lost.
    let (mut moved, _) = positioned_client(a, "recover=1").await;
    let mut publ = publisher(b).await;
    let ev = json!({"eventType": 6, "files": [], "n": "before"});
    send_json(&mut publ, &ev).await;
    let got = recv_json(&mut moved).await;
    assert_eq!(got["n"], "before");
    let last = got["brokerPosition"]
        .as_str()
        .expect("position")
        .to_string();
    bs.remove(0).shutdown().await;
    assert_eq!(close_code(&mut moved).await, 1001);
    for n in 0..5 {
        send_json(&mut publ, &json!({"eventType": 6, "files": [], "n": n})).await;
    }
    let (mut moved, notice) = positioned_client(b, &format!("since={last}")).await;
    // Complete; the five come replayed, or (those not yet stored in the stream when the
    // resume read it) live right after, in order and once either way.
    assert_eq!(notice["brokerRecovery"]["complete"], true, "{notice}");
    let replayed = notice["brokerRecovery"]["replayed"]
        .as_u64()
        .expect("replayed");
    assert!(replayed <= 5, "{notice}");
    for n in 0..5 {
        assert_eq!(recv_json(&mut moved).await["n"], n);
    }
    bs.remove(0).shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_request_reaches_a_publisher_on_another_instance_and_the_reply_comes_back() {
    let nats = Nats::start(free_port());
    let bs = instances(&nats, &["m1", "m2"]).await;
    let (a, b) = (bs[0].ws_addr(), bs[1].ws_addr());
    let mut alice = user(a, "alice").await;
    // No publisher anywhere: the client is told.
    let ask = json!({"eventType": 9, "property": "theme", "val": null});
    send_json(&mut alice, &ask).await;
    let err = recv_json(&mut alice).await;
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("no publisher")),
        "{err}"
    );
    // A publisher on the other instance only: it gets the MetaRequest with the client's id,
    // and its reply reaches the client on the first instance.
    let mut publ = publisher(b).await;
    let mut asked = 0;
    let req = loop {
        asked += 1;
        assert!(asked < 50, "the MetaRequest never reached the publisher");
        send_json(&mut alice, &ask).await;
        // Until the publisher's instance takes MetaRequests, the client is told there is none.
        tokio::select! {
            got = recv_json(&mut publ) => break got,
            err = recv_json(&mut alice) => {
                assert!(err["error"].is_string(), "{err}");
            }
        }
    };
    assert_eq!(req["eventType"], 9);
    assert_eq!(req["username"], "alice");
    let from = req["from"].as_str().expect("from").to_string();
    assert!(from.starts_with("m1."), "{from}");
    let reply = json!({"eventType": 9, "to": from, "username": "alice", "property": "theme", "val": "dark"});
    send_json(&mut publ, &reply).await;
    assert_eq!(recv_json(&mut alice).await, reply);
    // The publisher leaves: the client is told again, not left waiting.
    let _ = futures_util::SinkExt::close(&mut publ).await;
    drop(publ);
    let ops = bs[1].ops_addr();
    eventually("the publisher is gone", || async move {
        let (_, m) = http_get(ops, "/metrics", None).await;
        metric(&m, r#"broker_connections_open{kind="publisher"}"#) == 0.0
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never told");
        send_json(&mut alice, &ask).await;
        let got = recv_json(&mut alice).await;
        if got["error"]
            .as_str()
            .is_some_and(|e| e.contains("no publisher"))
        {
            break;
        }
    }
    for b in bs {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_on_a_draining_instance_loses_no_event_it_sent() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    let nats = Nats::start(free_port());
    let bs = instances(&nats, &["d1", "d2"]).await;
    let mut listener = client(bs[1].ws_addr()).await;
    let publ = publisher(bs[0].ws_addr()).await;
    let (mut sink, mut stream) = publ.split();
    let closed = std::sync::Arc::new(AtomicBool::new(false));
    // The publisher reads while it sends, as a real one would: it stops at the close frame.
    let reader = tokio::spawn({
        let closed = closed.clone();
        async move {
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
            closed.store(true, Ordering::SeqCst);
        }
    });
    let sending = tokio::spawn(async move {
        let mut sent = 0u64;
        while !closed.load(Ordering::SeqCst) && sent < 100_000 {
            let ev = json!({"eventType": 6, "files": [], "n": sent}).to_string();
            if sink
                .send(tokio_tungstenite::tungstenite::Message::text(ev))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(16) {
                tokio::task::yield_now().await;
            }
        }
        sent
    });
    // Let it get going, then drain its instance.
    assert_eq!(recv_json(&mut listener).await["n"], 0);
    let (status, _) = http_request(
        bs[0].ops_addr(),
        "POST",
        "/admin/drain",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(status, 202);
    let sent = tokio::time::timeout(DEADLINE, sending)
        .await
        .expect("the publisher was closed in time")
        .expect("sender");
    reader.await.expect("reader");
    assert!(sent > 1 && sent < 100_000, "sent {sent}");
    // Every event it sent before its 1001 reached the other instance's client, in order.
    for n in 1..sent {
        assert_eq!(recv_json(&mut listener).await["n"], n, "of {sent}");
    }
}
