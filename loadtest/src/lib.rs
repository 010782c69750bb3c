//! `loadtest`: a WebSocket capacity tester for the broker (and anything speaking its protocol).
//!
//! The binary is a thin shell over [`run`], so tests drive exactly what operators run:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! let cli = loadtest::Cli::try_parse_from([
//!     "loadtest", "--url", "ws://127.0.0.1:8080/", "--quiet", "echo", "-c", "10", "-d", "2s",
//! ])?;
//! let summary = loadtest::run(cli).await?;
//! assert_eq!(summary.messages.errors, 0);
//! # Ok(()) }
//! ```
//!
//! Layout: `cli` (options), `client` (connecting and failure labels), `fleet` (paced ramps of
//! many connections), `probe` (the `lt` field that carries sequence and send time), `stats`
//! (HDR histograms and windows), `scenario/*` (one file or directory per scenario, and
//! `scenario/skeleton.rs`, the steps they all take), `summary` (the result, for people and for
//! `--json`), `report` (SVG plots and HTML), `progress` (live bars).

pub mod agent;
pub mod cli;
pub mod client;
pub mod context;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod limits;
pub mod merge;
pub mod mix;
pub mod pool;
pub mod probe;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod server;
pub mod stages;
pub mod stats;
pub mod summary;
pub mod tls;
pub mod verdict;
pub mod workers;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

pub use cli::Cli;
use cli::Scenario;
use client::Target;
use context::{RunCtx, StopReason};
use progress::Progress;
use scenario::mixed::Phase;
use stats::Stats;
pub use summary::Summary;
use summary::{ConnectionSummary, MessageSummary, PhaseSummary};

/// Time a run gets after its hard deadline to close connections and summarise.
const WRAP_UP: Duration = Duration::from_secs(10);
/// Slack added to a scenario's planned duration to make the default hard deadline.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);
/// How long the connections left open after the last phase of a mixed run get to close.
const CLOSE_ALL: Duration = Duration::from_secs(5);

/// Runs what the command line asks for and returns its summary.
pub async fn run(cli: Cli) -> anyhow::Result<Summary> {
    run_until(cli, CancellationToken::new()).await
}

/// As [`run`], ending early (with a summary of what was measured) when `interrupt` is cancelled.
pub async fn run_until(cli: Cli, interrupt: CancellationToken) -> anyhow::Result<Summary> {
    // Fix the probe clock's epoch before any send time is computed.
    probe::now_ns();
    let worker = workers::WorkerEnv::from_env()?;
    let shard = worker.as_ref().map(|w| w.shard).unwrap_or_default();
    let progress = Progress::new(
        std::io::stderr().is_terminal() && worker.is_none(),
        cli.output.quiet || worker.is_some(),
    );
    let run_id = run_id_of(worker.as_ref(), cli.output.run_id.as_deref())?;
    if cli.output.window.is_zero() {
        bail!("--window must be above 0");
    }
    let mut thresholds = cli.output.thresholds.clone();
    if let Some(path) = &cli.output.thresholds_file {
        thresholds.extend(verdict::load_file(path)?);
    }

    let phases = match &cli.scenario {
        Scenario::Mixed(m) => Some(scenario::mixed::load(&m.file)?),
        _ => None,
    };
    let target = Arc::new(Target::new(&cli.target).await?);
    if let Some(pid) = cli.output.server_pid {
        // Fail before connecting anything when the pid cannot be read.
        server::ServerProbe::new(pid)?;
    }
    let rate = cli.target.connect_rate;
    let (peak_connections, planned) = peak_and_planned(&cli, phases.as_deref());
    let parent = worker.is_none() && (cli.target.workers > 1 || !cli.target.agents.is_empty());
    if shard.count > 1 || parent {
        let all = match &phases {
            Some(phases) => phases.iter().flat_map(|p| p.runs.iter()).collect(),
            None => vec![&cli.scenario],
        };
        for s in all {
            scenario::check_workers(s)?;
        }
    }
    let budget = cli.output.deadline.unwrap_or(planned + DEADLINE_SLACK);
    if parent {
        return run_parent(&cli, &run_id, &thresholds, budget, &progress, interrupt).await;
    }
    raise_fd_limit(
        &progress,
        peak_connections.div_ceil(shard.count) as u64 + 64,
    );

    let cancel = CancellationToken::new();
    let deadline_hit = Arc::new(AtomicBool::new(false));
    let watchdog = watchdog(budget, &cancel, &deadline_hit, &interrupt);
    let env = Env {
        target,
        cancel: cancel.clone(),
        deadline_hit,
        progress: progress.clone(),
        window: cli.output.window,
        // Each worker ramps its share at its share of the rate: together, the rate asked for.
        connect_rate: rate / shard.count as f64,
        server_pid: cli.output.server_pid,
        shard,
        link: worker.as_ref().map(|_| workers::Link::start()),
        // A later phase takes over the connections of the phase before that it asks for.
        pool: phases.as_ref().map(|_| Arc::new(pool::Pool::new())),
    };
    let result = run_within(&env, &cli, phases.as_deref(), &run_id, budget).await;
    cancel.cancel();
    let _ = watchdog.await;
    let summary = result?;
    let mut summary = summary;
    summary.verdict = Some(verdict::judge(&summary, &thresholds));
    write_report(&cli, &progress, &summary)?;
    Ok(summary)
}

