//! `--workers N`: one run driven by N processes of this binary, each under its own open-file
//! limit, reported as one.
//!
//! The parent starts N copies of itself with the same arguments and `LOADTEST_WORKER=run/i/N` in
//! their environment. Each worker takes its share of the plan ([`Shard::part`]: connections,
//! listeners, publishers, rate, message count) and runs it with the parent's run id, so a probe
//! sent by one worker is one of *this* run's probes for every other worker's listeners; event
//! sequence numbers are interleaved (`k × N + i`) so they never collide.
//!
//! The two talk in JSON lines over the worker's stdin and stdout:
//! - `ready` / `go`: a barrier. Fan-out scenarios wait at it after every worker's listeners and
//!   publishers are up, so no worker sends before every listener of every worker is registered.
//! - `sent` / `sent_all`: after sending, each worker reports the set of events it sent; the
//!   parent answers with the union, against which every worker drains and counts its listeners'
//!   receipts. Completeness is then counted across workers exactly as within one process.
//! - `ids` / `ids_all`: with connection-targeted events (`--mix target=connection`), each
//!   worker reports the connection ids its listeners learnt; the parent answers with all of
//!   them, so every worker's publishers pick from the same list of listeners.
//! - `done`: the worker's summary, with its HDR histograms V2-serialised (base64), which the
//!   parent merges exactly (`hdrhistogram` addition, not averaged percentiles), see [`crate::merge`].
//!
//! A worker that dies no longer holds a barrier up; its share is missing from the counts (a note
//! says so), and the run's deadline bounds everything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::context::SeqSet;
use crate::summary::Summary;

/// The environment variable that makes a process a worker: `RUN_ID/INDEX/COUNT`.
pub const WORKER_ENV: &str = "LOADTEST_WORKER";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which part of the plan this process runs: worker `index` of `count` (0 of 1 alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// This worker's part of `total` items: `(first, len)`. The parts are contiguous, differ
    /// by at most one, and add up to `total`.
    pub fn part(&self, total: usize) -> (usize, usize) {
        let start = total * self.index / self.count;
        let end = total * (self.index + 1) / self.count;
        (start, end - start)
    }

    /// This worker's part of a count that goes with `part` of `of` items (messages with
    /// publishers): proportional, and the parts add up to `total`.
    pub fn part_along(&self, total: u64, first: usize, len: usize, of: usize) -> u64 {
        if of == 0 {
            return 0;
        }
        let at = |i: usize| (u128::from(total) * i as u128 / of as u128) as u64;
        at(first + len) - at(first)
    }

    pub fn is_alone(&self) -> bool {
        self.count <= 1
    }
}

/// What the worker environment variable says.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub run_id: String,
    pub shard: Shard,
}

impl WorkerEnv {
    /// `Some` when this process was started as a worker.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(WORKER_ENV) {
            Ok(v) => WorkerEnv::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Reads `RUN_ID/INDEX/COUNT`.
    pub fn parse(v: &str) -> anyhow::Result<Self> {
        let mut it = v.rsplitn(3, '/');
        let (count, index, run_id) = (it.next(), it.next(), it.next());
        let parse = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok());
        match (run_id, parse(index), parse(count)) {
            (Some(run_id), Some(index), Some(count)) if index < count && !run_id.is_empty() => {
                Ok(WorkerEnv {
                    run_id: run_id.to_owned(),
                    shard: Shard { index, count },
                })
            }
            _ => bail!("{WORKER_ENV}=`{v}` is not RUN_ID/INDEX/COUNT (it is set by `--workers`)"),
        }
    }
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum ToParent {
    Ready {
        key: String,
    },
    Sent {
        key: String,
        set: String,
    },
    Ids {
        key: String,
        ids: Vec<(usize, String)>,
    },
    Done {
        summary: Box<Summary>,
    },
}

/// Parent to worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum ToWorker {
    Go {
        key: String,
    },
    SentAll {
        key: String,
        set: String,
    },
    IdsAll {
        key: String,
        ids: Vec<(usize, String)>,
    },
}

