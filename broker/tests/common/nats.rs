//! A real `nats-server` for the cluster and fleet tests, and brokers joined through it.

use std::process::{Child, Command, Stdio};

use broker::app::RunningBroker;
use serde_json::json;

use super::{eventually, http_get, metric, start_with};

/// A `nats-server` on a loopback port, killed when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
    _store: Option<tempfile::TempDir>,
}

impl Nats {
    pub fn start(port: u16) -> Nats {
        Self::spawn(port, None)
    }

    /// With JetStream, its store in a fresh temporary directory.
    pub fn start_js(port: u16) -> Nats {
        Self::spawn(port, Some(tempfile::tempdir().expect("temp dir")))
    }

    fn spawn(port: u16, store: Option<tempfile::TempDir>) -> Nats {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(dir) = &store {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (install it: apt-get install nats-server)");
        Nats {
            child,
            port,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub async fn cluster_connected(b: &RunningBroker) -> bool {
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    metric(&m, "broker_cluster_connected") == 1.0
}

pub async fn instances(nats: &Nats, names: &[&str]) -> Vec<RunningBroker> {
    let mut out = Vec::new();
    for name in names {
        out.push(
            start_with(json!({"broker": {"instanceId": name, "drainWindow": 0.2, "cluster": {"nats": nats.url(), "subject": "test"}}}))
                .await,
        );
    }
    for b in &out {
        eventually("every instance joined the cluster", || cluster_connected(b)).await;
    }
    out
}
