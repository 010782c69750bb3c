//! What one `broadcast` or `publish` run will do, checked before anything connects: this
//! worker's share of listeners, publishers and events, the event (or the `--mix`), the stages,
//! how many listeners pause.

use std::sync::Arc;
use std::time::Duration;

use super::Transport;
use crate::cli::DeliveryArgs;
use crate::client::Role;
use crate::context::RunCtx;
use crate::identity::Identities;
use crate::mix::Mix;
use crate::probe::{self, Encoder};
use crate::stages::Stages;

pub(super) struct Plan<'a> {
    pub(super) args: &'a DeliveryArgs,
    pub(super) transport: Transport,
    /// This worker's listeners and publishers, as (first, count) of all workers' (with
    /// `--workers`, this process runs its share; alone, all of them).
    pub(super) listeners: (usize, usize),
    pub(super) publishers: (usize, usize),
    /// This worker's share of `--messages`.
    pub(super) messages: Option<u64>,
    pub(super) encoder: Encoder,
    pub(super) stages: Option<Arc<Stages>>,
    /// How long the send phase lasts: `--duration`, or as long as the stages.
    pub(super) send_for: Duration,
    pub(super) identities: Option<Arc<Identities>>,
    pub(super) mix: Option<Arc<Mix>>,
    /// Listeners that pause (`--pause-share`), of all workers'.
    pub(super) paused: usize,
}

impl<'a> Plan<'a> {
    pub(super) fn new(
        ctx: &RunCtx,
        args: &'a DeliveryArgs,
        transport: Transport,
    ) -> anyhow::Result<Self> {
        check(args, &transport)?;
        let shard = ctx.shard;
        let (p_first, p_count) = shard.part(args.publishers);
        let event = match &args.event {
            Some(text) => probe::parse_event(text)?,
            None => probe::echo_event(args.message_size, true),
        };
        let stages = (!args.stage.is_empty()).then(|| Arc::new(Stages(args.stage.clone())));
        let identities = ctx.target.identities().cloned();
        let mix = if args.mix.is_empty() {
            None
        } else {
            Some(Arc::new(mix(ctx, args, &transport, identities.clone())?))
        };
        Ok(Plan {
            args,
            listeners: shard.part(args.listeners),
            publishers: (p_first, p_count),
            messages: args
                .messages
                .map(|m| shard.part_along(m, p_first, p_count, args.publishers)),
            encoder: Encoder::new(&event, &ctx.run_id),
            send_for: stages.as_ref().map_or(args.duration, |s| s.total()),
            stages,
            identities,
            mix,
            paused: args.pause.paused_count(args.listeners),
            transport,
        })
    }

    /// The mix when it has user or connection events: what each listener expects then depends
    /// on who it is.
    pub(super) fn targeted(&self) -> Option<&Arc<Mix>> {
        self.mix.as_ref().filter(|m| m.is_targeted())
    }

    /// The mix when it has connection events: the listeners must learn their connection ids.
    pub(super) fn with_ids(&self) -> Option<&Arc<Mix>> {
        self.mix.as_ref().filter(|m| m.has_connection_events())
    }

    /// The user of listener `l`, with per-connection identities.
    pub(super) fn user_of(&self, l: usize) -> Option<usize> {
        self.identities.as_ref().map(|ids| ids.user_of(l))
    }

    /// Publishers of this worker that are WebSocket connections.
    pub(super) fn ws_publishers(&self) -> usize {
        match self.transport {
            Transport::Ws(_) => self.publishers.1,
            Transport::Http { .. } => 0,
        }
    }
}

/// Refuses the options that do not go together.
fn check(args: &DeliveryArgs, transport: &Transport) -> anyhow::Result<()> {
    if args.publishers == 0 {
        anyhow::bail!("--publishers must be at least 1");
    }
    match (args.in_flight, transport) {
        (Some(0), _) => anyhow::bail!("--in-flight must be at least 1"),
        (Some(_), Transport::Http { .. }) => {
            anyhow::bail!("--in-flight needs WebSocket publishers (not `--via http`)")
        }
        _ => {}
    }
    let paused = args.pause.paused_count(args.listeners);
    if args.in_flight.is_some() && paused > 0 && paused == args.listeners {
        anyhow::bail!(
            "--in-flight needs at least one listener that does not pause (lower --pause-share)"
        );
    }
    Ok(())
}

/// `--mix`: parsed, and refused where the transport cannot address its targets.
fn mix(
    ctx: &RunCtx,
    args: &DeliveryArgs,
    transport: &Transport,
    identities: Option<Arc<Identities>>,
) -> anyhow::Result<Mix> {
    let users = identities
        .as_ref()
        .map_or(0, |ids| ids.user_count(args.listeners));
    let mix = Mix::parse(&args.mix, args.message_size, &ctx.run_id, identities, users)?;
    if mix.has_user_events() && matches!(transport, Transport::Ws(Role::Client)) {
        anyhow::bail!(
            "--mix target=user needs publishers (--api-key): clients cannot address a user"
        );
    }
    if mix.has_connection_events() && ctx.target.api_key().is_none() {
        anyhow::bail!(
            "--mix target=connection needs --api-key: only publishers can address a \
             connection, and the listeners learn their connection ids from the tool's own \
             publisher connection"
        );
    }
    Ok(mix)
}