/// The run in this process (one scenario, or the phases of a mixed run), given up on `WRAP_UP`
/// after its hard deadline.
async fn run_within(
    env: &Env,
    cli: &Cli,
    phases: Option<&[Phase]>,
    run_id: &str,
    budget: Duration,
) -> anyhow::Result<Summary> {
    let work = async {
        match phases {
            Some(phases) => run_phases(env, phases, run_id).await,
            None => run_one(env, &cli.scenario, run_id, cli.scenario.name()).await,
        }
    };
    match tokio::time::timeout(budget + WRAP_UP, work).await {
        Ok(summary) => summary,
        Err(_) => bail!(
            "the run did not wrap up within {WRAP_UP:?} after its hard deadline ({budget:?}); \
             the server is probably not answering"
        ),
    }
}

/// `--workers N`: starts the workers, merges their summaries, judges the whole.
async fn run_parent(
    cli: &Cli,
    run_id: &str,
    thresholds: &[verdict::Threshold],
    budget: Duration,
    progress: &Progress,
    interrupt: CancellationToken,
) -> anyhow::Result<Summary> {
    if cli.argv.is_empty() {
        bail!("--workers needs the loadtest program itself (its arguments are passed on)");
    }
    let agents = workers::Agents {
        addrs: cli.target.agents.clone(),
        token: cli.target.agent_token.clone().unwrap_or_default(),
    };
    let n = usize::from(cli.target.workers).max(agents.addrs.len());
    if agents.addrs.is_empty() {
        progress.note(&format!("starting {n} worker processes, run {run_id}"));
    } else {
        if agents.token.is_empty() {
            bail!("--agents needs --agent-token (or LOADTEST_AGENT_TOKEN): the agents' --token");
        }
        progress.note(&format!(
            "starting {n} workers on {} agents, run {run_id}",
            agents.addrs.len()
        ));
    }
    // The workers keep their own deadline; this one only ends workers that stopped answering.
    let limit = budget + WRAP_UP * 2;
    let (parts, notes) =
        workers::run_parent(&cli.argv, run_id, n, limit, interrupt, &agents).await?;
    let finished = parts.len();
    let mut summary = merge::merge(parts);
    summary.notes.push(format!(
        "{finished} of {n} worker processes reported{}; figures merged (histograms exactly)",
        if agents.addrs.is_empty() {
            String::new()
        } else {
            format!(" from {} agents", agents.addrs.len())
        }
    ));
    summary.notes.extend(notes);
    summary.verdict = Some(verdict::judge(&summary, thresholds));
    write_report(cli, progress, &summary)?;
    Ok(summary)
}

/// `--report DIR`: writes the report of `summary`.
fn write_report(cli: &Cli, progress: &Progress, summary: &Summary) -> anyhow::Result<()> {
    if let Some(dir) = &cli.output.report {
        let index = report::write(dir, summary)?;
        progress.note(&format!("report written to {}", index.display()));
    }
    Ok(())
}

/// The run id: the parent's for a worker, `--run-id` when given (checked), else a new one.
fn run_id_of(worker: Option<&workers::WorkerEnv>, asked: Option<&str>) -> anyhow::Result<String> {
    Ok(match (worker, asked) {
        (Some(w), _) => w.run_id.clone(),
        (None, Some(id)) => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!("--run-id may hold only letters, digits, '-', '_' and '.'");
            }
            id.to_owned()
        }
        (None, None) => new_run_id(),
    })
}

