//! Origin checks over real sockets, with the seed's example patterns and JavaScript
//! `String.match` semantics.

mod common;
use common::*;

#[tokio::test]
async fn seed_patterns_approve_and_refuse_like_javascript() {
    let b = start().await;
    let addr = b.ws_addr();
    let approved = [
        "http://localhost",           // `localhost` anywhere
        "http://localhost:3000",      // with a port
        "https://localhost.evil.com", // unanchored: the trap, but JavaScript semantics
        "ws://www.webinate.net:123",  // ^ws://www.webinate.net:123$
        "webinate.net:80",            // ^webinate\.net:80$
        "example.com",                // ^example\.com$
        "https://app.example.com",    // ^.+\.example\.com$ (the scheme is eaten by .+)
        "example.org.anything",       // ^example\.org without $
        "https://x.example.org:9000", // ^.+\.example\.org without $
    ];
    let refused = [
        "https://example.com", // anchored at ^: a scheme cannot match
        "http://webinate.net:80",
        "ws://www.webinate.net:1234",
        "http://LOCALHOST", // case-sensitive
        "https://evil.com",
        "http://127.0.0.1",
        "null",
        "http://a.b.example.com:8443", // ^.+\.example\.com$: a port breaks the $ anchor
    ];
    for origin in approved {
        let ws = connect_with(addr, "/", &[("origin", origin)]).await;
        assert!(ws.is_ok(), "{origin} should be approved: {:?}", ws.err());
    }
    for origin in refused {
        let r = connect_with(addr, "/", &[("origin", origin)]).await;
        assert_eq!(refused_status(r), 403, "{origin} should be refused");
    }
    // No Origin header at all.
    assert_eq!(
        refused_status(connect_with(addr, "/any/path", &[]).await),
        403
    );

    // Refusals are counted by reason.
    let (_, metrics) = http_get(b.ops_addr(), "/metrics", None).await;
    assert_eq!(
        metric(
            &metrics,
            r#"broker_connections_refused_total{reason="no_origin"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"broker_connections_refused_total{reason="origin"}"#
        ),
        8.0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn any_path_is_accepted() {
    let b = start().await;
    let ws = connect_with(
        b.ws_addr(),
        "/some/path?x=1",
        &[("origin", "http://localhost")],
    )
    .await;
    assert!(ws.is_ok());
    b.shutdown().await;
}

#[tokio::test]
async fn embedded_default_approves_local_pages_only() {
    let mut config = broker::config::Config::embedded_default();
    config.websocket.host = "127.0.0.1".parse().expect("ip");
    config.websocket.port = 0;
    config.broker.ops.port = 0;
    let b = broker::app::start(config).await.expect("starts");
    for ok in [
        "http://localhost:8080",
        "https://127.0.0.1",
        "http://[::1]:3000",
        "localhost",
    ] {
        assert!(
            connect_with(b.ws_addr(), "/", &[("origin", ok)])
                .await
                .is_ok(),
            "{ok}"
        );
    }
    for bad in [
        "http://localhost.evil.com",
        "https://example.com",
        "http://evil-localhost",
    ] {
        assert_eq!(
            refused_status(connect_with(b.ws_addr(), "/", &[("origin", bad)]).await),
            403,
            "{bad}"
        );
    }
    b.shutdown().await;
}
