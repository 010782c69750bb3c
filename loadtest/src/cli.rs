//! The command line: one global set of target and output options, one subcommand per scenario.
//!
//! The same definitions serve three callers: the binary (`Cli::parse`), the tests
//! (`Cli::try_parse_from([...])`) and the `mixed` scenario file, whose entries are turned into an
//! argument list and parsed here too, so a file accepts exactly the options the command line does
//! and is validated by the same code.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// WebSocket capacity tester for the broker (and any server speaking its protocol).
///
/// Every run stops by itself: each scenario is bounded by its duration and counts, and a hard
/// deadline ends it even when the server stops answering.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(subcommand)]
    pub scenario: Scenario,

    /// The program's own arguments (set by `main`): `--workers` starts copies of itself with them.
    #[arg(skip)]
    pub argv: Vec<std::ffi::OsString>,
}

/// Where to connect and how: shared by every scenario.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Target (any scenario)")]
pub struct TargetArgs {
    /// WebSocket URL of the server (`ws://` or `wss://`); repeat it (or separate with commas)
    /// for several instances of a cluster: connections are spread over them by --spread.
    #[arg(
        long,
        global = true,
        env = "LOADTEST_URL",
        default_value = "ws://127.0.0.1:8080/",
        value_delimiter = ','
    )]
    pub url: Vec<String>,

    /// How connections are spread over several --url: `round-robin` (connection i to URL
    /// i mod n) or `random` (a fixed pseudo-random pick per connection).
    #[arg(long, global = true, value_enum, default_value_t = Spread::RoundRobin)]
    pub spread: Spread,

    /// Per-connection identities: sign an HS256 token for each client connection with this
    /// secret (the broker's `broker.jwtSecret`), `sub` from --user-template.
    #[arg(long, global = true, env = "LOADTEST_JWT_SECRET", conflicts_with_all = ["token", "token_file"])]
    pub jwt_secret: Option<String>,

    /// The user name of user number `{u}` (in the token's `sub` and in user-targeted events).
    #[arg(long, global = true, default_value = "lt-user-{u}")]
    pub user_template: String,

    /// Distinct users the client connections log in as (connection i is user i mod N);
    /// 0: one user per connection.
    #[arg(long, global = true, default_value_t = 0)]
    pub users: usize,

    /// Per-connection identities from a file of tokens, one per line: connection i uses line
    /// i mod n (its user is the token's `sub`).
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// `Origin` header sent on every upgrade; an empty string sends none.
    #[arg(long, global = true, default_value = "http://localhost")]
    pub origin: String,

    /// Publisher key (`users-api-key` header) for publisher connections and `POST /api/publish`.
    #[arg(long, global = true, env = "LOADTEST_API_KEY")]
    pub api_key: Option<String>,

    /// JWT sent by client connections as `Authorization: Bearer` (or `?token=`, see --token-in-query).
    #[arg(long, global = true, env = "LOADTEST_TOKEN")]
    pub token: Option<String>,

    /// Send --token as the `?token=` query parameter instead of a header.
    #[arg(long, global = true)]
    pub token_in_query: bool,

    /// Accept any TLS certificate (self-signed test servers). Never use against production.
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Spread client sockets over 127.0.0.1 ..= 127.0.0.N (loopback targets only); 0 lets the OS pick.
    ///
    /// One source address has about 28,000 ephemeral ports towards one server port; eight
    /// addresses lift that ceiling far above what one machine's memory holds.
    #[arg(long, global = true, default_value_t = 0, conflicts_with = "source_ip")]
    pub source_addrs: u8,

    /// Spread client sockets over these local addresses (any interface, IPv4 or IPv6, of the
    /// target's family), e.g. the addresses of several NICs or an alias range, to lift the
    /// ephemeral-port ceiling against a remote target: connection i binds to address i mod n.
    #[arg(long, global = true, value_delimiter = ',')]
    pub source_ip: Vec<IpAddr>,

    /// Run as N worker processes on this machine, each with its own open-file limit, and report
    /// them as one run: connections, listeners, publishers and rates are split between them,
    /// histograms merged exactly, completeness counted across them.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,

    /// Run the workers on these agents (`loadtest agent` on other machines) instead of here:
    /// worker i on agent i mod n; as many workers as agents unless --workers asks for more.
    #[arg(long, global = true, env = "LOADTEST_AGENTS", value_delimiter = ',')]
    pub agents: Vec<String>,

    /// The token the agents want (their --token).
    #[arg(
        long,
        global = true,
        env = "LOADTEST_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub agent_token: Option<String>,

    /// New connections per second during ramp-up (all scenarios).
    #[arg(long, global = true, default_value_t = 1000.0)]
    pub connect_rate: f64,

    /// Connections allowed to be mid-handshake at once.
    #[arg(long, global = true, default_value_t = 256)]
    pub max_inflight: usize,

    /// Limit for TCP connect + TLS + upgrade of one connection.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Read buffer per connection in bytes; small so tens of thousands of sockets fit in memory.
    #[arg(long, global = true, default_value_t = 4096)]
    pub read_buffer: usize,
}

