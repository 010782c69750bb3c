//! Cluster mode: several instances behind a load balancer share events through NATS.
//!
//! Every event delivered on one instance because a publisher, the admin API or a broadcast
//! Echo produced it is also published to NATS once; every other instance delivers it to its
//! own matching clients and never forwards it again. So each client gets it exactly once:
//! from its own instance's local delivery, or from the one NATS message.
//!
//! Subjects (prefix `broker.cluster.subject`, default `broker`):
//! - `<prefix>.all`: every connection;
//! - `<prefix>.user`: one user's connections (header `Broker-User`);
//! - `<prefix>.conn.<instanceId>.<run>`: one connection of that instance's current run
//!   (header `Broker-To`), so a MetaRequest reply reaches only the instance that holds the
//!   client. Subjects are compared whole on receipt, and the connection subject has two more
//!   tokens than the others, so no `instanceId` can alias `<prefix>.all` or `<prefix>.user`.
//!
//! Publishing goes through a queue bounded in bytes ([`QUEUE_BYTES`]) to one task, so a
//! publisher is never slowed by NATS and events from one instance keep their order; events from
//! NATS are delivered by another task, so a stalled publish never holds up what comes in. While
//! NATS is unreachable (at start-up too) the instance keeps serving its own clients, counts what
//! it could not share as `dropped`, says so in `/readyz` and the log, and resumes when NATS
//! returns (the client reconnects by itself). Nothing waits on NATS at start-up or shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::{ErrorReason, EventError, EventType};
use crate::history::{unresumable, Entry, Position, Replay, Scope};
use crate::metrics::Metrics;
use crate::outbox::WireFrame;
use crate::registry::Conn;
use crate::registry::Registry;
use crate::target::Target;

const H_INSTANCE: &str = "Broker-Instance";
const H_USER: &str = "Broker-User";
const H_TO: &str = "Broker-To";
const H_TYPE: &str = "Broker-Type";
/// The wire id of the connection that sent a history event (it does not get its own event).
const H_EXCEPT: &str = "Broker-Except";

/// What the cluster's task works with and delivers into: the router, which this module does
/// not name (it sits above: it owns the [`Cluster`]).
pub trait Host: Send + Sync + 'static {
    fn cluster(&self) -> Option<&Cluster>;
    fn registry(&self) -> &Registry;
    fn metrics(&self) -> &Metrics;
    fn shutdown(&self) -> &CancellationToken;
    /// How long a closing connection may take its last frames.
    fn close_grace(&self) -> Duration;
    /// Delivers an event from another instance to this instance's connections.
    fn deliver_local(&self, target: &Target<'_>, frame: &Utf8Bytes) -> usize;
    /// Delivers an event of the JetStream history to this instance's connections, at `seq`.
    fn deliver_positioned(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        epoch: &str,
        seq: u64,
    ) -> usize;
}

/// Bytes of events waiting to be published to NATS at most; past it events are not shared
/// (counted as `dropped`). Each event is charged its frame plus [`OVERHEAD`].
pub const QUEUE_BYTES: usize = crate::config::DEFAULT_CLUSTER_QUEUE_BYTES;
const OVERHEAD: usize = 256;

/// How long a MetaRequest sent to another instance may wait to be taken by a publisher.
const META_WAIT: Duration = Duration::from_secs(2);
/// The answer of an instance that handed a MetaRequest to one of its publishers.
const META_TAKEN: &[u8] = b"taken";

/// How long reading a resuming client's missed events from JetStream may take.
const RESUME_READ: Duration = Duration::from_secs(10);

/// How long, beyond the close grace, events from closing connections are still shared at
/// shutdown.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);

/// How long the last flush at shutdown may take.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// One event on its way to the other instances.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    frame: Utf8Bytes,
}

impl Outgoing {
    fn cost(&self) -> usize {
        self.frame.len() + self.subject.len() + OVERHEAD
    }
}