/// The most connections held at once (for the open-file limit) and how long the run should
/// take (for the default hard deadline): a mixed run's phases one after another, the runs of
/// one phase side by side.
fn peak_and_planned(cli: &Cli, phases: Option<&[Phase]>) -> (usize, Duration) {
    let (rate, timeout) = (cli.target.connect_rate, cli.target.connect_timeout);
    match phases {
        Some(phases) => phases.iter().fold((0, Duration::ZERO), |(c, d), p| {
            (
                c.max(p.runs.iter().map(scenario::connections).sum()),
                d + p
                    .runs
                    .iter()
                    .map(|s| scenario::planned(s, rate, timeout))
                    .max()
                    .unwrap_or_default(),
            )
        }),
        None => (
            scenario::connections(&cli.scenario),
            scenario::planned(&cli.scenario, rate, timeout),
        ),
    }
}

/// Raises the open-file limit to `wanted`, with a warning when that is not possible.
fn raise_fd_limit(progress: &Progress, wanted: u64) {
    match limits::raise_fd_limit(wanted) {
        Ok(limit) if limit < wanted => progress.note(&format!(
            "warning: open-file limit is {limit}, below the {wanted} this run needs; \
             expect `fd_limit` connection failures"
        )),
        Ok(_) => {}
        Err(e) => progress.note(&format!(
            "warning: could not read or raise the open-file limit: {e}"
        )),
    }
}

/// Cancels `cancel` at the hard deadline (`budget`, noting that in `deadline_hit`) or on
/// `interrupt`, whichever comes first; ends when `cancel` is cancelled otherwise.
fn watchdog(
    budget: Duration,
    cancel: &CancellationToken,
    deadline_hit: &Arc<AtomicBool>,
    interrupt: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (cancel, deadline_hit, interrupt) =
        (cancel.clone(), deadline_hit.clone(), interrupt.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(budget) => deadline_hit.store(true, Ordering::Relaxed),
            _ = interrupt.cancelled() => {}
            _ = cancel.cancelled() => {}
        }
        cancel.cancel();
    })
}

/// What all runs of one invocation share.
struct Env {
    target: Arc<Target>,
    cancel: CancellationToken,
    deadline_hit: Arc<AtomicBool>,
    progress: Progress,
    window: Duration,
    connect_rate: f64,
    server_pid: Option<u32>,
    shard: workers::Shard,
    link: Option<Arc<workers::Link>>,
    pool: Option<Arc<pool::Pool>>,
}

async fn run_one(
    env: &Env,
    scenario: &Scenario,
    run_id: &str,
    label: &str,
) -> anyhow::Result<Summary> {
    let (primary, secondary) = scenario::measures(scenario);
    let stats =
        Arc::new(Stats::new(primary, secondary).with_extra(scenario::extra_measure(scenario)));
    let ctx = RunCtx {
        target: env.target.clone(),
        stats: stats.clone(),
        cancel: env.cancel.clone(),
        run_id: run_id.to_owned(),
        connect_rate: env.connect_rate,
        tracker: env.progress.track(label, stats.clone()),
        deadline_hit: env.deadline_hit.clone(),
        server: env
            .server_pid
            .map(server::ServerProbe::new)
            .transpose()?
            .map(Arc::new),
        shard: env.shard,
        link: env.link.clone(),
        pool: env.pool.clone(),
    };
    let sampler = {
        let (stats, window) = (stats.clone(), env.window);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
            loop {
                tick.tick().await;
                stats.sample_window();
            }
        })
    };
    let outcome = scenario::run(&ctx, scenario).await;
    sampler.abort();
    stats.sample_final(env.window / 4);
    let mut summary = Summary::from_run(&ctx, scenario.name(), outcome?);
    summary.server = ctx.server.as_ref().map(|s| s.finish());
    Ok(summary)
}

