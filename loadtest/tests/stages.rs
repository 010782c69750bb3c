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
