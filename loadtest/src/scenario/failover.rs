//! `failover`: does a deploy lose events for clients that resume?
//!
//! N listeners connect through one URL (a load balancer in front of several instances that share
//! a NATS JetStream history) with `?recover=1`; one publisher sends numbered broadcast events at
//! a steady rate; mid-run one instance is drained (`POST /admin/v1/drain`, or SIGTERM) or killed
//! (SIGKILL). Listeners whose connection ends reconnect with exponential backoff and jitter and
//! resume with `?since=` the last position they saw (the recovery notice's or an event's); with
//! `--no-recover` they reconnect without positions, which is what a deploy costs today. The
//! publisher reconnects too when its instance goes away.
//!
//! The count is exact: every listener keeps the set of sequence numbers it received. An event
//! "reached the cluster" when at least one listener received it; each listener's `missing` is
//! counted against those (the resume's job), and published events that reached no listener are
//! reported apart as `publish_lost` (lost between the publisher and the cluster, e.g. written to
//! an instance that was then killed: no resume can bring those back). Duplicates are second
//! receipts of a sequence number; out of order is a first receipt whose position (or, without
//! positions, sequence number) is below one already received. The reconnect time runs from the
//! moment a listener saw its connection end to its recovery notice (without positions: to its
//! upgrade), backoff included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Disrupt, FailoverArgs};
use crate::client::{self, Incoming, Role, Target, Ws};
use crate::context::{Outcome, RunCtx, Schedule, SeqSet, StopReason, CLOSE_GRACE};
use crate::fleet::Ended;
use crate::probe::{self, Encoder, Kind, Received};
use crate::stats::{Percentiles, Stats};
use crate::summary::{DeliverySummary, FailoverSummary};

/// A warm-up event is sent this often until every listener has seen one.
const WARMUP_EVERY: Duration = Duration::from_millis(250);
/// The drain ends early once every listener is connected and no new receipt came for this long.
const QUIET: Duration = Duration::from_secs(1);
/// Distinct reasons of incomplete recoveries kept for the summary.
const MAX_REASONS: usize = 10;

/// How the disruption is carried out, checked before anything connects.
#[derive(Debug, Clone)]
enum Plan {
    /// `POST <prefix>/admin/drain` to `authority` with the bearer token.
    Drain {
        authority: String,
        path: String,
        token: String,
    },
    Signal {
        pid: i32,
        signal: libc::c_int,
    },
    None,
}

impl Plan {
    fn of(args: &FailoverArgs) -> anyhow::Result<Plan> {
        let pid = |what: &str| -> anyhow::Result<i32> {
            let Some(pid) = args.kill_pid else {
                bail!("--disrupt {what} needs --kill-pid (the process id of the instance)");
            };
            let pid = i32::try_from(pid).context("--kill-pid is not a process id")?;
            if pid <= 1 || pid as u32 == std::process::id() {
                bail!("--kill-pid {pid} is not an instance this tool may signal");
            }
            // Signal 0: only checks that the process exists and may be signalled.
            // SAFETY: kill(2) with a positive pid and signal 0 sends nothing.
            if unsafe { libc::kill(pid, 0) } != 0 {
                bail!(
                    "--kill-pid {pid}: no such process that this user may signal ({})",
                    std::io::Error::last_os_error()
                );
            }
            Ok(pid)
        };
        Ok(match args.disrupt {
            Disrupt::None => Plan::None,
            Disrupt::Sigkill => Plan::Signal {
                pid: pid("sigkill")?,
                signal: libc::SIGKILL,
            },
            Disrupt::Drain => match (&args.drain_url, &args.admin_token) {
                (Some(url), Some(token)) => {
                    let (authority, path) = parse_http_url(url)?;
                    if token.is_empty() || token.contains(['\r', '\n']) {
                        bail!("--admin-token must be a non-empty single line");
                    }
                    Plan::Drain {
                        authority,
                        path: format!(
                            "{}{}",
                            path.trim_end_matches('/'),
                            admin_api::path(admin_api::route::DRAIN)
                        ),
                        token: token.clone(),
                    }
                }
                (Some(_), None) => bail!(
                    "--drain-url needs --admin-token (the broker's broker.admin.token, or \
                     LOADTEST_ADMIN_TOKEN)"
                ),
                (None, _) if args.kill_pid.is_some() => Plan::Signal {
                    pid: pid("drain")?,
                    signal: libc::SIGTERM,
                },
                (None, _) => bail!(
                    "--disrupt drain needs --drain-url and --admin-token (POST /admin/v1/drain), or \
                     --kill-pid (SIGTERM)"
                ),
            },
        })
    }

