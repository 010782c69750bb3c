//! Connection ids, for `--mix target=connection`: the *registrars* (one publisher connection per
//! instance) answer each listener's MetaRequest with the listener's own connection id, and
//! [`learn_ids`] (the `ids` step) waits until the listeners have learnt theirs, swaps them with
//! the other workers and hands the list to the mix, which addresses connection events from it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::listeners::Listen;
use crate::client::{self, Incoming, Role, Ws};
use crate::context::RunCtx;
use crate::mix::{Mix, ID_PROPERTY};
use crate::scenario::skeleton::Notes;

/// A listener asks for its connection id again after this long without an answer (its
/// MetaRequest may have gone to a publisher that does not answer, such as another run's).
pub(super) const ID_RESEND: Duration = Duration::from_secs(1);
/// Give up waiting for the listeners' ids after this long, plus a second per 10,000 listeners.
const ID_LIMIT: Duration = Duration::from_secs(5);

/// The MetaRequest by which a listener asks for its connection id.
pub(super) fn id_request() -> String {
    format!(r#"{{"eventType":9,"property":"{ID_PROPERTY}"}}"#)
}

/// The connection id in a registrar's answer to [`id_request`], if `text` is one.
pub(super) fn id_answer(text: &str) -> Option<String> {
    if !text.contains(ID_PROPERTY) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v.get("eventType")?.as_u64()? == 9
        && v.get("property")?.as_str()? == ID_PROPERTY
        && v.get("from").is_none())
    .then(|| v.get("val")?.as_str().map(str::to_owned))
    .flatten()
}

/// The registrars: one publisher connection per instance that answers the listeners'
/// [`id_request`]s with their own connection id.
pub(super) struct Registrars {
    pub(super) stop: CancellationToken,
    pub(super) tasks: JoinSet<()>,
    /// Instances (URLs) a registrar could connect to.
    pub(super) connected: usize,
}

impl Registrars {
    /// Connects one registrar to every URL of the target; `index` picks the source address.
    pub(super) async fn open(ctx: &RunCtx, index: usize) -> (Self, Vec<String>) {
        let stop = ctx.cancel.child_token();
        let mut tasks = JoinSet::new();
        let mut notes = Vec::new();
        let mut connected = 0;
        for k in 0..ctx.target.endpoint_count() {
            match ctx.target.connect_to(k, index, Role::Publisher).await {
                Ok((ws, _)) => {
                    connected += 1;
                    tasks.spawn(registrar(ws, stop.clone()));
                }
                Err(e) => notes.push(format!(
                    "the connection-id registrar for {} could not connect: {e}",
                    ctx.target.endpoint(k).url
                )),
            }
        }
        (
            Registrars {
                stop,
                tasks,
                connected,
            },
            notes,
        )
    }

    pub(super) async fn close(mut self) {
        self.stop.cancel();
        let limit = Instant::now() + client::CLOSE_TIMEOUT + Duration::from_millis(500);
        while let Ok(Some(_)) = tokio::time::timeout_at(limit.into(), self.tasks.join_next()).await
        {
        }
        self.tasks.abort_all();
    }
}

/// One registrar: answers every [`id_request`] forwarded to it (from any listener of any run:
/// the answer only tells the asker its own id) until `stop`.
pub(super) async fn registrar(ws: Ws, stop: CancellationToken) {
    let (mut sink, mut stream) = ws.split();
    loop {
        let text = tokio::select! {
            _ = stop.cancelled() => break,
            i = client::recv(&mut stream) => match i {
                Incoming::Text(t) => t,
                Incoming::Closed(_) => return,
            },
        };
        if !text.contains(ID_PROPERTY) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let asked = v.get("eventType").and_then(serde_json::Value::as_u64) == Some(9)
            && v.get("property").and_then(serde_json::Value::as_str) == Some(ID_PROPERTY);
        let Some(from) = v
            .get("from")
            .and_then(serde_json::Value::as_str)
            .filter(|_| asked)
        else {
            continue;
        };
        let answer = serde_json::json!({
            "eventType": 9, "to": from, "property": ID_PROPERTY, "val": from,
        });
        if crate::scenario::send_text(&mut sink, answer.to_string(), &stop)
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, sink.close()).await;
    // The server's close frame.
    let _ = tokio::time::timeout(client::CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Waits until `expected` listeners have learnt their connection ids (or the limit), stops
/// the asking, and returns the ids of this worker's listeners.
async fn gather_ids(ctx: &RunCtx, listen: &Listen, expected: usize) -> Vec<(usize, String)> {
    let limit = Instant::now() + ID_LIMIT + Duration::from_millis(expected as u64 / 10);
    loop {
        let notified = listen.identified.notified();
        let have = listen.ids.lock().unwrap_or_else(|e| e.into_inner()).len();
        if have >= expected || Instant::now() >= limit || ctx.cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(limit.into()) => {}
            _ = ctx.cancel.cancelled() => {}
        }
    }
    listen.asking.store(false, Ordering::Relaxed);
    listen.ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The `ids` step: waits for the `established` listeners of this worker to learn their ids,
/// closes the registrars, and gives the mix every worker's identified listeners (what connection
/// events go to).
pub(super) async fn learn_ids(
    ctx: &RunCtx,
    listen: &Listen,
    registrars: Registrars,
    mix: &Mix,
    established: usize,
    notes: &mut Notes,
) {
    let own = if registrars.connected > 0 {
        gather_ids(ctx, listen, established).await
    } else {
        Vec::new()
    };
    let unknown = established.saturating_sub(own.len());
    if unknown > 0 {
        ctx.stats.errors_n("no_connection_id", unknown as u64);
        notes.push(format!(
            "{unknown} of {established} listeners did not learn their connection id: no \
             connection event goes to them"
        ));
    }
    let all = exchange(ctx, own, notes).await;
    if all.is_empty() {
        notes.push("no listener learnt its connection id: connection events went to no one".into());
    }
    mix.set_connections(all);
    registrars.close().await;
}

/// Every worker's publishers pick from the same list: all the workers' listeners (this one's
/// alone without workers).
async fn exchange(
    ctx: &RunCtx,
    own: Vec<(usize, String)>,
    notes: &mut Notes,
) -> Vec<(usize, String)> {
    let Some(link) = &ctx.link else {
        return own;
    };
    let key = format!("{}/ids", ctx.run_id);
    match link.exchange_ids(&key, &own, &ctx.cancel).await {
        Some(all) => all,
        None => {
            notes.push(
                "the other workers' connection ids never arrived: connection events go to \
                 this worker's listeners only"
                    .into(),
            );
            own
        }
    }
}
