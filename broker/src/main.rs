//! The `broker` command: run the broker, or check a configuration or an origin.

use std::path::PathBuf;
use std::process::ExitCode;

use broker::config::{Config, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "A high-throughput WebSocket event broker for the Users WebSocket API"
)]
struct Cli {
    /// The Users config.json (JSON; trailing commas and // or /* */ comments are fine). Without it the
    /// embedded default is used. BROKER_... environment variables override either.
    #[arg(long, short, global = true, env = "BROKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Run,
    /// Validate the configuration, print warnings and the effective settings (secrets masked).
    CheckConfig,
    /// Say which approvedSocketDomains patterns approve ORIGIN (exit 1 if none does).
    CheckOrigin {
        /// An Origin header value, e.g. https://app.example.com
        origin: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: config error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::CheckConfig => check_config(&config),
        Command::CheckOrigin { origin } => check_origin(&config, &origin),
    }
}

fn check_config(config: &Config) -> ExitCode {
    let Ok(policy) = broker::origin::OriginPolicy::new(&config.websocket.approved_socket_domains)
    else {
        return ExitCode::from(2);
    };
    println!("# {}: valid", config.source);
    for w in policy.warnings() {
        println!("# warning: {w}");
    }
    println!("{}", config.to_display_json());
    ExitCode::SUCCESS
}

fn check_origin(config: &Config, origin: &str) -> ExitCode {
    let Ok(policy) = broker::origin::OriginPolicy::new(&config.websocket.approved_socket_domains)
    else {
        return ExitCode::from(2);
    };
    let approving = policy.approving(origin.as_bytes());
    if approving.is_empty() {
        println!(
            "refused: no pattern of {} matches {origin:?}",
            config.source
        );
        for (i, p) in policy.patterns().iter().enumerate() {
            println!("  [{i}] {p}");
        }
        return ExitCode::from(1);
    }
    println!("approved: {origin:?} is matched by");
    for (i, p) in approving {
        println!("  approvedSocketDomains[{i}] {p}");
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or journald gets plain text.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(config.broker.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match broker::app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e:#}");
                return ExitCode::from(2);
            }
        };
        let signal = tokio::select! {
            s = shutdown_signal() => s,
            () = running.stopping() => "admin drain",
        };
        tracing::info!(signal, "shutting down: draining clients with 1001");
        running.drain_and_shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Every connection is a file descriptor: take the hard limit, not the usual soft 1024.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
