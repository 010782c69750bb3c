//! The router: who receives an event, and handing one encoded frame to all of them, here and
//! through the cluster; and a resuming connection's replay. It owns what routing needs (the
//! connection registry, the cluster link, the history, the delivery policy) and nothing else:
//! connections and the publish API hold an `Arc<Router>`, not the whole broker.
//!
//! An event is encoded once (usually it is the sender's own bytes, untouched) and framed once
//! into a reference-counted [`WireFrame`]; every recipient's queue gets a clone of that handle,
//! so delivering to 10,000 clients costs 10,000 pointer copies, not 10,000 serializations or
//! 10,000 frame encodings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, Cluster};
use crate::config::{Config, DeliverUserEvents};
use crate::event::{self, ErrorReason, EventError, EventInfo, EventType};
use crate::handshake::Resume;
use crate::history::{self, MemoryHistory, Replay, Scope};
use crate::metrics::Metrics;
use crate::outbox::{FrameBatch, WireFrame};
use crate::registry::{Conn, Delivery, Registry};
pub use crate::target::Target;

/// Routes events: see the module's documentation.
pub struct Router {
    pub registry: Arc<Registry>,
    /// Set in cluster mode: where events are shared with the other instances.
    pub cluster: Option<Cluster>,
    /// What clients that asked for positions resume from (off when `history.maxBytes` is 0).
    pub history: Option<MemoryHistory>,
    pub metrics: Arc<Metrics>,
    deliver_user_events: DeliverUserEvents,
    send_queue_bytes: usize,
    close_grace: Duration,
    shutdown: CancellationToken,
    /// Where the router's own tasks (a MetaRequest waiting on another instance) run.
    tasks: TaskTracker,
}

impl Router {
    pub fn new(
        config: &Config,
        registry: Arc<Registry>,
        cluster: Option<Cluster>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Router {
        let history = (config.broker.history.max_bytes > 0).then(|| {
            // The epoch: this start's random part of the connection ids.
            let run = registry.instance().rsplit('.').next().unwrap_or("0");
            MemoryHistory::new(
                run,
                config.broker.history.max_bytes,
                config.broker.history.max_age(),
            )
        });
        Router {
            registry,
            cluster,
            history,
            metrics,
            deliver_user_events: config.broker.deliver_user_events,
            send_queue_bytes: config.broker.limits.send_queue_bytes,
            close_grace: config.broker.limits.close_grace(),
            shutdown,
            tasks,
        }
    }
}

/// What the cluster's task delivers into, and works with.
impl cluster::Host for Router {
    fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
    fn close_grace(&self) -> Duration {
        self.close_grace
    }
    fn deliver_local(&self, target: &Target<'_>, frame: &Utf8Bytes) -> usize {
        Router::deliver_local(self, target, frame)
    }
    fn deliver_positioned(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        epoch: &str,
        seq: u64,
    ) -> usize {
        Router::deliver_positioned(self, target, frame, epoch, seq)
    }
}

/// The replay of an ask without a position to resume from: nothing, from `head`.
fn from_head(ask: &Resume, head: u64) -> Replay {
    match ask {
        Resume::Unreadable(why) => Replay::Incomplete {
            reason: why.clone(),
            head,
        },
        _ => Replay::Complete {
            entries: Vec::new(),
            head,
        },
    }
}

/// Events to all from one read of a connection's socket, waiting to be handed out together
/// by [`Router::flush`]: framed back to back, they reach each recipient's queue as one entry
/// and its socket in one write, as a raw server writes what one read brought. Nothing is
/// allocated for a connection that sends no such event.
///
/// The connection's task flushes before it waits for anything and before anything else it
/// sends or routes, so the batch never delays an event past the end of the read that brought
/// it, and what one sender sends keeps its order.
#[derive(Default)]
pub struct Batch(Option<Box<Waiting>>);

#[derive(Default)]
struct Waiting {
    frames: FrameBatch,
    except: Option<u64>,
}

/// A batch is handed out once it holds this many bytes, whatever is still to be read.
const BATCH_BYTES: usize = 64 * 1024;

/// What became of an event from a connection.
#[derive(Debug)]
pub enum Routed {
    /// Answer the sender alone with this frame (a plain Echo).
    Reply(Utf8Bytes),
    /// Handed to this many queues.
    Delivered(usize),
}

impl Router {
    /// Delivers `frame` to `target` here and, in a cluster, on the other instances; counts it
    /// as one event of type `t`. Returns the recipients on this instance (0 for an event
    /// that goes through the cluster's JetStream history: every instance, this one too,
    /// delivers it when it comes back with its position).
    pub fn deliver(&self, target: &Target<'_>, frame: &Utf8Bytes, t: EventType) -> usize {
        self.metrics.event(t);
        let label = t.label();
        if let Some(cluster) = &self.cluster {
            if cluster.history().is_some() && !matches!(target, Target::Connection(_)) {
                let except = match target {
                    Target::All { except } | Target::User { except, .. } => *except,
                    Target::Connection(_) => None,
                };
                let except = except.and_then(|id| self.registry.get(id));
                if cluster.publish_history(
                    target,
                    frame,
                    label,
                    except.as_ref().map(|c| &*c.wire_id),
                ) {
                    return 0;
                }
                // NATS is away: delivered here only, without a position.
                self.metrics
                    .cluster_messages
                    .with_label_values(&["dropped"])
                    .inc();
                return self.fan_out(target, frame, None);
            }
        }
        let n = self.deliver_local(target, frame);
        self.share(target, frame, label);
        n
    }