// ---------------------------------------------------------------------------------------------
// The worker's end

/// The worker's line to its parent.
pub struct Link {
    /// `go:KEY` and `sent:KEY` answers received so far.
    inbox: Mutex<HashMap<String, String>>,
    arrived: Notify,
    /// The parent closed our stdin (it is gone): stop waiting.
    closed: AtomicBool,
}

impl Link {
    /// Starts reading the parent's messages from stdin.
    pub fn start() -> Arc<Link> {
        let link = Arc::new(Link {
            inbox: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let l = link.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (k, v) = match serde_json::from_str::<ToWorker>(&line) {
                    Ok(ToWorker::Go { key }) => (format!("go:{key}"), String::new()),
                    Ok(ToWorker::SentAll { key, set }) => (format!("sent:{key}"), set),
                    Ok(ToWorker::IdsAll { key, ids }) => (
                        format!("ids:{key}"),
                        serde_json::to_string(&ids).unwrap_or_default(),
                    ),
                    Err(_) => continue,
                };
                l.inbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k, v);
                l.arrived.notify_waiters();
            }
            l.closed.store(true, Ordering::Relaxed);
            l.arrived.notify_waiters();
        });
        link
    }

    fn send(msg: &ToParent) {
        // A parent that went away shows up as a closed stdin; nothing to do about a failed write.
        if let Ok(line) = serde_json::to_string(msg) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    async fn wait(&self, key: &str, cancel: &CancellationToken) -> Option<String> {
        loop {
            let arrived = self.arrived.notified();
            if let Some(v) = self
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key)
            {
                return Some(v);
            }
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            tokio::select! {
                _ = arrived => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    /// Waits until every live worker has reached barrier `key`; false if cancelled first.
    pub async fn barrier(&self, key: &str, cancel: &CancellationToken) -> bool {
        Link::send(&ToParent::Ready {
            key: key.to_owned(),
        });
        self.wait(&format!("go:{key}"), cancel).await.is_some()
    }

    /// Reports the events this worker sent and returns those all workers sent.
    pub async fn exchange(
        &self,
        key: &str,
        sent: &SeqSet,
        cancel: &CancellationToken,
    ) -> Option<SeqSet> {
        Link::send(&ToParent::Sent {
            key: key.to_owned(),
            set: B64.encode(sent.to_bytes()),
        });
        let v = self.wait(&format!("sent:{key}"), cancel).await?;
        B64.decode(v).ok().map(|b| SeqSet::from_bytes(&b))
    }

    /// Reports the (listener number, connection id) pairs this worker's listeners learnt and
    /// returns those of every worker.
    pub async fn exchange_ids(
        &self,
        key: &str,
        ids: &[(usize, String)],
        cancel: &CancellationToken,
    ) -> Option<Vec<(usize, String)>> {
        Link::send(&ToParent::Ids {
            key: key.to_owned(),
            ids: ids.to_vec(),
        });
        let v = self.wait(&format!("ids:{key}"), cancel).await?;
        serde_json::from_str(&v).ok()
    }

    /// Hands the summary (with its histograms serialised) to the parent.
    pub fn done(mut summary: Summary) {
        encode_histograms(&mut summary);
        Link::send(&ToParent::Done {
            summary: Box::new(summary),
        });
    }
}

/// Fills `hdr` from `histograms` (V2, base64), in the runs of the phases too.
pub fn encode_histograms(s: &mut Summary) {
    s.hdr = BTreeMap::new();
    for (name, h) in &s.histograms {
        let mut bytes = Vec::new();
        if V2Serializer::new().serialize(h, &mut bytes).is_ok() {
            s.hdr.insert(name.clone(), B64.encode(bytes));
        }
    }
    for p in &mut s.phases {
        for r in &mut p.runs {
            encode_histograms(r);
        }
    }
}

/// The inverse of [`encode_histograms`]: `histograms` from `hdr`, which is emptied.
pub fn decode_histograms(s: &mut Summary) -> anyhow::Result<()> {
    s.histograms.clear();
    for (name, text) in std::mem::take(&mut s.hdr) {
        let bytes = B64
            .decode(text)
            .with_context(|| format!("histogram `{name}`: not base64"))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow!("histogram `{name}`: {e:?}"))?;
        s.histograms.push((name, h));
    }
    for p in &mut s.phases {
        for r in &mut p.runs {
            decode_histograms(r)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent's end

/// Starts `count` workers running `argv` (this binary's own arguments), relays their barriers
/// and sent sets, and returns their summaries (histograms decoded) in worker order, with a note
/// for each worker that gave none. Every worker is killed if `limit` passes first. With
/// `agents`, worker `i` runs on agent `i % agents.len()` (see [`crate::agent`]) instead of as a
/// child process here.
pub async fn run_parent(
    argv: &[std::ffi::OsString],
    run_id: &str,
    count: usize,
    limit: Duration,
    interrupt: CancellationToken,
    agents: &Agents,
) -> anyhow::Result<(Vec<Summary>, Vec<String>)> {
    let (children, inputs, mut rx) = start_workers(argv, run_id, count, agents).await?;
    let forward = forward_interrupt(&children, &interrupt);
    let remote = !agents.addrs.is_empty();
    let mut relay = Relay::new(inputs);
    let mut notes = Vec::new();
    if tokio::time::timeout(limit, relay.run(&mut rx, &interrupt, remote))
        .await
        .is_err()
    {
        notes.push(format!(
            "the workers did not finish within {limit:?}; the unfinished ones were stopped"
        ));
    }
    let summaries = std::mem::take(&mut relay.summaries);
    // Dropping the inputs lets the workers' readers end.
    drop(relay);
    forward.abort();
    let statuses = wait_for_exits(children).await;
    for (i, summary) in summaries.iter().enumerate() {
        if summary.is_none() {
            let how = if remote {
                format!("on agent {}", agents.addrs[i % agents.addrs.len()])
            } else {
                format!(
                    "exit status {}",
                    statuses
                        .get(i)
                        .copied()
                        .flatten()
                        .map_or_else(|| "none".to_owned(), |c| c.to_string())
                )
            };
            notes.push(format!(
                "worker {i} gave no summary ({how}); its share is missing from the figures"
            ));
        }
    }
    let mut out = Vec::with_capacity(count);
    for (i, s) in summaries.into_iter().enumerate() {
        if let Some(mut s) = s {
            decode_histograms(&mut s).with_context(|| format!("worker {i}"))?;
            out.push(s);
        }
    }
    if out.is_empty() {
        bail!("no worker finished: {}", notes.join("; "));
    }
    Ok((out, notes))
}

/// Lines from the workers: (worker, a line, or `None` when its output ended).
type Lines = mpsc::UnboundedReceiver<(usize, Option<String>)>;

/// Starts the `count` workers, as child processes of this program or on the agents: the
/// children (none with agents), each worker's input, and their output lines.
async fn start_workers(
    argv: &[std::ffi::OsString],
    run_id: &str,
    count: usize,
    agents: &Agents,
) -> anyhow::Result<(Vec<tokio::process::Child>, Vec<Option<Input>>, Lines)> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut children = Vec::with_capacity(count);
    let mut inputs: Vec<Option<Input>> = Vec::with_capacity(count);
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Option<String>)>();
    for i in 0..count {
        let worker = format!("{run_id}/{i}/{count}");
        let output: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if agents.addrs.is_empty() {
            let mut child = tokio::process::Command::new(&exe)
                .args(argv.iter().skip(1))
                .env(WORKER_ENV, &worker)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {i} ({})", exe.display()))?;
            inputs.push(child.stdin.take().map(|w| Box::new(w) as Input));
            let stdout = child.stdout.take().context("worker stdout")?;
            children.push(child);
            Box::new(stdout)
        } else {
            let addr = &agents.addrs[i % agents.addrs.len()];
            let (read, write) = crate::agent::start_remote(addr, &agents.token, &worker, argv)
                .await
                .with_context(|| format!("worker {i} on agent {addr}"))?;
            inputs.push(Some(Box::new(write)));
            Box::new(read)
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send((i, Some(line)));
            }
            let _ = tx.send((i, None));
        });
    }
    Ok((children, inputs, rx))
}

