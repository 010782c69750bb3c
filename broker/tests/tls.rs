//! `wss://` with a certificate made at test time, and the errors for bad key files.

mod common;
use std::io::Write;
use std::sync::Arc;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::Connector;

struct Pki {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cert_pem: String,
}

fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    Pki {
        cert_pem: ck.cert.pem(),
        cert,
        key,
        _dir: dir,
    }
}

fn client_config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem"))
        .expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test]
async fn wss_serves_echo_and_refuses_plain_ws() {
    let p = pki();
    let b = start_with(json!({"ssl": true, "sslKey": p.key, "sslCert": p.cert})).await;
    let port = b.ws_addr().port();
    let mut req = format!("wss://localhost:{port}/")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", "https://localhost".parse().expect("value"));
    let connector = Connector::Rustls(client_config(&p.cert_pem));
    let (mut ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector)),
    )
    .await
    .expect("in time")
    .expect("wss connects");
    let ev = json!({"eventType": 10, "message": "over TLS"});
    send_json(&mut ws, &ev).await;
    assert_eq!(recv_json(&mut ws).await, ev);
    // A refused origin is still a 403, inside TLS.
    let mut req = format!("wss://localhost:{port}/")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", "https://evil.com".parse().expect("value"));
    let refused = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        true,
        Some(Connector::Rustls(client_config(&p.cert_pem))),
    )
    .await;
    assert_eq!(refused_status(refused.map(|(ws, _)| ws)), 403);
    // Plain ws:// to the TLS port does not get an upgrade.
    assert!(
        connect_with(b.ws_addr(), "/", &[("origin", "http://localhost")])
            .await
            .is_err()
    );
    b.shutdown().await;
}

#[test]
fn bad_key_files_are_named() {
    let p = pki();
    let base = |key: &std::path::Path| {
        format!(
            r#"{{"ssl":true,"sslKey":{:?},"sslCert":{:?}}}"#,
            key, p.cert
        )
    };
    let encrypted = tempfile::NamedTempFile::new().expect("temp");
    writeln!(encrypted.as_file(), "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----").expect("write");
    let err = broker::config::Config::from_json_str(&base(encrypted.path()), "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sslKey") && err.contains("encrypted"),
        "{err}"
    );
    let garbage = tempfile::NamedTempFile::new().expect("temp");
    writeln!(garbage.as_file(), "not a key").expect("write");
    let err = broker::config::Config::from_json_str(&base(garbage.path()), "c")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sslKey") && err.contains("no usable PEM private key"),
        "{err}"
    );
    let err =
        broker::config::Config::from_json_str(&base(std::path::Path::new("/no/such/key.pem")), "c")
            .unwrap_err()
            .to_string();
    assert!(
        err.starts_with("sslKey") && err.contains("no such file"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_and_the_request_head_share_one_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pki();
    let b = start_with(json!({"ssl": true, "sslKey": p.key, "sslCert": p.cert,
               "broker": {"limits": {"handshakeTimeout": 3}}}))
    .await;
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(b.ws_addr())
        .await
        .expect("connect");
    // A slow client: most of the allowance goes before TLS even starts...
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let connector = tokio_rustls::TlsConnector::from(client_config(&p.cert_pem));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS in time");
    // ...and the request head never ends.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut out))
        .await
        .expect("cut off");
    // One deadline from the accept: cut at 3 s. Two timeouts back to back would allow 5 s.
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(4300),
        "cut off after {took:?}"
    );
    assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 408"));
    b.shutdown().await;
}

/// `broker.ops.tls`: the ops listener speaks HTTPS with the `wss://` certificate (here with the
/// public port in plain `ws://`, as behind a TLS-terminating load balancer), plain HTTP gets no
/// answer there, and a client that stalls its handshake does not hold up the others.
#[tokio::test]
async fn the_ops_listener_serves_https_with_the_same_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pki();
    let b =
        start_with(json!({"sslKey": p.key, "sslCert": p.cert, "broker": {"ops": {"tls": true}}}))
            .await;
    // A silent client that never starts its handshake.
    let _stalled = tokio::net::TcpStream::connect(b.ops_addr())
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(&p.cert_pem));
    let https = |path: &'static str, token: Option<&'static str>| {
        let connector = connector.clone();
        let addr = b.ops_addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
                .await
                .expect("handshake in time")
                .expect("handshake");
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            tls.write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
            let mut out = Vec::new();
            // rustls reports a peer that closes without close_notify as an error; the answer
            // is complete either way.
            let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut out))
                .await
                .expect("answer in time");
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let health = https("/healthz", None).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let stats = https("/admin/v1/stats", Some(ADMIN_TOKEN)).await;
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(stats.contains("\"apiVersion\":1"), "{stats}");
    let metrics = https("/metrics", None).await;
    assert!(metrics.contains("broker_connections_open"), "{metrics}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let (status, _) = http_request(b.ops_addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(
        status, 0,
        "plain HTTP must not be answered on the TLS ops port"
    );
    // The WebSocket port is still plain ws:// (ssl is off).
    let _ws = client(b.ws_addr()).await;
    b.shutdown().await;
}
