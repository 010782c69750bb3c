//! Opening connections to the target: resolution, source addresses, TLS, upgrade, timeouts, and
//! the classification of every way that can fail.
//!
//! The target is resolved once per run so that ten thousand connects do not make ten thousand DNS
//! queries, and so that the address actually tested is printed. Sockets are made by hand
//! (`TcpSocket`) rather than by `connect_async` so that each can be bound to a chosen loopback
//! source address before connecting.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::cli::TargetArgs;

/// A client WebSocket connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which kind of connection to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An ordinary client: `Origin`, and the user token if one was given.
    Client,
    /// A trusted publisher: additionally the `users-api-key` header.
    Publisher,
}

/// The server under test and how to reach it; shared by every connection of a run.
pub struct Target {
    /// The URLs as given, comma-separated (for the summary).
    url: String,
    tls: bool,
    /// One per `--url`; connection `index` goes to the one `--spread` picks.
    endpoints: Vec<Endpoint>,
    spread: crate::cli::Spread,
    /// Per-connection tokens (`--jwt-secret`, `--token-file`) for client connections.
    identities: Option<Arc<crate::identity::Identities>>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    origin: Option<String>,
    api_key: Option<String>,
    token: Option<String>,
    token_in_query: bool,
    sources: Vec<IpAddr>,
    connect_timeout: Duration,
    ws_config: WebSocketConfig,
    inflight: Arc<Semaphore>,
}

/// One server address of the target (one `--url`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub authority: String,
    pub path_and_query: String,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Parses and resolves one URL; `tls` says whether it is `wss://`.
    async fn new(url: &str) -> anyhow::Result<(Self, bool)> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url `{url}` is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("--url `{url}` must start with ws:// or wss://"),
        };
        let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_owned()) else {
            bail!("--url `{url}` has no host");
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let addr = resolve(&host, port).await?;
        Ok((
            Endpoint {
                url: url.to_owned(),
                host,
                authority,
                path_and_query,
                addr,
            },
            tls,
        ))
    }
}

