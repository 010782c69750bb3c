//! Two brokers behind a real HAProxy on loopback (issue 6, `deploy/haproxy.cfg`).
//!
//! HAProxy runs the shipped `deploy/haproxy.cfg` itself: its `defaults`, `frontend`, `backend`
//! and `listen` sections as they are, with a foreground `global` section and the `bind` and
//! `server` addresses pointed at this test's ephemeral ports. So what is checked here (WebSocket
//! upgrades through the proxy, leastconn spreading, `X-Forwarded-For`, health checks on
//! `/readyz`, a drain taking one instance out of rotation, `POST /api/publish`) is what the
//! deployment does.
//!
//! Every client connects from its own loopback source address (`127.0.0.x`; Linux routes all of
//! 127/8 to `lo`) and sends a forged `X-Forwarded-For`. With HAProxy's address in
//! `broker.limits.trustedProxies`, each broker's `/admin/connections` must show the client's
//! real source address: that proves the header path works, that the forged value is
//! ignored, and tells the test which broker each client landed on.

mod common;
use common::*;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker::app::RunningBroker;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::MaybeTlsStream;

/// The shipped configuration that the test runs.
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy.cfg");

/// A value a client forges in `X-Forwarded-For`; no broker may ever report it.
const FORGED: &str = "203.0.113.9";

/// Drain window of the broker that gets drained. Its ops listener stops when the drain ends
/// (after 2/3 of the window with three clients), and HAProxy must see `/readyz` answer 503
/// twice before that (about 2 s with `inter 1s fall 2`): what takes an instance out of rotation
/// is its readiness, not its listener going away.
const DRAIN_WINDOW_SECS: u64 = 6;

/// A running `haproxy -db`, killed when dropped (also when the test panics, in which case its
/// log is printed).
struct Haproxy {
    child: Child,
    frontend: SocketAddr,
    stats: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Writes the test configuration for `brokers` and starts HAProxy in the foreground.
    fn start(brokers: &[&RunningBroker]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let [frontend, stats] = free_loopback_addrs();
        let shipped = std::fs::read_to_string(SHIPPED_CONFIG).expect("deploy/haproxy.cfg");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, test_config(&shipped, frontend, stats, brokers)).expect("write cfg");
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(haproxy_binary())
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run haproxy: {e}"));
        Haproxy {
            child,
            frontend,
            stats,
            log,
            _dir: dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with HAProxy's log, if HAProxy has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("haproxy exited ({status}); its log follows");
        }
    }

    /// Waits until HAProxy serves its stats page and `pred` holds for the backend servers'
    /// states (from the stats CSV, keyed by server name).
    async fn wait_for_servers(&mut self, what: &str, pred: impl Fn(&Servers) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut last = Servers::new();
        while Instant::now() < deadline {
            self.assert_running();
            if tokio::net::TcpStream::connect(self.stats).await.is_ok() {
                last = servers(self.stats).await;
                if pred(&last) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for HAProxy: {what}; last server states: {last:?}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- haproxy log ---\n{}", self.log_text());
        }
    }
}

/// The `haproxy` program: on the `PATH`, or in `/usr/sbin` (Debian's place for it, which is
/// not on an ordinary user's `PATH`).
fn haproxy_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed: these tests run a real HAProxy in front of two \
                 brokers. Install it with `apt-get install haproxy` (./test.sh does)"
            )
        })
}

/// Two distinct free loopback addresses. HAProxy cannot bind port 0, so bind std listeners
/// to port 0, read their ports, and release them for HAProxy.
fn free_loopback_addrs() -> [SocketAddr; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    [a.local_addr().expect("addr"), b.local_addr().expect("addr")]
}

