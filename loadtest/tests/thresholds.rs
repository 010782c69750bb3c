//! Pass/fail for CI: the built binary's exit status under thresholds and failed connections.

mod common;

use std::process::{Output, Stdio};

use common::{broker, within, API_KEY};
use serde_json::Value;

/// Runs the built binary with `args` and returns its output.
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_run_exits_non_zero_without_thresholds() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let o = loadtest(&[
        "--url",
        &url,
        "--quiet",
        "--origin",
        "http://evil.example",
        "connect",
        "-c",
        "10",
        "--hold",
        "0s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("FAILED the run: 10 of 10 connection attempts failed (refused_403 x10)"),
        "{}",
        stderr(&o)
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_that_cannot_be_met_exits_1_naming_it() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let o = loadtest(&[
        "--url",
        &url,
        "--quiet",
        "--json",
        "--threshold",
        "p99<1us",
        "--threshold",
        "errors==0",
        "--threshold",
        "completeness>=1",
        "echo",
        "-c",
        "2",
        "--requests",
        "20",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("FAILED threshold `p99<1us`: rtt p99 "),
        "{err}"
    );
    assert!(
        err.contains("FAILED threshold `completeness>=1`: not measured by this run"),
        "{err}"
    );
    assert!(
        !err.contains("`errors==0`"),
        "a passed threshold is not reported as failed: {err}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["verdict"]["passed"], false);
    let checks = v["verdict"]["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[1]["check"], "errors==0");
    assert_eq!(checks[1]["passed"], true);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_that_are_met_exit_0_and_a_bad_file_exits_2() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gate.txt");
    std::fs::write(
        &file,
        "# the deploy gate\ncompleteness >= 100%\nfailed == 0\n\ndelivery.p99 < 30s\n",
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    let o = loadtest(&[
        "--url",
        &url,
        "--quiet",
        "--api-key",
        API_KEY,
        "--thresholds-file",
        &file,
        "--threshold",
        "handshake.max<30s",
        "broadcast",
        "-l",
        "5",
        "--rate",
        "200",
        "--messages",
        "20",
        "-d",
        "10s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("verdict      PASSED (4 checks)"), "{out}");
    assert!(
        out.contains("PASSED threshold `completeness >= 100%`: completeness 100.0000%"),
        "{out}"
    );

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "p99 < 5ms\np99 << 5ms\n").expect("write");
    let bad = bad.to_string_lossy().into_owned();
    let o = loadtest(&[
        "--url",
        &url,
        "--quiet",
        "--thresholds-file",
        &bad,
        "connect",
        "-c",
        "1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("bad.txt line 2"), "{}", stderr(&o));
    b.shutdown().await;
}
