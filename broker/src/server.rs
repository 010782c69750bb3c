//! The WebSocket port: the accept loop, TLS, the request head, admission (origin, publisher
//! key, user token, limits), and the upgrade that hands a connection to its own task
//! ([`crate::connection`]); a plain HTTP request goes to [`crate::publish`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::connection::Transport;
use crate::gate::{Pending, Slot};
use crate::handshake::{self, Admission, HeadError, Refusal, Request, Resume};
use crate::metrics::{kind_label, Refused};
use crate::registry::NewConn;
use crate::shared::Shared;

/// The WebSocket settings of a connection: `read_buffer` bytes held for reading (tungstenite
/// allocates them at the upgrade and keeps them: with 128 KiB, its default, an idle connection
/// would cost 128 KiB; a frame larger than the buffer grows it while it arrives), messages of at
/// most `max_message` bytes, and writes batched up to 64 KiB before going to the socket.
pub fn ws_config(max_message: usize, read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Pending connections the kernel may hold for the WebSocket listener (it caps this at
/// `net.core.somaxconn`). The usual 128 overflows when thousands of clients reconnect at once
/// after a restart or a drain elsewhere; an overflow costs each client a one-second SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts until the instance stops accepting (a drain) or shuts down.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let tracker = shared.tasks().clone();
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.accepting_stopped() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Counted before any byte is read: a socket that never finishes its handshake
                // holds one of a bounded number of places, and only until its deadline.
                let peer_ip = peer.ip().to_canonical();
                let from_proxy = shared
                    .config
                    .broker
                    .limits
                    .trusted_proxies
                    .contains(&peer_ip);
                match shared.gate.pending(peer_ip, !from_proxy) {
                    Ok(pending) => {
                        tracker.spawn(serve_socket(stream, peer, pending, shared.clone()));
                    }
                    Err(closed) => {
                        shared.metrics.refused(closed.refused());
                        tracing::debug!(peer = %peer, reason = closed.refused().label(), "reset before the handshake");
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// One accepted socket: TLS first when `ssl` is on, then the request. TLS and the request head
/// share one deadline, `handshakeTimeout` from the accept.
async fn serve_socket(stream: TcpStream, peer: SocketAddr, pending: Pending, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let deadline =
        tokio::time::Instant::from_std(started) + shared.config.broker.limits.handshake_timeout();
    let Some(acceptor) = shared.tls.clone() else {
        return handle_socket(stream, peer, pending, started, shared).await;
    };
    // Boxed: the TLS set-up and a TLS connection's handshake are large futures, which every
    // plain connection's handshake task would otherwise be sized for (21 KiB, all of it copied
    // into the task at every accept).
    Box::pin(async move {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        };
        match accepted {
            Ok(Ok(tls)) => handle_socket(tls, peer, pending, started, shared).await,
            Ok(Err(e)) => {
                shared.metrics.refused(Refused::BadRequest);
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            }
            Err(_) => shared.metrics.refused(Refused::HandshakeTimeout),
        }
    })
    .await
}

/// One socket (plain or TLS): read its request, then upgrade it, publish, or refuse it.
/// `started` is its accept: the handshake's deadline and its measured duration count from it.
async fn handle_socket<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    pending: Pending,
    started: Instant,
    shared: Arc<Shared>,
) {
    let deadline =
        tokio::time::Instant::from_std(started) + shared.config.broker.limits.handshake_timeout();
    let head = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout_at(deadline, handshake::read_head(&mut stream)) => r,
    };
    let req = match head {
        Ok(Ok(req)) => req,
        Ok(Err(HeadError::Closed | HeadError::Io(_))) => return,
        Ok(Err(e @ HeadError::TooLarge)) => {
            shared.metrics.refused(Refused::BadRequest);
            let _ = handshake::respond_error(&mut stream, 431, &e.to_string()).await;
            return;
        }
        Ok(Err(e)) => {
            shared.metrics.refused(Refused::BadRequest);
            let _ = handshake::respond_error(&mut stream, 400, &e.to_string()).await;
            return;
        }
        Err(_) => {
            shared.metrics.refused(Refused::HandshakeTimeout);
            let _ = handshake::respond_error(&mut stream, 408, "request head not received in time")
                .await;
            return;
        }
    };
    if req.is_websocket_upgrade() {
        // The handshake is over: what is left (the answer) does not wait on the client.
        drop(pending);
        upgrade(stream, peer, req, shared, started).await;
    } else {
        // Boxed: an HTTP server's connection is a large future, for a request that is rarer
        // than upgrades.
        Box::pin(crate::publish::serve(
            stream,
            req,
            pending,
            shared.publish_env.clone(),
        ))
        .await;
    }
}

/// Decides whether `req` may upgrade, and as whom.
fn admit(req: &Request, shared: &Shared) -> Result<Admission, Refusal> {
    let origin = req.header("origin");
    let publisher = match (
        req.header("users-api-key"),
        &shared.config.websocket.socket_api_key,
    ) {
        (None, _) => false,
        (Some(given), Some(key)) if handshake::secret_eq(given, key.as_bytes()) => true,
        (Some(_), _) => return Err(Refusal::new(403, Refused::ApiKey, "wrong users-api-key")),
    };
    if !publisher {
        match origin {
            None => {
                return Err(Refusal::new(
                    403,
                    Refused::NoOrigin,
                    "an Origin header is required",
                ))
            }
            Some(o) if !shared.origin.is_approved(o) => {
                return Err(Refusal::new(403, Refused::Origin, "origin not approved"))
            }
            Some(_) => {}
        }
    }
    let token = req
        .query("token")
        .or_else(|| req.bearer().map(str::to_string));
    let user = match token {
        None => None,
        Some(t) => Some(
            shared
                .tokens
                .verify(&t)
                .map_err(|why| Refusal::new(401, Refused::Token, why))?,
        ),
    };
    let resume = req.resume();
    Ok(Admission {
        publisher,
        user,
        origin: origin.map(|o| String::from_utf8_lossy(o).into()),
        resume,
    })
}

async fn upgrade<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    req: Request,
    shared: Arc<Shared>,
    started: Instant,
) {
    let m = &shared.metrics;
    let refuse =
        |status: u16, reason: Refused, message: String| Refusal::new(status, reason, message);
    let accept_key = req.websocket_accept();
    let admitted = accept_key
        .map_err(|why| refuse(400, Refused::BadRequest, why.into()))
        .and_then(|key| admit(&req, &shared).map(|a| (key, a)));
    let (accept_key, admission) = match admitted {
        Ok(ok) => ok,
        Err(r) => {
            m.refused(r.reason);
            tracing::info!(peer = %peer, origin = req.header_str("origin").unwrap_or("-"), reason = r.reason.label(), "refused: {}", r.message);
            let _ = handshake::respond_error(&mut stream, r.status, &r.message).await;
            m.handshake_duration
                .observe(started.elapsed().as_secs_f64());
            return;
        }
    };
    let ip = req.client_ip(peer, &shared.config.broker.limits.trusted_proxies);
    let slot: Slot = match shared.gate.connection(ip, admission.publisher) {
        Ok(slot) => slot,
        Err(closed) => {
            m.refused(closed.refused());
            let (status, message) = match closed {
                crate::gate::Closed::PerAddress => (429, "too many connections from this address"),
                _ => (503, "too many connections"),
            };
            let _ = handshake::respond_error(&mut stream, status, message).await;
            m.handshake_duration
                .observe(started.elapsed().as_secs_f64());
            return;
        }
    };
    if handshake::write_switching(&mut stream, &accept_key)
        .await
        .is_err()
    {
        return;
    }
    let ws_config = if admission.publisher {
        shared.publisher_ws
    } else {
        shared.client_ws
    };
    let ws = WebSocketStream::from_partially_read(
        stream,
        req.rest().to_vec(),
        Role::Server,
        Some(ws_config),
    )
    .await;
    let publisher = admission.publisher;
    let positions = admission.resume != Resume::Off && shared.router.history.is_some();
    let conn = shared.registry().register(NewConn {
        remote: SocketAddr::new(ip, peer.port()),
        origin: admission.origin,
        user: admission.user,
        publisher,
        positions,
        resuming: positions,
    });
    let resume = admission.resume;
    m.connections_accepted
        .with_label_values(&[kind_label(publisher)])
        .inc();
    m.connections_open
        .with_label_values(&[kind_label(publisher)])
        .inc();
    m.handshake_duration
        .observe(started.elapsed().as_secs_f64());
    shared.activity.connected(&conn);
    tracing::debug!(id = %conn.wire_id, peer = %peer, publisher, user = conn.user.as_deref().unwrap_or("-"), "connected");
    // The connection gets a task of its own, sized for serving alone: the handshake's state
    // (request head, TLS set-up, admission) is freed now instead of being carried, unused, for
    // the connection's whole life.
    let env = shared.connection_env.clone();
    shared.tasks().spawn(async move {
        if resume != Resume::Off {
            // Boxed: the resume (a JetStream read) is a large future that every connection
            // task would otherwise carry for its whole life, resuming or not.
            Box::pin(env.router.resume(&conn, &resume)).await;
        }
        crate::connection::serve(ws, conn, env).await;
        drop(slot);
    });
}

#[cfg(test)]
mod tests {
    /// What a socket's handshake task carries stays small: one is allocated, and its future
    /// copied into it, at every accept (21 KiB when the TLS and HTTP publish paths were inline;
    /// 1,792 bytes once boxed, and with them the broker's CPU per connection fell).
    #[tokio::test]
    async fn a_handshake_task_stays_small() {
        let config = crate::config::Config::from_json_str(
            r#"{"websocket":{"host":"127.0.0.1","port":0},"broker":{"ops":{"port":0}}}"#,
            "test",
        )
        .expect("config");
        let broker = crate::app::start(config).await.expect("starts");
        let shared = broker.shared().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_client, (server, peer)) = (client.expect("connect"), server.expect("accept"));
        let pending = shared.gate.pending(peer.ip(), true).expect("a place");
        let task = super::serve_socket(server, peer, pending, shared.clone());
        let size = std::mem::size_of_val(&task);
        drop(task);
        assert!(size <= 4096, "the handshake future grew to {size} bytes");
        broker.shutdown().await;
    }
}
