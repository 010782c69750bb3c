//! The configuration's unit tests: loading, errors that name the key, the environment.
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn embedded_default_is_local_only() {
    let c = Config::embedded_default();
    assert_eq!(c.websocket.port, 8080);
    assert_eq!(c.broker.ops.port, 9090);
    let policy =
        crate::origin::OriginPolicy::new(&c.websocket.approved_socket_domains).expect("compiles");
    assert!(policy.is_approved(b"http://localhost:3000"));
    assert!(policy.is_approved(b"https://127.0.0.1"));
    assert!(!policy.is_approved(b"http://localhost.evil.com"));
    assert!(!policy.is_approved(b"https://example.com"));
}

#[test]
fn users_example_config_loads_as_is() {
    let text = include_str!("../../tests/data/users-example-config.json");
    let c = Config::from_json_str(text, "users-example-config.json").expect("loads");
    assert_eq!(c.websocket.port, 8080);
    assert_eq!(c.websocket.approved_socket_domains.len(), 7);
    assert_eq!(
        c.websocket.approved_socket_domains[2],
        r"^webinate\.net:80$"
    );
    assert!(!c.ssl);
    assert_eq!(c.ssl_key, None, "empty sslKey means none");
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let err = Config::from_json_str(
        "{\n  \"websocket\": {\n    \"port\": 80,,\n  }\n}",
        "x.json",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("x.json: line 3, column"), "{err}");
}