    fn describe(&self) -> String {
        match self {
            Plan::Drain {
                authority, path, ..
            } => format!("POST http://{authority}{path}"),
            Plan::Signal { pid, signal } if *signal == libc::SIGKILL => {
                format!("SIGKILL to pid {pid}")
            }
            Plan::Signal { pid, .. } => format!("SIGTERM to pid {pid}"),
            Plan::None => "nothing".into(),
        }
    }

    /// Carries it out: whether it happened, and the answer or error.
    async fn execute(&self) -> (bool, String) {
        match self {
            Plan::None => (true, "not asked".into()),
            Plan::Signal { pid, signal } => {
                // SAFETY: kill(2) on a pid checked to be above 1 and not this process.
                if unsafe { libc::kill(*pid, *signal) } == 0 {
                    (true, "signal sent".into())
                } else {
                    (false, std::io::Error::last_os_error().to_string())
                }
            }
            Plan::Drain {
                authority,
                path,
                token,
            } => match tokio::time::timeout(Duration::from_secs(5), post(authority, path, token))
                .await
            {
                Ok(Ok(status)) => ((200..300).contains(&status), format!("HTTP {status}")),
                Ok(Err(e)) => (false, format!("{e:#}")),
                Err(_) => (false, "no answer within 5 s".into()),
            },
        }
    }
}

/// `http://host:port/prefix` into (`host:port`, `/prefix`).
fn parse_http_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--drain-url `{url}` must start with http:// (the broker's ops listener)");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let ok = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok || path.contains(['?', '#', ' ']) {
        bail!("--drain-url `{url}` is not of the form http://HOST:PORT[/PREFIX]");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// A bare HTTP/1.1 POST with no body; returns the status code.
async fn post(authority: &str, path: &str, token: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", line.lines().next()))
}

/// What the listener tasks share.
struct Shared {
    run: String,
    stats: Arc<Stats>,
    target: Arc<Target>,
    recover: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    /// Listeners that connected at least once, and a wake-up for each.
    connected: AtomicUsize,
    /// Listeners that have seen a warm-up event.
    warmed: AtomicUsize,
    progress: Notify,
    /// Distinct (listener, sequence) receipts, and when the last one came (probe clock, ns).
    unique: AtomicU64,
    last_unique_ns: AtomicU64,
    /// Listeners whose connection ended and that have not recovered yet.
    down: AtomicUsize,
}

/// One listener's record, kept across its reconnects and handed back at the end.
#[derive(Debug, Default)]
struct Listener {
    index: usize,
    seen: SeqSet,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    warmed: bool,
    connected_once: bool,
    /// Where to resume from: the last position seen (recovery notice or event).
    resume_from: Option<String>,
    /// The highest position (without positions: sequence number) among first receipts.
    order_max: Option<u64>,
    /// How each of its connections ended, by label.
    closed_by: BTreeMap<String, u64>,
    reconnects: u64,
    failures: u64,
    /// When its connection ended, until it recovered.
    down_since: Option<Instant>,
    /// The connection asked `?since=`: its recovery notice counts as a recovery.
    resuming: bool,
    recoveries_complete: u64,
    recoveries_incomplete: u64,
    incomplete_reasons: Vec<String>,
    replayed: u64,
}

/// The position in a frame: `"brokerPosition":"<epoch>-<seq>"` (the broker adds it last).
fn position_of(text: &str) -> Option<(&str, u64)> {
    const KEY: &str = "\"brokerPosition\":\"";
    let at = text.rfind(KEY)? + KEY.len();
    let rest = &text[at..];
    let pos = &rest[..rest.find('"')?];
    let seq = pos.rsplit_once('-')?.1.parse().ok()?;
    Some((pos, seq))
}

