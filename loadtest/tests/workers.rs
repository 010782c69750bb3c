//! `--workers N`: the built binary starts N copies of itself against the real broker and reports
//! one run. Counts add up, histograms merge exactly, and every worker's listeners count every
//! worker's events (one run id), so completeness is the same accounting as in one process.

mod common;

use std::process::{Output, Stdio};

use common::{broker, within, API_KEY};
use serde_json::Value;

async fn loadtest(args: &[&str]) -> Output {
    within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary runs")
}

fn json(o: &Output) -> Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON document on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_count_a_broadcast_as_one_run() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let v = json(
        &loadtest(&[
            "--url",
            &url,
            "--json",
            "--quiet",
            "--api-key",
            API_KEY,
            "--workers",
            "2",
            "--threshold",
            "completeness>=1",
            "broadcast",
            "-l",
            "21",
            "-p",
            "3",
            "--rate",
            "600",
            "--messages",
            "90",
            "-d",
            "10s",
        ])
        .await,
    );
    let d = &v["delivery"];
    assert_eq!(d["listeners"], 21, "{v:#}");
    assert_eq!(d["publishers"], 3, "{v:#}");
    assert_eq!(d["sent"], 90, "{v:#}");
    assert_eq!(d["expected"], 90 * 21, "{v:#}");
    assert_eq!(d["received"], 90 * 21, "{v:#}");
    assert_eq!(d["completeness"], 1.0, "{v:#}");
    assert_eq!(d["duplicates"], 0, "{v:#}");
    assert_eq!(d["complete_listeners"], 21, "{v:#}");
    // The other worker's probes are this run's, not foreign.
    assert_eq!(d["foreign"], 0, "{v:#}");
    assert_eq!(v["messages"]["sent"], 90, "{v:#}");
    assert_eq!(v["connections"]["established"], 24, "{v:#}");
    // The merged histogram holds every delivery of both workers.
    assert_eq!(v["latency"]["delivery"]["count"], 90 * 21, "{v:#}");
    assert_eq!(v["latency"]["handshake"]["count"], 24, "{v:#}");
    assert_eq!(v["verdict"]["passed"], true, "{v:#}");
    assert!(
        v["notes"].as_array().expect("notes").iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("2 of 2 worker processes"))),
        "{v:#}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_echo_split_between_workers() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let v = json(
        &loadtest(&[
            "--url",
            &url,
            "--json",
            "--quiet",
            "--workers",
            "3",
            "connect",
            "-c",
            "31",
            "--hold",
            "200ms",
        ])
        .await,
    );
    assert_eq!(v["connections"]["target"], 31, "{v:#}");
    assert_eq!(v["connections"]["established"], 31, "{v:#}");
    assert_eq!(v["latency"]["handshake"]["count"], 31, "{v:#}");

    let v = json(
        &loadtest(&[
            "--url",
            &url,
            "--json",
            "--quiet",
            "--workers",
            "2",
            "echo",
            "-c",
            "5",
            "--requests",
            "101",
            "-d",
            "10s",
        ])
        .await,
    );
    assert_eq!(v["messages"]["sent"], 101, "{v:#}");
    assert_eq!(v["messages"]["received"], 101, "{v:#}");
    assert_eq!(v["latency"]["rtt"]["count"], 101, "{v:#}");
    assert_eq!(v["stopped_by"], "count", "{v:#}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_go_to_listeners_of_every_worker() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let specs = ["target=connection,type=4,weight=1", "target=all,weight=1"];
    let mix =
        loadtest::mix::Mix::parse(&specs.map(str::to_owned), 4, "t", None, 0).expect("valid mix");
    // Worker w sends events k × 2 + w: numbers 0..120 between them.
    let to_one = (0..120).filter(|&seq| mix.pick(seq).entry == 0).count() as u64;
    let v = json(
        &loadtest(&[
            "--url",
            &url,
            "--json",
            "--quiet",
            "--api-key",
            API_KEY,
            "--workers",
            "2",
            "publish",
            "--via",
            "ws",
            "-l",
            "10",
            "-p",
            "2",
            "--mix",
            specs[0],
            "--mix",
            specs[1],
            "--rate",
            "600",
            "--messages",
            "120",
            "-d",
            "10s",
        ])
        .await,
    );
    let d = &v["delivery"];
    assert_eq!(d["sent"], 120, "{v:#}");
    // Each worker's connection events pick from both workers' listeners (the ids are swapped),
    // and each is counted by the one listener it names, whichever worker holds it.
    assert_eq!(d["expected"], (120 - to_one) * 10 + to_one, "{v:#}");
    assert_eq!(d["received"], d["expected"], "{v:#}");
    assert_eq!(d["misdelivered"], 0, "{v:#}");
    assert_eq!(d["complete_listeners"], 10, "{v:#}");
    assert_eq!(d["foreign"], 0, "{v:#}");
    assert_eq!(v["messages"]["errors"], 0, "{v:#}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_workers_cannot_split_is_refused_before_starting() {
    let o = loadtest(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--workers",
        "2",
        "broadcast",
        "--in-flight",
        "4",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--in-flight runs in one process"), "{err}");
}
