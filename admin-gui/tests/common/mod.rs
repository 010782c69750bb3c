//! A real broker on loopback for the UI tests, test WebSocket clients, and a harness helper
//! that steps the UI until a condition holds (with a deadline, never a bare sleep).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use admin_gui::client::Token;
use admin_gui::settings::SettingsStore;
use admin_gui::{AdminApp, Options};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// `broker.admin.readToken` of the test broker: may only read.
pub const READ_TOKEN: &str = "read-only-token-0123456789";

const CONFIG: &str = r#"{"websocket":{"port":0,"host":"127.0.0.1","approvedSocketDomains":["^http://localhost$"],"socketApiKey":"publisher-key-123"},"broker":{"ops":{"port":0},"admin":{"token":"admin-token-0123456789","readToken":"read-only-token-0123456789"}}}"#;

/// A broker running on its own tokio runtime, so that the test thread can drive the UI
/// synchronously. Shut down on drop.
pub struct TestBroker {
    pub ws: SocketAddr,
    pub ops: SocketAddr,
    running: Option<broker::app::RunningBroker>,
    runtime: tokio::runtime::Runtime,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        Self::start_with(serde_json::json!({}))
    }

    /// A broker whose config is the test config with `extra` merged in (objects merged key
    /// by key).
    pub fn start_with(extra: serde_json::Value) -> TestBroker {
        let mut config: serde_json::Value = serde_json::from_str(CONFIG).expect("test config");
        merge(&mut config, extra);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let config = broker::config::Config::from_json_str(&config.to_string(), "test")
            .expect("test config");
        let running = runtime
            .block_on(broker::app::start(config))
            .expect("broker starts");
        TestBroker {
            ws: running.ws_addr(),
            ops: running.ops_addr(),
            running: Some(running),
            runtime,
        }
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops)
    }

    pub fn is_ready(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.shared().is_ready())
    }

    /// Opens an approved client connection (`Origin: http://localhost`).
    pub fn client(&self) -> WsClient {
        self.connect(("Origin", "http://localhost"))
    }

    /// Opens a publisher connection (the `users-api-key` header, no origin).
    pub fn publisher(&self) -> WsClient {
        self.connect(("users-api-key", "publisher-key-123"))
    }

    fn connect(&self, header: (&'static str, &'static str)) -> WsClient {
        let url = format!("ws://{}/", self.ws);
        let (ws, local) = self.runtime.block_on(async {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert(header.0, header.1.parse().unwrap());
            let (ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(request),
            )
            .await
            .expect("connect in time")
            .expect("client connects");
            let local = match ws.get_ref() {
                MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
                _ => unreachable!("plain ws://"),
            };
            (ws, local)
        });
        let (tx, rx) = mpsc::channel();
        let (mut sink, mut stream) = ws.split();
        let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    m = stream.next() => match m {
                        Some(Ok(m)) => {
                            let last = m.is_close();
                            if tx.send(m).is_err() || last {
                                break;
                            }
                        }
                        _ => break,
                    },
                    _ = &mut close_rx => {
                        use futures_util::SinkExt;
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
            }
        });
        WsClient {
            local,
            messages: rx,
            close: Some(close_tx),
        }
    }
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown());
        }
    }
}

/// A test client: its address as the broker sees it, and what it received.
pub struct WsClient {
    pub local: SocketAddr,
    messages: mpsc::Receiver<Message>,
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WsClient {
    /// The remote address the broker (and so the table) shows for this client.
    pub fn addr(&self) -> String {
        self.local.to_string()
    }

    /// Waits for a message that satisfies `pred`, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if pred(&m) => return Some(m),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Closes the connection from the client side.
    pub fn close(&mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

/// The app connected to `url` with `token`, remembering nothing on disk.
pub fn app(url: &str, token: &str) -> Harness<'static, AdminApp> {
    app_with(Options {
        url: Some(url.to_string()),
        token: Some(Token::new(token)),
        settings: SettingsStore::in_memory(),
        ..Default::default()
    })
}

/// The app started with these options.
pub fn app_with(options: Options) -> Harness<'static, AdminApp> {
    let ctx = egui::Context::default();
    let app = AdminApp::new(&ctx, options).expect("app starts");
    Harness::builder()
        .with_size([1500.0, 950.0])
        .build_ui_state(|ui, app: &mut AdminApp| app.show(ui), app)
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("admin-gui-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Steps the UI until `cond` holds; panics with `what` after `timeout`.
pub fn step_until(
    harness: &mut Harness<'static, AdminApp>,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Harness<'static, AdminApp>) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        harness.step();
        if cond(harness) {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // Let the worker thread and the broker run between frames.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Steps until a widget with exactly this label is shown.
pub fn wait_for_label(harness: &mut Harness<'static, AdminApp>, label: &str, timeout: Duration) {
    step_until(harness, &format!("label {label:?}"), timeout, |h| {
        h.query_all_by_label(label).next().is_some()
    });
}

/// Steps until no widget with exactly this label is shown.
pub fn wait_for_no_label(harness: &mut Harness<'static, AdminApp>, label: &str, timeout: Duration) {
    step_until(harness, &format!("label {label:?} to go"), timeout, |h| {
        h.query_all_by_label(label).next().is_none()
    });
}

pub const DEADLINE: Duration = Duration::from_secs(15);

/// A `nats-server` on a free loopback port, killed when dropped (as the broker's own cluster
/// tests run it: `apt-get install nats-server`).
pub struct Nats {
    child: std::process::Child,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs (install it: apt-get install nats-server)");
        let nats = Nats { child, port };
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker named `instance` in the fleet that meets on `nats`.
pub fn fleet_member(nats: &Nats, instance: &str) -> TestBroker {
    TestBroker::start_with(serde_json::json!({"broker": {
        "instanceId": instance,
        "drainWindow": 0.2,
        "cluster": {"nats": nats.url(), "subject": "admin-gui-fleet"}
    }}))
}
