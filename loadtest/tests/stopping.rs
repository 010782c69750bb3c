//! Every run stops by itself: connect timeouts and the hard deadline hold even when the server
//! accepts TCP connections and then never answers.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::within;
use loadtest::context::StopReason;

/// A listener that accepts connections and never answers (kept open until the test ends).
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_time_out() {
    let (addr, server) = silent_server().await;
    let url = format!("ws://{addr}/");
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "--connect-timeout",
        "300ms",
        "connect",
        "-c",
        "5",
        "--hold",
        "0s",
    ])
    .expect("parses");
    let s = within(loadtest::run(cli)).await.expect("run");
    assert_eq!(s.connections.failures.get("timeout"), Some(&5), "{s}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_deadline_ends_a_run_against_a_hung_server() {
    let (addr, server) = silent_server().await;
    let url = format!("ws://{addr}/");
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "--connect-timeout",
        "60s",
        "--deadline",
        "1s",
        "echo",
        "-c",
        "3",
        "-d",
        "60s",
    ])
    .expect("parses");
    let started = Instant::now();
    let s = within(loadtest::run(cli)).await.expect("run");
    assert_eq!(s.stopped_by, StopReason::Deadline, "{s}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    server.abort();
}