/// How results are shown and kept.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output (any scenario)")]
pub struct OutputArgs {
    /// Print the summary as JSON on stdout (the human summary goes to stderr unless --quiet).
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress bars and no human summary on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Write SVG plots and an index.html with the summary into this directory.
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,

    /// Length of the time windows that the per-window figures (and drift) are computed over.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "1s")]
    pub window: Duration,

    /// Identifier embedded in every probe message, so traffic of other runs is told apart.
    #[arg(long, global = true)]
    pub run_id: Option<String>,

    /// Hard limit for the whole run; by default computed from the scenario's own bounds.
    #[arg(long, global = true, value_parser = parse_duration)]
    pub deadline: Option<Duration>,

    /// Process id of the server (on this machine): its CPU time and resident memory are read
    /// from `/proc` at every phase change and reported per phase (`server` in the summary).
    #[arg(long, global = true, env = "LOADTEST_SERVER_PID")]
    pub server_pid: Option<u32>,

    /// Pass/fail condition `METRIC OP VALUE`, e.g. `p99<50ms`, `completeness>=1`, `failed==0`,
    /// `handshake.p99<5ms`; repeatable. Any that fails makes the exit status 1, with a line
    /// naming it. (A run where most connection attempts fail exits 1 even without thresholds.)
    #[arg(long = "threshold", global = true, value_name = "EXPR")]
    pub thresholds: Vec<crate::verdict::Threshold>,

    /// File of thresholds, one per line (`#` comments), checked like --threshold.
    #[arg(long, global = true, value_name = "FILE")]
    pub thresholds_file: Option<PathBuf>,
}

/// The scenarios.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Ramp to N connections at --connect-rate, hold them, report handshake latency and failures.
    Connect(ConnectArgs),
    /// Closed loop: each connection sends an echo and waits for its reply; RTT and requests/s.
    Echo(EchoArgs),
    /// N listeners, P publishers at a fixed open-loop rate; delivery rate, completeness, latency.
    Broadcast(BroadcastArgs),
    /// Publish through `POST /api/publish` (optionally batched) or publisher connections.
    Publish(PublishArgs),
    /// Hold N connections with a steady echo/broadcast mix; latency and errors per time window.
    Soak(SoakArgs),
    /// Run the phases of a scenario file (TOML or JSON) one after another.
    Mixed(MixedArgs),
    /// Listeners that resume with positions while one instance of a cluster is drained or
    /// killed mid-run; per-listener missing, duplicate and out-of-order events, reconnect times.
    Failover(FailoverArgs),
    /// Serve as a load machine: a coordinator run with `--agents HOST:PORT,...` starts its
    /// workers here (see the README's "Several machines").
    Agent(AgentArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where to listen for coordinators (loopback unless given: an agent runs what an
    /// authenticated coordinator asks of this program).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: std::net::SocketAddr,

    /// The token coordinators must present (at least 8 characters).
    #[arg(long, env = "LOADTEST_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Stop after starting this many workers (default: serve until Ctrl-C).
    #[arg(long)]
    pub runs: Option<usize>,
}

impl Scenario {
    /// The subcommand's name, as used in summaries and scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect(_) => "connect",
            Scenario::Echo(_) => "echo",
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Publish(_) => "publish",
            Scenario::Soak(_) => "soak",
            Scenario::Mixed(_) => "mixed",
            Scenario::Failover(_) => "failover",
            Scenario::Agent(_) => "agent",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, short, default_value_t = 100)]
    pub connections: usize,

    /// How long to hold them open once the ramp is over.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub hold: Duration,

    /// Open connections over time instead of -c/--hold: `DURATION:TARGET`, repeatable, linear
    /// within each stage from 0 (`--stage 30s:1000 --stage 1m:1000 --stage 10s:0`).
    #[arg(long, value_name = "DUR:TARGET")]
    pub stage: Vec<crate::stages::Stage>,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// Connections, each with one request in flight.
    #[arg(long, short, default_value_t = 10)]
    pub connections: usize,

    /// Measured phase length (after the ramp).
    #[arg(long, short, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Stop after this many requests in total (across connections).
    #[arg(long)]
    pub requests: Option<u64>,

    /// Size of the echoed `message` string in bytes.
    #[arg(long, default_value_t = 32)]
    pub message_size: usize,

    /// A reply not back within this is counted as `reply_timeout`.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub reply_timeout: Duration,

    /// Pause between a reply and the next request on the same connection.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub think: Duration,

    /// Requests per second over time instead of as fast as the replies come: `DURATION:RATE`,
    /// repeatable, linear within each stage from 0 (`--stage 10s:2000 --stage 30s:2000`).
    /// Connection j of C sends requests j, j + C, ... of the schedule, one in flight at a
    /// time; round trips are measured from the due time (`rtt*`). Replaces --duration.
    #[arg(long, value_name = "DUR:RATE", conflicts_with = "think")]
    pub stage: Vec<crate::stages::Stage>,
}

