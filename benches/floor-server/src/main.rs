//! `floor-server`: the floor `benches/compare.sh` measures the broker against (issue #18).
//!
//! One thread, one epoll instance, nonblocking sockets and just enough RFC 6455 for loadtest's
//! `connect`, `echo` and `broadcast` runs: the cost of the system calls and little else.
//!
//! - **Accept**: `accept4` until `EAGAIN`, `TCP_NODELAY`, the socket registered edge-triggered
//!   for reading and writing once (never modified again).
//! - **Upgrade**: the HTTP request parsed with `httparse`, the origin checked against the
//!   config's patterns one by one (as `plain-server` does), `Sec-WebSocket-Accept` answered.
//! - **Reads**: into one 64 KiB buffer shared by all connections; client frames are unmasked in
//!   place. A connection holds a buffer of its own only while a request or frame is incomplete.
//! - **Messages**: text (or UTF-8 binary) frames holding `"eventType":10` are echoed verbatim to
//!   the sender, or, holding `"broadcast":true`, to every open connection, the sender included;
//!   other text gets an error event. Ping is answered with pong, close with close (then the
//!   socket is closed). Fragmented messages are refused (close 1003): loadtest never sends them.
//!   The JSON is not parsed: the floor finds the two markers in the compact form loadtest sends.
//! - **Writes**: everything one read produces is framed once into one buffer (consecutive
//!   broadcasts from one read share it) and that buffer is written to each recipient with one
//!   `write`. Only what the kernel does not take is copied to the connection's pending buffer,
//!   which is written on the next `EPOLLOUT` and freed once empty.
//!
//! Same CLI, config file and `listening on ADDR` line as `plain-server`. No TLS. SIGTERM ends it
//! (default disposition).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::Parser;
use regex::Regex;
use serde_json::Value;
use sha1::{Digest, Sha1};

/// Origins approved when the configuration names none (as `plain-server`).
const DEFAULT_ORIGINS: &[&str] = &[
    r"^https?://localhost(:\d+)?$",
    r"^https?://127\.0\.0\.1(:\d+)?$",
];
/// The broker's listen backlog, so that connect rates compare like for like.
const LISTEN_BACKLOG: i32 = 4096;
/// The shared read buffer.
const READ_BUF: usize = 64 * 1024;
/// Longest upgrade request and longest message accepted.
const MAX_REQUEST: usize = 8 * 1024;
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Bytes kept for a connection that does not read before it is dropped.
const MAX_PENDING: usize = 64 * 1024 * 1024;
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const ECHO_MARK: &[u8] = br#""eventType":10"#;
const BROADCAST_MARK: &[u8] = br#""broadcast":true"#;
const NOT_ECHO: &[u8] =
    br#"{"eventType":0,"error":"unknown_event_type: only Echo (10) is served"}"#;

#[derive(Parser)]
#[command(
    version,
    about = "A single-thread epoll Echo server: the floor the broker is compared against"
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (port, origins) = match load_settings(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floor-server: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::new(cli.bind, cli.port.unwrap_or(port));
    match serve(addr, origins) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Port and origin patterns, read as `plain-server` reads them.
fn load_settings(path: Option<&Path>) -> Result<(u16, Vec<Regex>), String> {
    let mut port = 8080;
    let mut patterns: Vec<String> = DEFAULT_ORIGINS.iter().map(|s| s.to_string()).collect();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let root: Value = json5::from_str(&text)
            .map_err(|e| format!("{}: not valid JSON5: {e}", path.display()))?;
        let ws = root.get("websocket");
        if let Some(p) = ws.and_then(|w| w.get("port")) {
            port = p
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("websocket.port: {p} is not a port number"))?;
        }
        let list = ws.and_then(|w| {
            w.get("approvedSocketDomains")
                .or_else(|| w.get("allowedOrigins"))
        });
        if let Some(list) = list {
            let items = list
                .as_array()
                .ok_or("websocket origin list must be an array of strings")?;
            patterns = items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("origin pattern {v} is not a string"))
                })
                .collect::<Result<_, _>>()?;
        }
    }
    let origins = patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| format!("origin pattern {p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((port, origins))
}

/// The error of the last system call when `ret` is negative.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[derive(PartialEq)]
enum State {
    /// Waiting for the whole upgrade request.
    Handshake,
    Open,
    /// A close frame (or an HTTP refusal) is queued: read nothing more, close once written.
    Closing,
    /// To be closed at the end of this round of events (closing now could let `accept` hand
    /// the same descriptor to a new connection while events for the old one are still queued).
    Dead,
}

