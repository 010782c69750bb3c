//! Slow consumers (`--pause-share`): listeners that stop reading, against the real broker.

mod common;

use broker::app::RunningBroker;
use broker::config::Config;
use common::{cli, run, API_KEY};

/// A broker on 127.0.0.1 whose per-connection send queue holds `send_queue_bytes` bytes (the
/// fan-out limits off: the scenarios broadcast at the rates they measure). The close grace
/// outlasts the pauses, so a paused listener that resumes reads its close frame instead of
/// finding its connection reset.
async fn broker_with_queue(send_queue_bytes: usize) -> RunningBroker {
    let config = Config::from_json_str(
        &format!(
            r#"{{"websocket":{{"port":0,"host":"127.0.0.1","approvedSocketDomains":["^http://localhost$"],"socketApiKey":"{API_KEY}"}},"broker":{{"ops":{{"host":"127.0.0.1","port":0}},"limits":{{"closeGrace":10,"sendQueueBytes":{send_queue_bytes},"clientFanoutPerSecond":0,"clientFanoutBytesPerSecond":0}}}}}}"#
        ),
        "test",
    )
    .expect("valid test config");
    broker::app::start(config).await.expect("broker starts")
}

/// Paused listeners that stay away far longer than the broker's queue and the kernel buffers
/// can cover are closed by the server and lose events; the steady ones get everything.
///
/// The sizes make the outcome certain rather than likely: each listener is sent 100 events of
/// 32 KiB a second (3.2 MB/s). During the 5 s pause that is 16 MB for each paused listener,
/// against at most 1 MiB in the broker's queue (`sendQueueBytes`), 4 MiB of server send buffer (the
/// kernel's `tcp_wmem` maximum) and the 4 KiB receive buffer set with `--pause-rcvbuf`. A steady
/// listener, read as it arrives, would need the broker's connection task to stall for 320 ms
/// (about 32 frames at 100/s) before its queue filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pause_with_a_small_queue_is_closed_by_the_server_and_loses_events() {
    let b = broker_with_queue(1024 * 1024).await;
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "broadcast",
            "-l",
            "6",
            "--rate",
            "100",
            "-d",
            "6s",
            "--message-size",
            "32768",
            "--drain",
            "2s",
            "--pause-share",
            "0.34",
            "--pause-at",
            "500ms",
            "--pause-for",
            "5s",
            "--pause-rcvbuf",
            "4096",
        ],
    ))
    .await;
    // Shown with `--nocapture`: what this broker did to its slow consumers.
    eprintln!("{s}");
    let d = s.delivery.as_ref().expect("delivery summary");
    let p = d.pause.as_ref().expect("pause summary");
    eprintln!("{}", serde_json::to_string_pretty(p).expect("serializes"));
    assert_eq!(d.listeners, 6, "{s}");
    assert!(d.sent >= 500, "{s}");
    assert_eq!(p.paused_listeners, 2, "{s}");
    assert_eq!(p.rcvbuf_bytes, Some(4096));

    // Steady listeners: every event, none ended by the server.
    assert_eq!(p.steady.listeners, 4, "{s}");
    assert_eq!(p.steady.completeness, 1.0, "{s}");
    assert_eq!(p.steady.lossy_listeners, 0, "{s}");
    assert_eq!(p.steady.open_at_end, 4, "{s}");
    assert!(p.steady.closed_by_server.is_empty(), "{s}");
    assert_eq!(p.steady.no_close_frame, 0, "{s}");

    // Paused listeners: every one lost events and was ended by the server.
    let g = &p.paused;
    assert_eq!(g.listeners, 2, "{s}");
    assert_eq!(g.lossy_listeners, 2, "{s}");
    assert!(g.missing > 0 && g.completeness < 1.0, "{s}");
    assert_eq!(g.missing, g.expected - g.received, "{s}");
    assert_eq!(g.open_at_end, 0, "{s}");
    // The broker closes a slow consumer with 1013 after the frame it was writing: both
    // listeners read whole frames, then the close frame (within the broker's close grace).
    assert_eq!(g.closed_by_server.get("1013").copied(), Some(2), "{s}");
    assert_eq!(
        g.closed_by_server.len(),
        1,
        "the only close code is 1013: {s}"
    );
    assert_eq!(g.no_close_frame, 0, "{s}");
    let c = g.catch_up.as_ref().expect("catch-up figures");
    assert_eq!(c.resumed, 2, "{s}");
    assert_eq!(c.caught_up, 0, "a closed listener never catches up: {s}");

    let paused: Vec<_> = p.details.iter().filter(|l| l.paused).collect();
    assert_eq!(paused.len(), 2, "{s}");
    for l in &paused {
        assert!(l.missing > 0 && l.ended.is_some(), "{l:?}");
        assert_eq!(l.received + l.missing, d.sent, "{l:?}");
        let at = l.paused_at_s.expect("paused");
        assert!((0.5..1.0).contains(&at), "{l:?}");
        // A paused listener reads the server's close only after it resumes.
        assert!(l.ended_at_s.expect("ended") >= 5.5, "{l:?}");
    }
    assert_eq!(s.connections.dropped, 2, "{s}");
    assert!(s.latency.contains_key("delivery_paused"), "{s}");

    let text = s.to_string();
    assert!(text.contains("pause        2 of 6 listeners"), "{text}");
    b.shutdown().await;
}