/// Options shared by the two scenarios that measure fan-out delivery.
#[derive(Args, Debug, Clone)]
pub struct DeliveryArgs {
    /// Listener connections that count receipts.
    #[arg(long, short, default_value_t = 100)]
    pub listeners: usize,

    /// Sending connections; the rate is split evenly between them.
    #[arg(long, short, default_value_t = 1)]
    pub publishers: usize,

    /// Events per second over all publishers (open loop), or `max`.
    #[arg(long, short, default_value = "100")]
    pub rate: Rate,

    /// Sending phase length (after the ramp).
    #[arg(long, short, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Stop sending after this many events in total.
    #[arg(long)]
    pub messages: Option<u64>,

    /// Size of the `message` string of the default event, in bytes.
    #[arg(long, default_value_t = 32)]
    pub message_size: usize,

    /// Event to send as a JSON object (the probe field `lt` is added to it).
    ///
    /// Default: `{"eventType":10,"message":"<message-size bytes>","broadcast":true}`.
    #[arg(long)]
    pub event: Option<String>,

    /// The send rate over time instead of --rate/--duration: `DURATION:RATE`, repeatable,
    /// linear within each stage from 0 (`--stage 10s:500 --stage 30s:500 --stage 5s:0`).
    #[arg(long, value_name = "DUR:RATE")]
    pub stage: Vec<crate::stages::Stage>,

    /// A weighted mix of events instead of one: `target=all|user|connection,type=N,weight=W`,
    /// repeatable. `user` events carry the `username` of one listener's user (needs
    /// --jwt-secret or --token-file, and --api-key); `connection` events carry `to`, the
    /// broker's id of one listener (needs --api-key: the listeners learn their ids through a
    /// MetaRequest the tool answers). Each listener expects the `all` events, its user's and
    /// its own connection's.
    #[arg(long, conflicts_with = "event", value_name = "SPEC")]
    pub mix: Vec<String>,

    /// After sending stops, wait up to this long for the last deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,

    /// Closed loop: at most this many events sent and not yet received by every listener
    /// (WebSocket publishers only; usually with `--rate max`). With `--pause-share`, only the
    /// steady listeners' receipts retire events, so the pause does not stall the publishers.
    #[arg(long)]
    pub in_flight: Option<u64>,

    #[command(flatten)]
    pub pause: PauseArgs,
}

/// Slow consumers: a share of the listeners stops reading for a while, then resumes.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(next_help_heading = "Slow consumers (broadcast, publish)")]
pub struct PauseArgs {
    /// Share of the listeners (0 to 1) that stop reading their socket for --pause-for; at least
    /// one when above 0. They are spread evenly over the listeners. 0 (the default): none.
    #[arg(long, value_parser = parse_share, default_value = "0")]
    pub pause_share: f64,

