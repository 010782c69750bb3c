//! Several machines, one run: two `loadtest agent` processes (on this machine, loopback only,
//! as two load machines would run them) take the workers of one coordinator run against the
//! real broker, and the coordinator reports one run, merged exactly as local workers are.

mod common;

use std::process::{Output, Stdio};

use common::{broker, within, API_KEY};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "agent-test-token-0123";

/// A `loadtest agent` on an ephemeral loopback port that serves `runs` workers, and its address.
async fn agent(runs: usize) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--runs",
            &runs.to_string(),
        ])
        .env("LOADTEST_AGENT_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the agent starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = within(async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("stderr")
                .expect("an `agent listening on` line");
            if let Some(addr) = line.strip_prefix("agent listening on ") {
                return addr.to_string();
            }
        }
    })
    .await;
    // Keep reading, so the agent never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn coordinator(args: &[&str]) -> Output {
    within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the coordinator runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_one_broadcast_as_one_run() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let (mut a1, addr1) = agent(1).await;
    let (mut a2, addr2) = agent(1).await;
    let agents = format!("{addr1},{addr2}");
    let out = coordinator(&[
        "--url",
        &url,
        "--json",
        "--quiet",
        "--api-key",
        API_KEY,
        "--agents",
        &agents,
        "--agent-token",
        TOKEN,
        "--threshold",
        "completeness>=1",
        "broadcast",
        "-l",
        "20",
        "-p",
        "2",
        "--rate",
        "400",
        "--messages",
        "60",
        "-d",
        "10s",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let d = &v["delivery"];
    assert_eq!(d["listeners"], 20, "{v:#}");
    assert_eq!(d["sent"], 60, "{v:#}");
    assert_eq!(d["received"], 60 * 20, "{v:#}");
    assert_eq!(d["completeness"], 1.0, "{v:#}");
    assert_eq!(d["foreign"], 0, "{v:#}");
    assert_eq!(v["latency"]["delivery"]["count"], 60 * 20, "{v:#}");
    assert!(
        v["notes"].as_array().expect("notes").iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("2 of 2 worker processes reported from 2 agents"))),
        "{v:#}"
    );
    // Each agent served its one worker and stopped.
    for a in [&mut a1, &mut a2] {
        let status = within(a.wait()).await.expect("the agent exits");
        assert!(status.success(), "{status}");
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_wrong_token_and_the_run_says_so() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let (_a, addr) = agent(1).await;
    let out = coordinator(&[
        "--url",
        &url,
        "--json",
        "--quiet",
        "--agents",
        &addr,
        "--agent-token",
        "not-the-token",
        "connect",
        "-c",
        "3",
        "--hold",
        "100ms",
    ])
    .await;
    assert_ne!(
        out.status.code(),
        Some(0),
        "a run with no worker cannot pass"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong agent token"), "{stderr}");
    // Without a token at all the coordinator refuses before connecting anywhere.
    let out = coordinator(&["--url", &url, "--agents", &addr, "connect", "-c", "1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent-token"));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_the_coordinator_reaches_the_agents_workers_and_the_run_reports() {
    let b = broker().await;
    let url = format!("ws://{}/", b.ws_addr());
    let (_a, addr) = agent(1).await;
    let coordinator = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--url",
            &url,
            "--json",
            "--quiet",
            "--agents",
            &addr,
            "--agent-token",
            TOKEN,
            "connect",
            "-c",
            "10",
            "--hold",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the coordinator starts");
    // The agent's worker holds its 10 connections.
    let shared = b.shared().clone();
    within(async {
        while shared.registry().len() < 10 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let pid = coordinator.id().expect("pid") as libc::pid_t;
    // SAFETY: kill(2) with the pid of the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = within(coordinator.wait_with_output())
        .await
        .expect("the coordinator exits");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "a summary; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Cut short by the interrupt, long before its 60 s hold, with what the worker measured.
    assert_eq!(v["stopped_by"], "interrupted", "{v:#}");
    assert_eq!(v["connections"]["established"], 10, "{v:#}");
    b.shutdown().await;
}
