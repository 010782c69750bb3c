//! The app as a fleet console: two real brokers joined by a real `nats-server`, the app
//! connected to one of them. The instances panel lists both, the table holds the connections
//! of both with their instance, a kick reaches a client on the other instance, and a drain
//! reaches the other instance. One broker without NATS is one row.

mod common;

use std::time::{Duration, Instant};

use admin_gui::panels::instances::drain_label;
use admin_gui::state::InstanceState;
use admin_gui::AdminApp;
use common::{
    app, fleet_member, step_until, wait_for_label, wait_for_no_label, Nats, TestBroker,
    ADMIN_TOKEN, DEADLINE,
};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A client that connects to another instance after the app is live reaches the table
/// through the fleet poll and the walk it asks for (at most every 10 s): more than
/// [`DEADLINE`] on a loaded machine.
const FLEET_DEADLINE: Duration = Duration::from_secs(40);

/// Steps until the app lists `n` instances, all up; returns their names, sorted.
fn wait_for_instances(harness: &mut Harness<'static, AdminApp>, n: usize) -> Vec<String> {
    step_until(harness, &format!("{n} instances up"), DEADLINE, |h| {
        let fleet = &h.state().model().fleet;
        fleet.known
            && fleet.rows().len() == n
            && fleet.rows().iter().all(|r| r.state() == InstanceState::Up)
    });
    harness
        .state()
        .model()
        .fleet
        .rows()
        .iter()
        .map(|r| r.info.instance.clone())
        .collect()
}

/// The name of the instance `broker` runs as (`<instanceId>.<run>`), from the app's list.
fn name_of(harness: &Harness<'static, AdminApp>, instance_id: &str) -> String {
    harness
        .state()
        .model()
        .fleet
        .rows()
        .iter()
        .map(|r| r.info.instance.clone())
        .find(|name| name.split('.').next() == Some(instance_id))
        .unwrap_or_else(|| panic!("no instance {instance_id} in the list"))
}

#[test]
fn the_instances_panel_shows_two_brokers_joined_by_nats() {
    let nats = Nats::start();
    let a = fleet_member(&nats, "ga");
    let b = fleet_member(&nats, "gb");
    let on_a = a.client();
    let on_b: Vec<_> = (0..2).map(|_| b.client()).collect();
    let publisher_b = b.publisher();
    let mut harness = app(&a.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);

    let names = wait_for_instances(&mut harness, 2);
    let (name_a, name_b) = (name_of(&harness, "ga"), name_of(&harness, "gb"));
    assert_eq!(names, [name_a.clone(), name_b.clone()]);
    wait_for_label(&mut harness, "2 in the fleet (NATS)", DEADLINE);
    for name in &names {
        wait_for_label(&mut harness, &drain_label(name), DEADLINE);
    }
    // One row each: status, name, clients / publishers (from each instance's heartbeat).
    assert_eq!(harness.query_all_by_label("Up").count(), 2);
    wait_for_label(&mut harness, "1 / 0", DEADLINE);
    wait_for_label(&mut harness, "2 / 1", DEADLINE);
    assert!(harness.query_by_label("(answering)").is_some());
    // Fleet totals in the summary: sums over both.
    wait_for_label(&mut harness, "2 instances, 2 up", DEADLINE);
    step_until(&mut harness, "fleet totals", DEADLINE, |h| {
        let t = h.state().model().fleet_totals();
        t.connections.clients == 3 && t.connections.publishers == 1
    });
    // The charts are the fleet's: both instances' connections summed.
    wait_for_label(&mut harness, "the fleet (2 instances)", DEADLINE);
    step_until(&mut harness, "the fleet chart sums both", DEADLINE, |h| {
        let model = h.state().model();
        model
            .fleet
            .combined(std::time::Instant::now())
            .back()
            .is_some_and(|s| s.clients == 3.0 && s.publishers == 1.0)
    });

    // The table lists the connections of both instances, each with its instance.
    let everyone: Vec<_> = std::iter::once(&on_a)
        .chain(on_b.iter())
        .chain(std::iter::once(&publisher_b))
        .collect();
    for c in &everyone {
        wait_for_label(&mut harness, &c.addr(), DEADLINE);
    }
    wait_for_label(&mut harness, "4 connections", DEADLINE);
    {
        let model = harness.state().model();
        let table = &model.connections;
        let instance_of = |addr: &str| {
            table
                .view_rows()
                .iter()
                .filter_map(|id| table.connection(id))
                .find(|c| c.remote_addr == addr)
                .map(|c| c.instance.clone())
        };
        assert_eq!(instance_of(&on_a.addr()), Some(name_a.clone()));
        assert_eq!(instance_of(&on_b[0].addr()), Some(name_b.clone()));
    }
    assert!(
        harness.query_all_by_label(&name_b).count() >= 4,
        "the Instance column"
    );

    // Search by address, across the fleet.
    let wanted = on_b[1].addr();
    let port = wanted.rsplit(':').next().unwrap_or_default().to_string();
    harness
        .get_by_label("Address contains")
        .set_text_value_accesskit(&format!(":{port}"));
    harness.step();
    let matching = everyone
        .iter()
        .filter(|c| c.addr().contains(&format!(":{port}")))
        .count();
    wait_for_label(
        &mut harness,
        &format!(
            "{matching} connection{} match",
            if matching == 1 { "" } else { "s" }
        ),
        DEADLINE,
    );
    wait_for_label(&mut harness, &wanted, DEADLINE);
    if !on_a.addr().contains(&format!(":{port}")) {
        wait_for_no_label(&mut harness, &on_a.addr(), DEADLINE);
    }
    harness.check_accessibility();
}