impl Shared {
    fn recovered(&self, l: &mut Listener) {
        if let Some(since) = l.down_since.take() {
            if let Some(m) = &self.stats.secondary {
                m.record(since.elapsed());
            }
            self.down.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn handle(&self, l: &mut Listener, text: &str) {
        match probe::classify(text, &self.run) {
            Received::Probe(p) => {
                let pos = position_of(text);
                if let Some((at, _)) = pos {
                    l.resume_from = Some(at.to_owned());
                }
                match p.kind {
                    Kind::Delivery => {
                        if l.seen.insert(p.seq) {
                            self.unique.fetch_add(1, Ordering::Relaxed);
                            self.last_unique_ns
                                .store(probe::now_ns(), Ordering::Relaxed);
                            self.stats.received.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .primary
                                .record_ns(probe::now_ns().saturating_sub(p.t_ns));
                            let key = pos.map_or(p.seq, |(_, s)| s);
                            if l.order_max.is_some_and(|max| key < max) {
                                l.out_of_order += 1;
                                self.stats.error("out_of_order");
                            }
                            l.order_max = Some(l.order_max.map_or(key, |m| m.max(key)));
                        } else {
                            l.duplicates += 1;
                            self.stats.error("duplicate_delivery");
                        }
                    }
                    Kind::Warmup => {
                        if !l.warmed {
                            l.warmed = true;
                            self.warmed.fetch_add(1, Ordering::Relaxed);
                            self.progress.notify_waiters();
                        }
                    }
                    Kind::Echo => {}
                }
            }
            Received::Foreign => l.foreign += 1,
            Received::ErrorEvent => self.stats.error("error_event"),
            // The recovery notice: `{"brokerPosition":...,"brokerRecovery":{...}}` (in either
            // order of keys).
            Received::Other if text.contains("\"brokerRecovery\"") => self.notice(l, text),
            Received::Other => {}
        }
    }

    fn notice(&self, l: &mut Listener, text: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            self.stats.error("bad_recovery_notice");
            return;
        };
        if let Some(at) = v.get("brokerPosition").and_then(|p| p.as_str()) {
            l.resume_from = Some(at.to_owned());
        }
        let r = &v["brokerRecovery"];
        if l.resuming {
            l.resuming = false;
            if r["complete"].as_bool() == Some(true) {
                l.recoveries_complete += 1;
                l.replayed += r["replayed"].as_u64().unwrap_or(0);
            } else {
                l.recoveries_incomplete += 1;
                l.incomplete_reasons
                    .push(r["reason"].as_str().unwrap_or("(no reason)").to_owned());
            }
        }
        self.recovered(l);
    }

    /// Backoff before attempt `attempt` (0 for the first after a close), with jitter.
    fn backoff(&self, index: usize, attempt: u32) -> Duration {
        let base = self
            .backoff_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        let r = crate::identity::mix64(probe::now_ns() ^ ((index as u64) << 20) ^ attempt as u64);
        base.mul_f64(0.5 + 0.5 * ((r >> 11) as f64 / (1u64 << 53) as f64))
    }
}

/// Sleeps until `at`; false if `stop` came first.
async fn sleep_until(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at.into()) => true,
        _ = stop.cancelled() => false,
    }
}