async fn run_phases(env: &Env, phases: &[Phase], run_id: &str) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut done = Vec::with_capacity(phases.len());
    let with_key = env.target.api_key().is_some();
    for (i, phase) in phases.iter().enumerate() {
        if env.cancel.is_cancelled() {
            break;
        }
        // Keep what this phase will ask for of the connections the phase before left open,
        // and let this phase's runs leave open what the next one will ask for.
        if let Some(pool) = &env.pool {
            let wanted = |p: Option<&Phase>| -> Vec<pool::Key> {
                p.iter()
                    .flat_map(|p| p.runs.iter())
                    .flat_map(|s| scenario::wanted(s, env.shard, with_key))
                    .collect()
            };
            pool.begin_phase(&wanted(Some(phase)), &wanted(phases.get(i + 1)));
        }
        let runs = phase.runs.iter().enumerate().map(|(j, s)| {
            let id = format!("{run_id}-p{}r{}", i + 1, j + 1);
            let label = format!("{}/{}", phase.name, s.name());
            async move { run_one(env, s, &id, &label).await }
        });
        let results = futures_util::future::join_all(runs).await;
        if let Some(pool) = &env.pool {
            pool.end_phase();
        }
        let runs = match results.into_iter().collect::<anyhow::Result<_>>() {
            Ok(runs) => runs,
            Err(e) => {
                if let Some(pool) = &env.pool {
                    pool.close_all(CLOSE_ALL).await;
                }
                return Err(e);
            }
        };
        done.push(PhaseSummary {
            name: phase.name.clone(),
            runs,
        });
    }
    if let Some(pool) = &env.pool {
        pool.close_all(CLOSE_ALL).await;
    }
    Ok(mixed_summary(env, run_id, started, done))
}

/// The summary of a mixed run: its phases' summaries, and their figures added up.
fn mixed_summary(env: &Env, run_id: &str, started: Instant, done: Vec<PhaseSummary>) -> Summary {
    let stopped_by = if !env.cancel.is_cancelled() {
        StopReason::Completed
    } else if env.deadline_hit.load(Ordering::Relaxed) {
        StopReason::Deadline
    } else {
        StopReason::Interrupted
    };
    // Runs of one phase overlap: a phase lasts as long as its longest run.
    let measured: f64 = done
        .iter()
        .map(|p| p.runs.iter().map(|s| s.measured_s).fold(0.0, f64::max))
        .sum();
    let (connections, mut messages, errors) = add_up(done.iter().flat_map(|p| p.runs.iter()));
    if measured > 0.0 {
        messages.sent_per_s = messages.sent as f64 / measured;
        messages.received_per_s = messages.received as f64 / measured;
    }
    Summary {
        scenario: "mixed".into(),
        run_id: run_id.to_owned(),
        url: env.target.url().to_owned(),
        target_addr: env.target.addrs(),
        elapsed_s: started.elapsed().as_secs_f64(),
        measured_s: measured,
        stopped_by,
        connections,
        messages,
        delivery: None,
        latency: Default::default(),
        errors,
        drift: None,
        notes: Vec::new(),
        windows: Vec::new(),
        phases: done,
        server: None,
        failover: None,
        verdict: None,
        hdr: Default::default(),
        histograms: Vec::new(),
    }
}

/// The connection and message figures (rates aside) and the errors of `runs`, added up.
fn add_up<'a>(
    runs: impl Iterator<Item = &'a Summary>,
) -> (
    ConnectionSummary,
    MessageSummary,
    std::collections::BTreeMap<String, u64>,
) {
    let mut connections = ConnectionSummary::default();
    let mut messages = MessageSummary::default();
    let mut errors = std::collections::BTreeMap::new();
    for s in runs {
        connections.target = connections.target.max(s.connections.target);
        connections.established += s.connections.established;
        connections.failed += s.connections.failed;
        connections.dropped += s.connections.dropped;
        connections.reconnects += s.connections.reconnects;
        connections.reused += s.connections.reused;
        connections.peak_open = connections.peak_open.max(s.connections.peak_open);
        for (k, v) in &s.connections.failures {
            *connections.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &s.connections.drops {
            *connections.drops.entry(k.clone()).or_default() += v;
        }
        messages.sent += s.messages.sent;
        messages.received += s.messages.received;
        messages.errors += s.messages.errors;
        for (k, v) in &s.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    (connections, messages, errors)
}

/// A short run identifier from the clock and the process id (no randomness source needed).
fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("{:08x}", mixed & 0xffff_ffff_ffff)
}