    /// How long the paused listeners leave their socket unread (TCP backpressure reaches the
    /// server), after which they read everything that is waiting.
    #[arg(long, value_parser = parse_pause, default_value = "5s")]
    pub pause_for: Duration,

    /// When the pause starts, counted from the start of the send phase.
    #[arg(long, value_parser = parse_pause, default_value = "1s")]
    pub pause_at: Duration,

    /// SO_RCVBUF in bytes for the paused listeners' sockets (set before connecting, so the
    /// kernel's receive window stays that small and the pause reaches the server sooner). By
    /// default the kernel sizes it, and autotuning can let it grow to megabytes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pause_rcvbuf: Option<u32>,
}

impl PauseArgs {
    /// How many of `listeners` pause: the share rounded, at least one when the share is above 0.
    pub fn paused_count(&self, listeners: usize) -> usize {
        if self.pause_share <= 0.0 || listeners == 0 {
            return 0;
        }
        ((self.pause_share * listeners as f64).round() as usize).clamp(1, listeners)
    }

    /// Whether listener number `i` (0-based, of `listeners`) is one that pauses: the `k` paused
    /// ones are spread evenly, so they share source addresses and ramp slots with the others.
    pub fn is_paused(&self, i: usize, listeners: usize) -> bool {
        let k = self.paused_count(listeners);
        if k == 0 || i >= listeners {
            return false;
        }
        // Listener i pauses when the running quota floor((i + 1) k / n) steps up at i.
        (i + 1) * k / listeners > i * k / listeners
    }
}

#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// Transport: the HTTP publish API or publisher WebSocket connections.
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,

    /// Events per HTTP request (sent as a JSON array when above 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Path of the publish endpoint on the WebSocket port.
    #[arg(long, default_value = "/api/publish")]
    pub publish_path: String,
}

/// How connections are spread over several URLs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    RoundRobin,
    Random,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Ws,
}

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Connections to hold.
    #[arg(long, short, default_value_t = 100)]
    pub connections: usize,

    /// How long to hold them (after the ramp).
    #[arg(long, short, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,

    /// Each connection sends one echo per interval (open loop, phase-spread).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub echo_interval: Duration,

    /// Broadcasts per second sent by one extra connection to all the others; 0 for none.
    #[arg(long, default_value_t = 0.0)]
    pub broadcast_rate: f64,

    /// Size of the `message` string in bytes.
    #[arg(long, default_value_t = 32)]
    pub message_size: usize,

    /// An echo reply not back within this is counted as `reply_timeout`.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub reply_timeout: Duration,

    /// Do not reconnect connections that the server drops.
    #[arg(long)]
    pub no_reconnect: bool,

    /// Held connections over time instead of -c/--duration: `DURATION:TARGET`, repeatable,
    /// linear within each stage from 0, as for `connect` (each open connection echoes every
    /// --echo-interval). Not with --broadcast-rate (see the README).
    #[arg(long, value_name = "DUR:TARGET")]
    pub stage: Vec<crate::stages::Stage>,
}

