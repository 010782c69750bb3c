//! The built binary, as operators and scripts run it: `--json` on stdout parses.

mod common;

use std::process::Stdio;

use common::{broker, within};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_machine_readable() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let output = within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "--url",
                &url,
                "--json",
                "--quiet",
                "echo",
                "-c",
                "4",
                "--requests",
                "40",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary runs");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    assert_eq!(v["scenario"], "echo");
    assert_eq!(v["messages"]["received"], 40);
    assert_eq!(v["connections"]["established"], 4);
    assert_eq!(v["stopped_by"], "count");
    assert!(v["latency"]["rtt"]["p99_ms"]
        .as_f64()
        .is_some_and(|p| p > 0.0));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_fail_with_a_clear_message() {
    let output = within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["--url", "http://127.0.0.1:1/", "echo"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ws:// or wss://"), "{stderr}");
}