#[test]
fn a_kick_from_the_app_on_one_instance_closes_a_client_on_another() {
    let nats = Nats::start();
    let a = fleet_member(&nats, "ka");
    let b = fleet_member(&nats, "kb");
    let keep = a.client();
    let mut harness = app(&a.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_instances(&mut harness, 2);
    wait_for_label(&mut harness, &keep.addr(), DEADLINE);

    // A client on b, after the app is live: a's stream does not see it, the fleet poll does.
    let victim = b.client();
    wait_for_label(&mut harness, &victim.addr(), FLEET_DEADLINE);
    let name_b = name_of(&harness, "kb");
    assert!(harness
        .state()
        .model()
        .connections
        .view_rows()
        .iter()
        .filter_map(|id| harness.state().model().connections.connection(id))
        .any(|c| c.remote_addr == victim.addr() && c.instance == name_b));

    harness
        .query_all_by_label(&victim.addr())
        .next()
        .expect("the victim's row")
        .click();
    wait_for_label(&mut harness, "Kick…", DEADLINE);
    harness.get_by_label("Kick…").click();
    wait_for_label(&mut harness, "Kick", DEADLINE);
    harness.get_by_label("Kick").click();
    step_until(&mut harness, "the kick to be confirmed", DEADLINE, |h| {
        h.query_all_by_label_contains("(close code 4000)")
            .next()
            .is_some()
    });

    match victim.wait_for(DEADLINE, |m| matches!(m, Message::Close(_))) {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::from(4000));
            assert_eq!(frame.reason.as_str(), "kicked by operator");
        }
        other => panic!("the client on the other instance saw no close code: {other:?}"),
    }
    // Gone from the table (the selected row is refreshed every 2 s), the other one kept.
    wait_for_no_label(&mut harness, &victim.addr(), DEADLINE);
    assert!(harness.query_by_label(&keep.addr()).is_some());
    assert!(keep
        .wait_for(Duration::from_millis(300), |m| matches!(
            m,
            Message::Close(_)
        ))
        .is_none());
}

