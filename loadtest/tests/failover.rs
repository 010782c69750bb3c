//! `loadtest failover` for real, bounded: `failover.sh` with 200 listeners through a real
//! HAProxy in front of two broker processes sharing a real nats-server with JetStream. Broker 1
//! is drained mid-run twice (restarted in between): listeners that resume with positions must
//! lose, repeat and reorder nothing; listeners that reconnect without positions lose events, and
//! the count says how many. The script itself is what runs, so the README's command stays true.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

fn failover_of(dir: &Path, case: &str) -> Value {
    let path = dir.join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no result for case {case} ({}): {e}", path.display()));
    let summary: Value = serde_json::from_str(&text).expect("the result is JSON");
    summary["failover"].clone()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_loses_nothing_for_listeners_that_resume_and_costs_the_others_events() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_loadtest"))
        .parent()
        .expect("the binary has a directory");
    // A missing broker binary fails the test: a skipped failover test would pass while proving
    // nothing. (test.sh builds it; `cargo test -p loadtest` alone may not.)
    assert!(
        bin_dir.join("broker").exists(),
        "no broker binary in {}: run `cargo build -p broker --bins` first (test.sh does)",
        bin_dir.display()
    );
    let out = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("failover.sh");
    let output = tokio::time::timeout(
        Duration::from_secs(100),
        tokio::process::Command::new("bash")
            .arg(&script)
            .arg("200")
            .env("BIN_DIR", bin_dir)
            .env("CASES", "drain norecover")
            .env("SEND_FOR", "4s")
            .env("DISRUPT_AT", "1500ms")
            .env("DRAIN_WINDOW", "1")
            .env("LIMIT_S", "90")
            .env("OUT_DIR", out.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script ends within 100 s")
    .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    // Exit 0: the drain case with recovery held all its thresholds.
    assert!(output.status.success(), "{context}");

    let drain = failover_of(out.path(), "drain");
    assert_eq!(drain["disrupted"], true, "{drain}\n{context}");
    assert_eq!(drain["recover"], true, "{drain}");
    assert_eq!(n(&drain, "listeners"), 200, "{drain}");
    assert!(n(&drain, "published") >= 600, "{drain}");
    // About half the listeners were on the drained broker: they were closed, and came back.
    let closed = n(&drain, "closed_listeners");
    assert!(closed > 0, "nobody was closed by the drain: {drain}");
    assert_eq!(n(&drain, "not_reconnected"), 0, "{drain}");
    assert!(n(&drain, "recoveries_complete") >= closed, "{drain}");
    assert_eq!(n(&drain, "recoveries_incomplete"), 0, "{drain}");
    assert!(n(&drain, "replayed") > 0, "{drain}");
    assert!(
        drain["reconnect_ms"]["count"].as_u64() >= Some(closed),
        "{drain}"
    );
    // What the resume promises: nothing missing, nothing twice, nothing out of order.
    assert_eq!(n(&drain, "missing"), 0, "{drain}");
    assert_eq!(n(&drain, "duplicates"), 0, "{drain}");
    assert_eq!(n(&drain, "out_of_order"), 0, "{drain}");

    let plain = failover_of(out.path(), "norecover");
    assert_eq!(plain["disrupted"], true, "{plain}\n{context}");
    assert_eq!(plain["recover"], false, "{plain}");
    assert!(n(&plain, "closed_listeners") > 0, "{plain}");
    assert_eq!(n(&plain, "recoveries_complete"), 0, "{plain}");
    // Without positions the events sent while a listener was away are gone.
    assert!(n(&plain, "missing") > 0, "{plain}\n{context}");
    assert!(n(&plain, "missing_listeners") > 0, "{plain}");
    assert!(stdout.contains("== summary: 200 listeners"), "{context}");
}

#[tokio::test]
async fn a_disruption_that_cannot_be_carried_out_is_refused_before_connecting() {
    for (args, expect) in [
        (vec!["--disrupt", "sigkill"], "--kill-pid"),
        (vec!["--disrupt", "drain"], "--drain-url"),
        (
            vec!["--drain-url", "https://127.0.0.1:1", "--admin-token", "t"],
            "http://",
        ),
        (vec!["--drain-url", "http://127.0.0.1:1"], "--admin-token"),
        (
            vec!["--disrupt", "sigkill", "--kill-pid", "1"],
            "may signal",
        ),
        (
            vec!["--disrupt", "none", "--backoff-min", "0s"],
            "--backoff-min",
        ),
    ] {
        let mut argv = vec![
            "loadtest",
            "--quiet",
            "--url",
            "ws://127.0.0.1:9/",
            "--api-key",
            "k",
            "failover",
            "-l",
            "1",
        ];
        argv.extend(args.iter().copied());
        let cli = loadtest::Cli::try_parse_from(&argv).expect("parses");
        let err = tokio::time::timeout(Duration::from_secs(10), loadtest::run(cli))
            .await
            .expect("refused at once")
            .expect_err("refused");
        assert!(
            format!("{err:#}").contains(expect),
            "{args:?}: {err:#} should mention {expect}"
        );
    }
}
