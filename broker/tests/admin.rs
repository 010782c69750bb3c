//! The admin API on the ops listener (PROTOCOL.md part 3).

mod common;
use common::*;
use serde_json::{json, Value};

async fn admin(
    b: &broker::app::RunningBroker,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, text) = http_request(
        b.ops_addr(),
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_admin_call_needs_the_token() {
    let b = start().await;
    for (method, path) in [
        ("GET", "/admin/v1/connections"),
        ("GET", "/admin/v1/stats"),
        ("POST", "/admin/v1/events"),
        ("DELETE", "/admin/v1/connections/x.1"),
        ("POST", "/admin/v1/drain"),
        ("GET", "/admin/v1/stream"),
        // The unversioned paths of the first release: the same routes.
        ("GET", "/admin/connections"),
        ("GET", "/admin/stats"),
        ("POST", "/admin/events"),
        ("DELETE", "/admin/connections/x.1"),
        ("POST", "/admin/drain"),
        ("GET", "/admin/stream"),
    ] {
        let (status, _) = http_request(b.ops_addr(), method, path, &[], "").await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = http_request(
            b.ops_addr(),
            method,
            path,
            &[("authorization", "Bearer wrong-token-000000000")],
            "",
        )
        .await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_admin_requests_total{status="401"}"#),
        24.0
    );
    assert!(is_ready(&b).await, "nothing was drained");
    b.shutdown().await;
}

async fn is_ready(b: &broker::app::RunningBroker) -> bool {
    http_get(b.ops_addr(), "/readyz", None).await.0 == 200
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let b = start_with(json!({"broker": {"admin": {"token": null}}})).await;
    let (status, _) = http_get(b.ops_addr(), "/admin/stats", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
    b.shutdown().await;
}

#[tokio::test]
async fn lists_filters_and_pages_connections() {
    let b = start().await;
    let _c1 = client(b.ws_addr()).await;
    let _c2 = connect_with(b.ws_addr(), "/", &[("origin", "https://app.example.com")])
        .await
        .expect("connects");
    let _p = publisher(b.ws_addr()).await;
    let (status, list) = admin(&b, "GET", "/admin/connections", "").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3);
    let first = &list["connections"][0];
    for field in [
        "id",
        "remoteAddr",
        "origin",
        "user",
        "publisher",
        "connectedAt",
        "messagesIn",
        "messagesOut",
        "bytesIn",
        "bytesOut",
        "sendQueueDepth",
        "shard",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    let (_, pubs) = admin(&b, "GET", "/admin/connections?publisher=true", "").await;
    assert_eq!(pubs["total"], 1);
    let (_, by_origin) = admin(&b, "GET", "/admin/connections?origin=example.com", "").await;
    assert_eq!(by_origin["total"], 1);
    assert_eq!(
        by_origin["connections"][0]["origin"],
        "https://app.example.com"
    );
    let (_, page) = admin(&b, "GET", "/admin/connections?offset=1&limit=1", "").await;
    assert_eq!(page["connections"].as_array().map(Vec::len), Some(1));
    let (_, stats) = admin(&b, "GET", "/admin/stats", "").await;
    assert_eq!(stats["connections"]["clients"], 2);
    assert_eq!(stats["connections"]["publishers"], 1);
    assert_eq!(stats["totals"]["accepted"], 3);
    assert_eq!(stats["ready"], true);
    b.shutdown().await;
}

/// The API is versioned: `/admin/v1/...`, a header naming the version on every answer, and
/// `apiVersion` in stats; the unversioned paths of the first release answer the same. The
/// answers are read with the `admin_api` types the desktop app uses.
#[tokio::test]
async fn the_api_is_versioned_and_its_answers_read_as_the_shared_types() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = start().await;
    let _c = client(b.ws_addr()).await;
    for path in ["/admin/v1/stats", "/admin/stats"] {
        let mut s = tokio::net::TcpStream::connect(b.ops_addr())
            .await
            .expect("connect");
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("request");
        let mut out = String::new();
        tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
            .await
            .expect("in time")
            .expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "{}: {}",
                admin_api::VERSION_HEADER,
                admin_api::VERSION
            )),
            "{path}: no version header in {head}"
        );
        let stats: admin_api::Stats = serde_json::from_str(body).expect("Stats");
        assert_eq!(stats.api_version, admin_api::VERSION);
        assert_eq!(stats.connections.clients, 1);
    }
    let (status, page) = admin(
        &b,
        "GET",
        &admin_api::path(admin_api::route::CONNECTIONS),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let page: admin_api::ConnectionPage = serde_json::from_value(page).expect("ConnectionPage");
    assert_eq!(page.total, 1);
    assert!(page.connections[0].remote_addr.starts_with("127.0.0.1:"));
    b.shutdown().await;
}

