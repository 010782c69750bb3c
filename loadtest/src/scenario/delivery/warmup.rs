//! The warm-up: unmeasured events until every listener has seen one, so that the measured events
//! do not miss listeners the server has not registered for fan-out yet.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::listeners::Listen;
use super::publishers::drain_reads;
use super::Transport;
use crate::client::{self, Ws};
use crate::context::RunCtx;
use crate::http;
use crate::probe::{self, Encoder, Kind};

/// Give up on the warm-up after this long, plus a second per 10,000 listeners (the run goes on,
/// with a note).
const WARMUP_LIMIT: Duration = Duration::from_secs(5);
/// A warm-up event is re-sent after this long, then twice as long each time (at most
/// [`WARMUP_RESEND_MAX`]) until every listener has seen one: with 100,000 listeners one warm-up
/// is 100,000 deliveries, and re-sending it ten times a second would bury the server.
const WARMUP_RESEND: Duration = Duration::from_millis(100);
const WARMUP_RESEND_MAX: Duration = Duration::from_secs(2);

/// Something that can send one event: a WebSocket or an HTTP publisher.
enum WarmSender {
    Ws(
        futures_util::stream::SplitSink<Ws, Message>,
        tokio::task::JoinHandle<Option<futures_util::stream::SplitStream<Ws>>>,
    ),
    Http(http::Publisher),
}

impl WarmSender {
    async fn open(ctx: &RunCtx, transport: &Transport, index: usize) -> Result<Self, String> {
        match transport {
            Transport::Ws(role) => {
                let (ws, _) = ctx
                    .target
                    .connect(index, *role)
                    .await
                    .map_err(|e| e.to_string())?;
                let (sink, stream) = ws.split();
                let reader = tokio::spawn(drain_reads(
                    stream,
                    ctx.stats.clone(),
                    ctx.run_id.clone(),
                    CancellationToken::new(),
                ));
                Ok(WarmSender::Ws(sink, reader))
            }
            Transport::Http { path, .. } => http::Publisher::connect(&ctx.target, index, path)
                .await
                .map(WarmSender::Http)
                .map_err(|e| e.to_string()),
        }
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        match self {
            WarmSender::Ws(sink, _) => sink
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string()),
            WarmSender::Http(p) => match p.post(text).await {
                Ok(s) if (200..300).contains(&s) => Ok(()),
                Ok(s) => Err(format!("HTTP {s}")),
                Err(e) => Err(format!("{e:?}")),
            },
        }
    }

    async fn close(self) {
        if let WarmSender::Ws(mut sink, reader) = self {
            let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, sink.close()).await;
            reader.abort();
        }
    }
}

/// Sends warm-up events until all `listeners` have seen one. Returns a note when that failed.
pub(super) async fn warmup(
    ctx: &RunCtx,
    transport: &Transport,
    encoder: &Encoder,
    listen: &Listen,
    listeners: usize,
    index: usize,
) -> Option<String> {
    if listeners == 0 {
        return None;
    }
    let mut sender = match WarmSender::open(ctx, transport, index).await {
        Ok(s) => s,
        Err(e) => return Some(format!("warm-up skipped: could not open a sender ({e})")),
    };
    let limit = Instant::now() + WARMUP_LIMIT + Duration::from_millis(listeners as u64 / 10);
    let mut resend = WARMUP_RESEND;
    let mut next_send = Instant::now();
    let mut k = 0u64;
    let mut note = None;
    loop {
        let notified = listen.warm_notify.notified();
        if listen.warmed.load(Ordering::Relaxed) >= listeners {
            break;
        }
        let now = Instant::now();
        if now >= limit || ctx.cancel.is_cancelled() {
            note = Some(format!(
                "warm-up incomplete: {} of {} listeners saw a warm-up event within {:?}; \
                 early events may have missed the others",
                listen.warmed.load(Ordering::Relaxed),
                listeners,
                WARMUP_LIMIT
            ));
            break;
        }
        if now >= next_send {
            if let Err(e) = sender
                .send(encoder.encode(Kind::Warmup, k, probe::now_ns(), None))
                .await
            {
                note = Some(format!("warm-up send failed: {e}"));
                break;
            }
            k += 1;
            next_send = now + resend;
            resend = (resend * 2).min(WARMUP_RESEND_MAX);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(next_send.min(limit).into()) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    }
    sender.close().await;
    note
}