/// Ctrl-C (or SIGINT from a supervisor) reaches the parent: pass it on to the child workers, so
/// every worker wraps up and reports what it measured.
fn forward_interrupt(
    children: &[tokio::process::Child],
    interrupt: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let interrupt = interrupt.clone();
    tokio::spawn(async move {
        interrupt.cancelled().await;
        for pid in pids {
            // SAFETY: kill(2) with a pid this process started; a gone pid is only an error.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGINT);
            }
        }
    })
}

/// Waits (5 s each) for the child workers to exit, killing those that do not: their exit codes.
async fn wait_for_exits(children: Vec<tokio::process::Child>) -> Vec<Option<i32>> {
    let mut statuses = Vec::with_capacity(children.len());
    for mut child in children {
        statuses.push(
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(s)) => s.code(),
                _ => {
                    let _ = child.kill().await;
                    None
                }
            },
        );
    }
    statuses
}

/// Workers that reached a step, and what they brought to it.
type Waiting<T> = HashMap<String, (HashSet<usize>, T)>;

/// The parent's side of the line protocol while the workers run.
struct Relay {
    inputs: Vec<Option<Input>>,
    alive: Vec<bool>,
    summaries: Vec<Option<Summary>>,
    /// Barriers, sent sets and connection ids by key, until every live worker has reached them.
    ready: HashMap<String, HashSet<usize>>,
    sent: Waiting<SeqSet>,
    ids: Waiting<Vec<(usize, String)>>,
}