#[test]
fn invalid_escape_is_an_error_naming_the_key_and_the_fix() {
    let text = "{\n  \"websocket\": {\n    \"approvedSocketDomains\": [\"^https://app\\.example\\.com(:\\d+)?$\"],\n  },\n}";
    let err = Config::from_json_str(text, "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c.json: line 3, column 44 (in websocket.approvedSocketDomains[0]): invalid escape \"\\.\""),
        "{err}"
    );
    assert!(err.contains("write \\\\. for a literal dot"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    // The same from the environment variable.
    let err = Config::from_parts(
        "{}",
        "t",
        &env(&[(
            "BROKER_APPROVED_SOCKET_DOMAINS",
            r#"["^https://a\\.example$", "^https://app\.example\.com$"]"#,
        )]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "websocket.approvedSocketDomains[1] (from BROKER_APPROVED_SOCKET_DOMAINS): column 40: invalid escape"
        ),
        "{err}"
    );
    assert!(err.contains("write \\\\. for a literal dot"), "{err}");
    // Escaped as JSON wants, the pattern keeps its backslashes.
    let c = Config::from_json_str(
        r#"{"websocket":{"approvedSocketDomains":["^https://app\\.example\\.com(:\\d+)?$",]},}"#,
        "c.json",
    )
    .expect("valid");
    assert_eq!(
        c.websocket.approved_socket_domains,
        vec![r"^https://app\.example\.com(:\d+)?$"]
    );
}

#[test]
fn wrong_type_names_the_key() {
    let err = Config::from_json_str(r#"{"websocket":{"port":"eighty"}}"#, "c.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("websocket.port"), "{err}");
    let err = Config::from_json_str(r#"{"websocket":{"port":70000}}"#, "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("websocket.port") && err.contains("70000"),
        "{err}"
    );
}

#[test]
fn bad_pattern_names_index_and_text() {
    let err = Config::from_json_str(
        r#"{"websocket":{"approvedSocketDomains":["localhost","^(foo"]}}"#,
        "c.json",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("approvedSocketDomains[1]"), "{err}");
    assert!(err.contains("^(foo"), "{err}");
}

#[test]
fn env_overrides_apply_and_are_named_in_errors() {
    let c = Config::from_parts(
        "{}",
        "t",
        &env(&[
            ("BROKER_PORT", "9000"),
            ("BROKER_SOCKET_API_KEY", "12345"),
            (
                "BROKER_APPROVED_SOCKET_DOMAINS",
                r#"["^https://a\\.example$"]"#,
            ),
            ("BROKER_DELIVER_USER_EVENTS", "all"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.websocket.port, 9000);
    assert_eq!(c.websocket.socket_api_key.as_deref(), Some("12345"));
    assert_eq!(
        c.websocket.approved_socket_domains,
        vec![r"^https://a\.example$"]
    );
    assert_eq!(c.broker.deliver_user_events, DeliverUserEvents::All);

    let err = Config::from_parts("{}", "t", &env(&[("BROKER_PORT", "99999")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("websocket.port (from BROKER_PORT)"), "{err}");
    // A range error names the variable as well.
    let err = Config::from_parts("{}", "t", &env(&[("BROKER_SEND_QUEUE_BYTES", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broker.limits.sendQueueBytes (from BROKER_SEND_QUEUE_BYTES)"),
        "{err}"
    );
    let err = Config::from_parts("{}", "t", &env(&[("BROKER_DELIVER_USER_EVENTS", "some")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broker.deliverUserEvents (from BROKER_DELIVER_USER_EVENTS)"),
        "{err}"
    );
}

#[test]
fn limits_are_checked() {
    let err = Config::from_json_str(r#"{"broker":{"limits":{"sendQueueBytes":0}}}"#, "c")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("broker.limits.sendQueueBytes"), "{err}");
    for bad in [0, 127, (1 << 20) + 1] {
        let err = Config::from_json_str(
            &format!(r#"{{"broker":{{"limits":{{"readBufferBytes":{bad}}}}}}}"#),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("broker.limits.readBufferBytes"),
            "{bad}: {err}"
        );
    }
    let err = Config::from_json_str(r#"{"broker":{"limits":{"sendQueue":1024}}}"#, "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("broker.limits.sendQueue:") && err.contains("sendQueueBytes"),
        "an old key names its replacement: {err}"
    );
    let err = Config::from_json_str(r#"{"broker":{"limits":{"closeGrace":0}}}"#, "c")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("broker.limits.closeGrace"), "{err}");
    let err = Config::from_json_str(
        r#"{"broker":{"limits":{"pingInterval":10,"idleTimeout":5}}}"#,
        "c",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("broker.limits.idleTimeout"), "{err}");
    let err = Config::from_json_str(
        r#"{"ssl":true,"sslKey":"/nonexistent/key.pem","sslCert":"/nonexistent/c.pem"}"#,
        "c",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("sslKey") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn a_huge_drain_window_is_refused() {
    for w in ["1e300", "3600.5", "-1"] {
        let err = Config::from_json_str(&format!(r#"{{"broker":{{"drainWindow":{w}}}}}"#), "c")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("broker.drainWindow") && err.contains("3600"),
            "{err}"
        );
    }
    let c = Config::from_json_str(r#"{"broker":{"drainWindow":3600}}"#, "c").expect("ok");
    assert_eq!(c.broker.drain_window, 3600.0);
}

#[test]
fn trusted_proxies_are_compared_in_canonical_form() {
    let c = Config::from_json_str(
        r#"{"broker":{"limits":{"trustedProxies":["::ffff:127.0.0.1","::1"]}}}"#,
        "c",
    )
    .expect("valid");
    let want: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
    assert_eq!(c.broker.limits.trusted_proxies, want);
}

/// `BROKER_X_FILE` stands for `BROKER_X` with the file's content (mounted secrets).
#[test]
fn file_variables_read_secrets_from_files_and_name_themselves_in_errors() {
    let dir = std::env::temp_dir().join(format!("broker-file-vars-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("admin-token");
    std::fs::write(&token, "a-token-of-twenty-chars\n").expect("write");
    let read = dir.join("read-token");
    std::fs::write(&read, "a-read-token-of-20-chars").expect("write");
    let short = dir.join("short");
    std::fs::write(&short, "short\r\n").expect("write");
    let path = |p: &std::path::Path| p.display().to_string();

    let c = Config::from_parts(
        "{}",
        "t",
        &env(&[
            ("BROKER_ADMIN_TOKEN_FILE", &path(&token)),
            ("BROKER_ADMIN_READ_TOKEN_FILE", &path(&read)),
        ]),
    )
    .expect("valid");
    assert_eq!(
        c.broker.admin.token.as_deref(),
        Some("a-token-of-twenty-chars"),
        "last newline dropped"
    );
    assert_eq!(
        c.broker.admin.read_token.as_deref(),
        Some("a-read-token-of-20-chars")
    );

    let err = Config::from_parts(
        "{}",
        "t",
        &env(&[("BROKER_ADMIN_TOKEN_FILE", &path(&short))]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("broker.admin.token (from BROKER_ADMIN_TOKEN_FILE)"),
        "{err}"
    );
    let err = Config::from_parts(
        "{}",
        "t",
        &env(&[("BROKER_ADMIN_TOKEN_FILE", "/nonexistent/token")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("(from BROKER_ADMIN_TOKEN_FILE)")
            && err.contains("/nonexistent/token: cannot read"),
        "{err}"
    );
    let err = Config::from_parts(
        "{}",
        "t",
        &env(&[
            ("BROKER_ADMIN_TOKEN", "a-token-of-twenty-chars"),
            ("BROKER_ADMIN_TOKEN_FILE", &path(&token)),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("set one of them, not both"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_tokens_and_ops_tls_are_checked() {
    let err = Config::from_json_str(
        r#"{"broker":{"admin":{"token":"same-token-0123456789","readToken":"same-token-0123456789"}}}"#,
        "c",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("broker.admin.readToken") && err.contains("must differ"),
        "{err}"
    );
    let err = Config::from_json_str(r#"{"broker":{"admin":{"readToken":"short"}}}"#, "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broker.admin.readToken") && err.contains("16"),
        "{err}"
    );
    let err = Config::from_json_str(r#"{"broker":{"ops":{"tls":true}}}"#, "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broker.ops.tls") && err.contains("sslKey"),
        "{err}"
    );
}

#[test]
fn display_masks_secrets() {
    let c = Config::from_json_str(
        r#"{"websocket":{"socketApiKey":"supersecretkey"},"broker":{"jwtSecret":"0123456789abcdef0123"}}"#,
        "c",
    )
    .expect("valid");
    let shown = c.to_display_json();
    assert!(!shown.contains("supersecretkey"), "{shown}");
    let with_tokens = Config::from_json_str(
        r#"{"broker":{"admin":{"token":"admin-token-0123456789","readToken":"read-token-0123456789"}}}"#,
        "c",
    )
    .expect("valid")
    .to_display_json();
    assert!(!with_tokens.contains("token-0123456789"), "{with_tokens}");
    assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
    assert!(shown.contains("********"));
}