/// A short pause with a generous queue loses nothing: the paused listeners read the backlog
/// and catch up.
///
/// 200 events a second of 256 bytes: the 300 ms pause leaves at most 60 events (15 KiB) for
/// each paused listener, which the kernel buffers alone hold; the queue (1,024 frames) is
/// never near its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_pause_with_a_generous_queue_loses_nothing_and_catches_up() {
    let b = broker_with_queue(64 * 1024 * 1024).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("report");
    let out_s = out.to_string_lossy().into_owned();
    let s = run(cli(
        &b,
        &[
            "--api-key",
            API_KEY,
            "--json",
            "--report",
            &out_s,
            "broadcast",
            "-l",
            "10",
            "--rate",
            "200",
            "-d",
            "2s",
            "--message-size",
            "256",
            "--pause-share",
            "30%",
            "--pause-at",
            "500ms",
            "--pause-for",
            "300ms",
        ],
    ))
    .await;
    eprintln!("{s}");
    let d = s.delivery.as_ref().expect("delivery summary");
    let p = d.pause.as_ref().expect("pause summary");
    assert_eq!((d.listeners, p.paused_listeners), (10, 3), "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    for g in [&p.paused, &p.steady] {
        assert_eq!(g.completeness, 1.0, "{s}");
        assert_eq!(
            (g.lossy_listeners, g.missing, g.max_missing),
            (0, 0, 0),
            "{s}"
        );
        assert!(g.closed_by_server.is_empty(), "{s}");
        assert_eq!(g.no_close_frame, 0, "{s}");
        assert_eq!(g.open_at_end, g.listeners, "{s}");
    }
    assert_eq!((p.paused.listeners, p.steady.listeners), (3, 7), "{s}");
    let c = p.paused.catch_up.as_ref().expect("catch-up figures");
    assert_eq!((c.resumed, c.caught_up), (3, 3), "{s}");
    let (min, p50, max) = (
        c.min_ms.expect("min"),
        c.p50_ms.expect("p50"),
        c.max_ms.expect("max"),
    );
    assert!(min <= p50 && p50 <= max, "{s}");
    assert!(p.steady.catch_up.is_none());
    // Only the paused listeners are listed (no steady one lost anything or was ended).
    assert_eq!(p.details.len(), 3, "{s}");
    assert!(p
        .details
        .iter()
        .all(|l| l.paused && l.missing == 0 && l.ended.is_none() && l.catch_up_ms.is_some()));
    assert_eq!(s.connections.dropped, 0, "{s}");

    // The JSON carries the same figures under `delivery.pause`.
    let json = serde_json::to_value(&s).expect("serializes");
    let pause = &json["delivery"]["pause"];
    assert_eq!(pause["paused_listeners"], 3);
    assert_eq!(pause["paused"]["completeness"], 1.0);
    assert_eq!(pause["steady"]["missing"], 0);
    assert_eq!(pause["paused"]["catch_up"]["caught_up"], 3);
    assert!(pause["details"][0]["catch_up_ms"].is_f64());

    // The report shows paused against steady in a table.
    let index = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert!(index.contains("<th>paused</th><th>steady</th>"), "{index}");
    assert!(
        index.contains("<tr><th>caught up after resuming</th><td>3 of 3</td><td>-</td></tr>"),
        "{index}"
    );
    b.shutdown().await;
}

