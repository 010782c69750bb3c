//! HTTP to one broker's admin API: the base URL and token, one method per route, and every
//! failure turned into an [`ApiError`] an operator can read.
//!
//! A broker from before the API was versioned answers 404 on `/admin/v1/...`: the first call
//! of a session ([`Endpoint::stats`]) then switches to its unversioned `/admin/...` paths, the
//! same version 1 routes. A broker from before the fleet routes answers 404 on them: those
//! methods return `Ok(None)` and the callers fall back to the single-instance routes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use admin_api::{
    percent_encode, route, ConnectionPage, FleetPage, InjectRequest, InjectResponse, InstanceList,
    ListFilter, ListQuery, Stats, StatsHistory, Target,
};

/// Deadline of one ordinary admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 401: the token was refused.
    Unauthorized(String),
    /// No answer: connection refused, DNS, TLS, timeout, the link dropped.
    Unreachable(String),
    /// An HTTP answer other than success or 401.
    Status { status: u16, message: String },
    /// A success status with a body that is not what the API documents.
    BadResponse(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized(m) => write!(f, "token refused (401): {m}"),
            ApiError::Unreachable(m) => f.write_str(m),
            ApiError::Status {
                status: 404,
                message,
            } => write!(
                f,
                "HTTP 404 ({message}): no admin API at this URL; is it the ops port, and is \
                 broker.admin.token set on the broker?"
            ),
            ApiError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            ApiError::BadResponse(m) => write!(f, "unexpected answer: {m}"),
        }
    }
}

impl ApiError {
    fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }
}

/// One broker's admin API: base URL, token, and the HTTP client.
pub struct Endpoint {
    http: reqwest::Client,
    pub base: String,
    token: super::Token,
    /// The broker predates the versioned API: its routes are under `/admin`, not `/admin/v1`.
    legacy: AtomicBool,
    /// The instance that last answered `stats` (for the drain of an older broker).
    answering: Mutex<String>,
}

impl Endpoint {
    pub fn new(url: &str, token: super::Token) -> Result<Endpoint, String> {
        let base = normalize_url(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("broker-admin-gui/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Endpoint {
            http,
            base,
            token,
            legacy: AtomicBool::new(false),
            answering: Mutex::new(String::new()),
        })
    }