/// The instance's side of the cluster: where forwarded events go.
pub struct Cluster {
    prefix: String,
    instance: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued in `tx`, bounded by `queue_bytes`.
    queued: Arc<AtomicUsize>,
    queue_bytes: usize,
    /// The NATS link is up (from the client's events).
    connected: Arc<AtomicBool>,
    /// Our subscriptions are known to the server (set once, after the first flush).
    subscribed: Arc<AtomicBool>,
    /// The history in JetStream, once its stream is known (never, if the server has no
    /// JetStream or the history is off).
    history: OnceLock<JetStreamHistory>,
    history_limits: Option<(usize, Duration)>,
    /// The NATS client, once made: MetaRequests are sent as requests on it.
    client: OnceLock<async_nats::Client>,
    /// Told when `client` is set.
    client_made: tokio::sync::Notify,
}

/// The cluster's history: one JetStream stream on the `<prefix>.h.>` subjects. Every instance
/// delivers events to all or to a user from its own consumer of it, so positions (the stream's
/// sequence numbers) are the same on every instance, and a client resumes on any of them.
#[derive(Clone)]
pub struct JetStreamHistory {
    epoch: Box<str>,
    stream: jetstream::stream::Stream,
    client: async_nats::Client,
    filter: String,
    prefix: String,
}

/// The receiving end, handed to [`run`].
pub struct ClusterTask {
    url: String,
    rx: mpsc::UnboundedReceiver<Outgoing>,
}

impl Cluster {
    /// A cluster handle and its task, for `url` (one or more NATS URLs, comma separated).
    pub fn new(url: &str, prefix: &str, instance: &str) -> (Cluster, ClusterTask) {
        Self::with_queue(url, prefix, instance, QUEUE_BYTES, None)
    }

    /// The same with a queue of `queue_bytes`.
    pub fn with_queue(
        url: &str,
        prefix: &str,
        instance: &str,
        queue_bytes: usize,
        history: Option<(usize, Duration)>,
    ) -> (Cluster, ClusterTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let prefix = if prefix.is_empty() { "broker" } else { prefix };
        (
            Cluster {
                prefix: prefix.to_string(),
                instance: instance.to_string(),
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                queue_bytes,
                connected: Arc::new(AtomicBool::new(false)),
                subscribed: Arc::new(AtomicBool::new(false)),
                history: OnceLock::new(),
                history_limits: history,
                client: OnceLock::new(),
                client_made: tokio::sync::Notify::new(),
            },
            ClusterTask {
                url: url.to_string(),
                rx,
            },
        )
    }

    /// The NATS client, once the cluster's task has made it (the fleet's admin requests use it
    /// too).
    pub async fn client(&self) -> async_nats::Client {
        loop {
            let made = self.client_made.notified();
            if let Some(c) = self.client.get() {
                return c.clone();
            }
            made.await;
        }
    }

    /// The subject prefix the instances of this deployment share.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Connected, with our subscriptions in place: events flow both ways.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }

    /// Sends a MetaRequest (`forwarded`: with the sender's `from`) to a publisher on another
    /// instance, for a client of this one that has none here. The instances with publishers
    /// take turns (a NATS queue group); if none takes it, `conn` gets a `no_publisher` error
    /// event. Returns false when NATS is not there to ask.
    pub fn forward_meta(
        &self,
        metrics: &Metrics,
        tasks: &TaskTracker,
        conn: Arc<Conn>,
        forwarded: Utf8Bytes,
    ) -> bool {
        let Some(client) = self.client.get().filter(|_| self.is_connected()).cloned() else {
            return false;
        };
        let subject = format!("{}.meta", self.prefix);
        let unanswered = metrics
            .decode_errors
            .with_label_values(&[ErrorReason::NoPublisher.label()]);
        tasks.spawn(async move {
            let asked = tokio::time::timeout(
                META_WAIT,
                client.request(subject, forwarded.as_bytes().to_vec().into()),
            )
            .await;
            let taken = matches!(&asked, Ok(Ok(reply)) if reply.payload.as_ref() == META_TAKEN);
            if !taken {
                let err = EventError::new(
                    Some(EventType::META_REQUEST),
                    ErrorReason::NoPublisher,
                    "no publisher is connected to any instance to answer a MetaRequest",
                );
                unanswered.inc();
                conn.offer(&WireFrame::text(&err.to_frame()));
            }
        });
        true
    }