impl Target {
    /// Checks the options and resolves the hosts (once).
    pub async fn new(args: &TargetArgs) -> anyhow::Result<Self> {
        if args.url.is_empty() {
            bail!("--url: give at least one ws:// or wss:// URL");
        }
        let mut endpoints = Vec::with_capacity(args.url.len());
        let mut tls = false;
        for (i, url) in args.url.iter().enumerate() {
            let (e, t) = Endpoint::new(url.trim()).await?;
            if i > 0 && t != tls {
                bail!("--url: mix of ws:// and wss:// URLs; give URLs of one kind");
            }
            tls = t;
            endpoints.push(e);
        }

        let sources: Vec<IpAddr> = if args.source_ip.is_empty() {
            (1..=args.source_addrs)
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
                .collect()
        } else {
            args.source_ip.clone()
        };
        for e in &endpoints {
            if args.source_addrs > 0 && !matches!(e.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
                bail!(
                    "--source-addrs binds sockets to 127.0.0.x, which only reaches a loopback \
                     IPv4 target; {} resolved to {} (use --source-ip with this machine's \
                     addresses instead)",
                    e.host,
                    e.addr.ip()
                );
            }
            if let Some(ip) = sources.iter().find(|ip| ip.is_ipv4() != e.addr.is_ipv4()) {
                bail!(
                    "--source-ip {ip} is not of the family of {} ({})",
                    e.host,
                    e.addr.ip()
                );
            }
        }
        for ip in &args.source_ip {
            // A clear error now rather than every connection failing later.
            std::net::TcpListener::bind(SocketAddr::new(*ip, 0)).map_err(|e| {
                anyhow::anyhow!(
                    "--source-ip {ip} cannot be bound ({e}): is it an address of this machine?"
                )
            })?;
        }
        let identities = crate::identity::Identities::from_args(args)?.map(Arc::new);
        if args.connect_rate.is_nan() || args.connect_rate <= 0.0 {
            bail!("--connect-rate must be above 0 (connections per second)");
        }
        if args.max_inflight == 0 {
            bail!("--max-inflight must be at least 1");
        }
        if let Some(token) = &args.token {
            if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                bail!("--token holds characters that cannot go in an HTTP header");
            }
        }
        if let Some(key) = &args.api_key {
            if HeaderValue::from_str(key).is_err() {
                bail!("--api-key holds characters that cannot go in an HTTP header");
            }
        }
        let origin = (!args.origin.is_empty()).then(|| args.origin.clone());
        if let Some(o) = &origin {
            if HeaderValue::from_str(o).is_err() {
                bail!("--origin `{o}` cannot go in an HTTP header");
            }
        }
        let tls_config = if tls {
            Some(crate::tls::client_config(args.insecure)?)
        } else {
            None
        };
        // Frames the tool receives are small; the default read buffer (128 KiB, allocated up
        // front per connection) would need 2.5 GiB for 20,000 connections. The write buffer is
        // grown lazily, so its default costs nothing on listeners that never write.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(args.read_buffer.max(256))
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        Ok(Target {
            url: args.url.join(","),
            tls,
            endpoints,
            spread: args.spread,
            identities,
            tls_config,
            origin,
            api_key: args.api_key.clone(),
            token: args.token.clone(),
            token_in_query: args.token_in_query,
            sources,
            connect_timeout: args.connect_timeout,
            ws_config,
            inflight: Arc::new(Semaphore::new(args.max_inflight)),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The resolved address of the first URL.
    pub fn addr(&self) -> SocketAddr {
        self.endpoints[0].addr
    }

    /// The resolved addresses of every URL, comma-separated (for the summary).
    pub fn addrs(&self) -> String {
        let all: Vec<String> = self.endpoints.iter().map(|e| e.addr.to_string()).collect();
        all.join(",")
    }

    /// The endpoint connection `index` goes to, by `--spread`.
    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[self.endpoint_number(index)]
    }

    /// The number of the endpoint connection `index` goes to, by `--spread`.
    fn endpoint_number(&self, index: usize) -> usize {
        let n = self.endpoints.len();
        match self.spread {
            crate::cli::Spread::RoundRobin => index % n,
            crate::cli::Spread::Random => {
                (crate::identity::mix64(index as u64) % n as u64) as usize
            }
        }
    }

    /// How many URLs (instances) the target has.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Per-connection identities, when given (`--jwt-secret`, `--token-file`).
    pub fn identities(&self) -> Option<&Arc<crate::identity::Identities>> {
        self.identities.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    pub fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls_config.clone()
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens connection number `index` (which picks its source address) and upgrades it.
    ///
    /// Returns the connection and its handshake time: TCP connect + TLS + upgrade, not counting
    /// the wait for an in-flight slot (that is the tool's own limit, not the server's latency).
    pub async fn connect(
        &self,
        index: usize,
        role: Role,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        self.connect_with(index, role, None).await
    }

    /// As [`Target::connect`], with the socket's receive buffer (`SO_RCVBUF`) set to
    /// `recv_buffer` bytes before connecting, when given.
    pub async fn connect_with(
        &self,
        index: usize,
        role: Role,
        recv_buffer: Option<u32>,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        self.connect_bounded(index, role, recv_buffer, None).await
    }

    /// As [`Target::connect`], with `query` (`name=value` pairs joined by `&`, already
    /// percent-encoded) appended to the URL's query string: `recover=1`, `since=<position>`.
    pub async fn connect_with_query(
        &self,
        index: usize,
        role: Role,
        query: Option<&str>,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        self.connect_bounded(index, role, None, query).await
    }

    /// As [`Target::connect`], to endpoint number `endpoint` (of [`Target::endpoint_count`])
    /// whatever `--spread` would pick for `index` (which still picks the source address): one
    /// connection to each instance of a cluster.
    pub async fn connect_to(
        &self,
        endpoint: usize,
        index: usize,
        role: Role,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        let at = endpoint % self.endpoints.len();
        self.connect_bounded_at(at, index, role, None, None).await
    }

    /// One handshake within the in-flight bound and the connect timeout; its duration.
    async fn connect_bounded(
        &self,
        index: usize,
        role: Role,
        recv_buffer: Option<u32>,
        query: Option<&str>,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        let at = self.endpoint_number(index);
        self.connect_bounded_at(at, index, role, recv_buffer, query)
            .await
    }

    /// As `connect_bounded`, to endpoint number `at`.
    async fn connect_bounded_at(
        &self,
        at: usize,
        index: usize,
        role: Role,
        recv_buffer: Option<u32>,
        query: Option<&str>,
    ) -> Result<(Ws, Duration), ConnectFailure> {
        let _slot = self
            .inflight
            .acquire()
            .await
            .map_err(|_| ConnectFailure::Io(io::ErrorKind::Other.into()))?;
        let started = Instant::now();
        match tokio::time::timeout(
            self.connect_timeout,
            self.handshake(at, index, role, recv_buffer, query),
        )
        .await
        {
            Err(_) => Err(ConnectFailure::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(ws)) => Ok((ws, started.elapsed())),
        }
    }

    async fn handshake(
        &self,
        at: usize,
        index: usize,
        role: Role,
        recv_buffer: Option<u32>,
        query: Option<&str>,
    ) -> Result<Ws, ConnectFailure> {
        let endpoint = &self.endpoints[at];
        let tcp = self
            .tcp_to(endpoint.addr, index, recv_buffer)
            .await
            .map_err(ConnectFailure::Tcp)?;
        let mut uri = format!(
            "{}://{}{}",
            if self.tls { "wss" } else { "ws" },
            endpoint.authority,
            endpoint.path_and_query
        );
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            uri.push(if endpoint.path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            uri.push_str(q);
        }
        // A per-connection identity, else the one --token.
        let token: Option<String> = match (&self.identities, role) {
            (Some(ids), Role::Client) => Some(ids.token_for(index)),
            _ => self.token.clone(),
        };
        if let (Some(token), Role::Client, true) = (&token, role, self.token_in_query) {
            uri.push(if endpoint.path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            uri.push_str("token=");
            uri.push_str(&percent_encode(token));
        }
        let mut request = uri
            .into_client_request()
            .map_err(|e| ConnectFailure::Protocol(e.to_string()))?;
        let headers = request.headers_mut();
        // Values were checked in `Target::new`; a failure here would only drop the header.
        if let Some(origin) = self
            .origin
            .as_deref()
            .and_then(|o| HeaderValue::from_str(o).ok())
        {
            headers.insert("origin", origin);
        }
        match role {
            Role::Publisher => {
                if let Some(key) = self
                    .api_key
                    .as_deref()
                    .and_then(|k| HeaderValue::from_str(k).ok())
                {
                    headers.insert("users-api-key", key);
                }
            }
            Role::Client => {
                if let (Some(token), false) = (&token, self.token_in_query) {
                    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                        headers.insert("authorization", v);
                    }
                }
            }
        }
        let connector = match &self.tls_config {
            Some(cfg) => Connector::Rustls(cfg.clone()),
            None => Connector::Plain,
        };
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(self.ws_config),
            Some(connector),
        )
        .await
        .map_err(ConnectFailure::from_ws)?;
        Ok(ws)
    }

    /// A TCP connection to the target from the source address of connection `index`.
    pub async fn tcp(&self, index: usize) -> io::Result<TcpStream> {
        self.tcp_with(index, None).await
    }

    /// As [`Target::tcp`], with `SO_RCVBUF` set before connecting (the window scale is agreed
    /// in the handshake, so setting it later would not shrink the advertised window as much).
    pub async fn tcp_with(&self, index: usize, recv_buffer: Option<u32>) -> io::Result<TcpStream> {
        self.tcp_to(self.endpoint(index).addr, index, recv_buffer)
            .await
    }

    /// A TCP connection to `addr` from the source address of connection `index`.
    async fn tcp_to(
        &self,
        addr: SocketAddr,
        index: usize,
        recv_buffer: Option<u32>,
    ) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        if !self.sources.is_empty() {
            let source = self.sources[index % self.sources.len()];
            bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Lets the kernel pick the source port at `connect` (by the full 4-tuple) instead of at `bind`,
/// so each source address can reuse ports across destinations. Best effort: without it, binding
/// still works, only with fewer ports.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd, option value is a c_int that outlives the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    // The run's deadline starts after resolution: bound the resolver here.
    let lookup = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("resolving `{host}` took longer than 10 s"))?;
    let addrs: Vec<SocketAddr> = lookup
        .with_context(|| format!("cannot resolve `{host}`"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("`{host}` resolved to no address"))
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The whole connect + upgrade did not finish within `--connect-timeout`.
    Timeout,
    /// The server answered the upgrade with an HTTP status (403 for a refused origin).
    Http(u16),
    /// TCP connect failed.
    Tcp(io::Error),
    /// TLS failed (certificate, protocol).
    Tls(String),
    /// The connection broke during the handshake.
    Io(io::Error),
    /// The server's answer was not a valid upgrade.
    Protocol(String),
}

impl ConnectFailure {
    fn from_ws(e: WsError) -> Self {
        match e {
            WsError::Http(response) => ConnectFailure::Http(response.status().as_u16()),
            // tokio-rustls reports TLS failures (unknown issuer, bad name) as I/O errors
            // wrapping the rustls error.
            WsError::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(tls) => ConnectFailure::Tls(tls.to_string()),
                None => ConnectFailure::Io(io),
            },
            WsError::Tls(tls) => ConnectFailure::Tls(tls.to_string()),
            other => ConnectFailure::Protocol(other.to_string()),
        }
    }

    /// A short, stable label used as the key in summaries: `refused_403`, `http_503`, `timeout`,
    /// `tcp_refused`, `ports_exhausted`, `fd_limit`, `reset`, `tls`, ...
    pub fn reason(&self) -> String {
        match self {
            ConnectFailure::Timeout => "timeout".into(),
            ConnectFailure::Http(403) => "refused_403".into(),
            ConnectFailure::Http(status) => format!("http_{status}"),
            ConnectFailure::Tcp(e) => match (e.kind(), e.raw_os_error()) {
                (_, Some(libc::EMFILE | libc::ENFILE)) => "fd_limit".into(),
                (io::ErrorKind::ConnectionRefused, _) => "tcp_refused".into(),
                (io::ErrorKind::AddrNotAvailable, _) => "ports_exhausted".into(),
                (io::ErrorKind::AddrInUse, _) => "addr_in_use".into(),
                (io::ErrorKind::TimedOut, _) => "timeout".into(),
                _ => "tcp_error".into(),
            },
            ConnectFailure::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionReset => "reset".into(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionAborted => {
                    "closed_in_handshake".into()
                }
                _ => "io_error".into(),
            },
            ConnectFailure::Tls(_) => "tls".into(),
            ConnectFailure::Protocol(_) => "protocol".into(),
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Timeout => f.write_str("connect timed out"),
            ConnectFailure::Http(s) => write!(f, "server answered HTTP {s} instead of upgrading"),
            ConnectFailure::Tcp(e) => write!(f, "TCP connect failed: {e}"),
            ConnectFailure::Tls(e) => write!(f, "TLS failed: {e}"),
            ConnectFailure::Io(e) => write!(f, "connection broke during the handshake: {e}"),
            ConnectFailure::Protocol(e) => write!(f, "bad upgrade answer: {e}"),
        }
    }
}

/// One thing read from a connection.
pub enum Incoming {
    /// A text frame, or a binary frame holding UTF-8 (the protocol treats them alike).
    Text(Utf8Bytes),
    /// The connection is over; the label says how (`close_1000`, `eof`, `reset`, ...).
    Closed(String),
}

/// Reads the next data frame. Pings are answered by tungstenite inside this read.
pub async fn recv<S>(stream: &mut S) -> Incoming
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Incoming::Text(text),
            Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => return Incoming::Text(text),
                Err(_) => return Incoming::Closed("binary_not_utf8".into()),
            },
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed(match frame {
                    Some(f) => format!("close_{}", u16::from(f.code)),
                    None => "close_no_code".into(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Incoming::Closed(error_label(&e)),
            None => return Incoming::Closed("eof".into()),
        }
    }
}

