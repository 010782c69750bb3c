//! The admin app against a real broker: what the operator sees and what their clicks do.
//!
//! Each test starts its own broker on loopback, opens test clients, and drives the UI with
//! egui_kittest (widgets found by their labels, clicked, and the results checked on both the
//! screen and the clients).

mod common;

use std::time::Duration;

use admin_gui::panels::instances::drain_label;
use common::{
    app, step_until, wait_for_label, wait_for_no_label, TestBroker, ADMIN_TOKEN, DEADLINE,
    READ_TOKEN,
};
use egui_kittest::kittest::{NodeT, Queryable};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn table_shows_the_connections_the_test_opened() {
    let broker = TestBroker::start();
    let clients: Vec<_> = (0..3).map(|_| broker.client()).collect();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);

    wait_for_label(&mut harness, "Live", DEADLINE);
    for c in &clients {
        wait_for_label(&mut harness, &c.addr(), DEADLINE);
    }
    wait_for_label(&mut harness, "3 connections", DEADLINE);

    // Connects and disconnects arrive on the live stream.
    let mut late = broker.client();
    wait_for_label(&mut harness, &late.addr(), DEADLINE);
    wait_for_label(&mut harness, "4 connections", DEADLINE);
    late.close();
    wait_for_no_label(&mut harness, &late.addr(), DEADLINE);
    wait_for_label(&mut harness, "3 connections", DEADLINE);

    // Every input the operator can reach has a name (a screen reader, and these tests, find
    // widgets by it).
    harness.check_accessibility();

    // The stats strip counts them too.
    step_until(&mut harness, "3 clients in the model", DEADLINE, |h| {
        h.state()
            .model()
            .stats
            .as_ref()
            .is_some_and(|s| s.connections.clients == 3)
    });
}

#[test]
fn table_filters_by_kind_and_sorts_by_column() {
    let broker = TestBroker::start();
    let a = broker.client();
    let b = broker.client();
    let publisher = broker.publisher();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    for c in [&a, &b, &publisher] {
        wait_for_label(&mut harness, &c.addr(), DEADLINE);
    }

    harness.get_by_label("Publishers").click();
    wait_for_label(&mut harness, "1 connection match", DEADLINE);
    wait_for_no_label(&mut harness, &a.addr(), DEADLINE);
    assert!(harness.query_by_label(&publisher.addr()).is_some());
    harness.get_by_label("Clients").click();
    wait_for_label(&mut harness, "2 connections match", DEADLINE);
    assert!(harness.query_by_label(&publisher.addr()).is_none());

    // Sort by remote address, then reverse: the rows swap places.
    let y = |h: &egui_kittest::Harness<'static, admin_gui::AdminApp>, addr: &str| {
        h.get_by_label(addr).rect().center().y
    };
    let (low, high) = if a.local.port() < b.local.port() {
        (a.addr(), b.addr())
    } else {
        (b.addr(), a.addr())
    };
    harness.get_by_label("Remote address").click();
    wait_for_label(&mut harness, "Remote address ⬆", DEADLINE);
    assert!(y(&harness, &low) < y(&harness, &high), "ascending");
    harness.get_by_label("Remote address ⬆").click();
    wait_for_label(&mut harness, "Remote address ⬇", DEADLINE);
    assert!(y(&harness, &low) > y(&harness, &high), "descending");
}

#[test]
fn injected_echo_reaches_the_clients() {
    let broker = TestBroker::start();
    let a = broker.client();
    let b = broker.client();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, &a.addr(), DEADLINE);
    wait_for_label(&mut harness, &b.addr(), DEADLINE);

    // Echo is the default event type; write the message, target all, send.
    harness.get_by_label("10 Echo").click();
    harness.step();
    harness
        .get_by_label("Message")
        .set_text_value_accesskit("ping from the admin test");
    harness.step();
    harness.step();
    harness.get_by_label("All clients").click();
    harness.step();
    harness.get_by_label("Send event").click();
    wait_for_label(&mut harness, "Delivered to 2 recipients", DEADLINE);

    for client in [&a, &b] {
        let got = client.wait_for(DEADLINE, |m| match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                v["eventType"] == 10 && v["message"] == "ping from the admin test"
            }
            _ => false,
        });
        assert!(
            got.is_some(),
            "{} did not get the injected echo",
            client.addr()
        );
    }
}

#[test]
fn invalid_raw_json_is_not_sent() {
    let broker = TestBroker::start();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, "Raw JSON", DEADLINE);
    harness
        .get_by_label("Raw JSON")
        .set_text_value_accesskit(r#"{"message": "no type"}"#);
    harness.step();
    harness.step();
    wait_for_label(
        &mut harness,
        "✖ the event has no \"eventType\" field",
        DEADLINE,
    );
    assert!(
        harness
            .get_by_label("Send event")
            .accesskit_node()
            .is_disabled(),
        "an invalid event cannot be sent"
    );
}