    /// Sends an event delivered here to the other instances that want it (no JetStream).
    fn share(&self, target: &Target<'_>, frame: &Utf8Bytes, label: &str) {
        if let Some(cluster) = &self.cluster {
            if cluster.wants(target, &self.registry) && !cluster.forward(target, frame, label) {
                self.metrics
                    .cluster_messages
                    .with_label_values(&["dropped"])
                    .inc();
            }
        }
    }

    /// Whether events to all may wait in a [`Batch`]: not while a client that asked for
    /// positions is connected (it takes each event with its position, in the history's order),
    /// nor when the cluster's JetStream history positions every event.
    fn batches(&self) -> bool {
        !self.registry.any_positioned()
            && self.cluster.as_ref().is_none_or(|c| c.history().is_none())
    }

    /// [`Router::deliver`], except that an event to all may wait in `batch` for
    /// [`Router::flush`] (it is counted, kept in the history and sent to the other instances
    /// now). Anything else flushes the batch first. Returns the recipients reached now.
    pub fn deliver_batched(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        t: EventType,
        batch: Option<&mut Batch>,
    ) -> usize {
        let Some(batch) = batch else {
            return self.deliver(target, frame, t);
        };
        let except = match target {
            Target::All { except } if self.batches() => *except,
            _ => {
                self.flush(batch);
                return self.deliver(target, frame, t);
            }
        };
        if batch.0.as_ref().is_some_and(|w| w.except != except) {
            self.flush(batch);
        }
        self.metrics.event(t);
        if let Some(history) = &self.history {
            // Kept with its position; no client that reads positions is connected (or it
            // connected after this, and its resume starts from or replays this position).
            history.deliver(Scope::All, frame, |_| ());
        }
        let waiting = batch.0.get_or_insert_with(Default::default);
        waiting.except = except;
        waiting.frames.push_text(frame);
        let full = waiting.frames.bytes() >= BATCH_BYTES;
        self.share(target, frame, t.label());
        if full {
            self.flush(batch);
        }
        0
    }

    /// Hands the events waiting in `batch` to their recipients here, as one frame; returns how
    /// many connections took it.
    pub fn flush(&self, batch: &mut Batch) -> usize {
        let Some(waiting) = batch.0.as_mut().filter(|w| !w.frames.is_empty()) else {
            return 0;
        };
        let started = Instant::now();
        let events = waiting.frames.frames();
        let frame = waiting.frames.take();
        let (n, written) = self.registry.deliver_batch(&frame, waiting.except);
        if written > 0 {
            let m = &self.metrics;
            m.messages_sent.inc_by((written * events) as u64);
            m.bytes_sent.inc_by((written * frame.payload_len()) as u64);
        }
        // Per event, as for events handed out one by one: its share of the walk.
        let each = started.elapsed().as_secs_f64() / events as f64;
        for _ in 0..events {
            self.metrics.fanout_duration.observe(each);
            self.metrics.fanout_recipients.observe(n as f64);
        }
        n
    }

    /// Delivers `frame` to `target` on this instance only (events from other instances). An
    /// event to all or to a user is kept in the history and given a position first.
    pub fn deliver_local(&self, target: &Target<'_>, frame: &Utf8Bytes) -> usize {
        let started = Instant::now();
        let scope = match target {
            Target::All { .. } => Some(Scope::All),
            Target::User { user, .. } => Some(Scope::User(Arc::from(*user))),
            Target::Connection(_) => None,
        };
        let n = match (&self.history, scope) {
            (Some(history), Some(scope)) => history.deliver(scope, frame, |seq| {
                self.fan_out(target, frame, Some((history.epoch(), seq)))
            }),
            _ => self.fan_out(target, frame, None),
        };
        self.metrics
            .fanout_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.fanout_recipients.observe(n as f64);
        n
    }