async fn listener(
    sh: Arc<Shared>,
    index: usize,
    slot: Instant,
    stop: CancellationToken,
) -> Listener {
    let mut l = Listener {
        index,
        ..Listener::default()
    };
    let mut at = slot;
    let mut attempt = 0u32;
    loop {
        if !sleep_until(at, &stop).await {
            break;
        }
        let query = match (&l.resume_from, sh.recover) {
            (_, false) => None,
            (Some(pos), true) if l.connected_once => {
                Some(format!("since={}", client::percent_encode(pos)))
            }
            (_, true) => Some("recover=1".to_owned()),
        };
        let connected = tokio::select! {
            r = sh.target.connect_with_query(index, Role::Client, query.as_deref()) => r,
            _ = stop.cancelled() => break,
        };
        let ws = match connected {
            Ok((ws, handshake)) => {
                sh.stats.connected(handshake);
                ws
            }
            Err(failure) => {
                sh.stats.connect_failed(&failure.reason());
                l.failures += u64::from(l.connected_once);
                at = Instant::now() + sh.backoff(index, attempt + 1);
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        if l.connected_once {
            l.reconnects += 1;
            sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        } else {
            l.connected_once = true;
            sh.connected.fetch_add(1, Ordering::Relaxed);
            sh.progress.notify_waiters();
        }
        l.resuming = query.as_deref().is_some_and(|q| q.starts_with("since="));
        if !sh.recover {
            sh.recovered(&mut l);
        }
        let ended = read(&sh, ws, &mut l, &stop).await;
        sh.stats.disconnected();
        match ended {
            // (Failover closes its own connections: nothing comes back open.)
            Ended::Finished | Ended::Open(_) => break,
            Ended::Dropped(reason) => {
                if stop.is_cancelled() {
                    break;
                }
                sh.stats.dropped(&reason);
                *l.closed_by.entry(reason).or_default() += 1;
                if l.down_since.is_none() {
                    l.down_since = Some(Instant::now());
                    sh.down.fetch_add(1, Ordering::Relaxed);
                }
                at = Instant::now() + sh.backoff(index, 0);
            }
        }
    }
    l
}

async fn read(sh: &Shared, mut ws: Ws, l: &mut Listener, stop: &CancellationToken) -> Ended {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => {
                tokio::spawn(client::close(ws, client::CLOSE_TIMEOUT));
                return Ended::Finished;
            }
            i = client::recv(&mut ws) => match i {
                Incoming::Closed(reason) => return Ended::Dropped(reason),
                Incoming::Text(text) => sh.handle(l, &text),
            },
        }
    }
}

/// What the publisher hands back.
#[derive(Debug, Default)]
struct Published {
    sent: SeqSet,
    reconnects: u64,
    /// Events whose write failed (the connection broke): not counted as published.
    failed: u64,
}

struct PublisherSpec {
    target: Arc<Target>,
    stats: Arc<Stats>,
    encoder: Encoder,
    rate: f64,
    index: usize,
    backoff: (Duration, Duration),
    /// `None` during the warm-up; the start of sending once it is set.
    start: watch::Receiver<Option<Instant>>,
    /// Cancelled when sending is over.
    done: CancellationToken,
}

