//! A minimal keep-alive HTTP/1.1 client for `POST /api/publish`.
//!
//! hyper's low-level connection API is used instead of a full client: the tool needs exactly one
//! connection per publisher, bound to a chosen source address like the WebSocket connections, and
//! no pooling, redirects or proxies that would blur what is being measured.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::client::{ConnectFailure, Target};

/// One keep-alive connection to the publish endpoint.
pub struct Publisher {
    sender: SendRequest<Full<Bytes>>,
    uri: String,
    authority: String,
    api_key: String,
    origin: Option<String>,
    timeout: Duration,
}

/// Why a publish request got no HTTP answer.
#[derive(Debug)]
pub enum PostError {
    /// The connection was already closed; nothing was sent, so the request may be retried.
    Closed,
    Timeout,
    Io(String),
}

impl PostError {
    pub fn label(&self) -> &'static str {
        match self {
            PostError::Closed => "http_closed",
            PostError::Timeout => "http_timeout",
            PostError::Io(_) => "http_io",
        }
    }
}

impl Publisher {
    /// Connects (TCP, TLS for `wss://` targets, HTTP/1.1) from the source address of `index`.
    pub async fn connect(
        target: &Target,
        index: usize,
        path: &str,
    ) -> Result<Self, ConnectFailure> {
        let timeout = target.connect_timeout();
        let connecting = async {
            let tcp = target.tcp(index).await.map_err(ConnectFailure::Tcp)?;
            let sender = match target.tls_config() {
                None => handshake(tcp).await?,
                Some(config) => {
                    let name = ServerName::try_from(target.endpoint(index).host.clone())
                        .map_err(|e| ConnectFailure::Tls(e.to_string()))?;
                    let tls = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| ConnectFailure::Tls(e.to_string()))?;
                    handshake(tls).await?
                }
            };
            Ok::<_, ConnectFailure>(sender)
        };
        let sender = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectFailure::Timeout)??;
        Ok(Publisher {
            sender,
            uri: path.to_owned(),
            authority: target.endpoint(index).authority.clone(),
            api_key: target.api_key().unwrap_or_default().to_owned(),
            origin: target.origin().map(str::to_owned),
            timeout,
        })
    }

    /// Posts one body and returns the status; the response body is read so the connection can
    /// carry the next request.
    pub async fn post(&mut self, body: String) -> Result<u16, PostError> {
        let exchange = async {
            if self.sender.is_closed() || self.sender.ready().await.is_err() {
                return Err(PostError::Closed);
            }
            let mut request = Request::post(self.uri.as_str())
                .header(hyper::header::HOST, self.authority.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header("users-api-key", self.api_key.as_str());
            if let Some(origin) = &self.origin {
                request = request.header(hyper::header::ORIGIN, origin.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| PostError::Io(e.to_string()))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| PostError::Io(e.to_string()))?;
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| PostError::Io(e.to_string()))?;
            Ok(status)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout)?
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, ConnectFailure>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectFailure::Protocol(e.to_string()))?;
    // The connection task ends when the sender is dropped or the server closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
