//! The disruption mid-run: `POST /admin/v1/drain` to an instance's ops listener, or SIGTERM or
//! SIGKILL to its process, checked before anything connects and carried out at `--disrupt-at`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{Disrupt, FailoverArgs};

/// How the disruption is carried out, checked before anything connects.
#[derive(Debug, Clone)]
pub(super) enum Disruption {
    /// `POST <prefix>/admin/drain` to `authority` with the bearer token.
    Drain {
        authority: String,
        path: String,
        token: String,
    },
    Signal {
        pid: i32,
        signal: libc::c_int,
    },
    None,
}

impl Disruption {
    pub(super) fn of(args: &FailoverArgs) -> anyhow::Result<Disruption> {
        let pid = |what: &str| -> anyhow::Result<i32> {
            let Some(pid) = args.kill_pid else {
                bail!("--disrupt {what} needs --kill-pid (the process id of the instance)");
            };
            let pid = i32::try_from(pid).context("--kill-pid is not a process id")?;
            if pid <= 1 || pid as u32 == std::process::id() {
                bail!("--kill-pid {pid} is not an instance this tool may signal");
            }
            // Signal 0: only checks that the process exists and may be signalled.
            // SAFETY: kill(2) with a positive pid and signal 0 sends nothing.
            if unsafe { libc::kill(pid, 0) } != 0 {
                bail!(
                    "--kill-pid {pid}: no such process that this user may signal ({})",
                    std::io::Error::last_os_error()
                );
            }
            Ok(pid)
        };
        Ok(match args.disrupt {
            Disrupt::None => Disruption::None,
            Disrupt::Sigkill => Disruption::Signal {
                pid: pid("sigkill")?,
                signal: libc::SIGKILL,
            },
            Disrupt::Drain => match (&args.drain_url, &args.admin_token) {
                (Some(url), Some(token)) => {
                    let (authority, path) = parse_http_url(url)?;
                    if token.is_empty() || token.contains(['\r', '\n']) {
                        bail!("--admin-token must be a non-empty single line");
                    }
                    Disruption::Drain {
                        authority,
                        path: format!(
                            "{}{}",
                            path.trim_end_matches('/'),
                            admin_api::path(admin_api::route::DRAIN)
                        ),
                        token: token.clone(),
                    }
                }
                (Some(_), None) => bail!(
                    "--drain-url needs --admin-token (the broker's broker.admin.token, or \
                     LOADTEST_ADMIN_TOKEN)"
                ),
                (None, _) if args.kill_pid.is_some() => Disruption::Signal {
                    pid: pid("drain")?,
                    signal: libc::SIGTERM,
                },
                (None, _) => bail!(
                    "--disrupt drain needs --drain-url and --admin-token (POST /admin/v1/drain), or \
                     --kill-pid (SIGTERM)"
                ),
            },
        })
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Disruption::Drain {
                authority, path, ..
            } => format!("POST http://{authority}{path}"),
            Disruption::Signal { pid, signal } if *signal == libc::SIGKILL => {
                format!("SIGKILL to pid {pid}")
            }
            Disruption::Signal { pid, .. } => format!("SIGTERM to pid {pid}"),
            Disruption::None => "nothing".into(),
        }
    }

    /// Carries it out: whether it happened, and the answer or error.
    pub(super) async fn execute(&self) -> (bool, String) {
        match self {
            Disruption::None => (true, "not asked".into()),
            Disruption::Signal { pid, signal } => {
                // SAFETY: kill(2) on a pid checked to be above 1 and not this process.
                if unsafe { libc::kill(*pid, *signal) } == 0 {
                    (true, "signal sent".into())
                } else {
                    (false, std::io::Error::last_os_error().to_string())
                }
            }
            Disruption::Drain {
                authority,
                path,
                token,
            } => match tokio::time::timeout(Duration::from_secs(5), post(authority, path, token))
                .await
            {
                Ok(Ok(status)) => ((200..300).contains(&status), format!("HTTP {status}")),
                Ok(Err(e)) => (false, format!("{e:#}")),
                Err(_) => (false, "no answer within 5 s".into()),
            },
        }
    }
}

/// `http://host:port/prefix` into (`host:port`, `/prefix`).
fn parse_http_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--drain-url `{url}` must start with http:// (the broker's ops listener)");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let ok = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok || path.contains(['?', '#', ' ']) {
        bail!("--drain-url `{url}` is not of the form http://HOST:PORT[/PREFIX]");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// A bare HTTP/1.1 POST with no body; returns the status code.
async fn post(authority: &str, path: &str, token: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", line.lines().next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_urls_are_checked() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:9091").expect("valid"),
            ("127.0.0.1:9091".into(), "".into())
        );
        assert_eq!(
            parse_http_url("http://ops.local/base/").expect("valid"),
            ("ops.local:80".into(), "/base/".into())
        );
        assert!(parse_http_url("https://127.0.0.1:9091").is_err());
        assert!(parse_http_url("http://").is_err());
        assert!(parse_http_url("http://a b:1/").is_err());
        assert!(parse_http_url("http://h:1/x?y").is_err());
    }
}