impl Relay {
    fn new(inputs: Vec<Option<Input>>) -> Self {
        let count = inputs.len();
        Relay {
            inputs,
            alive: vec![true; count],
            summaries: (0..count).map(|_| None).collect(),
            ready: HashMap::new(),
            sent: HashMap::new(),
            ids: HashMap::new(),
        }
    }

    /// Relays until every worker's output has ended; with agents (`remote`), passes an
    /// interrupt on to them as a line.
    async fn run(&mut self, rx: &mut Lines, interrupt: &CancellationToken, remote: bool) {
        let mut interrupted = false;
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                () = interrupt.cancelled(), if remote && !interrupted => {
                    // Agents pass this on to their worker as SIGINT.
                    interrupted = true;
                    let line = format!("{}\n", crate::agent::INTERRUPT);
                    for w in self.inputs.iter_mut().flatten() {
                        let _ = w.write_all(line.as_bytes()).await;
                        let _ = w.flush().await;
                    }
                    continue;
                }
            };
            let Some((i, line)) = next else { break };
            match line {
                None => self.alive[i] = false,
                Some(line) => self.take(i, &line),
            }
            self.release().await;
        }
    }

    /// One line from worker `i`.
    fn take(&mut self, i: usize, line: &str) {
        match serde_json::from_str::<ToParent>(line) {
            Ok(ToParent::Ready { key }) => {
                self.ready.entry(key).or_default().insert(i);
            }
            Ok(ToParent::Sent { key, set }) => {
                let set = B64
                    .decode(set)
                    .map(|b| SeqSet::from_bytes(&b))
                    .unwrap_or_default();
                let e = self.sent.entry(key).or_default();
                e.0.insert(i);
                e.1.union_with(&set);
            }
            Ok(ToParent::Ids { key, ids: some }) => {
                let e = self.ids.entry(key).or_default();
                e.0.insert(i);
                e.1.extend(some);
            }
            Ok(ToParent::Done { summary }) => {
                self.summaries[i] = Some(*summary);
                // Closing its stdin lets the worker's reader end, and the worker exit.
                self.inputs[i] = None;
            }
            Err(_) => {
                // Not a protocol line: pass it on so nothing a worker prints is lost.
                eprintln!("worker {i}: {line}");
            }
        }
    }

    /// Releases every barrier and exchange that all live workers have reached.
    async fn release(&mut self) {
        let alive = &self.alive;
        let complete =
            |who: &HashSet<usize>| (0..alive.len()).all(|w| !alive[w] || who.contains(&w));
        let go: Vec<String> = self
            .ready
            .iter()
            .filter(|(_, who)| complete(who))
            .map(|(k, _)| k.clone())
            .collect();
        let sent: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, (who, _))| complete(who))
            .map(|(k, _)| k.clone())
            .collect();
        let ids: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, (who, _))| complete(who))
            .map(|(k, _)| k.clone())
            .collect();
        for key in go {
            self.ready.remove(&key);
            broadcast(&mut self.inputs, &self.alive, &ToWorker::Go { key }).await;
        }
        for key in sent {
            if let Some((_, set)) = self.sent.remove(&key) {
                let set = B64.encode(set.to_bytes());
                broadcast(
                    &mut self.inputs,
                    &self.alive,
                    &ToWorker::SentAll { key, set },
                )
                .await;
            }
        }
        for key in ids {
            if let Some((_, list)) = self.ids.remove(&key) {
                let msg = ToWorker::IdsAll { key, ids: list };
                broadcast(&mut self.inputs, &self.alive, &msg).await;
            }
        }
    }
}

