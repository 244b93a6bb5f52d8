//! The terminal dashboard's only way to the server: its HTTP API, with an admin key when one is
//! given. Errors come back as one line a person can read, never with the key in it.

use std::time::Duration;

use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::state::{Account, Action, Filter, Hour, Request, Snapshot, Stats};

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    /// A client of `base` (`http://host:port`), sending `key` as `authorization: Bearer`.
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, String> {
        let response = self
            .request(reqwest::Method::GET, path)
            .query(query)
            .send()
            .await
            .map_err(|e| plain(&e))?;
        answer(response).await
    }

    /// Everything the screens show, with the requests under `filter`.
    pub async fn snapshot(&self, filter: &Filter) -> Result<Snapshot, String> {
        let mut query = vec![("limit", "100")];
        if let Some(account) = &filter.account {
            query.push(("account", account));
        }
        if let Some(provider) = &filter.provider {
            query.push(("provider", provider));
        }
        if filter.failures {
            query.push(("status", "error"));
        }
        let (stats, hourly, accounts, requests, strategy, strategies) = tokio::try_join!(
            self.get::<Stats>("/api/stats", &[]),
            self.get::<Vec<Hour>>("/api/stats/hourly", &[]),
            self.get::<Vec<Account>>("/api/accounts", &[]),
            self.get::<Vec<Request>>("/api/requests", &query),
            self.get::<Value>("/api/config/strategy", &[]),
            self.get::<Vec<String>>("/api/strategies", &[]),
        )?;
        Ok(Snapshot {
            stats,
            hourly,
            accounts,
            requests,
            strategy: strategy["strategy"].as_str().unwrap_or_default().to_owned(),
            strategies,
            at: Utc::now(),
        })
    }

    /// Carry out `action` (account ids are UUIDs: nothing in them needs escaping).
    pub async fn act(&self, action: &Action) -> Result<(), String> {
        let (path, body) = match action {
            Action::SetStrategy(name) => (
                "/api/config/strategy".to_owned(),
                json!({ "strategy": name }),
            ),
            Action::Pause(id) => (format!("/api/accounts/{id}/pause"), json!({})),
            Action::Resume(id) => (format!("/api/accounts/{id}/resume"), json!({})),
            Action::SetTier(id, tier) => {
                (format!("/api/accounts/{id}/tier"), json!({ "tier": tier }))
            }
            Action::Quit | Action::Refresh => return Ok(()),
        };
        let response = self
            .request(reqwest::Method::POST, &path)
            .json(&body)
            .send()
            .await
            .map_err(|e| plain(&e))?;
        answer::<Value>(response).await.map(|_| ())
    }
}

/// The answer's JSON, or the API's `{"error": …}` as the reason.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, String> {
    let status = response.status();
    let body = response.bytes().await.map_err(|e| plain(&e))?;
    if !status.is_success() {
        let reason = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        return Err(match status.as_u16() {
            401 | 403 => {
                format!("{reason} (give an admin key with --key or CLAUDEFLARE_ADMIN_KEY)")
            }
            _ => reason,
        });
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from the server: {e}"))
}

/// A transport error in words, without the URL's details repeated.
fn plain(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "no answer within 5 s".to_owned()
    } else if error.is_connect() {
        "connection refused".to_owned()
    } else {
        error.to_string()
    }
}
