//! `plain-server`: the Users WebSocket API's Echo, written the straightforward way.
//!
//! This is the baseline that `benches/compare.sh` measures the broker against, so it is
//! deliberately a competent first version and nothing more: one task per connection split into
//! a reader and a writer, an unbounded channel per connection, one `Mutex<HashMap>` of senders,
//! `serde_json::Value` for every message, the origin patterns tried one by one, and
//! tokio-tungstenite's default buffers.
//!
//! Protocol subset: `{"eventType":10,"message":"..."}` is answered to the sender; with
//! `"broadcast":true` to every connection, the sender included. Unknown fields are kept.
//! Anything else gets `{"eventType":<n or 0>,"error":"..."}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use regex::Regex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Origins approved when the configuration names none: pages served from this machine.
const DEFAULT_ORIGINS: &[&str] = &[
    r"^https?://localhost(:\d+)?$",
    r"^https?://127\.0\.0\.1(:\d+)?$",
];

const ECHO: i64 = 10;

#[derive(Parser)]
#[command(
    version,
    about = "A plain tokio-tungstenite Echo server: the baseline the broker is compared against"
)]
struct Cli {
    /// The broker's config file (JSON5). Only `websocket.port` and
    /// `websocket.approvedSocketDomains` (or `websocket.allowedOrigins`) are read.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Port to listen on (overrides the config; 0 picks a free one). Default 8080.
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

/// What this server takes from the config file.
struct Settings {
    port: u16,
    origins: Vec<Regex>,
}

type Peers = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match load_settings(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plain-server: config error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let port = cli.port.unwrap_or(settings.port);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plain-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(
        SocketAddr::new(cli.bind, port),
        Arc::new(settings.origins),
    ));
    // Connection tasks may still be running; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plain-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(path: Option<&Path>) -> anyhow::Result<Settings> {
    let mut port = 8080;
    let mut patterns: Vec<String> = DEFAULT_ORIGINS.iter().map(|s| s.to_string()).collect();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let root: Value = json5::from_str(&text)
            .with_context(|| format!("{}: not valid JSON5", path.display()))?;
        let ws = root.get("websocket");
        if let Some(p) = ws.and_then(|w| w.get("port")) {
            port = p
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .with_context(|| format!("websocket.port: {p} is not a port number"))?;
        }
        let list = ws.and_then(|w| {
            w.get("approvedSocketDomains")
                .or_else(|| w.get("allowedOrigins"))
        });
        if let Some(list) = list {
            let Some(items) = list.as_array() else {
                bail!("websocket origin list must be an array of strings");
            };
            patterns = items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("origin pattern {v} is not a string"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
    }
    let origins = patterns
        .iter()
        .map(|p| Regex::new(p).with_context(|| format!("origin pattern {p:?}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(Settings { port, origins })
}

async fn serve(addr: SocketAddr, origins: Arc<Vec<Regex>>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::new(Mutex::new(HashMap::new()));
    let next_id = AtomicU64::new(1);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(stream, id, origins.clone(), peers.clone()));
                }
                // Out of file descriptors and the like: keep serving the others.
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn origin_allowed(origins: &[Regex], request: &Request) -> bool {
    let Some(origin) = request
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    origins.iter().any(|re| re.is_match(origin))
}

async fn connection(stream: TcpStream, id: u64, origins: Arc<Vec<Regex>>, peers: Peers) {
    // The callback's error type is fixed by tungstenite.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| {
        if origin_allowed(&origins, request) {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some(r#"{"error":"origin not allowed"}"#.into()));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            Err(refusal)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    lock(&peers).insert(id, tx.clone());

    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(frame) = source.next().await {
        match frame {
            Ok(Message::Text(text)) => handle_text(text.as_str(), &tx, &peers),
            Ok(Message::Binary(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => handle_text(text, &tx, &peers),
                Err(_) => {
                    let _ = tx.send(error_reply(0, "not_json: binary frame is not UTF-8"));
                }
            },
            Ok(Message::Close(_)) | Err(_) => break,
            // Pings are answered by tungstenite itself.
            Ok(_) => {}
        }
    }

    lock(&peers).remove(&id);
    drop(tx);
    let _ = writer.await;
}

/// The map is only ever held for plain inserts, removes and sends, none of which can panic,
/// so a poisoned lock still holds a consistent map.
fn lock(peers: &Peers) -> std::sync::MutexGuard<'_, HashMap<u64, UnboundedSender<Message>>> {
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn handle_text(text: &str, tx: &UnboundedSender<Message>, peers: &Peers) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let _ = tx.send(error_reply(0, &format!("not_json: {e}")));
            return;
        }
    };
    let Some(object) = value.as_object() else {
        let _ = tx.send(error_reply(0, "not_object: an event must be a JSON object"));
        return;
    };
    let Some(event_type) = object.get("eventType").and_then(Value::as_i64) else {
        let _ = tx.send(error_reply(0, "no_event_type: eventType must be a number"));
        return;
    };
    if event_type != ECHO {
        let _ = tx.send(error_reply(
            event_type,
            "unknown_event_type: only Echo (10) is served",
        ));
        return;
    }
    if !object.get("message").is_some_and(Value::is_string) {
        let _ = tx.send(error_reply(
            event_type,
            "bad_field: Echo needs a string message",
        ));
        return;
    }
    let broadcast = match object.get("broadcast") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            let _ = tx.send(error_reply(
                event_type,
                "bad_field: broadcast must be a boolean",
            ));
            return;
        }
    };
    let reply = value.to_string();
    if broadcast {
        for peer in lock(peers).values() {
            let _ = peer.send(Message::text(reply.clone()));
        }
    } else {
        let _ = tx.send(Message::text(reply));
    }
}

fn error_reply(event_type: i64, error: &str) -> Message {
    Message::text(json!({ "eventType": event_type, "error": error }).to_string())
}