    /// The history in JetStream, once it is ready.
    pub fn history(&self) -> Option<&JetStreamHistory> {
        self.history.get()
    }

    /// Puts an event to all or to a user into the JetStream history; every instance (this
    /// one too) delivers it from there, with its position. `except` is the wire id of the
    /// connection that sent it. Returns false when it could not be (the caller delivers it
    /// here without a position and counts it).
    pub fn publish_history(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        label: &str,
        except: Option<&str>,
    ) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(H_INSTANCE, self.instance.as_str());
        headers.insert(H_TYPE, label);
        if let Some(except) = except {
            headers.insert(H_EXCEPT, except);
        }
        let subject = match target {
            Target::All { .. } => format!("{}.h.all", self.prefix),
            Target::User { user, .. } => {
                headers.insert(H_USER, *user);
                format!("{}.h.user", self.prefix)
            }
            Target::Connection(_) => return false,
        };
        self.enqueue(subject, headers, frame)
    }

    /// Shares an event that was just delivered here with the other instances. Returns false
    /// when it could not be (NATS down, or the queue full); the caller counts it.
    pub fn forward(&self, target: &Target<'_>, frame: &Utf8Bytes, label: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(H_INSTANCE, self.instance.as_str());
        headers.insert(H_TYPE, label);
        let subject = match target {
            Target::All { .. } => format!("{}.all", self.prefix),
            Target::User { user, .. } => {
                headers.insert(H_USER, *user);
                format!("{}.user", self.prefix)
            }
            Target::Connection(wire_id) => {
                let Some((instance, _)) = Registry::parse_wire_id(wire_id) else {
                    return true;
                };
                if instance == self.instance {
                    return true;
                }
                headers.insert(H_TO, *wire_id);
                format!("{}.conn.{instance}", self.prefix)
            }
        };
        self.enqueue(subject, headers, frame)
    }

    fn enqueue(&self, subject: String, headers: HeaderMap, frame: &Utf8Bytes) -> bool {
        if !self.is_connected() {
            return false;
        }
        let msg = Outgoing {
            subject,
            headers,
            frame: frame.clone(),
        };
        let cost = msg.cost();
        let within = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + cost <= self.queue_bytes).then_some(q + cost)
            })
            .is_ok();
        if !within {
            return false;
        }
        if self.tx.send(msg).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Bytes waiting to be published.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether a local delivery to `target` should also go to the cluster.
    pub fn wants(&self, target: &Target<'_>, registry: &Registry) -> bool {
        match target {
            Target::Connection(wire_id) => registry.get_wire(wire_id).is_none(),
            _ => true,
        }
    }
}

