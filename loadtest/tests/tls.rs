//! `wss://` and `https://` targets: the real broker behind a TLS terminator (as behind a load
//! balancer), with a self-signed certificate made for the test.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use common::{broker, run, API_KEY};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TLS on an ephemeral loopback port and forwards the plain bytes to `backend`.
async fn tls_terminator(backend: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Ok(mut plain) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn cli(url: &str, args: &[&str]) -> loadtest::Cli {
    let mut argv = vec!["loadtest", "--quiet", "--url", url];
    argv.extend_from_slice(args);
    loadtest::Cli::try_parse_from(argv).expect("test arguments parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_insecure_accepts_a_self_signed_certificate() {
    let b = broker().await;
    let (addr, proxy) = tls_terminator(b.ws_addr()).await;
    let url = format!("wss://localhost:{}/", addr.port());

    let s = run(cli(
        &url,
        &["--insecure", "echo", "-c", "3", "--requests", "30"],
    ))
    .await;
    assert_eq!(s.messages.received, 30, "{s}");

    let s = run(cli(
        &url,
        &[
            "--insecure",
            "--api-key",
            API_KEY,
            "publish",
            "--via",
            "http",
            "-l",
            "5",
            "--messages",
            "20",
        ],
    ))
    .await;
    assert_eq!(
        s.delivery.as_ref().map(|d| d.completeness),
        Some(1.0),
        "{s}"
    );

    proxy.abort();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_without_insecure_refuses_an_unknown_certificate() {
    let b = broker().await;
    let (addr, proxy) = tls_terminator(b.ws_addr()).await;
    let url = format!("wss://localhost:{}/", addr.port());
    let s = run(cli(&url, &["connect", "-c", "2", "--hold", "0s"])).await;
    assert_eq!(s.connections.established, 0, "{s}");
    assert_eq!(s.connections.failures.get("tls"), Some(&2), "{s}");
    proxy.abort();
    b.shutdown().await;
}