struct Conn {
    state: State,
    /// An incomplete upgrade request or frame; empty (no allocation) otherwise.
    rbuf: Vec<u8>,
    /// Bytes the kernel would not take yet; empty (no allocation) otherwise.
    wbuf: Vec<u8>,
}

struct Server {
    epoll: RawFd,
    origins: Vec<Regex>,
    /// Indexed by descriptor.
    conns: Vec<Option<Conn>>,
    dead: Vec<RawFd>,
    /// The connection whose bytes are being handled.
    sender: RawFd,
    /// Frames produced by the read being handled, not yet written, and for whom: the sender
    /// or every open connection.
    out: Vec<u8>,
    out_to_all: bool,
}

fn serve(addr: SocketAddr, origins: Vec<Regex>) -> io::Result<()> {
    // std binds with SO_REUSEADDR; listen again to get the broker's backlog.
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let lfd = listener.as_raw_fd();
    // SAFETY: plain system calls on descriptors this function owns.
    unsafe { check(libc::listen(lfd, LISTEN_BACKLOG))? };
    listener.set_nonblocking(true)?;
    eprintln!("listening on {}", listener.local_addr()?);

    // SAFETY: as above; the epoll descriptor lives as long as the process.
    let epoll = unsafe { check(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
    // The listener is level-triggered: a full descriptor table leaves it readable.
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: lfd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event.
    unsafe { check(libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, lfd, &mut ev))? };

    let mut server = Server {
        epoll,
        origins,
        conns: Vec::new(),
        dead: Vec::new(),
        sender: -1,
        out: Vec::with_capacity(READ_BUF),
        out_to_all: false,
    };
    let mut rbuf = vec![0u8; READ_BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` has room for the count passed.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let (fd, flags) = (ev.u64 as RawFd, ev.events);
            if fd == lfd {
                server.accept(lfd);
                continue;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                server.flush(fd);
            }
            let hangup = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
            if flags & (hangup | libc::EPOLLIN as u32) != 0 {
                server.readable(fd, &mut rbuf, flags & hangup != 0);
            }
        }
        for fd in server.dead.drain(..) {
            server.conns[fd as usize] = None;
            // SAFETY: `fd` is a connection this server accepted and has not closed.
            unsafe { libc::close(fd) };
        }
    }
}

impl Server {
    fn accept(&mut self, lfd: RawFd) {
        loop {
            // SAFETY: null address pointers are allowed: the peer's address is not wanted.
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    Some(libc::EAGAIN) => return,
                    // Out of descriptors and the like: keep serving the others (as plain-server).
                    _ => {
                        eprintln!("accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        return;
                    }
                }
            }
            let one: libc::c_int = 1;
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            // SAFETY: `fd` was just accepted; the option value and event are valid for the call.
            let added = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut ev)
            };
            if added < 0 {
                // SAFETY: ours, and not registered anywhere.
                unsafe { libc::close(fd) };
                continue;
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || None);
            }
            self.conns[i] = Some(Conn {
                state: State::Handshake,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
            });
        }
    }

    fn conn(&mut self, fd: RawFd) -> Option<&mut Conn> {
        self.conns.get_mut(fd as usize).and_then(Option::as_mut)
    }

    /// Reads until the kernel has nothing more (edge-triggered), handling each chunk read.
    /// After a hang-up, reads on to the end of the stream: no further edge would come.
    fn readable(&mut self, fd: RawFd, buf: &mut [u8], hangup: bool) {
        loop {
            match self.conn(fd) {
                Some(c) if c.state == State::Handshake || c.state == State::Open => {}
                _ => return,
            }
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return,
                    _ => return self.kill(fd),
                }
            }
            if n == 0 {
                return self.kill(fd); // the peer went away without a close frame
            }
            let n = n as usize;
            self.sender = fd;
            self.received(fd, &mut buf[..n]);
            self.flush_out();
            // A short read emptied the socket's buffer: new data brings a new edge.
            if n < buf.len() && !hangup {
                return;
            }
        }
    }

    /// Handles freshly read bytes, completing what the connection held over, and keeps what
    /// is still incomplete.
    fn received(&mut self, fd: RawFd, data: &mut [u8]) {
        let Some(c) = self.conn(fd) else { return };
        if c.rbuf.is_empty() {
            let used = self.consume(fd, data);
            if let Some(c) = self.conn(fd) {
                if used < data.len() && c.state != State::Closing && c.state != State::Dead {
                    c.rbuf.extend_from_slice(&data[used..]);
                }
            }
        } else {
            let mut held = std::mem::take(&mut c.rbuf);
            held.extend_from_slice(data);
            let used = self.consume(fd, &mut held);
            held.drain(..used);
            if let Some(c) = self.conn(fd) {
                // An idle connection holds no buffer.
                if !held.is_empty() && c.state != State::Closing && c.state != State::Dead {
                    c.rbuf = held;
                }
            }
        }
    }

    /// Handles every complete request or frame at the start of `buf`; returns the bytes used.
    fn consume(&mut self, fd: RawFd, buf: &mut [u8]) -> usize {
        let mut at = 0;
        if let Some(Conn {
            state: State::Handshake,
            ..
        }) = self.conn(fd)
        {
            match memchr::memmem::find(buf, b"\r\n\r\n") {
                Some(end) => {
                    self.upgrade(fd, &buf[..end + 4]);
                    at = end + 4;
                }
                None if buf.len() > MAX_REQUEST => {
                    self.refuse(fd, "431 Request Header Fields Too Large");
                    return buf.len();
                }
                None => return 0,
            }
        }
        while let Some(Conn {
            state: State::Open, ..
        }) = self.conn(fd)
        {
            match parse_frame(&mut buf[at..]) {
                Ok(None) => break,
                Ok(Some(f)) => {
                    let payload = &buf[at + f.start..at + f.end];
                    at += f.end;
                    self.frame(fd, f.fin, f.opcode, payload);
                }
                Err(code) => {
                    self.close_with(fd, &code.to_be_bytes());
                    return buf.len();
                }
            }
        }
        at
    }

    /// Answers the upgrade request `head` (up to and including its blank line).
    fn upgrade(&mut self, fd: RawFd, head: &[u8]) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_)))
            || req.method != Some("GET")
        {
            return self.refuse(fd, "400 Bad Request");
        }
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let (Some(key), Some(upgrade)) = (header("sec-websocket-key"), header("upgrade")) else {
            return self.refuse(fd, "400 Bad Request");
        };
        if !upgrade.eq_ignore_ascii_case("websocket")
            || header("sec-websocket-version") != Some("13")
        {
            return self.refuse(fd, "400 Bad Request");
        }
        let allowed =
            header("origin").is_some_and(|o| self.origins.iter().any(|re| re.is_match(o)));
        if !allowed {
            return self.refuse(fd, "403 Forbidden");
        }
        let mut sha = Sha1::new();
        sha.update(key.trim().as_bytes());
        sha.update(WS_GUID);
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if let Some(c) = self.conn(fd) {
            c.state = State::Open;
        }
        self.send(fd, response.as_bytes());
    }

    /// An HTTP error answer, then the connection closed.
    fn refuse(&mut self, fd: RawFd, status: &str) {
        let body = r#"{"error":"origin not allowed"}"#;
        let body = if status.starts_with("403") { body } else { "" };
        let response = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(fd, response.as_bytes());
        self.closing(fd);
    }

    /// One client frame, unmasked.
    fn frame(&mut self, fd: RawFd, fin: bool, opcode: u8, payload: &[u8]) {
        match opcode {
            // Text, or binary holding UTF-8 (plain-server treats them alike); answered as text.
            1 | 2 if fin => {
                if std::str::from_utf8(payload).is_err() {
                    return self.close_with(fd, &1007u16.to_be_bytes());
                }
                if memchr::memmem::find(payload, ECHO_MARK).is_none() {
                    self.push(false, 1, NOT_ECHO);
                } else {
                    let all = memchr::memmem::find(payload, BROADCAST_MARK).is_some();
                    self.push(all, 1, payload);
                }
            }
            // Continuation, or a data frame without FIN: fragmentation is not served.
            0..=2 => self.close_with(fd, &1003u16.to_be_bytes()),
            // Close: answered with the peer's status code, then the socket is closed.
            8 => self.close_with(fd, payload.get(..2).unwrap_or(&[])),
            9 => self.push(false, 10, payload),
            10 => {}
            _ => self.close_with(fd, &1002u16.to_be_bytes()),
        }
    }

    /// Sends a close frame with `payload` (a status code or nothing) and closes after it.
    fn close_with(&mut self, fd: RawFd, payload: &[u8]) {
        self.push(false, 8, payload);
        self.flush_out();
        self.closing(fd);
    }

    /// Closes once everything queued is written.
    fn closing(&mut self, fd: RawFd) {
        let Some(c) = self.conn(fd) else { return };
        if c.wbuf.is_empty() {
            self.kill(fd);
        } else {
            c.state = State::Closing;
            c.rbuf = Vec::new();
        }
    }

    /// Frames `payload` into the outgoing buffer for the sender (`all` false) or for every open
    /// connection. A change of recipients writes what is there first, to keep the order.
    fn push(&mut self, all: bool, opcode: u8, payload: &[u8]) {
        if all != self.out_to_all && !self.out.is_empty() {
            self.flush_out();
        }
        self.out_to_all = all;
        let len = payload.len();
        self.out.push(0x80 | opcode);
        if len < 126 {
            self.out.push(len as u8);
        } else if len <= 0xffff {
            self.out.push(126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(payload);
    }

    /// Writes the outgoing buffer: to the sender or to every open connection.
    fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.out);
        if self.out_to_all {
            for i in 0..self.conns.len() {
                if matches!(&self.conns[i], Some(c) if c.state == State::Open) {
                    self.send(i as RawFd, &out);
                }
            }
        } else {
            self.send(self.sender, &out);
        }
        self.out = out;
        self.out.clear();
    }

    /// Writes `bytes` to `fd` now if nothing is pending there; keeps what the kernel refuses.
    fn send(&mut self, fd: RawFd, bytes: &[u8]) {
        let Some(c) = self.conn(fd) else { return };
        if c.state == State::Dead {
            return;
        }
        if !c.wbuf.is_empty() {
            if c.wbuf.len() > MAX_PENDING {
                return self.kill(fd); // a reader this far behind is not coming back
            }
            c.wbuf.extend_from_slice(bytes);
            return;
        }
        match write_some(fd, bytes) {
            Ok(n) if n < bytes.len() => c.wbuf.extend_from_slice(&bytes[n..]),
            Ok(_) => {}
            Err(_) => self.kill(fd),
        }
    }

    /// `EPOLLOUT`: writes what is pending, frees the buffer once empty, closes a closing
    /// connection once its close frame is out.
    fn flush(&mut self, fd: RawFd) {
        let Some(c) = self.conn(fd) else { return };
        if c.wbuf.is_empty() || c.state == State::Dead {
            return;
        }
        match write_some(fd, &c.wbuf) {
            Ok(n) if n < c.wbuf.len() => {
                c.wbuf.drain(..n);
            }
            Ok(_) => {
                c.wbuf = Vec::new();
                if c.state == State::Closing {
                    self.kill(fd);
                }
            }
            Err(_) => self.kill(fd),
        }
    }

    fn kill(&mut self, fd: RawFd) {
        if let Some(c) = self.conn(fd) {
            if c.state != State::Dead {
                c.state = State::Dead;
                c.rbuf = Vec::new();
                c.wbuf = Vec::new();
                self.dead.push(fd);
            }
        }
    }
}

/// One `write`; `Ok(0..len)` when the kernel took part or none of it (`EAGAIN`).
fn write_some(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Where a complete client frame lies in the buffer, after unmasking.
struct Frame {
    fin: bool,
    opcode: u8,
    start: usize,
    end: usize,
}

/// The first frame of `buf` if it is complete (then unmasked in place), `Ok(None)` if more
/// bytes are needed, or the close code for a frame the floor refuses.
fn parse_frame(buf: &mut [u8]) -> Result<Option<Frame>, u16> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        return Err(1002); // reserved bits without an extension, or an unmasked client frame
    }
    let opcode = b0 & 0x0f;
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if opcode >= 8 && (len > 125 || b0 & 0x80 == 0) {
        return Err(1002); // control frames are short and never fragmented
    }
    if len > MAX_MESSAGE as u64 {
        return Err(1009);
    }
    let len = len as usize;
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    at += 4;
    let Some(payload) = buf.get_mut(at..at + len) else {
        return Ok(None);
    };
    // Eight bytes at a time, then the tail (which starts at a multiple of 4: same mask phase).
    let mask8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ mask8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode,
        start: at,
        end: at + len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_unmasked_and_bounded() {
        // RFC 6455 5.7: a masked "Hello".
        let mut f = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for cut in 0..f.len() {
            assert!(
                matches!(parse_frame(&mut f[..cut].to_vec()), Ok(None)),
                "{cut}"
            );
        }
        let frame = parse_frame(&mut f).ok().flatten().expect("complete");
        assert_eq!((frame.fin, frame.opcode), (true, 1));
        assert_eq!(&f[frame.start..frame.end], b"Hello");
        // Unmasked (a server's frame) and oversized frames are refused.
        assert_eq!(
            parse_frame(&mut [0x81, 0x05, 1, 2, 3, 4, 5]).err(),
            Some(1002)
        );
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_frame(&mut huge).err(), Some(1009));
        // A long ping.
        let mut ping = vec![0x89, 0xfe, 0, 200];
        assert_eq!(parse_frame(&mut ping).err(), Some(1002));
    }
}
