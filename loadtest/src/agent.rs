//! Several machines, one run: `loadtest agent` on each load machine, and a coordinator that
//! spreads `--workers` over them with `--agents HOST:PORT,...`.
//!
//! An agent is a worker starter reachable over TCP. The coordinator opens one connection per
//! worker and sends one line, `{"token", "worker": "RUN/INDEX/COUNT", "args": [...]}` (its own
//! arguments); the agent checks the token and answers with its probe clock
//! (`{"agent_ns": ...}`); the coordinator answers with the offset from that clock to its own,
//! estimated from the round trip (`{"offset_ns": ...}`, NTP's midpoint rule), so that every
//! worker on every machine stamps and times its probes on the coordinator's scale (to within
//! half the round trip). The agent then starts this program with those arguments as that
//! worker, and from then on relays lines both ways: the connection is the worker's stdin and
//! stdout, so the protocol of [`crate::workers`] (barriers, sent sets, summaries with their
//! histograms) runs unchanged, and the coordinator merges the agents' workers exactly as it
//! merges local ones. The line [`INTERRUPT`] from the coordinator becomes SIGINT to the worker
//! (it wraps up and reports); a closed connection kills it.
//!
//! An agent runs what an authenticated coordinator asks of this program, nothing else: it
//! listens on loopback unless told otherwise, and refuses a connection whose token does not
//! match (compared in constant time). Put agents on a private network.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::workers::WORKER_ENV;

/// The coordinator's line that an agent turns into SIGINT for its worker.
pub const INTERRUPT: &str = r#"{"agent":"interrupt"}"#;

/// How long a coordinator waits to reach an agent, and an agent for the first line.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The first line on a connection to an agent.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    token: String,
    worker: String,
    args: Vec<String>,
}

/// The agent's clock, right after it accepted the hello.
#[derive(Debug, Serialize, Deserialize)]
struct Clock {
    agent_ns: u64,
}

/// The coordinator's clock minus the agent's.
#[derive(Debug, Serialize, Deserialize)]
struct Offset {
    offset_ns: i64,
}

/// An agent's answer when it refuses.
#[derive(Debug, Serialize, Deserialize)]
struct Refused {
    agent_error: String,
}

/// The coordinator's side: starts worker `worker` on the agent at `addr` and returns the
/// connection's halves (read: the worker's stdout; write: its stdin).
pub async fn start_remote(
    addr: &str,
    token: &str,
    worker: &str,
    argv: &[OsString],
) -> anyhow::Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
    let stream = tokio::time::timeout(HELLO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("the agent did not answer in time")?
        .context("cannot reach the agent")?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let hello = Hello {
        token: token.to_owned(),
        worker: worker.to_owned(),
        args: argv
            .iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    };
    let mut line = serde_json::to_string(&hello)?;
    line.push('\n');
    let sent = crate::probe::now_ns();
    write.write_all(line.as_bytes()).await?;
    write.flush().await?;
    let mut read = BufReader::new(read);
    let mut answer = String::new();
    tokio::time::timeout(HELLO_TIMEOUT, read.read_line(&mut answer))
        .await
        .context("the agent did not answer the hello in time")??;
    let received = crate::probe::now_ns();
    let clock: Clock = match serde_json::from_str(&answer) {
        Ok(c) => c,
        Err(_) => match serde_json::from_str::<Refused>(&answer) {
            Ok(r) => bail!("the agent refused: {}", r.agent_error),
            Err(_) => bail!("not an agent's answer: {}", answer.trim()),
        },
    };
    // The agent read its clock about halfway through the round trip.
    let midpoint = sent / 2 + received / 2;
    let offset = Offset {
        offset_ns: midpoint as i64 - clock.agent_ns as i64,
    };
    let mut line = serde_json::to_string(&offset)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    write.flush().await?;
    Ok((read, write))
}

/// `loadtest agent`: serves coordinators until `stop` is cancelled (Ctrl-C), or after `runs`
/// workers when given. Prints `agent listening on ADDR` on stderr once it listens.
pub async fn serve(
    listen: SocketAddr,
    token: &str,
    runs: Option<usize>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if token.len() < 8 {
        bail!("the agent token must be at least 8 characters (--token or LOADTEST_AGENT_TOKEN)");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("agent listening on {}", listener.local_addr()?);
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut sessions = tokio::task::JoinSet::new();
    let mut started = 0;
    loop {
        if runs.is_some_and(|n| started >= n) {
            break;
        }
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("agent: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        started += 1;
        let (exe, token) = (exe.clone(), token.to_owned());
        sessions.spawn(async move {
            if let Err(e) = session(stream, &exe, &token).await {
                eprintln!("agent: worker for {peer}: {e:#}");
            }
        });
    }
    // Let the workers already started finish (each is bounded by its own run's deadline).
    while sessions.join_next().await.is_some() {}
    Ok(())
}

/// One coordinator connection: check the hello, start the worker, relay until either ends.
async fn session(stream: TcpStream, exe: &std::path::Path, token: &str) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let first = tokio::time::timeout(HELLO_TIMEOUT, lines.next_line())
        .await
        .context("no hello in time")??
        .context("the connection closed before its hello")?;
    let refuse = |why: &str| {
        let mut line = serde_json::to_string(&Refused {
            agent_error: why.to_owned(),
        })
        .unwrap_or_default();
        line.push('\n');
        line
    };
    let hello: Hello = match serde_json::from_str(&first) {
        Ok(h) => h,
        Err(e) => {
            let _ = write.write_all(refuse("not a hello line").as_bytes()).await;
            bail!("not a hello line: {e}");
        }
    };
    if !same(hello.token.as_bytes(), token.as_bytes()) {
        let _ = write
            .write_all(refuse("wrong agent token").as_bytes())
            .await;
        bail!("wrong agent token");
    }
    crate::workers::WorkerEnv::parse(&hello.worker)?;
    let clock = serde_json::to_string(&Clock {
        agent_ns: crate::probe::now_ns(),
    })?;
    write.write_all(format!("{clock}\n").as_bytes()).await?;
    write.flush().await?;
    let line = tokio::time::timeout(HELLO_TIMEOUT, lines.next_line())
        .await
        .context("no clock offset in time")??
        .context("the connection closed before the clock offset")?;
    let offset: Offset = serde_json::from_str(&line).context("not a clock offset line")?;
    let mut child = tokio::process::Command::new(exe)
        .args(&hello.args)
        .env(WORKER_ENV, &hello.worker)
        .env(crate::probe::CLOCK_OFFSET_ENV, offset.offset_ns.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the worker")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let pid = child.id();
    // Coordinator to worker; the interrupt line becomes SIGINT.
    let inbound = async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == INTERRUPT {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) with the pid of the child this session started.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGINT);
                    }
                }
                continue;
            }
            if stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            let _ = stdin.flush().await;
        }
        // The coordinator is gone (or done): closing stdin lets the worker exit.
    };
    // Worker to coordinator.
    let outbound = async move {
        let _ = tokio::io::copy(&mut BufReader::new(stdout), &mut write).await;
        let _ = write.shutdown().await;
    };
    tokio::join!(inbound, outbound);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(())
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same(b"secret-token", b"secret-token"));
        assert!(!same(b"secret-token", b"secret-tokem"));
        assert!(!same(b"secret", b"secret-token"));
    }
}