    /// Delivers an event from the cluster's history to `target` on this instance, at `seq`.
    pub fn deliver_positioned(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        epoch: &str,
        seq: u64,
    ) -> usize {
        let started = Instant::now();
        let n = self.fan_out(target, frame, Some((epoch, seq)));
        self.metrics
            .fanout_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.fanout_recipients.observe(n as f64);
        n
    }

    /// Hands `frame` to the queues of `target` on this instance: the plain frame, and to the
    /// connections that asked for positions, the frame with `position` (made once, and only if
    /// one of them is connected).
    fn fan_out(
        &self,
        target: &Target<'_>,
        frame: &Utf8Bytes,
        position: Option<(&str, u64)>,
    ) -> usize {
        let registry = &self.registry;
        let plain = WireFrame::text(frame);
        let positioned = position
            .filter(|_| registry.any_positioned())
            .and_then(|(epoch, seq)| {
                let framed = history::with_position(frame, &format!("{epoch}-{seq}"))?;
                Some((seq, WireFrame::text(&framed)))
            });
        let d = Delivery {
            plain: &plain,
            positioned: positioned.as_ref().map(|(seq, f)| (*seq, f)),
        };
        match target {
            Target::All { except } => registry.deliver_all(d, *except),
            Target::User { user, except } => match self.deliver_user_events {
                DeliverUserEvents::All => registry.deliver_all(d, *except),
                DeliverUserEvents::Owner => registry.deliver_user(user, d, *except),
            },
            Target::Connection(wire_id) => registry
                .get_wire(wire_id)
                .map_or(0, |c| usize::from(c.offer(&plain))),
        }
    }

    /// Whether `conn` receives events meant for `scope` (as [`Self::fan_out`] decides).
    fn receives(&self, conn: &Conn, scope: &Scope) -> bool {
        match scope {
            Scope::All => true,
            Scope::User(user) => {
                conn.publisher
                    || self.deliver_user_events == DeliverUserEvents::All
                    || conn.user.as_deref() == Some(&**user)
            }
        }
    }

    /// Starts a connection that asked for positions: a recovery notice, then what it missed
    /// since the position it gave (if any) and that was meant for it, then the live stream.
    /// The history is the cluster's JetStream stream when there is one, else this instance's.
    pub async fn resume(&self, conn: &Conn, ask: &Resume) {
        let max = self.send_queue_bytes / 2;
        let wants = |scope: &Scope| self.receives(conn, scope);
        // What to replay, from whichever history there is; for a fresh or unreadable ask,
        // nothing, from the head.
        let (epoch, replay) = if let Some(js) = self.cluster.as_ref().and_then(|c| c.history()) {
            let replay = match ask {
                Resume::Since(since) => js.since(&self.registry, since, wants, max).await,
                _ => from_head(ask, js.head().await),
            };
            (js.epoch().to_string(), replay)
        } else if let Some(history) = &self.history {
            let replay = match ask {
                Resume::Since(since) => history.since(since, wants, max),
                _ => from_head(ask, history.head().seq),
            };
            (history.epoch().to_string(), replay)
        } else {
            let text = serde_json::json!({ "brokerRecovery": {
                "complete": false, "reason": "this broker keeps no history (broker.history.maxBytes is 0)"}});
            conn.offer(&WireFrame::text(&Utf8Bytes::from(text.to_string())));
            self.metrics
                .resumes
                .with_label_values(&["incomplete"])
                .inc();
            return;
        };
        let since_text = match ask {
            Resume::Since(since) => Some(since.to_string()),
            _ => None,
        };
        let notice = |recovery: serde_json::Value, at: &str| {
            let text =
                serde_json::json!({ "brokerRecovery": recovery, "brokerPosition": at }).to_string();
            WireFrame::text(&Utf8Bytes::from(text))
        };
        match replay {
            Replay::Complete { entries, head } => {
                let frames: Vec<WireFrame> = entries
                    .iter()
                    .filter_map(|e| {
                        let framed =
                            history::with_position(&e.frame, &format!("{epoch}-{}", e.seq))?;
                        Some(WireFrame::text(&framed))
                    })
                    .collect();
                // The notice comes first: its position is where a client that is cut off
                // during the replay resumes from (the replayed events carry their own).
                let at = match &since_text {
                    Some(since) if !frames.is_empty() => since.clone(),
                    _ => format!("{epoch}-{head}"),
                };
                let recovery = serde_json::json!({
                    "complete": true, "replayed": frames.len(), "since": since_text });
                conn.finish_resume(&notice(recovery, &at), &frames, head);
                self.metrics.resumes.with_label_values(&["complete"]).inc();
            }
            Replay::Incomplete { reason, head } => {
                tracing::debug!(id = %conn.wire_id, reason, "resume incomplete");
                let recovery = serde_json::json!({
                    "complete": false, "reason": reason, "since": since_text });
                conn.finish_resume(&notice(recovery, &format!("{epoch}-{head}")), &[], head);
                self.metrics
                    .resumes
                    .with_label_values(&["incomplete"])
                    .inc();
            }
        }
    }