async fn publisher(p: PublisherSpec) -> Published {
    let mut out = Published::default();
    let mut start = p.start.clone();
    let mut schedule: Option<Schedule> = None;
    let mut next_seq = 0u64;
    let mut warm_seq = 0u64;
    let mut next_warm = Instant::now();
    let mut attempt = 0u32;
    let mut connected_once = false;
    'connect: loop {
        if p.done.is_cancelled() {
            break;
        }
        let mut ws = tokio::select! {
            r = p.target.connect_with_query(p.index, Role::Publisher, None) => match r {
                Ok((ws, handshake)) => {
                    p.stats.connected(handshake);
                    ws
                }
                Err(failure) => {
                    p.stats.connect_failed(&failure.reason());
                    let base = p.backoff.0.saturating_mul(1u32 << attempt.min(16)).min(p.backoff.1);
                    attempt += 1;
                    if !sleep_until(Instant::now() + base, &p.done).await {
                        break;
                    }
                    continue;
                }
            },
            _ = p.done.cancelled() => break,
        };
        attempt = 0;
        if connected_once {
            out.reconnects += 1;
            p.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        connected_once = true;
        loop {
            if schedule.is_none() {
                if let Some(at) = *start.borrow_and_update() {
                    schedule = Some(Schedule::new(at, Duration::ZERO, p.rate));
                }
            }
            let next = match &schedule {
                Some(s) => s.next_due(),
                None => next_warm,
            };
            tokio::select! {
                _ = p.done.cancelled() => {
                    client::close(ws, client::CLOSE_TIMEOUT).await;
                    p.stats.disconnected();
                    break 'connect;
                }
                _ = start.changed(), if schedule.is_none() => {}
                i = client::recv(&mut ws) => {
                    if let Incoming::Closed(reason) = i {
                        p.stats.disconnected();
                        p.stats.dropped(&format!("publisher_{reason}"));
                        continue 'connect;
                    }
                }
                _ = tokio::time::sleep_until(next.into()) => {
                    let mut due = Vec::new();
                    match &mut schedule {
                        Some(s) => {
                            let now = Instant::now();
                            while let Some(at) = s.take_due(now) {
                                due.push((Kind::Delivery, next_seq, at));
                                next_seq += 1;
                            }
                        }
                        None => {
                            due.push((Kind::Warmup, warm_seq, Instant::now()));
                            warm_seq += 1;
                            next_warm = Instant::now() + WARMUP_EVERY;
                        }
                    }
                    for (kind, seq, at) in due {
                        let text = p.encoder.encode(kind, seq, probe::ns_at(at), None);
                        match super::send_text(&mut ws, text, &p.done).await {
                            Ok(()) => {
                                if kind == Kind::Delivery {
                                    out.sent.insert(seq);
                                    p.stats.sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(Ended::Finished | Ended::Open(_)) => {
                                p.stats.disconnected();
                                break 'connect;
                            }
                            Err(Ended::Dropped(reason)) => {
                                out.failed += u64::from(kind == Kind::Delivery);
                                p.stats.disconnected();
                                p.stats.dropped(&format!("publisher_{reason}"));
                                continue 'connect;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

pub async fn run(ctx: &RunCtx, args: &FailoverArgs) -> anyhow::Result<Outcome> {
    if ctx.target.api_key().is_none() {
        bail!("failover needs --api-key: the events come from a publisher connection");
    }
    if args.listeners == 0 {
        bail!("failover needs at least one listener (-l)");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a number of events per second above 0");
    }
    if args.backoff_min.is_zero() || args.backoff_max < args.backoff_min {
        bail!("--backoff-min must be above 0 and at most --backoff-max");
    }
    if args.disrupt != Disrupt::None && args.disrupt_at >= args.duration {
        bail!("--disrupt-at must be within the sending phase (below --duration)");
    }
    let plan = Plan::of(args)?;
    let n = args.listeners;
    let sh = Arc::new(Shared {
        run: ctx.run_id.clone(),
        stats: ctx.stats.clone(),
        target: ctx.target.clone(),
        recover: !args.no_recover,
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max,
        connected: AtomicUsize::new(0),
        warmed: AtomicUsize::new(0),
        progress: Notify::new(),
        unique: AtomicU64::new(0),
        last_unique_ns: AtomicU64::new(0),
        down: AtomicUsize::new(0),
    });
    let mut notes = Vec::new();

    // 1. Ramp: every listener connects (and keeps trying, with backoff, until it has).
    ctx.phase("ramp");
    let stop = ctx.cancel.child_token();
    let mut tasks = JoinSet::new();
    let launched = Instant::now();
    for i in 0..n {
        let slot = launched + Duration::from_secs_f64(i as f64 / ctx.connect_rate);
        tasks.spawn(listener(sh.clone(), i, slot, stop.clone()));
    }
    let ramp_limit = ctx.ramp_limit(n);
    wait_for(&sh, ramp_limit, &ctx.cancel, |s| {
        s.connected.load(Ordering::Relaxed) >= n
    })
    .await;
    let ramp = launched.elapsed();
    let connected = sh.connected.load(Ordering::Relaxed);
    if connected < n {
        notes.push(format!(
            "{connected} of {n} listeners connected within the ramp; the others kept trying"
        ));
    }

    // 2. Warm-up: the publisher sends warm-up events until every listener has seen one.
    ctx.phase("warm-up");
    let (start_tx, start_rx) = watch::channel(None);
    let done = ctx.cancel.child_token();
    let pub_task = tokio::spawn(publisher(PublisherSpec {
        target: ctx.target.clone(),
        stats: ctx.stats.clone(),
        encoder: Encoder::echo(args.message_size, true, &ctx.run_id),
        rate: args.rate,
        index: n,
        backoff: (args.backoff_min, args.backoff_max),
        start: start_rx,
        done: done.clone(),
    }));
    let warm_limit = Instant::now() + Duration::from_secs(5) + Duration::from_millis(n as u64 / 10);
    wait_for(&sh, warm_limit, &ctx.cancel, |s| {
        s.warmed.load(Ordering::Relaxed) >= s.connected.load(Ordering::Relaxed).max(1)
    })
    .await;
    let warmed = sh.warmed.load(Ordering::Relaxed);
    if warmed < sh.connected.load(Ordering::Relaxed) {
        notes.push(format!(
            "warm-up incomplete: {warmed} listeners had seen a warm-up event when sending started"
        ));
    }

    // 3. Send, with the disruption at --disrupt-at.
    ctx.phase("send");
    let start = Instant::now();
    start_tx.send_replace(Some(start));
    let disruption = {
        let (plan, at, cancel) = (plan.clone(), start + args.disrupt_at, ctx.cancel.clone());
        tokio::spawn(async move {
            if matches!(plan, Plan::None) || !sleep_until(at, &cancel).await {
                return None;
            }
            let t = start.elapsed().as_secs_f64();
            let (ok, result) = plan.execute().await;
            Some((t, ok, result))
        })
    };
    ctx.sleep_until(start + args.duration).await;
    done.cancel();
    let measured = start.elapsed();
    let disrupted = disruption.await.ok().flatten();
    let published = match tokio::time::timeout(CLOSE_GRACE * 2, pub_task).await {
        Ok(Ok(p)) => p,
        _ => {
            notes.push(
                "the publisher did not hand back its count; nothing counts as published".into(),
            );
            Published::default()
        }
    };
    let sent = published.sent.len();

    // 4. Drain: until every listener has every published event, or all are back and quiet.
    ctx.phase("drain");
    let drain_limit = Instant::now() + args.drain;
    let everyone = connected as u64 * sent;
    loop {
        let all = sh.unique.load(Ordering::Relaxed) >= everyone;
        let quiet = probe::now_ns().saturating_sub(sh.last_unique_ns.load(Ordering::Relaxed))
            >= QUIET.as_nanos() as u64;
        let back = sh.down.load(Ordering::Relaxed) == 0;
        if all || (back && quiet) || Instant::now() >= drain_limit {
            break;
        }
        if !ctx
            .sleep_until(Instant::now() + Duration::from_millis(50))
            .await
        {
            break;
        }
    }

    // 5. Count.
    ctx.phase("close");
    stop.cancel();
    let mut listeners = Vec::with_capacity(n);
    let close_limit = Instant::now() + CLOSE_GRACE + Duration::from_millis(n as u64 / 5);
    while let Ok(Some(r)) = tokio::time::timeout_at(close_limit.into(), tasks.join_next()).await {
        if let Ok(l) = r {
            listeners.push(l);
        }
    }
    let lost_tasks = n - listeners.len();
    if lost_tasks > 0 {
        tasks.abort_all();
        notes.push(format!(
            "{lost_tasks} listeners did not hand back their receipts in time (not counted)"
        ));
    }
    listeners.sort_by_key(|l| l.index);
    let counted: Vec<&Listener> = listeners.iter().filter(|l| l.connected_once).collect();

    let mut reached = SeqSet::default();
    for l in &counted {
        reached.union_with(&l.seen);
    }
    let reached_n = reached.len();
    let published_reached = published.sent.count_common(&reached);
    let mut fo = FailoverSummary {
        disrupt: match args.disrupt {
            Disrupt::Drain => "drain",
            Disrupt::Sigkill => "sigkill",
            Disrupt::None => "none",
        }
        .into(),
        how: plan.describe(),
        disrupted: matches!(plan, Plan::None),
        disrupt_result: if matches!(plan, Plan::None) {
            "not asked".into()
        } else {
            "not carried out (the run ended first)".into()
        },
        disrupted_at_s: None,
        recover: !args.no_recover,
        listeners: counted.len(),
        published: sent,
        reached: reached_n,
        publish_lost: sent - published_reached,
        publisher_reconnects: published.reconnects,
        ..FailoverSummary::default()
    };
    if let Some((t, ok, result)) = disrupted {
        fo.disrupted = ok;
        fo.disrupt_result = result;
        fo.disrupted_at_s = Some(t);
    }
    let mut received = 0;
    let mut complete = 0;
    let mut foreign = 0;
    for l in &counted {
        let missing = reached_n - l.seen.len();
        received += l.seen.len();
        foreign += l.foreign;
        complete += usize::from(missing == 0);
        fo.missing += missing;
        fo.missing_listeners += usize::from(missing > 0);
        fo.max_missing = fo.max_missing.max(missing);
        fo.duplicates += l.duplicates;
        fo.duplicate_listeners += usize::from(l.duplicates > 0);
        fo.out_of_order += l.out_of_order;
        fo.out_of_order_listeners += usize::from(l.out_of_order > 0);
        fo.closed_listeners += usize::from(!l.closed_by.is_empty());
        for (k, v) in &l.closed_by {
            *fo.closed_by.entry(k.clone()).or_default() += v;
        }
        fo.reconnects += l.reconnects;
        fo.reconnect_failures += l.failures;
        fo.not_reconnected += usize::from(l.down_since.is_some());
        fo.recoveries_complete += l.recoveries_complete;
        fo.recoveries_incomplete += l.recoveries_incomplete;
        fo.replayed += l.replayed;
        for r in &l.incomplete_reasons {
            if fo.incomplete_reasons.len() < MAX_REASONS || fo.incomplete_reasons.contains_key(r) {
                *fo.incomplete_reasons.entry(r.clone()).or_default() += 1;
            }
        }
    }
    fo.reconnect_ms = ctx
        .stats
        .secondary
        .as_ref()
        .and_then(|m| Percentiles::of(&m.total()));
    if fo.publish_lost > 0 {
        notes.push(format!(
            "{} published events reached no listener (lost between the publisher and the \
             cluster); `missing` counts only events the cluster had",
            fo.publish_lost
        ));
    }
    if published.failed > 0 {
        notes.push(format!(
            "{} events could not be written (the publisher's connection broke); not published",
            published.failed
        ));
    }
    let expected = reached_n * counted.len() as u64;
    let delivery = DeliverySummary {
        listeners: counted.len(),
        publishers: 1,
        sent,
        expected,
        received,
        duplicates: fo.duplicates,
        missing: fo.missing,
        completeness: if expected > 0 {
            received as f64 / expected as f64
        } else {
            0.0
        },
        complete_listeners: complete,
        foreign,
        misdelivered: 0,
        pause: None,
    };
    Ok(Outcome {
        target_connections: n + 1,
        ramp,
        measured,
        stopped_by: ctx.stopped_by(StopReason::Duration),
        delivery: Some(delivery),
        notes,
        failover: Some(fo),
    })
}

/// Waits until `done(shared)` holds, `limit` passes or the run is cancelled; re-checked on
/// every listener's progress and at least every 100 ms.
async fn wait_for(
    sh: &Shared,
    limit: Instant,
    cancel: &CancellationToken,
    done: impl Fn(&Shared) -> bool,
) {
    while !done(sh) && Instant::now() < limit {
        let woke = sh.progress.notified();
        tokio::select! {
            _ = woke => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(limit.into()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_the_last_field() {
        let text = r#"{"eventType":10,"lt":{"run":"r","seq":1,"t":2},"brokerPosition":"ab-c-42"}"#;
        assert_eq!(position_of(text), Some(("ab-c-42", 42)));
        assert_eq!(position_of(r#"{"eventType":10}"#), None);
        assert_eq!(position_of(r#"{"brokerPosition":"x-y"}"#), None);
    }

    #[test]
    fn drain_urls_are_checked() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:9091").expect("valid"),
            ("127.0.0.1:9091".into(), "".into())
        );
        assert_eq!(
            parse_http_url("http://ops.local/base/").expect("valid"),
            ("ops.local:80".into(), "/base/".into())
        );
        assert!(parse_http_url("https://127.0.0.1:9091").is_err());
        assert!(parse_http_url("http://").is_err());
        assert!(parse_http_url("http://a b:1/").is_err());
        assert!(parse_http_url("http://h:1/x?y").is_err());
    }
}
