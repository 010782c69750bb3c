//! The `loadtest` binary: parse, run, print. Everything else is in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use loadtest::context::StopReason;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = loadtest::Cli::parse();
    cli.argv = std::env::args_os().collect();
    // A worker of `--workers` hands its summary to the parent instead of printing it.
    let worker = std::env::var_os(loadtest::workers::WORKER_ENV).is_some();
    let (json, quiet) = (cli.output.json, cli.output.quiet);

    // Ctrl-C ends the run early but still prints what was measured; a second one exits at once.
    let interrupt = CancellationToken::new();
    {
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupt.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }

    if let loadtest::cli::Scenario::Agent(a) = &cli.scenario {
        return match loadtest::agent::serve(a.listen, &a.token, a.runs, interrupt).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }

    match loadtest::run_until(cli, interrupt).await {
        Ok(summary) if worker => {
            loadtest::workers::Link::done(summary);
            // Exit now: the runtime would otherwise wait for the blocking read of stdin.
            std::process::exit(0)
        }
        Ok(summary) => {
            let mut out = std::io::stdout().lock();
            if json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(text) => {
                        let _ = writeln!(out, "{text}");
                    }
                    Err(e) => {
                        eprintln!("error: cannot serialize the summary: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                if !quiet {
                    eprint!("{summary}");
                }
            } else {
                let _ = write!(out, "{summary}");
            }
            let _ = out.flush();
            // The failed checks go to stderr even with --quiet or --json: a CI log shows why.
            let failed = summary.verdict.as_ref().filter(|v| !v.passed);
            if let Some(v) = failed {
                for c in v.failures() {
                    if c.check == "run" {
                        eprintln!("FAILED the run: {}", c.detail);
                    } else {
                        eprintln!("FAILED threshold `{}`: {}", c.check, c.detail);
                    }
                }
            }
            // A run cut short by its hard deadline measured something other than what was asked.
            if summary.stopped_by == StopReason::Deadline {
                ExitCode::from(3)
            } else if failed.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if worker {
                // As above: do not wait for the read of stdin.
                std::process::exit(2);
            }
            ExitCode::from(2)
        }
    }
}