/// Connects to NATS (retrying for ever), subscribes, and moves events both ways until
/// shutdown.
pub async fn run(task: ClusterTask, host: Arc<dyn Host>) {
    let shared = host;
    let Some(cluster) = shared.cluster() else {
        return;
    };
    let connected = cluster.connected.clone();
    let subscribed = cluster.subscribed.clone();
    let gauge = shared.metrics().cluster_connected.clone();
    let options = async_nats::ConnectOptions::new()
        .name(format!("broker-{}", cluster.instance))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| Duration::from_millis((100 * attempt as u64).min(2000)))
        .event_callback(move |event| {
            let connected = connected.clone();
            let subscribed = subscribed.clone();
            let gauge = gauge.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.store(true, Ordering::Relaxed);
                        gauge.set(i64::from(subscribed.load(Ordering::Relaxed)));
                        tracing::info!(
                            "cluster: connected to NATS, sharing events with the other instances"
                        );
                    }
                    async_nats::Event::Disconnected => {
                        connected.store(false, Ordering::Relaxed);
                        gauge.set(0);
                        tracing::warn!(
                            "cluster: lost NATS; serving local clients only until it returns"
                        );
                    }
                    other => tracing::debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
    let client = match options.connect(task.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, url = %task.url, "cluster: cannot use NATS; running standalone");
            return;
        }
    };
    let _ = cluster.client.set(client.clone());
    cluster.client_made.notify_waiters();
    let m = shared.metrics();
    let (out, inn, dropped) = (
        m.cluster_messages.with_label_values(&["out"]),
        m.cluster_messages.with_label_values(&["in"]),
        m.cluster_messages.with_label_values(&["dropped"]),
    );
    // Publishing: its own task, so that a publish waiting on a slow or absent NATS never holds
    // up delivery of what comes in.
    let publishing = tokio::spawn({
        let client = client.clone();
        let shared = shared.clone();
        let mut rx = task.rx;
        async move {
            let Some(cluster) = shared.cluster() else {
                return;
            };
            // At shutdown, what the last connections send (a publisher on a draining
            // instance) is still shared until they are gone, within a bound.
            let linger = shared.close_grace() + SHUTDOWN_LINGER;
            let mut stop_by = None;
            loop {
                let msg = if shared.shutdown().is_cancelled() {
                    let deadline =
                        *stop_by.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    tokio::time::timeout_at(deadline, next_while_open(&mut rx, &*shared))
                        .await
                        .ok()
                        .flatten()
                } else {
                    tokio::select! {
                        () = shared.shutdown().cancelled() => continue,
                        msg = rx.recv() => msg,
                    }
                };
                let Some(msg) = msg else { break };
                cluster.queued.fetch_sub(msg.cost(), Ordering::AcqRel);
                let publish =
                    client.publish_with_headers(msg.subject, msg.headers, msg.frame.into());
                let sent = match stop_by {
                    Some(deadline) => tokio::time::timeout_at(deadline, publish)
                        .await
                        .map_err(|_| "the shutdown deadline passed".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    None => publish.await.map_err(|e| e.to_string()),
                };
                match sent {
                    Ok(()) => out.inc(),
                    Err(e) => {
                        dropped.inc();
                        tracing::debug!(error = %e, "cluster: publish failed");
                    }
                }
            }
        }
    });
    let prefix = &cluster.prefix;
    let mut subscriptions = Vec::new();
    for subject in [
        format!("{prefix}.all"),
        format!("{prefix}.user"),
        format!("{prefix}.conn.{}", cluster.instance),
    ] {
        match client.subscribe(subject.clone()).await {
            Ok(s) => subscriptions.push(s),
            Err(e) => {
                tracing::error!(error = %e, subject, "cluster: cannot subscribe; running standalone");
                publishing.abort();
                return;
            }
        }
    }
    // One round trip makes sure the server has our subscriptions before we say we are in.
    // (On a reconnect the client sends them again before it reports Connected.) While NATS is
    // unreachable this waits, and shutdown does not wait for it.
    loop {
        let flushed = tokio::select! {
            () = shared.shutdown().cancelled() => return,
            r = client.flush() => r.is_ok(),
        };
        if flushed {
            break;
        }
        tokio::select! {
            () = shared.shutdown().cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    cluster.subscribed.store(true, Ordering::Relaxed);
    shared
        .metrics()
        .cluster_connected
        .set(i64::from(cluster.connected.load(Ordering::Relaxed)));
    let live = match cluster.history_limits {
        Some(limits) => match open_history(&client, prefix, limits).await {
            Ok(history) => {
                tracing::info!(stream = %history.stream.cached_info().config.name, epoch = %history.epoch, "cluster: history in JetStream; clients resume on any instance");
                Some(tokio::spawn(live_history(history, shared.clone())))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: no JetStream history (run nats-server with -js); each instance keeps its own, and a client resumes only where it was");
                None
            }
        },
        None => None,
    };
    let meta = tokio::spawn(take_meta_requests(client.clone(), shared.clone()));
    let mut incoming = futures_util::stream::select_all(subscriptions);
    loop {
        tokio::select! {
            () = shared.shutdown().cancelled() => break,
            msg = incoming.next() => match msg {
                Some(msg) => {
                    inn.inc();
                    deliver_incoming(&*shared, msg);
                }
                None => break,
            },
        }
    }
    let _ = publishing.await;
    let _ = meta.await;
    if let Some(live) = live {
        let _ = live.await;
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, client.flush()).await;
}

/// The next queued event, while connections remain to send one; `None` once they are all gone
/// and the queue is empty.
async fn next_while_open(
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    shared: &dyn Host,
) -> Option<Outgoing> {
    loop {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if shared.registry().is_empty() => return None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// While this instance has a publisher, takes MetaRequests from clients of instances that
/// have none (a queue group: one instance takes each) and hands each to a local publisher.
async fn take_meta_requests(client: async_nats::Client, shared: Arc<dyn Host>) {
    let Some(cluster) = shared.cluster() else {
        return;
    };
    let subject = format!("{}.meta", cluster.prefix);
    let mut publishers = shared.registry().watch_publishers();
    loop {
        // Wait for a publisher.
        let have = tokio::select! {
            () = shared.shutdown().cancelled() => return,
            r = async { publishers.wait_for(|n| *n > 0).await.is_ok() } => r,
        };
        if !have {
            return;
        }
        let mut sub = match client
            .queue_subscribe(subject.clone(), format!("{}-meta", cluster.prefix))
            .await
        {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot take MetaRequests from other instances");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shared.shutdown().cancelled() => return,
                none = async { publishers.wait_for(|n| *n == 0).await.is_ok() } => {
                    if !none { return; }
                    let _ = sub.unsubscribe().await;
                    break;
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let taken = match (shared.registry().pick_publisher(), Utf8Bytes::try_from(msg.payload)) {
                        (Some(publisher), Ok(frame)) => publisher.offer(&WireFrame::text(&frame)),
                        _ => false,
                    };
                    if let Some(reply) = msg.reply {
                        let answer: &'static [u8] = if taken { META_TAKEN } else { b"none" };
                        let _ = client.publish(reply, answer.into()).await;
                    }
                }
            }
        }
    }
}

/// The history stream (created if it is not there yet) and its epoch.
async fn open_history(
    client: &async_nats::Client,
    prefix: &str,
    (max_bytes, max_age): (usize, Duration),
) -> Result<JetStreamHistory, String> {
    let js = jetstream::new(client.clone());
    let filter = format!("{prefix}.h.>");
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: format!("{}-history", prefix.replace('.', "-")),
            subjects: vec![filter.clone()],
            max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            max_age,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let created = stream.info().await.map_err(|e| e.to_string())?.created;
    Ok(JetStreamHistory {
        epoch: format!("{:x}", created.unix_timestamp_nanos()).into(),
        stream,
        client: client.clone(),
        filter,
        prefix: prefix.to_string(),
    })
}

/// Delivers what the history stream takes, in its order, to this instance's clients, with
/// positions. The history is announced ready once this consumer exists.
async fn live_history(history: JetStreamHistory, shared: Arc<dyn Host>) {
    let Some(cluster) = shared.cluster() else {
        return;
    };
    let inn = shared.metrics().cluster_messages.with_label_values(&["in"]);
    let mut next = jetstream::consumer::DeliverPolicy::New;
    loop {
        let messages = async {
            history
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: history.client.new_inbox(),
                    filter_subject: history.filter.clone(),
                    deliver_policy: next,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let mut messages = tokio::select! {
            () = shared.shutdown().cancelled() => return,
            m = messages => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot follow the history stream; retrying");
                    tokio::select! {
                        () = shared.shutdown().cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        let _ = cluster.history.set(history.clone());
        loop {
            let msg = tokio::select! {
                () = shared.shutdown().cancelled() => return,
                m = messages.next() => m,
            };
            match msg {
                Some(Ok(msg)) => {
                    let Ok(info) = msg.info() else { continue };
                    let seq = info.stream_sequence;
                    next = jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    };
                    inn.inc();
                    if let Some((target, frame)) = history.read(shared.registry(), &msg) {
                        shared.deliver_positioned(&target.as_target(), &frame, &history.epoch, seq);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cluster: the history stream's consumer failed; following it again");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Who a history event is for, owning its strings.
pub enum HistoryTarget {
    All { except: Option<u64> },
    User { user: String, except: Option<u64> },
}

impl HistoryTarget {
    pub fn as_target(&self) -> Target<'_> {
        match self {
            HistoryTarget::All { except } => Target::All { except: *except },
            HistoryTarget::User { user, except } => Target::User {
                user,
                except: *except,
            },
        }
    }

    fn scope(&self) -> Scope {
        match self {
            HistoryTarget::All { .. } => Scope::All,
            HistoryTarget::User { user, .. } => Scope::User(Arc::from(user.as_str())),
        }
    }
}

impl JetStreamHistory {
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// A history message's target and frame.
    fn read(
        &self,
        registry: &Registry,
        msg: &async_nats::Message,
    ) -> Option<(HistoryTarget, Utf8Bytes)> {
        let headers = msg.headers.as_ref()?;
        let header = |name: &str| headers.get(name).map(|v| v.as_str());
        let except = header(H_EXCEPT)
            .and_then(|w| registry.get_wire(w))
            .map(|c| c.id);
        let rest = msg.subject.as_str().strip_prefix(self.prefix.as_str())?;
        let target = match rest {
            ".h.all" => HistoryTarget::All { except },
            ".h.user" => HistoryTarget::User {
                user: header(H_USER)?.to_string(),
                except,
            },
            _ => return None,
        };
        let frame = Utf8Bytes::try_from(msg.payload.clone()).ok()?;
        Some((target, frame))
    }

    /// The stream's first and last sequence now.
    async fn bounds(&self) -> Result<(u64, u64), String> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The newest position's sequence (0 if the stream cannot be asked).
    pub async fn head(&self) -> u64 {
        self.bounds().await.map_or(0, |(_, last)| last)
    }

    /// Everything after `since` that `wants` keeps, read from the stream, or why not.
    pub async fn since(
        &self,
        registry: &Registry,
        since: &Position,
        wants: impl Fn(&Scope) -> bool,
        max_bytes: usize,
    ) -> Replay {
        let (first, head) = match self.bounds().await {
            Ok(b) => b,
            Err(e) => {
                return Replay::Incomplete {
                    reason: format!("the history could not be read: {e}"),
                    head: 0,
                }
            }
        };
        if let Some(reason) = unresumable(since, &self.epoch, first, head) {
            return Replay::Incomplete { reason, head };
        }
        if since.seq == head {
            return Replay::Complete {
                entries: Vec::new(),
                head,
            };
        }
        let read = async {
            let mut messages = self
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: self.filter.clone(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: since.seq + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut entries = Vec::new();
            let mut bytes = 0;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| e.to_string())?;
                let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
                if let Some((target, frame)) = self.read(registry, &msg) {
                    let scope = target.scope();
                    if wants(&scope) {
                        bytes += frame.len();
                        if bytes > max_bytes {
                            return Err(format!(
                                "more was missed after {since} than one resume replays ({max_bytes} bytes)"
                            ));
                        }
                        entries.push(Entry { seq, scope, frame });
                    }
                }
                if seq >= head {
                    break;
                }
            }
            Ok(entries)
        };
        match tokio::time::timeout(RESUME_READ, read).await {
            Ok(Ok(entries)) => Replay::Complete { entries, head },
            Ok(Err(reason)) => Replay::Incomplete { reason, head },
            Err(_) => Replay::Incomplete {
                reason: "the history was not read in time".into(),
                head,
            },
        }
    }
}

fn deliver_incoming(shared: &dyn Host, msg: async_nats::Message) {
    let Some(headers) = &msg.headers else {
        return;
    };
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    let Some(cluster) = shared.cluster() else {
        return;
    };
    if header(H_INSTANCE) == Some(cluster.instance.as_str()) {
        return;
    }
    let Ok(frame) = Utf8Bytes::try_from(msg.payload) else {
        return;
    };
    let target = match subject_kind(&cluster.prefix, &cluster.instance, msg.subject.as_str()) {
        Some(SubjectKind::All) => Target::All { except: None },
        Some(SubjectKind::User) => match header(H_USER) {
            Some(user) => Target::User { user, except: None },
            None => return,
        },
        Some(SubjectKind::Conn) => match header(H_TO) {
            Some(to) => Target::Connection(to),
            None => return,
        },
        None => return,
    };
    shared.deliver_local(&target, &frame);
}

#[derive(Debug, PartialEq, Eq)]
enum SubjectKind {
    All,
    User,
    Conn,
}

/// What a subject we received on is, compared whole (never by suffix: an `instanceId` of
/// `all` once made `<prefix>.conn.all` a broadcast). `node` is `<instanceId>.<run>`.
fn subject_kind(prefix: &str, node: &str, subject: &str) -> Option<SubjectKind> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    match rest {
        "all" => Some(SubjectKind::All),
        "user" => Some(SubjectKind::User),
        _ if rest.strip_prefix("conn.") == Some(node) => Some(SubjectKind::Conn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_to_nats_is_bounded_in_bytes() {
        let (c, mut task) =
            Cluster::with_queue("nats://127.0.0.1:1", "broker", "a.0123abcd", 2000, None);
        let frame = Utf8Bytes::from("x".repeat(600));
        let all = Target::All { except: None };
        assert!(
            !c.forward(&all, &frame, "echo"),
            "nothing is queued while NATS is away"
        );
        c.connected.store(true, Ordering::Relaxed);
        c.subscribed.store(true, Ordering::Relaxed);
        // 600 bytes of frame + "broker.all" + 256: two fit in 2000 bytes, a third does not.
        assert!(c.forward(&all, &frame, "echo"));
        assert!(c.forward(&all, &frame, "echo"));
        assert!(!c.forward(&all, &frame, "echo"));
        assert_eq!(c.queued_bytes(), 2 * (600 + 10 + OVERHEAD));
        // Small events still fit in what is left.
        assert!(c.forward(&all, &Utf8Bytes::from("{}"), "echo"));
        // Taking one out (as the publishing task does) makes room again.
        let msg = task.rx.try_recv().expect("queued");
        c.queued.fetch_sub(msg.cost(), Ordering::AcqRel);
        assert!(c.forward(&all, &frame, "echo"));
    }

    #[test]
    fn no_instance_id_aliases_a_broadcast_subject() {
        for id in ["all", "user", "conn", "x"] {
            let r = Registry::new(id, 2, 8);
            let node = r.instance();
            let conn_subject = format!("broker.conn.{node}");
            assert_eq!(
                subject_kind("broker", node, &conn_subject),
                Some(SubjectKind::Conn),
                "{id}"
            );
            assert_eq!(
                subject_kind("broker", node, "broker.all"),
                Some(SubjectKind::All)
            );
            assert_eq!(
                subject_kind("broker", node, "broker.user"),
                Some(SubjectKind::User)
            );
            // Another instance's connection subject, or a near miss, is nothing to us.
            assert_eq!(subject_kind("broker", node, "broker.conn.all"), None);
            assert_eq!(subject_kind("broker", node, "broker.conn.all.all"), None);
            assert_eq!(subject_kind("broker", node, "other.all"), None);
            assert_eq!(subject_kind("broker", node, "brokerx.all"), None);
        }
        // A `to` field that is not a well-formed id is never turned into a subject.
        for bad in [
            "all",
            "all.1",
            "x.*.1",
            "x.>.1",
            "a b.0123abcd.1",
            "x.0123abcd.+1",
            "x.0123ABCD.1",
        ] {
            assert!(Registry::parse_wire_id(bad).is_none(), "{bad}");
        }
        assert_eq!(
            Registry::parse_wire_id("all.0123abcd.7"),
            Some(("all.0123abcd", 7))
        );
    }
}