    /// The path of `route` on this broker.
    fn path(&self, route: &str) -> String {
        if self.legacy.load(Ordering::Relaxed) {
            format!("{}{route}", admin_api::LEGACY_PREFIX)
        } else {
            admin_api::path(route)
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let rb = self
            .request(reqwest::Method::GET, path)
            .timeout(CALL_TIMEOUT);
        json_body(send(rb).await?).await
    }

    /// A `GET` of a route older brokers lack: `Ok(None)` on 404.
    async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ApiError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first call of a session: on a 404 for the versioned path, tries the unversioned one
    /// of older brokers, and keeps to it if it answers.
    pub async fn stats(&self) -> Result<Stats, ApiError> {
        let stats: Stats = match self.get(&self.path(route::STATS)).await {
            Err(e) if e.is_not_found() && !self.legacy.load(Ordering::Relaxed) => {
                let legacy = format!("{}{}", admin_api::LEGACY_PREFIX, route::STATS);
                let stats = self.get(&legacy).await?;
                self.legacy.store(true, Ordering::Relaxed);
                stats
            }
            other => other?,
        };
        if let Ok(mut a) = self.answering.lock() {
            a.clone_from(&stats.instance);
        }
        Ok(stats)
    }

    pub async fn open_stream(&self) -> Result<reqwest::Response, ApiError> {
        // No overall timeout: the stream is meant to stay open. Silence is caught per chunk.
        let rb = self
            .request(reqwest::Method::GET, &self.path(route::STREAM))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        send(rb).await
    }

    /// `GET .../instances`; `None` from a broker without fleet routes.
    pub async fn instances(&self) -> Result<Option<InstanceList>, ApiError> {
        self.get_optional(&self.path(route::INSTANCES)).await
    }

    /// `GET .../stats/history` (the answering instance); `None` from an older broker.
    pub async fn history(&self) -> Result<Option<StatsHistory>, ApiError> {
        self.get_optional(&self.path(route::STATS_HISTORY)).await
    }

    /// `GET .../instances/{instance}/history`; `None` when the broker has no such route or no
    /// such instance any more.
    pub async fn instance_history(&self, instance: &str) -> Result<Option<StatsHistory>, ApiError> {
        self.get_optional(&self.instance_path(route::INSTANCE_HISTORY, instance))
            .await
    }

    fn instance_path(&self, route: &str, instance: &str) -> String {
        let path = admin_api::instance_path(route, instance);
        if self.legacy.load(Ordering::Relaxed) {
            path.replacen(admin_api::PREFIX, admin_api::LEGACY_PREFIX, 1)
        } else {
            path
        }
    }

    /// One page of `GET .../fleet/connections`; `None` from a broker without fleet routes.
    pub async fn fleet_page(&self, query: &ListQuery) -> Result<Option<FleetPage>, ApiError> {
        let path = format!(
            "{}?{}",
            self.path(route::FLEET_CONNECTIONS),
            query.to_query()
        );
        self.get_optional(&path).await
    }

    /// One page of `GET .../connections` by offset (this instance only; older brokers).
    pub async fn page(
        &self,
        filter: &ListFilter,
        offset: u64,
        limit: u64,
    ) -> Result<ConnectionPage, ApiError> {
        self.get(&format!(
            "{}?{}",
            self.path(route::CONNECTIONS),
            filter.query(offset, limit)
        ))
        .await
    }

    pub async fn inject(&self, event: Value, target: &Target) -> Result<u64, ApiError> {
        let body = InjectRequest {
            event,
            target: target.clone(),
        };
        let rb = self
            .request(reqwest::Method::POST, &self.path(route::EVENTS))
            .timeout(CALL_TIMEOUT)
            .json(&body);
        let answer: InjectResponse = json_body(send(rb).await?).await?;
        Ok(answer.delivered)
    }

    pub async fn kick(&self, id: &str, code: u16, reason: &str) -> Result<(), ApiError> {
        let path = format!(
            "{}/{}?code={code}&reason={}",
            self.path(route::CONNECTIONS),
            percent_encode(id),
            percent_encode(reason)
        );
        let rb = self
            .request(reqwest::Method::DELETE, &path)
            .timeout(CALL_TIMEOUT);
        send(rb).await.map(drop)
    }

    /// Drains `instance`, wherever it is. A broker without the fleet routes can only drain
    /// itself: then only the instance that answers may be named.
    pub async fn drain(&self, instance: &str) -> Result<(), ApiError> {
        let rb = self
            .request(
                reqwest::Method::POST,
                &self.instance_path(route::INSTANCE_DRAIN, instance),
            )
            .timeout(CALL_TIMEOUT);
        match send(rb).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() && self.is_answering(instance) => {
                let rb = self
                    .request(reqwest::Method::POST, &self.path(route::DRAIN))
                    .timeout(CALL_TIMEOUT);
                send(rb).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    fn is_answering(&self, instance: &str) -> bool {
        self.answering
            .lock()
            .map(|a| !a.is_empty() && *a == instance)
            .unwrap_or(false)
    }
}

/// `host:port` becomes `http://host:port`; a trailing `/` goes.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("enter the broker's ops URL, e.g. http://127.0.0.1:9090".into());
    }
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{url}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url}: the ops URL must start with http:// or https://"
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Sends a request and turns transport failures and non-success answers into [`ApiError`].
async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
    let response = rb.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<admin_api::ErrorBody>(&body)
        .ok()
        .map(|e| e.error)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| {
            let text = body.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no reason").to_string()
            } else {
                text.chars().take(200).collect()
            }
        });
    if status == reqwest::StatusCode::UNAUTHORIZED {
        Err(ApiError::Unauthorized(message))
    } else {
        Err(ApiError::Status {
            status: status.as_u16(),
            message,
        })
    }
}

async fn json_body<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(|e| classify(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadResponse(e.to_string()))
}

/// A transport error in one line: the innermost cause says the most (`Connection refused`).
pub fn classify(e: &reqwest::Error) -> ApiError {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else {
        cause.to_string()
    };
    let message = if e.is_connect() {
        format!("cannot connect: {what}")
    } else if e.is_timeout() {
        "the broker did not answer in time".to_string()
    } else if e.is_body() || e.is_decode() {
        format!("the connection broke: {what}")
    } else {
        what
    };
    ApiError::Unreachable(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("127.0.0.1:9090").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            normalize_url(" https://ops.example:9090/ ").unwrap(),
            "https://ops.example:9090"
        );
        assert!(normalize_url("").is_err());
        assert!(normalize_url("ftp://x").unwrap_err().contains("http://"));
    }

    #[test]
    fn instance_paths_follow_the_prefix() {
        let ep = Endpoint::new("127.0.0.1:1", super::super::Token::new("t")).unwrap();
        assert_eq!(
            ep.instance_path(route::INSTANCE_DRAIN, "b1.ab"),
            "/admin/v1/instances/b1.ab/drain"
        );
        ep.legacy.store(true, Ordering::Relaxed);
        assert_eq!(
            ep.instance_path(route::INSTANCE_DRAIN, "b1.ab"),
            "/admin/instances/b1.ab/drain"
        );
    }
}
