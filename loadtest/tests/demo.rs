//! The bounded version of `demo-100k.sh`: 3,000 connections over two broker processes sharing
//! a real nats-server, driven by `loadtest --workers 2`; both phases (broadcast, user-targeted)
//! must be 100 % complete. The script itself is what runs, so the README's command stays true.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_script_runs_bounded_over_two_brokers_and_two_workers() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_loadtest"))
        .parent()
        .expect("the binary has a directory");
    // `cargo test --workspace` (test.sh) builds the broker binary; `-p loadtest` alone may not.
    // A missing binary fails the test: a skipped demo would pass while proving nothing.
    assert!(
        bin_dir.join("broker").exists(),
        "no broker binary in {}: run `cargo build -p broker --bins` first (test.sh does)",
        bin_dir.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-100k.sh");
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("bash")
            .arg(&script)
            .args(["3000", "2", "2"])
            .env("BIN_DIR", bin_dir)
            .env("SEND_FOR", "3s")
            .env("LIMIT_S", "80")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo ends within 90 s")
    .expect("bash runs");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    // Exit 0 means both thresholds held: completeness >= 1 in both phases, no failed connection.
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("verdict      PASSED (2 checks)"), "{err}");
    assert!(
        err.contains("== phase 2 `user-targeted, one user per connection` =="),
        "{err}"
    );
    assert!(err.contains("misdelivered 0"), "{err}");
    // The user phase takes over the broadcast phase's connections instead of ramping again.
    assert!(
        out.lines()
            .any(|l| l.contains("user-targeted")
                && l.contains("3002 established (3002 carried over)")),
        "{out}"
    );
    // The brokers' peak of open connections, sampled once a second: the 3,002 of the run, and
    // at most a few more when a sample falls where one phase's publisher is closing and the
    // next one's is open.
    let peak: u64 = out
        .lines()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix("all:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no `all:` line in\n{out}"));
    assert!(
        (3002..=3006).contains(&peak),
        "peak {peak} connections:\n{out}"
    );
    assert!(out.contains("KiB per connection"), "{out}");
}