/// The shipped config with its `global` section replaced by a foreground, unprivileged one
/// (no chroot, user or runtime socket; logs to stderr), the frontend bound to `frontend`, the
/// stats listener to `stats`, and the n-th `server` line pointed at the n-th broker's WebSocket
/// address with `check port` at its ops port. Everything else is kept as shipped.
fn test_config(
    shipped: &str,
    frontend: SocketAddr,
    stats: SocketAddr,
    brokers: &[&RunningBroker],
) -> String {
    let mut out = String::from("global\n    log stderr format raw local0 info\n    maxconn 1000\n");
    let mut section = "";
    let mut servers = 0;
    let mut binds = 0;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if !line.starts_with([' ', '\t']) && !trimmed.is_empty() && !trimmed.starts_with('#') {
            section = trimmed.split_whitespace().next().unwrap_or("");
        }
        if section == "global" {
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        match words.first().copied() {
            Some("bind") => {
                let addr = match section {
                    "frontend" => frontend,
                    "listen" => stats,
                    other => panic!("haproxy.cfg: unexpected bind in a {other} section"),
                };
                binds += 1;
                out.push_str(&format!("    bind {addr}\n"));
            }
            Some("server") => {
                let broker = brokers.get(servers).unwrap_or_else(|| {
                    panic!("haproxy.cfg has more server lines than the test's brokers")
                });
                servers += 1;
                // server NAME HOST:PORT check port OPSPORT [options...]
                assert!(
                    words.len() >= 5 && words[3] == "check" && words[4] == "port",
                    "haproxy.cfg: expected `server NAME HOST:WSPORT check port OPSPORT`, got {trimmed:?}"
                );
                let ws = broker.ws_addr().to_string();
                let ops = broker.ops_addr().port().to_string();
                let mut rewritten = words.clone();
                rewritten[2] = &ws;
                rewritten[5] = &ops;
                out.push_str(&format!("    {}\n", rewritten.join(" ")));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(
        binds, 2,
        "haproxy.cfg: one frontend bind and one stats bind"
    );
    assert_eq!(
        servers,
        brokers.len(),
        "haproxy.cfg: one server line per broker"
    );
    out
}

/// One backend server's state from HAProxy's stats CSV.
#[derive(Debug, Clone)]
struct ServerState {
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), ...
    status: String,
    /// Result of the last health check: `L7OK`, `L7STS` (bad status), `L4CON`, `INI`, ...
    check_status: String,
    /// The HTTP status that the last check got, if it got one.
    check_code: String,
}

type Servers = HashMap<String, ServerState>;

/// The servers of backend `brokers`, from the stats page's CSV export.
async fn servers(stats: SocketAddr) -> Servers {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(stats)
        .await
        .expect("connect to the stats page");
    s.write_all(b"GET /stats;csv HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
        .await
        .expect("stats in time")
        .expect("read stats");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "stats page: {answer}");
    let csv = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .expect("CSV header")
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column in the stats CSV"))
    };
    let (px, sv, st, chk, code) = (
        col("pxname"),
        col("svname"),
        col("status"),
        col("check_status"),
        col("check_code"),
    );
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > chk.max(code) && f[px] == "brokers" && f[sv] != "BACKEND")
        .map(|f| {
            (
                f[sv].to_string(),
                ServerState {
                    status: f[st].to_string(),
                    check_status: f[chk].to_string(),
                    check_code: f[code].to_string(),
                },
            )
        })
        .collect()
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
    out
}

fn is(servers: &Servers, name: &str, status: &str, check: &str) -> bool {
    servers
        .get(name)
        .is_some_and(|s| s.status == status && s.check_status == check)
}

