//! Test harness: the real broker on an ephemeral loopback port, and the tool's own entry point.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use broker::app::RunningBroker;
use broker::config::Config;
use clap::Parser;

pub const API_KEY: &str = "k";

/// Every test run of the tool must end well within this.
pub const TEST_LIMIT: Duration = Duration::from_secs(40);

/// Starts a broker on 127.0.0.1 with an ephemeral port, approving `http://localhost` only.
/// The per-client fan-out limits are off: the scenarios broadcast from ordinary clients at
/// rates a capacity test sets, not the rates the broker allows one browser by default.
pub async fn broker() -> RunningBroker {
    let config = Config::from_json_str(
        r#"{"websocket":{"port":0,"host":"127.0.0.1","approvedSocketDomains":["^http://localhost$"],"socketApiKey":"k"},"broker":{"ops":{"host":"127.0.0.1","port":0},"limits":{"clientFanoutPerSecond":0,"clientFanoutBytesPerSecond":0}}}"#,
        "test",
    )
    .expect("valid test config");
    broker::app::start(config).await.expect("broker starts")
}

/// Starts a broker like [`broker`], with `extra` merged into its `broker` settings (e.g.
/// `"jwtSecret":"s"`) and `origins` as its approved origin patterns.
pub async fn broker_with(origins: &str, extra: &str) -> RunningBroker {
    let json = format!(
        r#"{{"websocket":{{"port":0,"host":"127.0.0.1","approvedSocketDomains":[{origins}],"socketApiKey":"k"}},"broker":{{"ops":{{"host":"127.0.0.1","port":0}},"limits":{{"clientFanoutPerSecond":0,"clientFanoutBytesPerSecond":0}}{extra}}}}}"#
    );
    let config = Config::from_json_str(&json, "test").expect("valid test config");
    broker::app::start(config).await.expect("broker starts")
}

/// Parses a tool command line aimed at `broker`, quiet (tests read the summary, not the bars).
pub fn cli(broker: &RunningBroker, args: &[&str]) -> loadtest::Cli {
    let url = format!("ws://{}/", broker.ws_addr());
    let mut argv = vec!["loadtest", "--quiet", "--url", url.as_str()];
    argv.extend_from_slice(args);
    loadtest::Cli::try_parse_from(argv).expect("test arguments parse")
}

/// Runs the tool to its summary, failing the test if it takes longer than [`TEST_LIMIT`].
pub async fn run(cli: loadtest::Cli) -> loadtest::Summary {
    within(loadtest::run(cli)).await.expect("the run succeeds")
}

/// Awaits `f`, failing the test past [`TEST_LIMIT`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("finished within the test limit")
}