/// A short label for a WebSocket error after the handshake.
pub fn error_label(e: &WsError) -> String {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset".into(),
            io::ErrorKind::UnexpectedEof => "eof".into(),
            _ => "io_error".into(),
        },
        WsError::Protocol(_) => "protocol".into(),
        WsError::Capacity(_) => "too_large".into(),
        _ => "error".into(),
    }
}

/// How long one connection waits for the server's close frame at the end of a run; shorter than
/// the fleet's grace so that polite closes finish before stragglers are dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes politely (close frame, wait for the server's) but never for longer than `limit`.
pub async fn close(mut ws: Ws, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> TargetArgs {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(["loadtest", "--url", url, "connect"])
            .expect("parses")
            .target
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(Target::new(&args("http://127.0.0.1:1/")).await.is_err());
        assert!(Target::new(&args("ws://")).await.is_err());
        let t = Target::new(&args("ws://127.0.0.1:9/path?x=1"))
            .await
            .expect("valid");
        assert_eq!(t.addr(), "127.0.0.1:9".parse().expect("addr"));
        assert_eq!(t.endpoint(0).path_and_query, "/path?x=1");
    }

    #[tokio::test]
    async fn refused_tcp_is_labelled() {
        // Port 9 (discard) on loopback is closed on test machines; if something listens, the
        // failure is a different one, still labelled.
        let t = Target::new(&args("ws://127.0.0.1:9/"))
            .await
            .expect("valid");
        match t.connect(0, Role::Client).await {
            Err(f) => assert!(!f.reason().is_empty()),
            Ok(_) => panic!("nothing should upgrade on port 9"),
        }
    }

    #[test]
    fn tokens_are_percent_encoded() {
        assert_eq!(percent_encode("a.b-c_d"), "a.b-c_d");
        assert_eq!(percent_encode("a b/"), "a%20b%2F");
    }
}
