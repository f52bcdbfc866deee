//! The Microsoft Graph v1.0 directory.
//!
//! Least privilege: it only reads groups (`GroupMember.Read.All` suffices) and, for
//! spec.users, users (`User.ReadBasic.All`). Lookups that arrive together are
//! coalesced into `$batch` requests of up to 20; a throttled item is retried on
//! its own. 429, 503 and 504 honour Retry-After, else back off exponentially with
//! jitter, a bounded number of times; while the service has asked us to wait,
//! further lookups fail fast instead of adding load. Resolved groups and users are
//! cached for a TTL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use futures::future::{BoxFuture, FutureExt, Shared};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Directory, DirectoryError, DirectoryGroup, DirectoryUser, describe_user};
use crate::{
    api::{GroupSelector, UserRef},
    telemetry::metrics::Metrics,
};

/// Graph's limit of requests in one `$batch`.
pub const MAX_BATCH: usize = 20;
const GROUP_FIELDS: &str = "id,displayName,mailNickname,securityEnabled";
const USER_FIELDS: &str = "id,userPrincipalName,userType";
/// Pages followed at most when listing groups by name (100 matches each).
const MAX_PAGES: usize = 5;

/// Characters kept as they are in a query value: the rest is percent-encoded, so a
/// quote, `&` or `#` in a name can never change the request.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b',');

#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// The Graph root, such as https://graph.microsoft.com.
    pub endpoint: String,
    pub cache_ttl: Duration,
    pub request_timeout: Duration,
    /// Tries per lookup before a throttling or outage error is returned.
    pub max_attempts: u32,
    /// How long a batch waits for the next lookup before it is sent.
    pub batch_window: Duration,
    /// The longest a lookup waits for others to share its `$batch`.
    pub batch_max_wait: Duration,
    /// First backoff step when the service gives no Retry-After.
    pub initial_backoff: Duration,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            endpoint: "https://graph.microsoft.com".into(),
            cache_ttl: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            // Reconciles reach their lookups some milliseconds apart; these windows
            // gather a burst into full $batch requests, and only cold lookups wait.
            batch_window: Duration::from_millis(150),
            batch_max_wait: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(500),
        }
    }
}

/// An OData string literal: single-quoted, with quotes inside doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The request (relative to /v1.0) that finds groups by a selector.
pub fn group_request(selector: &GroupSelector) -> String {
    let filter = |property: &str, value: &str| {
        let filter = format!("{property} eq {}", odata_string(value));
        format!("/groups?$filter={}&$select={GROUP_FIELDS}", utf8_percent_encode(&filter, QUERY_VALUE))
    };
    match selector {
        GroupSelector { object_id: Some(id), .. } => {
            format!("/groups/{}?$select={GROUP_FIELDS}", utf8_percent_encode(id, QUERY_VALUE))
        }
        GroupSelector { display_name: Some(name), .. } => filter("displayName", name),
        GroupSelector { mail_nickname: Some(nick), .. } => filter("mailNickname", nick),
        _ => "/groups?$top=1".into(),
    }
}

pub fn user_request(user: &UserRef) -> String {
    let key = user.user_principal_name.as_deref().or(user.object_id.as_deref()).unwrap_or_default();
    format!("/users/{}?$select={USER_FIELDS}", utf8_percent_encode(key, QUERY_VALUE))
}

/// One answer from Graph, for a request or a batch item.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Value,
}

impl Answer {
    fn error_message(&self) -> String {
        let code = self.body["error"]["code"].as_str().unwrap_or("");
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        format!("HTTP {} {code}: {message}", self.status)
    }

