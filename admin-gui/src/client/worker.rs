//! The worker's loop: takes the UI's [`Command`]s one by one, starts and ends sessions, and
//! runs the operator's actions (inject, kick, drain) next to the session, each reporting its
//! outcome.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};

use admin_api::ListFilter;

use super::http::{ApiError, Endpoint};
use super::session::{run_session, SessionInputs};
use super::{Action, Command, LinkStatus, Outbox, RangeQuery, Update};

struct Session {
    endpoint: Arc<Endpoint>,
    task: tokio::task::JoinHandle<()>,
    filter: watch::Sender<ListFilter>,
    ranges: watch::Sender<Vec<RangeQuery>>,
    retry_now: Arc<Notify>,
}

pub(super) async fn worker(mut commands: mpsc::UnboundedReceiver<Command>, out: Outbox) {
    let mut session: Option<Session> = None;
    let mut filter = ListFilter::default();
    let mut ranges: Vec<RangeQuery> = Vec::new();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Connect { url, token } => {
                if let Some(old) = session.take() {
                    old.task.abort();
                }
                out.send(Update::Reset);
                match Endpoint::new(&url, token) {
                    Ok(endpoint) => {
                        let endpoint = Arc::new(endpoint);
                        let (filter_tx, filter_rx) = watch::channel(filter.clone());
                        let (ranges_tx, ranges_rx) = watch::channel(ranges.clone());
                        let retry_now = Arc::new(Notify::new());
                        let inputs = SessionInputs {
                            filter: filter_rx,
                            watch: ranges_rx,
                            retry_now: retry_now.clone(),
                        };
                        let task = tokio::spawn(run_session(endpoint.clone(), inputs, out.clone()));
                        session = Some(Session {
                            endpoint,
                            task,
                            filter: filter_tx,
                            ranges: ranges_tx,
                            retry_now,
                        });
                    }
                    Err(message) => out.status(LinkStatus::InvalidUrl { message }),
                }
            }
            Command::Disconnect => {
                if let Some(old) = session.take() {
                    old.task.abort();
                }
                out.status(LinkStatus::Idle);
            }
            Command::RetryNow => {
                if let Some(s) = &session {
                    s.retry_now.notify_one();
                }
            }
            Command::SetFilter(f) => {
                filter = f;
                if let Some(s) = &session {
                    let _ = s.filter.send(filter.clone());
                }
            }
            Command::Watch(r) => {
                ranges = r;
                if let Some(s) = &session {
                    let _ = s.ranges.send(ranges.clone());
                }
            }
            Command::Inject { event, target } => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Inject) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep.inject(event, &target).await.map(|n| {
                        format!(
                            "Delivered to {n} recipient{}",
                            if n == 1 { "" } else { "s" }
                        )
                    });
                    out.outcome(Action::Inject, result.map_err(|e| e.to_string()));
                });
            }
            Command::Kick { id, code, reason } => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Kick) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep
                        .kick(&id, code, &reason)
                        .await
                        .map(|()| format!("Kicked {id} (close code {code})"))
                        .map_err(|e| match e {
                            ApiError::Status { status: 404, .. } => {
                                format!("{id} is no longer connected")
                            }
                            e => format!("kick {id} failed: {e}"),
                        });
                    out.outcome(Action::Kick, result);
                });
            }
            Command::Drain { instance } => {
                let Some(ep) = endpoint_or_complain(&session, &out, Action::Drain) else {
                    continue;
                };
                let out = out.clone();
                tokio::spawn(async move {
                    let result = ep
                        .drain(&instance)
                        .await
                        .map(|()| format!("Drain of {instance} started: it is closing its clients"))
                        .map_err(|e| match e {
                            ApiError::Status { status: 404, .. } => format!(
                                "drain {instance} failed: this broker cannot drain another \
                                 instance (no fleet routes), or {instance} is gone"
                            ),
                            e => format!("drain {instance} failed: {e}"),
                        });
                    out.outcome(Action::Drain, result);
                });
            }
        }
    }
    if let Some(old) = session.take() {
        old.task.abort();
    }
}

fn endpoint_or_complain(
    session: &Option<Session>,
    out: &Outbox,
    action: Action,
) -> Option<Arc<Endpoint>> {
    match session {
        Some(s) => Some(s.endpoint.clone()),
        None => {
            out.outcome(action, Err("not connected to a broker".into()));
            None
        }
    }
}