    /// Routes an event from an ordinary client (PROTOCOL.md part 1). A broadcast may wait in
    /// `batch` (see [`Batch`]); anything else flushes it first.
    pub fn route_from_client(
        &self,
        conn: &Conn,
        info: &EventInfo,
        frame: &Utf8Bytes,
        mut batch: Option<&mut Batch>,
    ) -> Result<Routed, EventError> {
        let broadcast = info.event_type == EventType::ECHO && info.broadcast;
        if let (false, Some(batch)) = (broadcast, batch.as_deref_mut()) {
            self.flush(batch);
        }
        match info.event_type {
            EventType::ECHO if info.broadcast => Ok(Routed::Delivered(self.deliver_batched(
                &Target::All { except: None },
                frame,
                EventType::ECHO,
                batch,
            ))),
            EventType::ECHO => {
                self.metrics.event(EventType::ECHO);
                Ok(Routed::Reply(frame.clone()))
            }
            EventType::META_REQUEST => {
                let forwarded =
                    event::with_sender(frame.as_bytes(), &conn.wire_id, conn.user.as_deref())
                        .ok_or_else(|| {
                            EventError::new(
                                Some(info.event_type),
                                ErrorReason::NotObject,
                                "not an object",
                            )
                        })?;
                // A publisher here, else one on another instance (its reply, with `to`,
                // comes back through the cluster).
                if let Some(publisher) = self.registry.pick_publisher() {
                    self.metrics.event(EventType::META_REQUEST);
                    return Ok(Routed::Delivered(usize::from(
                        publisher.offer(&WireFrame::text(&forwarded)),
                    )));
                }
                let sent = match (&self.cluster, self.registry.get(conn.id)) {
                    (Some(cluster), Some(conn)) => {
                        cluster.forward_meta(&self.metrics, &self.tasks, conn, forwarded)
                    }
                    _ => false,
                };
                if !sent {
                    return Err(EventError::new(
                        Some(info.event_type),
                        ErrorReason::NoPublisher,
                        "no publisher is connected to answer a MetaRequest",
                    ));
                }
                self.metrics.event(EventType::META_REQUEST);
                Ok(Routed::Delivered(0))
            }
            t if t.is_server_event() => Err(EventError::new(
                Some(t),
                ErrorReason::NotAllowed,
                format!(
                    "eventType {} ({}) may only be sent by a publisher",
                    match t {
                        EventType::Int(n) => n,
                        EventType::Other(_) => 0,
                    },
                    t.name().unwrap_or("?")
                ),
            )),
            t => Err(EventError::new(
                Some(t),
                ErrorReason::UnknownEventType,
                format!(
                    "unknown eventType {}",
                    match t {
                        EventType::Int(n) => n.to_string(),
                        EventType::Other(f) => f.to_string(),
                    }
                ),
            )),
        }
    }

    /// Routes an event from a publisher: a publisher WebSocket (`sender`), or the HTTP
    /// publish API (`None`). Any numeric type is delivered (PROTOCOL.md part 2). An event to
    /// all may wait in `batch` (see [`Batch`]); anything else flushes it first.
    pub fn route_from_publisher(
        &self,
        sender: Option<&Conn>,
        info: &EventInfo,
        frame: &Utf8Bytes,
        batch: Option<&mut Batch>,
    ) -> Routed {
        let t = info.event_type;
        let except = sender.map(|c| c.id);
        if let Some(to) = &info.to {
            if let Some(batch) = batch {
                self.flush(batch);
            }
            return Routed::Delivered(self.deliver(&Target::Connection(to), frame, t));
        }
        if info.event_type == EventType::ECHO && !info.broadcast && sender.is_some() {
            if let Some(batch) = batch {
                self.flush(batch);
            }
            self.metrics.event(t);
            return Routed::Reply(frame.clone());
        }
        let target = match &info.username {
            _ if info.event_type == EventType::ECHO && info.broadcast => {
                Target::All { except: None }
            }
            Some(user) => Target::User { user, except },
            None => Target::All { except },
        };
        Routed::Delivered(self.deliver_batched(&target, frame, t, batch))
    }
}