    /// Maps a failed answer to a directory error; `not_found` for 404.
    fn into_error(self, not_found: impl FnOnce() -> DirectoryError) -> DirectoryError {
        match self.status {
            404 => not_found(),
            401 => DirectoryError::AuthenticationFailed { message: self.error_message() },
            403 => DirectoryError::PermissionDenied { message: self.error_message() },
            429 => DirectoryError::Throttled { retry_after: self.retry_after },
            500..=599 => DirectoryError::Unavailable { message: self.error_message() },
            _ => DirectoryError::Rejected { message: self.error_message() },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphGroup {
    id: String,
    display_name: Option<String>,
    mail_nickname: Option<String>,
    security_enabled: Option<bool>,
}

impl From<GraphGroup> for DirectoryGroup {
    fn from(g: GraphGroup) -> Self {
        DirectoryGroup {
            object_id: g.id.to_lowercase(),
            display_name: g.display_name.unwrap_or_default(),
            mail_nickname: g.mail_nickname,
            security_enabled: g.security_enabled.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    id: String,
    user_principal_name: String,
    user_type: Option<String>,
}

/// A lookup waiting for its answer.
struct Pending {
    request: String,
    reply: oneshot::Sender<Result<Answer, DirectoryError>>,
}

struct Client {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    base: String,
    scope: String,
    settings: GraphSettings,
    /// Set when Graph asked us to wait: lookups fail fast until then.
    hold_until: Mutex<Option<(Instant, DirectoryError)>>,
    metrics: Option<Arc<Metrics>>,
}

type Cache<T> = Arc<Mutex<HashMap<String, (Instant, T)>>>;

/// Cheap to clone: clones share the client, the batch queue and the caches.
#[derive(Clone)]
pub struct GraphDirectory {
    client: Arc<Client>,
    queue: mpsc::UnboundedSender<Pending>,
    groups: Cache<DirectoryGroup>,
    users: Cache<DirectoryUser>,
    in_flight: Arc<Mutex<HashMap<String, GroupLookup>>>,
}

type GroupLookup = Shared<BoxFuture<'static, Result<DirectoryGroup, DirectoryError>>>;

impl GraphDirectory {
    /// `http` must be the client the credential uses too (same trusted CAs).
    pub fn new(http: reqwest::Client, credential: Arc<dyn TokenCredential>, settings: GraphSettings) -> Self {
        Self::with_metrics(http, credential, settings, None)
    }

    /// Like `new`, counting Graph requests and cache hits in `metrics`.
    pub fn with_metrics(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        settings: GraphSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let root = settings.endpoint.trim_end_matches('/').to_string();
        let client = Arc::new(Client {
            http,
            credential,
            base: format!("{root}/v1.0"),
            // Tokens are per cloud: the scope follows the Graph endpoint.
            scope: format!("{root}/.default"),
            settings,
            hold_until: Mutex::new(None),
            metrics,
        });
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(client.clone(), rx));
        Self { client, queue, groups: Cache::default(), users: Cache::default(), in_flight: Arc::default() }
    }

    async fn lookup(&self, request: String) -> Result<Answer, DirectoryError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| DirectoryError::Unavailable { message: "the Graph client has stopped".into() })?;
        answer.await.map_err(|_| DirectoryError::Unavailable { message: "the Graph client has stopped".into() })?
    }

    fn cached<T: Clone>(&self, cache: &Mutex<HashMap<String, (Instant, T)>>, key: &str) -> Option<T> {
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let hit =
            cache.get(key).filter(|(at, _)| at.elapsed() < self.client.settings.cache_ttl).map(|(_, v)| v.clone());
        if let Some(m) = &self.client.metrics {
            m.cache(hit.is_some());
        }
        hit
    }

    fn remember<T>(&self, cache: &Mutex<HashMap<String, (Instant, T)>>, key: String, value: T) {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.client.settings.cache_ttl;
        cache.retain(|_, (at, _)| at.elapsed() < ttl);
        cache.insert(key, (Instant::now(), value));
    }

    async fn find_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        let not_found = || DirectoryError::GroupNotFound { selector: selector.describe() };
        let answer = self.lookup(group_request(selector)).await?;
        if answer.status != 200 {
            return Err(answer.into_error(not_found));
        }
        if selector.object_id.is_some() {
            let group: GraphGroup = parse(answer.body)?;
            return Ok(group.into());
        }
        // A name lookup lists matches; follow the pages to name every candidate.
        let mut groups: Vec<DirectoryGroup> = Vec::new();
        let mut page = answer.body;
        for _ in 0..MAX_PAGES {
            let items: Vec<GraphGroup> = parse(page["value"].take())?;
            groups.extend(items.into_iter().map(DirectoryGroup::from));
            let Some(next) = page["@odata.nextLink"].as_str().map(str::to_string) else { break };
            let next_page = self.client.send_absolute(&next).await?;
            if next_page.status != 200 {
                return Err(next_page.into_error(not_found));
            }
            page = next_page.body;
        }
        match groups.len() {
            0 => Err(not_found()),
            1 => Ok(groups.remove(0)),
            _ => Err(DirectoryError::AmbiguousGroup {
                selector: selector.describe(),
                candidates: groups.into_iter().map(|g| g.object_id).collect(),
            }),
        }
    }
}

#[async_trait]
impl Directory for GraphDirectory {
    async fn resolve_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        let key = selector.describe();
        if let Some(group) = self.cached(&self.groups, &key) {
            return Ok(group);
        }
        // One lookup per selector at a time: a second caller waits for the first.
        let lookup = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let directory = self.clone();
                    let selector = selector.clone();
                    async move { directory.find_group(&selector).await }.boxed().shared()
                })
                .clone()
        };
        let result = lookup.await;
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let group = result?;
        // Once pinned, the group is verified by objectId: that lookup is warm too.
        self.remember(&self.groups, GroupSelector::by_object_id(&group.object_id).describe(), group.clone());
        self.remember(&self.groups, key, group.clone());
        Ok(group)
    }

    async fn resolve_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError> {
        let key = describe_user(user).to_lowercase();
        if let Some(found) = self.cached(&self.users, &key) {
            return Ok(found);
        }
        let answer = self.lookup(user_request(user)).await?;
        if answer.status != 200 {
            return Err(answer.into_error(|| DirectoryError::UserNotFound { user: describe_user(user) }));
        }
        let found: GraphUser = parse(answer.body)?;
        let found = DirectoryUser {
            object_id: found.id.to_lowercase(),
            user_principal_name: found.user_principal_name,
            user_type: found.user_type,
        };
        self.remember(&self.users, key, found.clone());
        Ok(found)
    }

    fn prefetch_group(&self, selector: &GroupSelector) {
        if self.cached(&self.groups, &selector.describe()).is_some() {
            return;
        }
        let directory = self.clone();
        let selector = selector.clone();
        tokio::spawn(async move {
            // Errors are the Apply path's to report; this only warms the cache.
            let _ = directory.resolve_group(&selector).await;
        });
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, DirectoryError> {
    serde_json::from_value(value)
        .map_err(|e| DirectoryError::Rejected { message: format!("unexpected Graph response: {e}") })
}

/// Collects lookups that arrive within the batch window into one request.
async fn batch_loop(client: Arc<Client>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Keep gathering while lookups keep arriving (each within the window of
        // the previous one), up to a full batch or the longest wait.
        let deadline = tokio::time::Instant::now() + client.settings.batch_max_wait;
        while batch.len() < MAX_BATCH {
            let idle = tokio::time::Instant::now() + client.settings.batch_window;
            match tokio::time::timeout_at(idle.min(deadline), rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        tokio::spawn(client.clone().resolve_batch(batch));
    }
}

impl Client {
    /// The delay before try `attempt` (1-based) without a Retry-After: exponential
    /// with full jitter in the upper half.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.initial_backoff * 2u32.saturating_pow(attempt.saturating_sub(1));
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The error to fail fast with while Graph has asked us to wait.
    fn held(&self) -> Option<DirectoryError> {
        let hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        hold.as_ref().filter(|(until, _)| Instant::now() < *until).map(|(until, err)| match err {
            DirectoryError::Throttled { .. } => {
                DirectoryError::Throttled { retry_after: Some(until.saturating_duration_since(Instant::now())) }
            }
            other => other.clone(),
        })
    }

    fn hold(&self, delay: Duration, err: DirectoryError) {
        *self.hold_until.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now() + delay, err));
    }

    /// Answers every pending lookup, retrying throttled items on their own and
    /// failed requests as a whole, a bounded number of times.
    async fn resolve_batch(self: Arc<Self>, mut pending: Vec<Pending>) {
        for attempt in 1..=self.settings.max_attempts {
            if let Some(err) = self.held() {
                for p in pending {
                    let _ = p.reply.send(Err(err.clone()));
                }
                return;
            }
            let requests: Vec<&str> = pending.iter().map(|p| p.request.as_str()).collect();
            match self.send(&requests).await {
                Ok(answers) => {
                    let mut again = Vec::new();
                    let mut wait = Duration::ZERO;
                    for (p, answer) in pending.into_iter().zip(answers) {
                        if answer.status == 429 && attempt < self.settings.max_attempts {
                            wait = wait.max(answer.retry_after.unwrap_or_else(|| self.backoff(attempt)));
                            again.push(p);
                        } else {
                            let _ = p.reply.send(Ok(answer));
                        }
                    }
                    if again.is_empty() {
                        return;
                    }
                    tracing::debug!(items = again.len(), ?wait, "Graph throttled batch items; retrying them");
                    pending = again;
                    tokio::time::sleep(wait).await;
                }
                Err((err, retry_after)) => {
                    let retryable =
                        matches!(err, DirectoryError::Throttled { .. } | DirectoryError::Unavailable { .. });
                    if let Some(delay) = retry_after {
                        self.hold(delay, err.clone());
                    }
                    if !retryable || attempt == self.settings.max_attempts {
                        if retryable && retry_after.is_none() {
                            // No guidance from the service: hold off a little anyway.
                            self.hold(self.backoff(attempt), err.clone());
                        }
                        for p in pending {
                            let _ = p.reply.send(Err(err.clone()));
                        }
                        return;
                    }
                    tracing::debug!(error = %err, attempt, "Graph request failed; retrying");
                    tokio::time::sleep(retry_after.unwrap_or_else(|| self.backoff(attempt))).await;
                }
            }
        }
    }

    /// Sends one lookup as a plain GET, several as a `$batch`. Err holds a failure
    /// of the whole request (with the service's Retry-After, if any).
    async fn send(&self, requests: &[&str]) -> Result<Vec<Answer>, (DirectoryError, Option<Duration>)> {
        if let [single] = requests {
            let answer = self.send_absolute(&format!("{}{single}", self.base)).await.map_err(|e| (e, None))?;
            return match answer.status {
                429 | 503 | 504 => {
                    let retry_after = answer.retry_after;
                    Err((answer.into_error(unreachable_not_found), retry_after))
                }
                _ => Ok(vec![answer]),
            };
        }
        let body = json!({
            "requests": requests.iter().enumerate()
                .map(|(i, url)| json!({"id": i.to_string(), "method": "GET", "url": url}))
                .collect::<Vec<_>>()
        });
        let answer = self.post(&format!("{}/$batch", self.base), &body).await.map_err(|e| (e, None))?;
        if answer.status != 200 {
            let retry_after = answer.retry_after;
            return Err((answer.into_error(unreachable_not_found), retry_after));
        }
        // Answers come in any order; match them to the requests by id.
        let mut answers: Vec<Option<Answer>> = vec![None; requests.len()];
        for item in answer.body["responses"].as_array().into_iter().flatten() {
            let Some(i) = item["id"].as_str().and_then(|id| id.parse::<usize>().ok()).filter(|i| *i < requests.len())
            else {
                continue;
            };
            let retry_after =
                item["headers"]["Retry-After"].as_str().and_then(|s| s.parse().ok()).map(Duration::from_secs);
            answers[i] = Some(Answer {
                status: item["status"].as_u64().unwrap_or(0) as u16,
                retry_after,
                body: item["body"].clone(),
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or(Answer {
                    status: 502,
                    retry_after: None,
                    body: json!({"error": {"code": "MissingBatchResponse", "message": "no answer for this request in the batch"}}),
                })
            })
            .collect())
    }

    async fn token(&self) -> Result<String, DirectoryError> {
        let token = self.credential.get_token(&[self.scope.as_str()], None).await.map_err(|e| {
            DirectoryError::AuthenticationFailed { message: format!("cannot get a token for {}: {e}", self.scope) }
        })?;
        Ok(token.token.secret().to_string())
    }

    async fn send_absolute(&self, url: &str) -> Result<Answer, DirectoryError> {
        let token = self.token().await?;
        let request = self.http.get(url).bearer_auth(token).timeout(self.settings.request_timeout);
        self.counted(answer(request.send().await).await)
    }

    fn counted(&self, answer: Result<Answer, DirectoryError>) -> Result<Answer, DirectoryError> {
        if let Some(m) = &self.metrics {
            m.graph_request(answer.as_ref().ok().map(|a| a.status));
        }
        answer
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Answer, DirectoryError> {
        let token = self.token().await?;
        let request = self.http.post(url).bearer_auth(token).json(body).timeout(self.settings.request_timeout);
        self.counted(answer(request.send().await).await)
    }
}

fn unreachable_not_found() -> DirectoryError {
    DirectoryError::Unavailable { message: "the Graph endpoint was not found".into() }
}

async fn answer(response: Result<reqwest::Response, reqwest::Error>) -> Result<Answer, DirectoryError> {
    let response = response.map_err(|e| DirectoryError::Unavailable { message: format!("cannot reach Graph: {e}") })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .json::<Value>()
        .await
        .unwrap_or_else(|e| json!({"error": {"code": "UnreadableResponse", "message": e.to_string()}}));
    Ok(Answer { status, retry_after, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_literals_double_embedded_quotes() {
        assert_eq!(odata_string("appdev"), "'appdev'");
        assert_eq!(odata_string("x' or displayName eq 'appdev"), "'x'' or displayName eq ''appdev'");
    }

    #[test]
    fn a_quote_or_ampersand_in_a_name_cannot_change_the_query() {
        let req = group_request(&GroupSelector { display_name: Some("a'b&$top=999#".into()), ..Default::default() });
        assert_eq!(
            req,
            "/groups?$filter=displayName%20eq%20%27a%27%27b%26%24top%3D999%23%27&$select=id,displayName,mailNickname,securityEnabled"
        );
        assert_eq!(req.matches('&').count(), 1, "only the separator before $select");
    }

    #[test]
    fn object_ids_are_fetched_directly_and_guest_upns_are_encoded() {
        let req = group_request(&GroupSelector {
            object_id: Some("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01".into()),
            ..Default::default()
        });
        assert_eq!(
            req,
            "/groups/5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01?$select=id,displayName,mailNickname,securityEnabled"
        );
        let user = UserRef {
            user_principal_name: Some("x_fabrikam.com#EXT#@contoso.onmicrosoft.com".into()),
            object_id: None,
        };
        assert_eq!(
            user_request(&user),
            "/users/x_fabrikam.com%23EXT%23%40contoso.onmicrosoft.com?$select=id,userPrincipalName,userType"
        );
    }

    #[test]
    fn error_answers_map_to_their_reasons() {
        let answer = |status: u16| Answer {
            status,
            retry_after: Some(Duration::from_secs(2)),
            body: json!({"error": {"code": "C", "message": "M"}}),
        };
        let nf = || DirectoryError::GroupNotFound { selector: "s".into() };
        assert_eq!(answer(404).into_error(nf).reason(), "GroupNotFound");
        assert_eq!(answer(403).into_error(nf).reason(), "GraphPermissionDenied");
        assert_eq!(answer(429).into_error(nf), DirectoryError::Throttled { retry_after: Some(Duration::from_secs(2)) });
        assert_eq!(answer(503).into_error(nf).reason(), "GraphUnavailable");
        assert_eq!(answer(401).into_error(nf).reason(), "GraphAuthenticationFailed");
        assert_eq!(answer(400).into_error(nf).reason(), "GraphRequestRejected");
    }
}
