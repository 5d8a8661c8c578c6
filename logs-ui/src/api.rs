//! The logs API as the console's server sees it: one `reqwest` client for the whole process,
//! shared by every server function through Leptos context.
//!
//! On Cloud Run the logs API is private: with `LOGS_API_AUDIENCE` set, every request carries a
//! Google-signed ID token of this service's identity, fetched from the metadata server and reused
//! until shortly before it expires.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bandvote_domain::{CertifiedResult, LogTallies, VotePage};
use serde::de::DeserializeOwned;

use crate::app::Filter;

/// Google ID tokens live one hour; one is reused for a bit less.
const ID_TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

#[derive(Clone)]
pub struct LogsApi {
    http: reqwest::Client,
    base: String,
    identity: Option<Arc<Identity>>,
}

/// Where ID tokens come from, and the one in use.
struct Identity {
    /// The metadata server's identity endpoint with the audience in its query.
    token_url: String,
    token: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl LogsApi {
    /// `audience`: sign requests with an ID token for this audience (the API's URL on Cloud Run).
    /// `metadata_host`: the metadata server, `metadata.google.internal` on Google Cloud.
    pub fn new(base: &str, timeout: Duration, audience: Option<&str>, metadata_host: &str) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("bandvote-logs-ui/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let identity = audience.filter(|a| !a.is_empty()).map(|audience| {
            let mut url = reqwest::Url::parse(&format!(
                "http://{metadata_host}/computeMetadata/v1/instance/service-accounts/default/identity"
            ))
            .unwrap_or_else(|_| reqwest::Url::parse("http://metadata.google.internal/").expect("a valid URL"));
            url.query_pairs_mut().append_pair("audience", audience).append_pair("format", "full");
            Arc::new(Identity { token_url: url.to_string(), token: tokio::sync::Mutex::new(None) })
        });
        Ok(LogsApi { http, base: base.trim_end_matches('/').to_owned(), identity })
    }

    /// The ID token to send, fetching a new one when the last is about to expire.
    async fn id_token(&self) -> Result<Option<String>, String> {
        let Some(identity) = &self.identity else { return Ok(None) };
        let mut token = identity.token.lock().await;
        if let Some((at, value)) = token.as_ref()
            && at.elapsed() < ID_TOKEN_REUSE
        {
            return Ok(Some(value.clone()));
        }
        let response = self
            .http
            .get(&identity.token_url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| format!("cannot get an ID token from the metadata server ({})", root_cause(&e)))?;
        if !response.status().is_success() {
            return Err(format!("the metadata server refused an ID token: HTTP {}", response.status()));
        }
        let value = response.text().await.map_err(|e| format!("cannot read the ID token: {e}"))?.trim().to_owned();
        *token = Some((Instant::now(), value.clone()));
        Ok(Some(value))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn votes(&self, filter: &Filter, cursor: &str) -> Result<VotePage, String> {
        let mut params = filter.params();
        if !cursor.is_empty() {
            params.push(("cursor", cursor.to_owned()));
        }
        self.get("/votes", &params).await?.ok_or_else(|| "the logs API has no /votes".to_owned())
    }

    pub async fn tallies(&self, filter: &Filter) -> Result<LogTallies, String> {
        self.get("/tallies", &filter.params()).await.map(|found| found.unwrap_or_default())
    }

    /// The certified result, once one is published (`None` before).
    pub async fn result(&self) -> Result<Option<CertifiedResult>, String> {
        self.get("/result", &[]).await
    }

    /// Whether the logs API process answers (not whether MongoDB does: that is the API's own
    /// readiness, and the console shows its errors on the page). Asked like every other call, with
    /// the ID token a private API on Cloud Run requires, at `/health/live` (Cloud Run reserves
    /// some paths that end in `z`).
    pub async fn check(&self) -> Result<(), String> {
        match self.get::<serde_json::Value>("/health/live", &[]).await? {
            Some(_) => Ok(()),
            None => Err("the logs API has no /health/live".to_owned()),
        }
    }

    /// GETs `path`; `None` when the API answers 404 `not_found`.
    async fn get<T: DeserializeOwned>(&self, path: &str, params: &[(&str, String)]) -> Result<Option<T>, String> {
        let mut request = self.http.get(format!("{}{path}", self.base)).query(params);
        if let Some(token) = self.id_token().await? {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("the logs API answered {path} with a body this console cannot read: {e}"));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        // The API's errors say what was wrong: `{"error": {"message": ...}}`.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(if status.is_client_error() {
            format!("the logs API refused the request: {message}")
        } else {
            format!("the logs API cannot read the vote log right now: {message}")
        })
    }

    fn unreachable(&self, err: &reqwest::Error) -> String {
        let why = if err.is_timeout() { "timed out".to_owned() } else { root_cause(err) };
        format!("the logs API at {} does not answer ({why})", self.base)
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