/// With no row on screen near them, another instance's connects and disconnects reach the
/// table through the fleet poll (it sees b's counters move) and the walk it asks for.
#[test]
fn connects_and_disconnects_on_another_instance_reach_the_table() {
    let nats = Nats::start();
    let a = fleet_member(&nats, "ca");
    let b = fleet_member(&nats, "cb");
    let mut harness = app(&a.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_instances(&mut harness, 2);
    wait_for_label(&mut harness, "No connections", DEADLINE);

    let started = Instant::now();
    let mut late = b.client();
    wait_for_label(&mut harness, &late.addr(), FLEET_DEADLINE);
    wait_for_label(&mut harness, "1 connection", DEADLINE);
    let seen_after = started.elapsed();
    late.close();
    wait_for_no_label(&mut harness, &late.addr(), FLEET_DEADLINE);
    wait_for_label(&mut harness, "No connections", DEADLINE);
    eprintln!(
        "a connect on another instance took {seen_after:?} to reach the table, its \
         disconnect {:?} more",
        started.elapsed() - seen_after
    );
}

#[test]
fn the_app_drains_another_instance_after_confirmation() {
    let nats = Nats::start();
    let a = fleet_member(&nats, "da");
    let b = fleet_member(&nats, "db");
    let mut harness = app(&a.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_instances(&mut harness, 2);
    let name_b = name_of(&harness, "db");

    harness.get_by_label(&drain_label(&name_b)).click();
    wait_for_label(&mut harness, &format!("Drain instance {name_b}?"), DEADLINE);
    harness.get_by_label("Cancel").click();
    wait_for_no_label(&mut harness, "Cancel", DEADLINE);
    assert!(b.is_ready(), "cancel does not drain");

    harness.get_by_label(&drain_label(&name_b)).click();
    wait_for_label(&mut harness, "Drain instance", DEADLINE);
    harness.get_by_label("Drain instance").click();
    step_until(&mut harness, "b to stop being ready", DEADLINE, |_| {
        !b.is_ready()
    });
    assert!(a.is_ready(), "only b drains");
    step_until(&mut harness, "b's row to leave Up", DEADLINE, |h| {
        h.state()
            .model()
            .fleet
            .row(&name_b)
            .is_none_or(|r| r.state() != InstanceState::Up)
    });
}

#[test]
fn one_instance_without_nats_is_one_row() {
    let broker = TestBroker::start();
    let _c = broker.client();
    let mut harness = app(&broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    step_until(&mut harness, "the list of one", DEADLINE, |h| {
        let fleet = &h.state().model().fleet;
        fleet.known && !fleet.clustered && fleet.rows().len() == 1
    });
    wait_for_label(&mut harness, "single instance (no NATS)", DEADLINE);
    let name = harness.state().model().answering().to_string();
    wait_for_label(&mut harness, &drain_label(&name), DEADLINE);
    assert_eq!(harness.query_all_by_label("Up").count(), 1);
    wait_for_label(&mut harness, "1 instance, 1 up", DEADLINE);
}

/// A second window opened on a broker that has been running shows the seconds before it
/// opened at once: its charts are seeded from the broker's history.
#[test]
fn charts_start_with_the_minutes_before_the_window_opened() {
    let broker = TestBroker::start();
    let mut first = app(&broker.ops_url(), ADMIN_TOKEN);
    step_until(&mut first, "a few seconds of history", DEADLINE, |h| {
        h.state().model().history.samples().len() >= 4
    });
    drop(first);

    let opened = Instant::now();
    let mut second = app(&broker.ops_url(), ADMIN_TOKEN);
    step_until(
        &mut second,
        "history from before the window",
        DEADLINE,
        |h| {
            h.state()
                .model()
                .history
                .samples()
                .iter()
                .filter(|s| s.at.is_some_and(|at| at + Duration::from_secs(1) < opened))
                .count()
                >= 2
        },
    );
    // And the instance's sparkline too.
    step_until(&mut second, "the sparkline's history", DEADLINE, |h| {
        h.state()
            .model()
            .fleet
            .rows()
            .first()
            .is_some_and(|r| r.history.samples().len() >= 2)
    });
}
