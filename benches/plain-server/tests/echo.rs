//! Starts the real `plain-server` binary on a free loopback port and talks to it with real
//! WebSocket clients: echo with an extra field, broadcast to two clients, a refused origin.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(10);

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The server process, killed when the test ends however it ends.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plain-server"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plain-server");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    // Wrapped first, so the process is killed if it never says where it listens.
    let mut server = Server {
        child,
        addr: String::new(),
    };
    server.addr = rx
        .recv_timeout(DEADLINE)
        .expect("plain-server said `listening on ADDR` in time");
    server
}

async fn connect(server: &Server, origin: &str) -> Result<Client, WsError> {
    let mut request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("valid request");
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("valid header"));
    let (ws, _) = timeout(DEADLINE, connect_async(request))
        .await
        .expect("handshake in time")?;
    Ok(ws)
}

/// The next text frame as JSON, skipping control frames; fails after the deadline.
async fn next_json(ws: &mut Client) -> Value {
    loop {
        let frame = timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("no protocol error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("server sends JSON");
        }
    }
}

async fn send(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

#[tokio::test]
async fn echo_keeps_extra_fields_and_answers_errors() {
    let server = start_server(&[]);
    let mut ws = connect(&server, "http://localhost:3000")
        .await
        .expect("allowed origin");
    let probe = json!({"run": "abc", "seq": 7, "t": 123_456_789_u64, "k": "e"});
    send(
        &mut ws,
        json!({"eventType": 10, "message": "Hello world?", "lt": probe}),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["eventType"], 10);
    assert_eq!(reply["message"], "Hello world?");
    assert_eq!(reply["lt"], probe);

    ws.send(Message::text("not json")).await.expect("send");
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["eventType"], 0);
    assert!(reply["error"].is_string(), "{reply}");

    send(&mut ws, json!({"eventType": 3, "message": "x"})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["eventType"], 3);
    assert!(reply["error"].is_string(), "{reply}");

    send(&mut ws, json!({"eventType": 10, "message": 5})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["eventType"], 10);
    assert!(reply["error"].is_string(), "{reply}");
}

#[tokio::test]
async fn broadcast_reaches_every_client_once() {
    let server = start_server(&[]);
    let mut a = connect(&server, "http://localhost").await.expect("a");
    let mut b = connect(&server, "https://127.0.0.1:8443").await.expect("b");
    // The server registers a connection after its handshake; an echo round trip on `b` proves
    // that `b` is registered before `a` broadcasts.
    send(&mut b, json!({"eventType": 10, "message": "ready"})).await;
    assert_eq!(next_json(&mut b).await["message"], "ready");

    let event = json!({"eventType": 10, "message": "to all", "broadcast": true, "extra": [1, 2]});
    send(&mut a, event.clone()).await;
    assert_eq!(next_json(&mut a).await, event);
    assert_eq!(next_json(&mut b).await, event);

    // Exactly once each: the next frame on either is the answer to a fresh echo.
    for (name, ws) in [("a", &mut a), ("b", &mut b)] {
        send(ws, json!({"eventType": 10, "message": name})).await;
        assert_eq!(next_json(ws).await["message"], name);
    }
}

#[tokio::test]
async fn refused_origins_get_403() {
    let server = start_server(&[]);
    for origin in ["http://evil.example", "http://localhost.evil.example"] {
        match connect(&server, origin).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 403, "{origin}"),
            Err(e) => panic!("{origin}: expected a 403, got {e}"),
            Ok(_) => panic!("{origin}: expected a 403, got an upgrade"),
        }
    }
    // No Origin header at all.
    let request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("valid request");
    match timeout(DEADLINE, connect_async(request))
        .await
        .expect("answer in time")
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn config_file_origins_and_port() {
    let dir = std::env::temp_dir().join(format!("plain-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config.json");
    // JSON5 as the broker reads it: comments, trailing commas, keys it does not know.
    std::fs::write(
        &path,
        r#"{
            // the Users config
            "websocket": { "port": 1, "approvedSocketDomains": ["^http://trusted-host$",], "socketApiKey": "k" },
            "broker": { "limits": { "maxConnections": 5 } },
        }"#,
    )
    .expect("write config");
    // --port 0 (from start_server) overrides the file's port.
    let server = start_server(&["--config", path.to_str().expect("utf-8 path")]);
    let mut ws = connect(&server, "http://trusted-host")
        .await
        .expect("origin from the file");
    send(&mut ws, json!({"eventType": 10, "message": "hi"})).await;
    assert_eq!(next_json(&mut ws).await["message"], "hi");
    match connect(&server, "http://localhost").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("the defaults are replaced: {:?}", other.map(|_| ())),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