/// Where the parent writes a worker's messages: a child's stdin, or an agent's socket.
type Input = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// The agents a run is spread over (`--agents`), and the token they want.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    pub addrs: Vec<String>,
    pub token: String,
}

async fn broadcast(inputs: &mut [Option<Input>], alive: &[bool], msg: &ToWorker) {
    let Ok(mut line) = serde_json::to_string(msg) else {
        return;
    };
    line.push('\n');
    for (i, input) in inputs.iter_mut().enumerate() {
        if !alive[i] {
            continue;
        }
        if let Some(w) = input {
            if w.write_all(line.as_bytes()).await.is_err() || w.flush().await.is_err() {
                *input = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_total_exactly() {
        for (total, count) in [(10, 3), (100_000, 6), (2, 4), (0, 2)] {
            let parts: Vec<(usize, usize)> = (0..count)
                .map(|index| Shard { index, count }.part(total))
                .collect();
            assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), total);
            for w in parts.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0, "contiguous");
            }
        }
        let s = Shard { index: 1, count: 2 };
        assert_eq!(s.part_along(101, 1, 2, 3), 101 - 33);
    }

    #[test]
    fn histograms_survive_the_trip() {
        let mut h = crate::stats::new_histogram();
        for v in [5u64, 70, 900, 12_000] {
            h.record(v).expect("in range");
        }
        let mut s: Summary = serde_json::from_value(serde_json::json!({
            "scenario": "echo", "run_id": "r", "url": "ws://x/", "target_addr": "127.0.0.1:1",
            "elapsed_s": 1.0, "measured_s": 1.0, "stopped_by": "duration",
            "connections": {"target": 1, "established": 1, "failed": 0, "failures": {},
                "dropped": 0, "drops": {}, "reconnects": 0, "peak_open": 1, "ramp_s": 0.1,
                "ramp_per_s": 10.0},
            "messages": {"sent": 1, "received": 1, "errors": 0, "sent_per_s": 1.0,
                "received_per_s": 1.0},
            "delivery": null, "latency": {}, "errors": {}, "drift": null, "notes": [],
            "windows": [], "phases": []
        }))
        .expect("a summary");
        s.histograms.push(("rtt".into(), h.clone()));
        encode_histograms(&mut s);
        let text = serde_json::to_string(&s).expect("serialises");
        let mut back: Summary = serde_json::from_str(&text).expect("deserialises");
        decode_histograms(&mut back).expect("decodes");
        assert_eq!(back.histograms.len(), 1);
        assert_eq!(back.histograms[0].1, h);
    }

    #[test]
    fn the_environment_is_checked() {
        let w = WorkerEnv::parse("abc/1/2").expect("valid");
        assert_eq!(
            (w.run_id.as_str(), w.shard),
            ("abc", Shard { index: 1, count: 2 })
        );
        assert!(WorkerEnv::parse("abc/2/2").is_err());
        assert!(WorkerEnv::parse("1/2").is_err());
    }
}
