//! `--server-pid`: the server's own cost, read from `/proc` at every phase change.
//!
//! Wall throughput on one machine is bounded by the load generator sharing the cores, so the
//! steady figure is the server's CPU time spent per unit of work in a phase, and its resident
//! memory (`VmRSS` from `/proc/PID/status`) at the phase's edges. Only meaningful when the
//! server runs on this machine (a loopback target).
//!
//! CPU time is the sum over the process's threads of the time they ran, in nanoseconds
//! (`/proc/PID/task/*/schedstat`), so that a short phase is measured, not rounded to the 10 ms
//! ticks of `/proc/PID/stat`'s user + system time. A thread that ends takes its time with it
//! there, so when the ticks (which keep it) say more than the threads do by over two ticks,
//! the ticks are used.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

/// One phase of a run as the server saw it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServerPhase {
    pub name: String,
    pub wall_s: f64,
    /// Server CPU time (user + system) spent during the phase.
    pub cpu_s: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
}

/// What `--server-pid` adds to the summary.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServerSummary {
    pub pid: u32,
    pub phases: Vec<ServerPhase>,
}

impl ServerSummary {
    /// CPU seconds over the named phases together.
    pub fn cpu_s(&self, names: &[&str]) -> f64 {
        self.phases
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .map(|p| p.cpu_s)
            .sum()
    }

    pub fn phase(&self, name: &str) -> Option<&ServerPhase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// A sample of the server process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_s: f64,
    rss_kib: u64,
}

struct Open {
    name: String,
    start: Sample,
}

/// Samples one process at phase boundaries.
pub struct ServerProbe {
    pid: u32,
    ticks_per_s: f64,
    state: Mutex<(Option<Open>, Vec<ServerPhase>)>,
}

impl ServerProbe {
    /// Fails when the process cannot be read (no such pid, or not on this machine).
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            bail!("sysconf(_SC_CLK_TCK) failed");
        }
        let probe = ServerProbe {
            pid,
            ticks_per_s: ticks as f64,
            state: Mutex::new((None, Vec::new())),
        };
        probe
            .sample()
            .with_context(|| format!("--server-pid {pid}: cannot read /proc/{pid}"))?;
        Ok(probe)
    }

    fn sample(&self) -> anyhow::Result<Sample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let ticks_s = parse_cpu_ticks(&stat).context("unexpected /proc/PID/stat format")? as f64
            / self.ticks_per_s;
        let cpu_s = match self.threads_ran_s() {
            Some(ran) if ticks_s <= ran + 2.0 / self.ticks_per_s => ran,
            _ => ticks_s,
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kib = parse_rss_kib(&status).context("no VmRSS in /proc/PID/status")?;
        Ok(Sample { at, cpu_s, rss_kib })
    }

    /// The time every thread of the process has run, in seconds, from their schedstat
    /// (nanoseconds); `None` where the kernel does not provide it.
    fn threads_ran_s(&self) -> Option<f64> {
        let mut ns: u64 = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
            let path = task.ok()?.path().join("schedstat");
            // A thread may end between the listing and the read: it no longer counts.
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            ns += parse_schedstat_ns(&text)?;
        }
        Some(ns as f64 / 1e9)
    }

    /// Ends the current phase (if any) and starts `name`.
    pub fn enter(&self, name: &str) {
        let sample = self.sample().ok();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (open, done) = &mut *state;
        if let (Some(prev), Some(now)) = (open.take(), sample) {
            done.push(close(prev, now));
        }
        *open = sample.map(|start| Open {
            name: name.to_owned(),
            start,
        });
    }

    /// Ends the last phase and returns every phase in order.
    pub fn finish(&self) -> ServerSummary {
        let sample = self.sample().ok();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (open, done) = &mut *state;
        if let (Some(prev), Some(now)) = (open.take(), sample) {
            done.push(close(prev, now));
        }
        ServerSummary {
            pid: self.pid,
            phases: done.clone(),
        }
    }
}

fn close(open: Open, end: Sample) -> ServerPhase {
    ServerPhase {
        name: open.name,
        wall_s: end.at.duration_since(open.start.at).as_secs_f64(),
        cpu_s: (end.cpu_s - open.start.cpu_s).max(0.0),
        rss_kib_start: open.start.rss_kib,
        rss_kib_end: end.rss_kib,
    }
}

/// The first field of a `schedstat` line: nanoseconds the thread ran.
fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\tbroker\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn schedstat_gives_nanoseconds() {
        assert_eq!(
            parse_schedstat_ns("1038503195 1570017862 3283\n"),
            Some(1_038_503_195)
        );
        assert_eq!(parse_schedstat_ns(""), None);
    }

    /// A phase far shorter than a clock tick still has its CPU time: the threads' nanoseconds.
    /// Measured on a child process with one busy thread (in this test process, threads of other
    /// tests end at any time, which makes the ticks the source).
    #[test]
    fn a_phase_shorter_than_a_tick_is_measured() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        let pid = child.id();
        let probe = ServerProbe::new(pid).expect("the child's /proc entry");
        assert!(
            probe.threads_ran_s().is_some(),
            "Linux gives every thread's schedstat"
        );
        probe.enter("short");
        let start = probe.threads_ran_s().unwrap_or(0.0);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while probe.threads_ran_s().unwrap_or(0.0) < start + 0.002 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let s = probe.finish();
        let _ = child.kill();
        let _ = child.wait();
        let cpu = s.phases[0].cpu_s;
        assert!(cpu >= 0.002, "2 ms of running measured as {cpu} s");
    }

    #[test]
    fn own_process_is_sampled_per_phase() {
        let probe = ServerProbe::new(std::process::id()).expect("own /proc entry");
        probe.enter("spin");
        // Burn a little CPU so the phase has some (the clock tick is 10 ms).
        let until = Instant::now() + std::time::Duration::from_millis(60);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        probe.enter("idle");
        let s = probe.finish();
        assert_eq!(s.phases.len(), 2);
        assert_eq!(s.phases[0].name, "spin");
        assert!(s.phases[0].cpu_s > 0.0, "{s:?}");
        assert!(s.phases[0].rss_kib_start > 0);
        assert!(s.cpu_s(&["spin", "idle"]) >= s.phases[0].cpu_s);
        assert!(ServerProbe::new(u32::MAX).is_err());
    }
}