/// Search by remote address (the fleet console's "search by address").
#[tokio::test]
async fn lists_connections_by_remote_address() {
    let b = start().await;
    let _c = client(b.ws_addr()).await;
    let (_, hit) = admin(&b, "GET", "/admin/v1/connections?remote=127.0.0.", "").await;
    assert_eq!(hit["total"], 1);
    let (_, miss) = admin(&b, "GET", "/admin/v1/connections?remote=10.9.", "").await;
    assert_eq!(miss["total"], 0);
    assert_eq!(miss["connections"], json!([]));
    b.shutdown().await;
}

#[tokio::test]
async fn injects_events_to_all_a_user_or_a_connection() {
    let b = start().await;
    let mut a = client(b.ws_addr()).await;
    let mut c = client(b.ws_addr()).await;
    let ev = json!({"eventType": 10, "message": "from ops"});
    let (status, r) = admin(
        &b,
        "POST",
        "/admin/events",
        &json!({"event": ev, "target": "all"}).to_string(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(r["delivered"], 2);
    assert_eq!(recv_json(&mut a).await, ev);
    assert_eq!(recv_json(&mut c).await, ev);

    let (_, list) = admin(&b, "GET", "/admin/connections", "").await;
    let id_a = list["connections"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let one = json!({"eventType": 1, "username": "x"});
    let (status, r) = admin(
        &b,
        "POST",
        "/admin/events",
        &json!({"event": one, "target": {"connection": id_a}}).to_string(),
    )
    .await;
    assert_eq!((status, r["delivered"].clone()), (202, json!(1)));
    assert_eq!(recv_json(&mut a).await, one);
    assert_nothing_pending(&mut c).await;

    for bad in [
        json!({"event": {"no": "type"}}),
        json!({"event": ev, "target": "everyone"}),
        json!({"nothing": 1}),
    ] {
        let (status, r) = admin(&b, "POST", "/admin/events", &bad.to_string()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(r["error"].is_string());
    }
    b.shutdown().await;
}

#[tokio::test]
async fn kick_closes_one_connection_with_the_given_code() {
    let b = start().await;
    let mut a = client(b.ws_addr()).await;
    let mut other = client(b.ws_addr()).await;
    let (_, list) = admin(&b, "GET", "/admin/connections", "").await;
    let id = list["connections"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, r) = admin(
        &b,
        "DELETE",
        &format!("/admin/connections/{id}?code=4000&reason=bye"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["kicked"], id.as_str());
    assert_eq!(close_code(&mut a).await, 4000);
    assert_nothing_pending(&mut other).await;
    let (status, _) = admin(&b, "DELETE", "/admin/connections/nope.99", "").await;
    assert_eq!(status, 404);
    b.shutdown().await;
}

/// RFC 6455 7.4: 1004 is reserved, 1005, 1006 and 1015 are never sent, 1016-2999 belong to the
/// protocol. The broker refuses them with the rule the desktop app shows (one function in
/// `admin_api`), and the connection stays open.
#[tokio::test]
async fn kick_refuses_close_codes_that_rfc_6455_forbids() {
    let b = start().await;
    let mut a = client(b.ws_addr()).await;
    let (_, list) = admin(&b, "GET", "/admin/v1/connections", "").await;
    let id = list["connections"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for code in [1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let (status, r) = admin(
            &b,
            "DELETE",
            &format!("/admin/v1/connections/{id}?code={code}"),
            "",
        )
        .await;
        assert_eq!(status, 400, "code {code}");
        assert_eq!(r["error"], admin_api::KICK_CODE_RULE, "code {code}");
    }
    assert_nothing_pending(&mut a).await;
    let (status, r) = admin(
        &b,
        "DELETE",
        &format!("/admin/v1/connections/{id}?code=1012"),
        "",
    )
    .await;
    assert_eq!((status, r["kicked"].as_str()), (200, Some(id.as_str())));
    assert_eq!(close_code(&mut a).await, 1012);
    b.shutdown().await;
}

#[tokio::test]
async fn drain_fails_readiness_stops_accepting_and_closes_with_1001() {
    let b = start_with(json!({"broker": {"drainWindow": 0.2}})).await;
    let mut a = client(b.ws_addr()).await;
    let mut c = client(b.ws_addr()).await;
    let (status, _) = admin(&b, "POST", "/admin/drain", "").await;
    assert_eq!(status, 202);
    eventually("/readyz fails", || async { !is_ready(&b).await }).await;
    assert_eq!(close_code(&mut a).await, 1001);
    assert_eq!(close_code(&mut c).await, 1001);
    assert!(
        connect_with(b.ws_addr(), "/", &[("origin", "http://localhost")])
            .await
            .is_err(),
        "still accepting"
    );
    b.stopping().await;
    b.shutdown().await;
}

#[tokio::test]
async fn stream_reports_connects_disconnects_and_stats() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let b = start().await;
    let mut s = tokio::net::TcpStream::connect(b.ops_addr())
        .await
        .expect("connect");
    s.write_all(
        format!(
            "GET /admin/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut lines = BufReader::new(s).lines();
    async fn next_event(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) -> Value {
        loop {
            let line = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("in time")
                .expect("read")
                .expect("open");
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str::<Value>(data).expect("JSON");
            }
        }
    }
    // The first stats line comes at once.
    let mut ev = next_event(&mut lines).await;
    assert_eq!(ev["type"], "stats");
    let ws = client(b.ws_addr()).await;
    while ev["type"] != "connect" {
        ev = next_event(&mut lines).await;
    }
    let id = ev["connection"]["id"].clone();
    drop(ws);
    while ev["type"] != "disconnect" {
        ev = next_event(&mut lines).await;
    }
    assert_eq!(ev["id"], id);
    b.shutdown().await;
}

/// `broker.admin.readToken` reads (list, stats, stream) and nothing else: inject, kick and drain
/// answer 403 and change nothing; stats tells the app what its token may do. Either token
/// works alone; without both, the API is off.
#[tokio::test]
async fn a_read_only_token_reads_and_is_refused_every_change() {
    const READ: &str = "read-only-token-0123456789";
    let b = start_with(json!({"broker": {"admin": {"readToken": READ}}})).await;
    let mut c = client(b.ws_addr()).await;
    let call = |method: &'static str, path: String, token: &'static str, body: &'static str| {
        let addr = b.ops_addr();
        async move {
            let auth = format!("Bearer {token}");
            let (status, text) = http_request(
                addr,
                method,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, stats) = call("GET", "/admin/v1/stats".into(), READ, "").await;
    assert_eq!(status, 200);
    assert_eq!(stats["access"], "read");
    let (_, list) = call("GET", "/admin/v1/connections".into(), READ, "").await;
    assert_eq!(list["total"], 1);
    let id = list["connections"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for (method, path, body) in [
        (
            "POST",
            "/admin/v1/events".to_string(),
            r#"{"event":{"eventType":10,"message":"hi"}}"#,
        ),
        ("DELETE", format!("/admin/v1/connections/{id}"), ""),
        ("POST", "/admin/v1/drain".to_string(), ""),
        (
            "POST",
            "/admin/events".to_string(),
            r#"{"event":{"eventType":10,"message":"hi"}}"#,
        ),
    ] {
        let (status, r) = call(method, path.clone(), READ, body).await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(
            r["error"].as_str().is_some_and(|e| e.contains("only read")),
            "{r}"
        );
    }
    assert_nothing_pending(&mut c).await;
    assert!(is_ready(&b).await, "the refused drain did not drain");
    let (_, stats) = call("GET", "/admin/v1/stats".into(), ADMIN_TOKEN, "").await;
    assert_eq!(
        stats["access"], "admin",
        "the admin token still works next to it"
    );
    let (status, _) = call(
        "POST",
        "/admin/v1/events".into(),
        ADMIN_TOKEN,
        r#"{"event":{"eventType":10,"message":"hi"}}"#,
    )
    .await;
    assert_eq!(status, 202);
    let (_, m) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(&m, r#"broker_admin_requests_total{status="403"}"#),
        4.0
    );
    b.shutdown().await;

    // A read token alone mounts the API, read-only.
    let b = start_with(json!({"broker": {"admin": {"token": null, "readToken": READ}}})).await;
    let (status, _) = call_on(b.ops_addr(), "GET", "/admin/v1/stats", READ).await;
    assert_eq!(status, 200);
    let (status, _) = call_on(b.ops_addr(), "POST", "/admin/v1/drain", READ).await;
    assert_eq!(status, 403);
    b.shutdown().await;
}

async fn call_on(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, String) {
    let auth = format!("Bearer {token}");
    http_request(addr, method, path, &[("authorization", &auth)], "").await
}

/// SECURITY.md: every admin call is logged with who made it (a fingerprint of the token:
/// `admin-token:…` or `read-token:…`) and what it did, refusals too, and never the token.
#[tokio::test]
async fn every_admin_call_is_logged_with_who_made_it_and_never_the_token() {
    const READ: &str = "read-only-token-0123456789";
    let b = BrokerProcess::spawn(&[
        ("BROKER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("BROKER_ADMIN_READ_TOKEN", READ),
        ("RUST_LOG", "info,broker=debug"),
    ]);
    let call = |method: &'static str,
                path: &'static str,
                token: &'static str,
                body: &'static str| async move {
        let auth = format!("Bearer {token}");
        http_request(
            b.ops,
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
        .0
    };
    assert_eq!(call("GET", "/admin/v1/stats", ADMIN_TOKEN, "").await, 200);
    assert_eq!(
        call(
            "POST",
            "/admin/v1/events",
            ADMIN_TOKEN,
            r#"{"event":{"eventType":10,"message":"hi"}}"#
        )
        .await,
        202
    );
    assert_eq!(call("POST", "/admin/v1/drain", READ, "").await, 403);
    assert_eq!(
        call("GET", "/admin/v1/connections", "wrong-token-0123456789", "").await,
        401
    );
    let has = |lines: &[String], parts: &[&str]| {
        lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
    };
    eventually("the four calls are in the log", || {
        let lines = b.log_lines();
        async move {
            has(
                &lines,
                &[
                    "admin call",
                    "who=admin-token:",
                    "path=\"/admin/v1/stats\"",
                    "status=200",
                ],
            ) && has(
                &lines,
                &[
                    "admin injected an event",
                    "who=admin-token:",
                    "action=\"inject\"",
                ],
            ) && has(
                &lines,
                &[
                    "admin call refused",
                    "who=read-token:",
                    "path=\"/admin/v1/drain\"",
                ],
            ) && has(
                &lines,
                &[
                    "missing or wrong bearer token",
                    "path=\"/admin/v1/connections\"",
                ],
            )
        }
    })
    .await;
    let lines = b.log_lines();
    for secret in [ADMIN_TOKEN, READ, "wrong-token-0123456789"] {
        assert!(
            !lines.iter().any(|l| l.contains(secret)),
            "a token in the log:\n{}",
            lines.join("\n")
        );
    }
}