/// A client through HAProxy from the loopback source address `src`, with an approved origin
/// and a forged `X-Forwarded-For`; answers an echo before it is returned.
async fn client_from(frontend: SocketAddr, src: Ipv4Addr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .expect("bind a loopback source address");
    let stream = tokio::time::timeout(DEADLINE, socket.connect(frontend))
        .await
        .expect("connected in time")
        .expect("connect to haproxy");
    let mut req = url(frontend).into_client_request().expect("request");
    let headers = req.headers_mut();
    headers.insert("origin", HeaderValue::from_static("http://localhost:3000"));
    headers.insert("x-forwarded-for", HeaderValue::from_static(FORGED));
    let (mut ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("upgraded in time")
    .unwrap_or_else(|e| panic!("upgrade through haproxy from {src}: {e}"));
    let echo = json!({"eventType": 10, "message": format!("hello from {src}")});
    send_json(&mut ws, &echo).await;
    assert_eq!(recv_json(&mut ws).await, echo, "echo through haproxy");
    ws
}

/// The client addresses that a broker reports in `/admin/connections`.
async fn remote_ips(b: &RunningBroker) -> Vec<IpAddr> {
    let (status, body) = http_get(
        b.ops_addr(),
        "/admin/connections?limit=1000",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "/admin/connections: {body}");
    let list: Value = serde_json::from_str(&body).expect("JSON");
    list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            c["remoteAddr"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .expect("remoteAddr")
                .ip()
        })
        .collect()
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

#[test]
fn shipped_config_is_valid() {
    let out = Command::new(haproxy_binary())
        .args(["-c", "-f", SHIPPED_CONFIG])
        .output()
        .unwrap_or_else(|e| panic!("cannot run haproxy: {e}"));
    assert!(
        out.status.success(),
        "haproxy -c -f deploy/haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn two_brokers_behind_haproxy_spread_forward_and_drain() {
    let settings = |id: &str| {
        json!({"broker": {
            "instanceId": id,
            "drainWindow": DRAIN_WINDOW_SECS,
            "limits": {"trustedProxies": ["127.0.0.1"]}
        }})
    };
    let b1 = start_with(settings("b1")).await;
    let b2 = start_with(settings("b2")).await;
    let mut proxy = Haproxy::start(&[&b1, &b2]);
    proxy
        .wait_for_servers("b1 and b2 up after a passing /readyz check", |s| {
            is(s, "b1", "UP", "L7OK") && is(s, "b2", "UP", "L7OK")
        })
        .await;

    // Six clients, one after the other: leastconn alternates, three on each broker. Each
    // broker reports every client by its real source address (X-Forwarded-For from HAProxy,
    // the forged value and HAProxy's own 127.0.0.1 nowhere).
    let first: Vec<Ipv4Addr> = (11..=16).map(loopback).collect();
    let mut clients = Vec::new();
    for &src in &first {
        clients.push((src, client_from(proxy.frontend, src).await));
    }
    let on_b1 = remote_ips(&b1).await;
    let on_b2 = remote_ips(&b2).await;
    assert_eq!(
        (on_b1.len(), on_b2.len()),
        (3, 3),
        "leastconn spreads six sequential clients evenly: b1 {on_b1:?}, b2 {on_b2:?}"
    );
    assert_eq!(
        sorted([on_b1.clone(), on_b2.clone()].concat()),
        first.iter().map(|&ip| IpAddr::V4(ip)).collect::<Vec<_>>(),
        "each broker sees the clients' own addresses through X-Forwarded-For"
    );

    // Drain b1: /readyz fails at once, HAProxy's checks get the 503 and take b1 out of
    // rotation, and its clients are closed with 1001 over the drain window.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http_request(
        b1.ops_addr(),
        "POST",
        "/admin/drain",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 202, "drain: {body}");
    eventually("b1's /readyz answers 503", || async {
        http_get(b1.ops_addr(), "/readyz", None).await.0 == 503
    })
    .await;
    proxy
        .wait_for_servers("b1 marked down for answering 503, b2 still up", |s| {
            s.get("b1").is_some_and(|b| {
                b.status == "DOWN" && b.check_status == "L7STS" && b.check_code == "503"
            }) && is(s, "b2", "UP", "L7OK")
        })
        .await;
    for (src, ws) in &mut clients {
        if on_b1.contains(&IpAddr::V4(*src)) {
            assert_eq!(close_code(ws).await, 1001, "b1's client {src} is closed");
        } else {
            assert_nothing_pending(ws).await;
        }
    }
    clients.retain(|(src, _)| on_b2.contains(&IpAddr::V4(*src)));

    // New clients (the reconnecting ones, in production) all land on b2 and get their echo.
    let second: Vec<Ipv4Addr> = (21..=24).map(loopback).collect();
    for &src in &second {
        clients.push((src, client_from(proxy.frontend, src).await));
    }
    let mut expected: Vec<IpAddr> = on_b2.clone();
    expected.extend(second.iter().map(|&ip| IpAddr::V4(ip)));
    assert_eq!(
        sorted(remote_ips(&b2).await),
        sorted(expected),
        "every new client is on b2"
    );

    // POST /api/publish through HAProxy reaches b2, and so every remaining client.
    let event = json!({"eventType": 6, "files": ["published-through-haproxy.txt"]});
    let (status, body) = http_request(
        proxy.frontend,
        "POST",
        "/api/publish",
        &[
            ("users-api-key", API_KEY),
            ("content-type", "application/json"),
        ],
        &event.to_string(),
    )
    .await;
    assert_eq!(status, 202, "publish through haproxy: {body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["delivered"], json!(clients.len()), "{answer}");
    for (src, ws) in &mut clients {
        assert_eq!(recv_json(ws).await, event, "client {src} gets the event");
    }

    b1.stopping().await;
    b1.shutdown().await;
    b2.shutdown().await;
    drop(proxy);
}

#[tokio::test]
async fn haproxy_logs_the_path_without_the_token() {
    let settings = |id: &str| json!({"broker": {"instanceId": id, "limits": {"trustedProxies": ["127.0.0.1"]}}});
    let b1 = start_with(settings("b1")).await;
    let b2 = start_with(settings("b2")).await;
    let mut proxy = Haproxy::start(&[&b1, &b2]);
    proxy
        .wait_for_servers("b1 and b2 up", |s| {
            is(s, "b1", "UP", "L7OK") && is(s, "b2", "UP", "L7OK")
        })
        .await;
    const SECRET: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2ln";
    let refused = connect_with(
        proxy.frontend,
        &format!("/socket?token={SECRET}"),
        &[("origin", "http://localhost:3000")],
    )
    .await;
    assert_eq!(refused_status(refused), 401, "a bad token is refused");
    eventually("haproxy logged the request", || async {
        proxy.log_text().contains("\"GET /socket HTTP/1.1\"")
    })
    .await;
    let log = proxy.log_text();
    assert!(
        !log.contains(SECRET),
        "the token is in haproxy's log:\n{log}"
    );
    assert!(
        !log.contains("token="),
        "the query string is in haproxy's log:\n{log}"
    );
    drop(proxy);
    b1.shutdown().await;
    b2.shutdown().await;
}
