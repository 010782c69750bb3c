//! Every scenario against the real broker on loopback, asserting on the summary.

mod common;

use common::{broker, cli, run, API_KEY};
use loadtest::context::StopReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_gets_every_reply() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &["echo", "-c", "5", "--requests", "200", "-d", "10s"],
    ))
    .await;
    assert_eq!(s.stopped_by, StopReason::Count, "{s}");
    assert_eq!(s.connections.established, 5, "{s}");
    assert_eq!(s.messages.sent, 200, "{s}");
    assert_eq!(s.messages.received, 200, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    let rtt = &s.latency["rtt"];
    assert_eq!(rtt.percentiles.count, 200);
    assert!(rtt.percentiles.p50_ms > 0.0 && rtt.percentiles.p50_ms <= rtt.percentiles.max_ms);
    assert!(s.messages.received_per_s > 0.0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_publishers_is_complete() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "broadcast",
            "-l",
            "50",
            "-p",
            "2",
            "--rate",
            "400",
            "--messages",
            "200",
            "-d",
            "10s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!(d.listeners, 50, "{s}");
    assert_eq!(d.publishers, 2, "{s}");
    assert_eq!(d.sent, 200, "{s}");
    assert_eq!(d.expected, 200 * 50, "{s}");
    assert_eq!(d.received, d.expected, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert_eq!(d.duplicates, 0, "{s}");
    assert_eq!(d.complete_listeners, 50, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    let delivery = &s.latency["delivery"];
    assert!(
        delivery.corrected,
        "open-loop latency is measured from the intended send time"
    );
    assert_eq!(delivery.percentiles.count, 200 * 50);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_without_a_key_uses_client_echo_broadcasts() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "broadcast",
            "-l",
            "20",
            "--rate",
            "max",
            "--messages",
            "100",
            "-d",
            "10s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!((d.sent, d.listeners), (100, 20), "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert!(
        !s.latency["delivery"].corrected,
        "max rate has no schedule to correct against"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_window_bounds_the_queues_and_server_cost_is_sampled() {
    let b = broker().await;
    // The broker runs in this process, so the server probe samples the test process itself.
    let pid = std::process::id().to_string();
    let s = run(cli(
        &b,
        &[
            "--server-pid",
            &pid,
            "broadcast",
            "-l",
            "10",
            "--rate",
            "max",
            "--in-flight",
            "1",
            "--messages",
            "300",
            "-d",
            "10s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!((d.sent, d.listeners), (300, 10), "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    // With one event in flight, no connection ever finds more than one frame waiting; a window
    // that let events pile up would show larger queue depths in the broker's histogram. (Most
    // deliveries skip the queue: the broker writes a broadcast straight to an idle listener's
    // socket. Every one of the 3,000 is counted sent either way, with the publisher's own
    // answers on top.)
    let m = &b.shared().metrics;
    assert!(
        m.messages_sent.get() >= 300 * 10,
        "{}",
        m.messages_sent.get()
    );
    let depth = &m.send_queue_depth;
    assert_eq!(
        depth.get_sample_sum(),
        depth.get_sample_count() as f64,
        "every wake-up found exactly one frame"
    );

    let server = s
        .server
        .as_ref()
        .expect("--server-pid adds the server section");
    let names: Vec<&str> = server.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["ramp", "warm-up", "ramp-pub", "send", "drain", "close"]
    );
    assert!(server.cpu_s(&["send"]) > 0.0, "{server:?}");
    assert!(server.phases.iter().all(|p| p.rss_kib_end > 0));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_in_batches_is_complete() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "publish",
            "--via",
            "http",
            "--batch",
            "5",
            "-l",
            "10",
            "-p",
            "2",
            "--rate",
            "500",
            "--messages",
            "100",
            "-d",
            "10s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!(d.sent, 100, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    assert_eq!(s.latency["publish_request"].percentiles.count, 20, "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_publisher_connections_is_complete() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "publish",
            "--via",
            "ws",
            "-l",
            "10",
            "--messages",
            "50",
            "-d",
            "10s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!((d.sent, d.completeness), (50, 1.0), "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_a_wrong_key_reports_the_refusals() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--api-key",
            "wrong",
            "publish",
            "-l",
            "2",
            "--messages",
            "10",
            "-d",
            "2s",
            "--drain",
            "1s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert_eq!(d.sent, 0, "{s}");
    let refused: u64 = s
        .errors
        .iter()
        .filter(|(k, _)| *k == "http_401" || *k == "http_403")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refused, 10, "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_holds_and_counts_refusals_by_reason() {
    let b = broker().await;
    let ok = run(cli(&b, &["connect", "-c", "100", "--hold", "200ms"])).await;
    assert_eq!(ok.connections.established, 100, "{ok}");
    assert_eq!(ok.connections.peak_open, 100, "{ok}");
    assert_eq!(ok.connections.failed, 0, "{ok}");
    assert_eq!(ok.connections.dropped, 0, "{ok}");
    assert_eq!(ok.latency["handshake"].percentiles.count, 100);

    let refused = run(cli(
        &b,
        &[
            "--origin",
            "http://evil.example",
            "connect",
            "-c",
            "20",
            "--hold",
            "100ms",
        ],
    ))
    .await;
    assert_eq!(refused.connections.established, 0, "{refused}");
    assert_eq!(
        refused.connections.failures.get("refused_403"),
        Some(&20),
        "{refused}"
    );

    let no_origin = run(cli(
        &b,
        &["--origin", "", "connect", "-c", "5", "--hold", "0s"],
    ))
    .await;
    assert_eq!(
        no_origin.connections.failures.get("refused_403"),
        Some(&5),
        "{no_origin}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_source_addresses() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--source-addrs",
            "4",
            "connect",
            "-c",
            "40",
            "--hold",
            "100ms",
        ],
    ))
    .await;
    assert_eq!(s.connections.established, 40, "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_reports_windows_and_broadcasts() {
    let b = broker().await;
    let s = run(cli(
        &b,
        &[
            "--window",
            "500ms",
            "soak",
            "-c",
            "20",
            "-d",
            "2s",
            "--echo-interval",
            "100ms",
            "--broadcast-rate",
            "20",
        ],
    ))
    .await;
    assert_eq!(s.stopped_by, StopReason::Duration, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");
    assert_eq!(s.connections.dropped, 0, "{s}");
    assert!(s.latency["rtt"].percentiles.count >= 20 * 15, "{s}");
    assert!(s.latency.contains_key("broadcast"), "{s}");
    let d = s.delivery.as_ref().expect("broadcast accounting");
    assert!(d.sent >= 30, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert!(s.windows.len() >= 4, "{s}");
    assert!(
        s.windows.iter().filter(|w| w.latency.is_some()).count() >= 3,
        "{s}"
    );
    assert!(s.drift.is_some());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_runs_phases_from_a_file() {
    let b = broker().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.toml");
    std::fs::write(
        &file,
        r#"
[[phase]]
name = "echo alone"
scenario = "echo"
connections = 3
requests = 30

[[phase]]
name = "fan-out with echo"
[[phase.run]]
scenario = "broadcast"
listeners = 10
messages = 20
rate = 200
[[phase.run]]
scenario = "echo"
connections = 2
requests = 20
"#,
    )
    .expect("write plan");
    let path = file.to_string_lossy().into_owned();
    let s = run(cli(&b, &["mixed", &path])).await;
    assert_eq!(s.stopped_by, StopReason::Completed, "{s}");
    assert_eq!(s.phases.len(), 2);
    assert_eq!(s.phases[0].runs[0].messages.received, 30, "{s}");
    let fanout = &s.phases[1].runs[0];
    assert_eq!(
        fanout.delivery.as_ref().map(|d| d.completeness),
        Some(1.0),
        "{s}"
    );
    assert_eq!(s.phases[1].runs[1].messages.received, 20, "{s}");
    assert_ne!(
        fanout.run_id, s.phases[1].runs[1].run_id,
        "runs tell their probes apart"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_phases_carry_their_connections_over() {
    let b = broker().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.toml");
    // 30 listeners; then 20 of them with connection-targeted events (fewer: 20 carried over,
    // 10 closed); then 25 echo connections (20 carried over, 5 opened).
    std::fs::write(
        &file,
        r#"
[[phase]]
name = "wide"
scenario = "broadcast"
listeners = 30
publishers = 2
messages = 60
rate = 600

[[phase]]
name = "narrow, to single connections"
scenario = "publish"
via = "ws"
listeners = 20
publishers = 2
messages = 60
rate = 600
[[phase.event]]
target = "connection"
weight = 1
[[phase.event]]
target = "all"
weight = 1

[[phase]]
name = "round trips"
scenario = "echo"
connections = 25
requests = 100
"#,
    )
    .expect("write plan");
    let path = file.to_string_lossy().into_owned();
    let s = run(cli(&b, &["--api-key", API_KEY, "mixed", &path])).await;
    assert_eq!(s.stopped_by, StopReason::Completed, "{s}");
    let runs: Vec<&loadtest::Summary> = s.phases.iter().map(|p| &p.runs[0]).collect();
    assert_eq!(runs.len(), 3, "{s}");
    let handshakes = |r: &loadtest::Summary| {
        r.latency
            .get("handshake")
            .map_or(0, |l| l.percentiles.count)
    };

    // Phase 1 ramps everything.
    assert_eq!(runs[0].connections.established, 32, "{s}");
    assert_eq!(runs[0].connections.reused, 0, "{s}");
    assert_eq!(handshakes(runs[0]), 32, "{s}");
    assert_eq!(
        runs[0].delivery.as_ref().map(|d| d.completeness),
        Some(1.0),
        "{s}"
    );

    // Phase 2 takes over listeners 0..20 (no handshake) and opens its two publishers (their
    // numbers follow the listeners, so they are not phase 1's).
    let c = &runs[1].connections;
    assert_eq!((c.established, c.reused, c.failed), (22, 20, 0), "{s}");
    assert_eq!(handshakes(runs[1]), 2, "{s}");
    let d = runs[1].delivery.as_ref().expect("delivery");
    assert_eq!(d.listeners, 20, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert_eq!(d.misdelivered, 0, "{s}");
    assert!(
        d.expected < 60 * 20,
        "some events went to one connection: {s}"
    );

    // Phase 3 takes over the same 20 and ramps the 5 it lacks.
    let c = &runs[2].connections;
    assert_eq!((c.established, c.reused), (25, 20), "{s}");
    assert_eq!(handshakes(runs[2]), 5, "{s}");
    assert_eq!(runs[2].messages.received, 100, "{s}");
    assert_eq!(runs[2].messages.errors, 0, "{s}");
    assert_eq!(s.connections.reused, 40, "{s}");

    // The broker agrees: 30 + 5 client connections were accepted in all, not 30 + 20 + 25.
    let accepted = b
        .shared()
        .metrics
        .connections_accepted
        .with_label_values(&["client"])
        .get();
    assert_eq!(accepted, 35, "{s}");
    // And none is left open after the run.
    common::within(async {
        while !b.shared().registry().snapshot().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_writes_svg_plots_and_an_index() {
    let b = broker().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("report");
    let out_s = out.to_string_lossy().into_owned();
    let s = run(cli(
        &b,
        &[
            "--report", &out_s, "--window", "200ms", "echo", "-c", "3", "-d", "1s",
        ],
    ))
    .await;
    assert!(s.messages.received > 0, "{s}");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    for svg in [
        "latency-over-time.svg",
        "latency-histogram.svg",
        "rates.svg",
    ] {
        let text =
            std::fs::read_to_string(out.join(svg)).unwrap_or_else(|_| panic!("{svg} written"));
        assert!(text.contains("<svg"), "{svg} is SVG");
        assert!(index.contains(svg), "index.html embeds {svg}");
    }
    assert!(index.contains(&s.run_id));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_in_header_and_query() {
    let config = broker::config::Config::from_json_str(
        r#"{"websocket":{"port":0,"host":"127.0.0.1","approvedSocketDomains":["^http://localhost$"],"socketApiKey":"k"},"broker":{"ops":{"host":"127.0.0.1","port":0},"jwtSecret":"test-secret-0123456789abcdef"}}"#,
        "test",
    )
    .expect("valid test config");
    let b = broker::app::start(config).await.expect("broker starts");
    for placement in [&[][..], &["--token-in-query"][..]] {
        let mut args = vec!["--token", "not.a.jwt"];
        args.extend_from_slice(placement);
        args.extend_from_slice(&["connect", "-c", "3", "--hold", "0s"]);
        let s = run(cli(&b, &args)).await;
        assert_eq!(s.connections.established, 0, "{s}");
        assert_eq!(s.connections.failures.get("http_401"), Some(&3), "{s}");
    }
    b.shutdown().await;
}
