//! Stages: connections and send rates ramp up, hold and ramp down, against the real broker.

mod common;

use common::{broker, cli, run, API_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_ramp_up_hold_and_ramp_down() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--window", "250ms", "connect", "--stage", "1s:20", "--stage", "750ms:20", "--stage",
            "500ms:0",
        ],
    ))
    .await;
    assert_eq!(s.connections.established, 20, "{s}");
    assert_eq!(s.connections.failed, 0, "{s}");
    assert_eq!(s.connections.dropped, 0, "{s}");
    assert_eq!(s.connections.peak_open, 20, "{s}");
    let open: Vec<i64> = s.windows.iter().map(|w| w.open).collect();
    let top = open.iter().position(|&o| o == 20).expect("reaches 20");
    assert!(top >= 2, "ramped, not opened at once: {open:?}");
    assert!(open[0] > 0 && open[0] < 20, "{open:?}");
    assert!(
        open[top..].iter().any(|&o| o < 20),
        "ramped down before the end: {open:?}"
    );
    assert!(s.measured_s >= 2.2 && s.measured_s < 4.0, "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_rate_follows_the_stages() {
    let b = broker().await;
    // 0 → 200/s over 1 s (100 events), then 200/s for 0.5 s (100 more).
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "broadcast",
            "-l",
            "10",
            "-p",
            "2",
            "--stage",
            "1s:200",
            "--stage",
            "500ms:200",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery");
    assert_eq!(d.sent, 200, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert!(s.latency["delivery"].corrected, "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_request_rate_follows_the_stages() {
    let b = broker().await;
    // 0 → 200/s over 1 s (100 requests), then 200/s for 1 s (200 more), over 4 connections.
    let s = run(cli(
        &b,
        &[
            "--window", "250ms", "echo", "-c", "4", "--stage", "1s:200", "--stage", "1s:200",
        ],
    ))
    .await;
    assert_eq!(s.connections.established, 4, "{s}");
    // Each connection keeps one request in flight: on a loaded machine a connection may still
    // be catching up with its schedule when the stages end.
    assert!(s.messages.sent >= 270 && s.messages.sent <= 300, "{s}");
    assert_eq!(s.messages.received, s.messages.sent, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    let rtt = &s.latency["rtt"];
    assert!(rtt.corrected, "measured from the due time: {s}");
    assert!(s.measured_s >= 1.9 && s.measured_s < 3.0, "{s}");
    // The rate ramps: the first quarter second sends far fewer than the last full one.
    let sent: Vec<u64> = s.windows.iter().map(|w| w.sent).collect();
    let peak = sent.iter().copied().max().unwrap_or(0);
    assert!(sent[0] * 3 < peak, "ramped, not sent at once: {sent:?}");
    assert!(
        s.notes.iter().any(|n| n.starts_with("stages: peak 200")),
        "{s}"
    );
    // --think sets its own pace: it does not go with a staged rate.
    let parsed =
        clap::Parser::try_parse_from(["loadtest", "echo", "--stage", "1s:10", "--think", "10ms"])
            .map(|c: loadtest::Cli| c.scenario.name());
    assert!(parsed.is_err(), "{parsed:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_connections_follow_the_stages() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--window",
            "250ms",
            "soak",
            "--stage",
            "1s:12",
            "--stage",
            "750ms:12",
            "--stage",
            "500ms:0",
            "--echo-interval",
            "100ms",
        ],
    ))
    .await;
    assert_eq!(s.connections.established, 12, "{s}");
    assert_eq!(s.connections.failed, 0, "{s}");
    assert_eq!(s.connections.dropped, 0, "{s}");
    assert_eq!(s.connections.peak_open, 12, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    assert!(s.messages.received > 0, "{s}");
    let open: Vec<i64> = s.windows.iter().map(|w| w.open).collect();
    let top = open.iter().position(|&o| o == 12).expect("reaches 12");
    assert!(top >= 2, "ramped, not opened at once: {open:?}");
    assert!(
        open[top..].iter().any(|&o| o < 12),
        "ramped down before the end: {open:?}"
    );
    // Echoes follow the level: the busiest window sends several times the first one.
    let sent: Vec<u64> = s.windows.iter().map(|w| w.sent).collect();
    let peak = sent.iter().copied().max().unwrap_or(0);
    assert!(sent[0] * 2 < peak, "{sent:?}");
    // Broadcasts to listeners that come and go cannot be counted exactly: refused.
    let err = loadtest::run(cli(
        &b,
        &["soak", "--stage", "1s:5", "--broadcast-rate", "10"],
    ))
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("--broadcast-rate"), "{err}");
    b.shutdown().await;
}