/// How `failover` disrupts the cluster mid-run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disrupt {
    /// `POST /admin/v1/drain` to --drain-url (with --admin-token), or SIGTERM to --kill-pid: the
    /// instance closes its clients with 1001 over its drain window and exits.
    Drain,
    /// SIGKILL to --kill-pid: the instance vanishes without closing anything.
    Sigkill,
    /// No disruption (a baseline for the same figures).
    None,
}

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Listener connections (ordinary clients, `?recover=1`), all through --url.
    #[arg(long, short, default_value_t = 2000)]
    pub listeners: usize,

    /// Numbered broadcast events per second from one publisher connection (--api-key).
    #[arg(long, short, default_value_t = 200.0)]
    pub rate: f64,

    /// Sending phase length (after the ramp and warm-up).
    #[arg(long, short, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,

    /// What happens mid-run: `drain` (--drain-url and --admin-token, or --kill-pid for
    /// SIGTERM), `sigkill` (--kill-pid), or `none`.
    #[arg(long, value_enum, default_value_t = Disrupt::Drain)]
    pub disrupt: Disrupt,

    /// When the disruption happens, counted from the start of sending.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub disrupt_at: Duration,

    /// The ops URL of the instance to drain (`http://127.0.0.1:9091`); `POST /admin/v1/drain`.
    #[arg(long)]
    pub drain_url: Option<String>,

    /// Bearer token of the admin API (the broker's `broker.admin.token`).
    #[arg(long, env = "LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Process id of the instance to signal: SIGTERM for `--disrupt drain` without
    /// --drain-url, SIGKILL for `--disrupt sigkill`. It must be on this machine.
    #[arg(long)]
    pub kill_pid: Option<u32>,

    /// Reconnect without positions (no `?recover=1`, no `?since=`): what a deploy costs
    /// clients that do not resume.
    #[arg(long)]
    pub no_recover: bool,

    /// First reconnect delay; doubled after each failed attempt up to --backoff-max, each
    /// delay drawn between half and all of it (jitter).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub backoff_min: Duration,

    /// The longest reconnect delay.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub backoff_max: Duration,

    /// After sending stops, wait up to this long for every listener to have every event.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub drain: Duration,

    /// Size of the `message` string of each event, in bytes.
    #[arg(long, default_value_t = 32)]
    pub message_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct MixedArgs {
    /// Scenario file (`.toml` or `.json`), see the README.
    pub file: PathBuf,
}

/// A send rate: events per second, or as fast as the connection takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "`{s}` is not a rate: give events per second (a number above 0) or `max`"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// The longest `--pause-at` and `--pause-for` accepted: a day (and instants stay far from
/// overflowing when they are added up).
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration for `--pause-at`/`--pause-for`: as [`parse_duration`], at most a day.
pub fn parse_pause(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_PAUSE {
        return Err(format!("`{s}` is longer than the 24 h a pause may last"));
    }
    Ok(d)
}

/// Parses a share between 0 and 1 (`0.1`, or `10%`).
pub fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match value {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a share: give a number from 0 to 1 (0.1) or a percentage (10%)"
        )),
    }
}

/// Parses `1.5s`, `250ms`, `2m`, `1h 30m` (humantime syntax) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        // `try_from`: a huge number of seconds is an error, not a panic.
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a duration"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); examples: 500ms, 10s, 2m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("inf").is_err());
        assert_eq!(parse_pause("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_pause("25h").is_err());
    }

    #[test]
    fn rates_accept_numbers_and_max() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("250".parse::<Rate>(), Ok(Rate::PerSecond(250.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn shares_accept_fractions_and_percentages() {
        assert_eq!(parse_share("0.1"), Ok(0.1));
        assert_eq!(parse_share("25%"), Ok(0.25));
        assert_eq!(parse_share("0"), Ok(0.0));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("NaN").is_err());
        assert!(parse_share("some").is_err());
    }

    #[test]
    fn paused_listeners_are_spread_and_counted() {
        let pause = |share: f64| PauseArgs {
            pause_share: share,
            pause_for: Duration::from_secs(1),
            pause_at: Duration::ZERO,
            pause_rcvbuf: None,
        };
        for (share, n, k) in [
            (0.1, 100, 10),
            (0.0, 100, 0),
            (0.01, 10, 1),
            (1.0, 7, 7),
            (0.5, 3, 2),
        ] {
            let p = pause(share);
            assert_eq!(p.paused_count(n), k, "{share} of {n}");
            let picked: Vec<usize> = (0..n).filter(|&i| p.is_paused(i, n)).collect();
            assert_eq!(picked.len(), k, "{share} of {n}: {picked:?}");
        }
        let p = pause(0.25);
        let picked: Vec<usize> = (0..8).filter(|&i| p.is_paused(i, 8)).collect();
        assert_eq!(picked, [3, 7], "spread evenly");
        assert!(!p.is_paused(8, 8));
    }

    #[test]
    fn global_options_go_after_the_subcommand_too() {
        let cli =
            Cli::try_parse_from(["loadtest", "echo", "-c", "3", "--url", "ws://127.0.0.1:1/"])
                .expect("parses");
        assert_eq!(cli.target.url, ["ws://127.0.0.1:1/"]);
        assert!(matches!(
            cli.scenario,
            Scenario::Echo(EchoArgs { connections: 3, .. })
        ));
    }
}
