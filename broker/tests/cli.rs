//! The `broker` binary: start-up errors, the check commands, graceful shutdown on signals.

mod common;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_broker");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

#[test]
fn bad_settings_fail_with_one_line_and_status_2() {
    let cases = [
        (r#"{"websocket":{"port":70000}}"#, vec![], "websocket.port"),
        (
            r#"{"websocket":{"approvedSocketDomains":["ok","^(foo"]}}"#,
            vec![],
            "approvedSocketDomains[1]: \"^(foo\" does not compile",
        ),
        (
            "{\n\"websocket\": {\n  \"port\": 8080,,\n}}",
            vec![],
            "line 3, column",
        ),
        (
            "{}",
            vec![("BROKER_PORT", "http")],
            "websocket.port (from BROKER_PORT)",
        ),
        (
            r#"{"ssl":true,"sslKey":"/no/such/key.pem","sslCert":"/no/such/cert.pem"}"#,
            vec![],
            "sslKey: /no/such/key.pem: no such file",
        ),
    ];
    for (text, env, needle) in cases {
        let f = write_config(text);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(f.path())
            .arg("check-config")
            .envs(env)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(needle),
            "{stderr:?} should contain {needle:?}"
        );
    }
    let out = Command::new(BIN)
        .args(["--config", "/no/such/config.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_refuses_an_invalid_escape_naming_the_key() {
    // `\.` is not a JSON escape: Node's JSON.parse refuses the file, and so must we (a JSON5
    // reader would turn it into a bare `.` and approve `https://appXexample.com`).
    let f = write_config(
        "{\n  \"websocket\": {\n    \"approvedSocketDomains\": [\n      \"^https://app\\.example\\.com(:\\d+)?$\",\n    ],\n  },\n}\n",
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(f.path())
        .arg("check-config")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for needle in [
        "line 4, column 20",
        "websocket.approvedSocketDomains[0]",
        "invalid escape",
        "write \\\\. for a literal dot",
    ] {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should contain {needle:?}"
        );
    }
    // The same text through the environment variable.
    let f = write_config("{}");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(f.path())
        .arg("check-config")
        .env(
            "BROKER_APPROVED_SOCKET_DOMAINS",
            r#"["^https://app\.example\.com$"]"#,
        )
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("websocket.approvedSocketDomains[0] (from BROKER_APPROVED_SOCKET_DOMAINS)")
            && stderr.contains("write \\\\. for a literal dot"),
        "{stderr}"
    );
}

#[test]
fn check_config_loads_the_seed_config_and_warns() {
    let out = Command::new(BIN)
        .args([
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/users-example-config.json"
            ),
            "check-config",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("valid"));
    assert!(
        stdout.contains(
            r#"approvedSocketDomains[3]: "^example\\.com$" can never match a browser Origin"#
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"approvedSocketDomains[0]: "localhost" is not anchored"#),
        "{stdout}"
    );
    assert!(stdout.contains("\"port\": 8080"), "{stdout}");
}

#[test]
fn check_origin_names_the_approving_patterns() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/users-example-config.json"
    );
    let out = Command::new(BIN)
        .args([
            "--config",
            config,
            "check-origin",
            "https://app.example.com",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(r"approvedSocketDomains[4] ^.+\.example\.com$"),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["--config", config, "check-origin", "https://example.com"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("refused"));
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    for signal in ["TERM", "INT"] {
        let mut process = common::BrokerProcess::spawn(&[]);
        let mut a = common::client(process.ws).await;
        let mut b = common::client(process.ws).await;
        let (status, _) = common::http_get(process.ops, "/readyz", None).await;
        assert_eq!(status, 200);
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(process.child.id().to_string())
            .status()
            .expect("kill");
        assert!(killed.success());
        assert_eq!(common::close_code(&mut a).await, 1001, "SIG{signal}");
        assert_eq!(common::close_code(&mut b).await, 1001, "SIG{signal}");
        assert_eq!(process.exit_code().await, Some(0), "SIG{signal}");
        // No longer accepting.
        assert!(tokio::net::TcpStream::connect(process.ws).await.is_err());
    }
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    use std::io::{BufRead, BufReader};
    let config =
        write_config(r#"{"websocket":{"host":"127.0.0.1","port":0},"broker":{"ops":{"port":0}}}"#);
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("utf-8");
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("listening")), "{lines:?}");
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "an escape code in a piped log: {line:?}"
        );
    }
}
