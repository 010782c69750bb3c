//! Realistic traffic: several broker URLs with a spread policy, per-connection identities
//! (tokens signed with the broker's secret), and a weighted mix of events to all, to users and
//! to single connections.

mod common;

use clap::Parser;
use common::{broker_with, run, API_KEY};

const SECRET: &str = "loadtest-secret-of-32-bytes-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_round_robin_over_the_urls() {
    // The second broker approves no origin the tool sends: exactly every other connection,
    // the ones round-robin sends there, is refused.
    let a = broker_with(r#""^http://localhost$""#, "").await;
    let b = broker_with(r#""^https://elsewhere$""#, "").await;
    let urls = format!("ws://{}/,ws://{}/", a.ws_addr(), b.ws_addr());
    let cli = loadtest::Cli::try_parse_from([
        "loadtest", "--quiet", "--url", &urls, "connect", "-c", "10", "--hold", "0s",
    ])
    .expect("parses");
    let s = run(cli).await;
    assert_eq!(s.connections.established, 5, "{s}");
    assert_eq!(s.connections.failures.get("refused_403"), Some(&5), "{s}");
    assert!(s.target_addr.contains(','), "both addresses shown: {s}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_their_user_only_and_are_counted_per_listener() {
    let b = broker_with(
        r#""^http://localhost$""#,
        &format!(r#","jwtSecret":"{SECRET}""#),
    )
    .await;
    let url = format!("ws://{}/", b.ws_addr());
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "--api-key",
        API_KEY,
        "--jwt-secret",
        SECRET,
        "--users",
        "4",
        "publish",
        "--via",
        "ws",
        "-l",
        "12",
        "-p",
        "2",
        "--mix",
        "target=user,type=1,weight=3",
        "--mix",
        "target=all,type=10,weight=1",
        "--rate",
        "2000",
        "--messages",
        "400",
        "-d",
        "10s",
    ])
    .expect("parses");
    let s = run(cli).await;
    let d = s.delivery.as_ref().expect("delivery");
    assert_eq!((d.listeners, d.sent), (12, 400), "{s}");
    // 12 listeners over 4 users: every user event has 3 receivers, every broadcast 12.
    assert!(d.expected < 400 * 12 && d.expected > 400 * 3, "{s}");
    assert_eq!(d.received, d.expected, "{s}");
    assert_eq!(d.completeness, 1.0, "{s}");
    assert_eq!(d.misdelivered, 0, "{s}");
    assert_eq!(d.complete_listeners, 12, "{s}");
    assert_eq!(s.messages.errors, 0, "{s}");

    // A token signed with another secret is refused: the identities are the broker's own check.
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "--jwt-secret",
        "wrong-secret-of-32-bytes-0123456",
        "connect",
        "-c",
        "3",
        "--hold",
        "0s",
    ])
    .expect("parses");
    let s = run(cli).await;
    assert_eq!(s.connections.failures.get("http_401"), Some(&3), "{s}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_spreads_sockets_over_the_given_local_addresses() {
    let b = broker_with(r#""^http://localhost$""#, "").await;
    let url = format!("ws://{}/", b.ws_addr());
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "--source-ip",
        "127.0.0.5,127.0.0.6",
        "connect",
        "-c",
        "6",
        "--hold",
        "2s",
    ])
    .expect("parses");
    let running = tokio::spawn(run(cli));
    let shared = b.shared().clone();
    let remotes = common::within(async {
        loop {
            let conns = shared.registry().snapshot();
            if conns.len() == 6 {
                return conns.iter().map(|c| c.remote.ip()).collect::<Vec<_>>();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let five: std::net::IpAddr = "127.0.0.5".parse().expect("ip");
    let six: std::net::IpAddr = "127.0.0.6".parse().expect("ip");
    assert_eq!(
        remotes.iter().filter(|ip| **ip == five).count(),
        3,
        "{remotes:?}"
    );
    assert_eq!(
        remotes.iter().filter(|ip| **ip == six).count(),
        3,
        "{remotes:?}"
    );
    let s = running.await.expect("the run");
    assert_eq!(s.connections.established, 6, "{s}");
    // An address of another family, or one this machine does not have, is refused up front.
    for bad in ["::1", "192.0.2.1"] {
        let cli = loadtest::Cli::try_parse_from([
            "loadtest",
            "--quiet",
            "--url",
            &url,
            "--source-ip",
            bad,
            "connect",
            "-c",
            "1",
        ])
        .expect("parses");
        let err = loadtest::run(cli).await.expect_err(bad).to_string();
        assert!(err.contains("--source-ip"), "{bad}: {err}");
    }
    b.shutdown().await;
}

/// How many of events `0..n` the mix `specs` makes of entry `entry` (which entry an event is
/// follows from its number alone).
fn events_of_entry(specs: &[String], entry: usize, n: u64) -> u64 {
    let mix = loadtest::mix::Mix::parse(specs, 4, "t", None, 0).expect("valid mix");
    (0..n).filter(|&seq| mix.pick(seq).entry == entry).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_reach_their_listener_only() {
    let b = broker_with(r#""^http://localhost$""#, "").await;
    let url = format!("ws://{}/", b.ws_addr());
    let specs = [
        "target=connection,type=3,weight=2".to_owned(),
        "target=all,type=10,weight=1".to_owned(),
    ];
    let to_one = events_of_entry(&specs, 0, 300);
    assert!(to_one > 100 && to_one < 300, "{to_one}");
    for via in ["ws", "http"] {
        let cli = loadtest::Cli::try_parse_from([
            "loadtest",
            "--quiet",
            "--url",
            &url,
            "--api-key",
            API_KEY,
            "publish",
            "--via",
            via,
            "-l",
            "12",
            "-p",
            "2",
            "--mix",
            &specs[0],
            "--mix",
            &specs[1],
            "--rate",
            "2000",
            "--messages",
            "300",
            "-d",
            "10s",
        ])
        .expect("parses");
        let s = run(cli).await;
        let d = s.delivery.as_ref().expect("delivery");
        assert_eq!((d.listeners, d.sent), (12, 300), "{via}: {s}");
        // Each connection event is expected by exactly one listener, each broadcast by all 12;
        // the broker delivers a `to` only to a connected id, so receiving them all proves the
        // listeners learnt their real ids.
        assert_eq!(d.expected, (300 - to_one) * 12 + to_one, "{via}: {s}");
        assert_eq!(d.received, d.expected, "{via}: {s}");
        assert_eq!(d.completeness, 1.0, "{via}: {s}");
        assert_eq!(d.misdelivered, 0, "{via}: {s}");
        assert_eq!(d.complete_listeners, 12, "{via}: {s}");
        assert_eq!(d.duplicates, 0, "{via}: {s}");
        assert_eq!(s.messages.errors, 0, "{via}: {s}");
        assert!(s.errors.is_empty(), "{via}: {s}");
    }

    // Without a publisher key nobody can answer the listeners, nor address a connection.
    let cli = loadtest::Cli::try_parse_from([
        "loadtest",
        "--quiet",
        "--url",
        &url,
        "broadcast",
        "-l",
        "2",
        "--mix",
        "target=connection",
    ])
    .expect("parses");
    let err = loadtest::run(cli).await.expect_err("refused").to_string();
    assert!(err.contains("--api-key"), "{err}");
    b.shutdown().await;
}