#[test]
fn kick_closes_the_selected_connection() {
    let broker = TestBroker::start();
    let keep = broker.client();
    let victim = broker.client();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, &keep.addr(), DEADLINE);
    wait_for_label(&mut harness, &victim.addr(), DEADLINE);

    // Select the row, open the confirmation, confirm.
    harness
        .query_all_by_label(&victim.addr())
        .next()
        .unwrap()
        .click();
    wait_for_label(&mut harness, "Kick…", DEADLINE);
    harness.get_by_label("Kick…").click();
    wait_for_label(&mut harness, "Kick", DEADLINE);
    assert!(
        harness.query_by_label_contains("will be closed").is_some(),
        "the dialog says what will happen"
    );
    harness.get_by_label("Kick").click();
    step_until(&mut harness, "the kick to be confirmed", DEADLINE, |h| {
        h.query_all_by_label_contains("(close code 4000)")
            .next()
            .is_some()
    });

    let close = victim.wait_for(DEADLINE, |m| matches!(m, Message::Close(_)));
    match close {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::from(4000));
            assert_eq!(frame.reason.as_str(), "kicked by operator");
        }
        other => panic!("the kicked client saw no close frame with a code: {other:?}"),
    }
    // Gone from the table; the details panel keeps its last values and says why it went.
    wait_for_label(&mut harness, "1 connection", DEADLINE);
    wait_for_label(
        &mut harness,
        "Disconnected (kicked); last known values:",
        DEADLINE,
    );
    assert_eq!(harness.query_all_by_label(&victim.addr()).count(), 1);
    assert!(
        keep.wait_for(Duration::from_millis(300), |m| matches!(
            m,
            Message::Close(_)
        ))
        .is_none(),
        "the other client stays connected"
    );
}

#[test]
fn drain_asks_for_confirmation_first() {
    let broker = TestBroker::start();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    let button = drain_label(harness.state().model().answering());
    wait_for_label(&mut harness, &button, DEADLINE);

    harness.get_by_label(&button).click();
    wait_for_label(&mut harness, "Cancel", DEADLINE);
    harness.get_by_label("Cancel").click();
    wait_for_no_label(&mut harness, "Cancel", DEADLINE);
    assert!(broker.is_ready(), "cancel does not drain");

    harness.get_by_label(&button).click();
    wait_for_label(&mut harness, "Drain instance", DEADLINE);
    harness.get_by_label("Drain instance").click();
    step_until(
        &mut harness,
        "the broker to stop being ready",
        DEADLINE,
        |_| !broker.is_ready(),
    );
}

/// With the read-only token the app shows everything, says "Read-only token", and greys out
/// every control that changes something (drain, kick, send): the broker would refuse them.
#[test]
fn a_read_only_token_sees_everything_and_changes_nothing() {
    let broker = TestBroker::start();
    let c = broker.client();
    let mut harness = app(&broker.ops_url(), READ_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, &c.addr(), DEADLINE);
    wait_for_label(&mut harness, "Read-only token", DEADLINE);
    assert!(!harness.state().model().may_change());
    let button = drain_label(harness.state().model().answering());
    assert!(
        harness.get_by_label(&button).accesskit_node().is_disabled(),
        "drain is greyed out"
    );
    assert!(
        harness
            .get_by_label("Send event")
            .accesskit_node()
            .is_disabled(),
        "inject is greyed out"
    );
    // Select the connection: its kick button is greyed out too.
    harness.get_by_label(&c.addr()).click();
    wait_for_label(&mut harness, "Kick…", DEADLINE);
    assert!(
        harness.get_by_label("Kick…").accesskit_node().is_disabled(),
        "kick is greyed out"
    );
    harness.check_accessibility();
    assert!(broker.is_ready());
}

#[test]
fn bad_token_shows_the_bad_token_state() {
    let broker = TestBroker::start();
    let mut harness = app(&broker.ops_url(), "not-the-token");
    wait_for_label(&mut harness, "Bad token", DEADLINE);
    harness.check_accessibility();
    assert!(harness.query_by_label("Bad token (401)").is_some());
    assert!(
        harness
            .query_by_label_contains("missing or wrong admin bearer token")
            .is_some(),
        "the broker's own words are shown"
    );
    assert!(harness.query_by_label("Live").is_none());
}

#[test]
fn unreachable_url_shows_the_unreachable_state() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut harness = app(&format!("http://127.0.0.1:{port}"), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Broker unreachable", DEADLINE);
    assert!(
        harness.query_by_label_contains("cannot connect").is_some(),
        "the cause is shown"
    );
    assert!(harness.query_by_label("Retry now").is_some());
}

#[test]
fn lost_broker_shows_reconnecting() {
    let broker = TestBroker::start();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    drop(broker);
    step_until(&mut harness, "the reconnecting state", DEADLINE, |h| {
        h.query_by_label_contains("Reconnecting").is_some()
    });
}