/// Without `--pause-share` the summary has no pause section and the JSON no `pause` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pause_no_pause_section() {
    let b = broker_with_queue(64 * 1024 * 1024).await;
    let s = run(cli(
        &b,
        &["broadcast", "-l", "3", "--messages", "20", "-d", "5s"],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    assert!(d.pause.is_none());
    assert!(!s.latency.contains_key("delivery_paused"));
    let json = serde_json::to_value(&s).expect("serializes");
    assert!(json["delivery"].get("pause").is_none());
    b.shutdown().await;
}

/// With `--in-flight`, only the steady listeners' receipts retire events: the publishers keep
/// sending while the paused listener is away, instead of waiting for it. 300 small events with
/// 4 in flight take a fraction of a second; the pause lasts 3 s, so a window that counted the
/// paused listener could not have finished sending before the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_window_does_not_wait_for_paused_listeners() {
    let b = broker_with_queue(64 * 1024 * 1024).await;
    let s = run(cli(
        &b,
        &[
            "broadcast",
            "-l",
            "4",
            "--rate",
            "max",
            "--in-flight",
            "4",
            "--messages",
            "300",
            "-d",
            "10s",
            "--pause-share",
            "0.25",
            "--pause-at",
            "0s",
            "--pause-for",
            "3s",
        ],
    ))
    .await;
    let d = s.delivery.as_ref().expect("delivery summary");
    let p = d.pause.as_ref().expect("pause summary");
    assert_eq!(d.sent, 300, "{s}");
    assert!(s.measured_s < 3.0, "sending ended before the resume: {s}");
    assert_eq!(p.steady.completeness, 1.0, "{s}");
    // 300 events of 32 bytes wait in the kernel buffers: the paused listener loses nothing.
    assert_eq!(p.paused.completeness, 1.0, "{s}");
    assert_eq!(
        p.paused.catch_up.as_ref().map(|c| c.caught_up),
        Some(1),
        "{s}"
    );
    b.shutdown().await;
}

/// The pause options are checked like any other.
#[test]
fn pause_options_are_validated() {
    use clap::Parser;
    for bad in [
        &["--pause-share", "1.5"][..],
        &["--pause-share", "-0.1"],
        &["--pause-for", "soon"],
        &["--pause-for", "25h"],
        &["--pause-at", "1e30"],
        &["--pause-rcvbuf", "0"],
        &["--pause-rcvbuf", "-5"],
    ] {
        let mut argv = vec!["loadtest", "broadcast"];
        argv.extend_from_slice(bad);
        assert!(loadtest::Cli::try_parse_from(&argv).is_err(), "{bad:?}");
    }
    let ok = loadtest::Cli::try_parse_from([
        "loadtest",
        "publish",
        "--pause-share",
        "10%",
        "--pause-for",
        "2s",
        "--pause-at",
        "500ms",
        "--pause-rcvbuf",
        "8192",
    ])
    .expect("parses");
    let loadtest::cli::Scenario::Publish(a) = ok.scenario else {
        panic!("publish");
    };
    assert_eq!(a.delivery.pause.pause_share, 0.1);
    assert_eq!(a.delivery.pause.paused_count(100), 10);
    assert_eq!(a.delivery.pause.pause_rcvbuf, Some(8192));
}
