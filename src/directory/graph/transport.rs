//! Talking to Graph: a bearer token from the credential, one HTTP request, and
//! the answer read into status, Retry-After and JSON body. A `$batch` answer is
//! unpacked into one `Answer` per item, so callers treat both paths alike.

use std::{sync::Arc, time::Duration};

use azure_core::credentials::TokenCredential;
use serde_json::{Value, json};

use crate::{azure::rest, backoff::parse_retry_after, directory::DirectoryError, telemetry::metrics::Metrics};

/// One answer from Graph, for a request or a batch item.
pub type Answer = rest::Reply;

/// What an answer means to the directory.
impl Answer {
    /// Whether the service asks us to come back later (the whole request or an item).
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 429 | 503 | 504)
    }

    /// Whether this is Graph saying the object does not exist (its error body
    /// names a NotFound code), rather than a server that does not serve Graph there.
    fn is_graph_not_found(&self) -> bool {
        self.status == 404 && self.error_code().to_ascii_lowercase().contains("notfound")
    }

    /// Maps a failed answer to a directory error: `not_found` for Graph's own 404,
    /// the same on a single request and a `$batch` item.
    pub fn into_error(self, not_found: impl FnOnce() -> DirectoryError) -> DirectoryError {
        match self.status {
            404 if self.is_graph_not_found() => not_found(),
            // A 404 without Graph's error: the endpoint is not a Graph root. That
            // is a configuration error, never "the group is gone".
            404 => DirectoryError::Rejected {
                message: format!(
                    "{}; the Graph endpoint answered 404 without a Graph error, so it is probably not the Graph root: check --graph-endpoint",
                    self.error_summary()
                ),
            },
            401 => DirectoryError::AuthenticationFailed { message: self.error_summary() },
            403 => DirectoryError::PermissionDenied { message: self.error_summary() },
            429 => DirectoryError::Throttled { retry_after: self.retry_after },
            500..=599 => DirectoryError::Unavailable { message: self.error_summary() },
            _ => DirectoryError::Rejected { message: self.error_summary() },
        }
    }

    /// The error of a failed request as a whole (not of a lookup): any 404 means
    /// the endpoint itself is wrong.
    pub fn into_request_error(self) -> DirectoryError {
        let message = self.error_summary();
        self.into_error(|| DirectoryError::Rejected {
            message: format!("{message}; the Graph endpoint was not found: check --graph-endpoint"),
        })
    }
}

/// A failure of the whole request: the error, and the service's Retry-After.
pub type RequestFailure = (DirectoryError, Option<Duration>);

pub struct Transport {
    /// Tokens are per cloud: their audience follows the Graph endpoint.
    client: rest::BearerClient,
    /// The v1.0 root, such as https://graph.microsoft.com/v1.0.
    base: String,
    metrics: Option<Arc<Metrics>>,
}

impl Transport {
    /// `endpoint` is the Graph root, such as https://graph.microsoft.com.
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        endpoint: &str,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let root = endpoint.trim_end_matches('/');
        let client = rest::BearerClient::new(http, credential, root, timeout);
        Self { client, base: format!("{root}/v1.0"), metrics }
    }

    /// Sends one lookup as a plain GET, several as one `$batch`; returns an answer
    /// per request, in order. Err is a failure of the whole request.
    pub async fn send(&self, requests: &[&str]) -> Result<Vec<Answer>, RequestFailure> {
        if let [single] = requests {
            let answer = self.get(&format!("{}{single}", self.base)).await.map_err(|e| (e, None))?;
            if answer.is_retryable() {
                let retry_after = answer.retry_after;
                return Err((answer.into_request_error(), retry_after));
            }
            return Ok(vec![answer]);
        }
        let body = json!({
            "requests": requests.iter().enumerate()
                .map(|(i, url)| json!({"id": i.to_string(), "method": "GET", "url": url}))
                .collect::<Vec<_>>()
        });
        let answer = self.post(&format!("{}/$batch", self.base), &body).await.map_err(|e| (e, None))?;
        if answer.status != 200 {
            let retry_after = answer.retry_after;
            return Err((answer.into_request_error(), retry_after));
        }
        Ok(unpack_batch(&answer.body, requests.len()))
    }

    /// Whether `url` is on the configured Graph endpoint (same scheme, host and
    /// port), so a bearer token may be sent to it.
    pub fn is_on_endpoint(&self, url: &str) -> bool {
        rest::same_origin(url, &self.base)
    }

    /// Whether a link Graph returned (`what`: next-page, delta) may be followed:
    /// the bearer token goes nowhere but the configured Graph endpoint.
    pub fn check_link(&self, link: &str, what: &str) -> Result<(), DirectoryError> {
        if self.is_on_endpoint(link) {
            return Ok(());
        }
        let origin = url::Url::parse(link).map_or_else(|_| link.to_string(), |u| u.origin().ascii_serialization());
        Err(DirectoryError::Rejected {
            message: format!(
                "Graph returned a {what} link to {origin}, not to the configured Graph endpoint; it was not followed"
            ),
        })
    }

    /// GETs an absolute URL (a page link Graph returned, or a single lookup).
    pub async fn get(&self, url: &str) -> Result<Answer, DirectoryError> {
        let request = self.request(reqwest::Method::GET, url).await?;
        self.counted(read(request.send().await).await)
    }

    /// The absolute URL of a request below /v1.0 (`relative` starts with '/').
    pub fn url(&self, relative: &str) -> String {
        format!("{}{relative}", self.base)
    }

    /// POSTs a JSON body to an absolute URL on the endpoint.
    pub async fn post(&self, url: &str, body: &Value) -> Result<Answer, DirectoryError> {
        let request = self.request(reqwest::Method::POST, url).await?.json(body);
        self.counted(read(request.send().await).await)
    }

    async fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, DirectoryError> {
        self.client.request(method, url).await.map_err(|message| DirectoryError::AuthenticationFailed { message })
    }

    fn counted(&self, answer: Result<Answer, DirectoryError>) -> Result<Answer, DirectoryError> {
        if let Some(m) = &self.metrics {
            m.graph_request(answer.as_ref().ok().map(|a| a.status));
        }
        answer
    }
}

/// Matches the items of a `$batch` answer to the requests by id (Graph answers in
/// any order); a request with no item gets a 502 of its own.
fn unpack_batch(body: &Value, count: usize) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = vec![None; count];
    for item in body["responses"].as_array().into_iter().flatten() {
        let Some(i) = item["id"].as_str().and_then(|id| id.parse::<usize>().ok()).filter(|i| *i < count) else {
            continue;
        };
        let retry_after = item["headers"]
            .as_object()
            .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
            .and_then(|(_, v)| v.as_str())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        answers[i] = Some(Answer {
            status: item["status"].as_u64().unwrap_or(0) as u16,
            retry_after,
            body: item["body"].clone(),
        });
    }
    answers
        .into_iter()
        .map(|a| {
            a.unwrap_or(Answer {
                status: 502,
                retry_after: None,
                body: json!({"error": {"code": "MissingBatchResponse", "message": "no answer for this request in the batch"}}),
            })
        })
        .collect()
}

/// Reads a response; a connection failure or timeout is an outage.
async fn read(response: Result<reqwest::Response, reqwest::Error>) -> Result<Answer, DirectoryError> {
    let response = response.map_err(|e| DirectoryError::Unavailable { message: format!("cannot reach Graph: {e}") })?;
    Ok(rest::read(response).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Reason;

    #[test]
    fn error_answers_map_to_their_reasons() {
        let answer = |status: u16| Answer {
            status,
            retry_after: Some(Duration::from_secs(2)),
            body: json!({"error": {"code": "C", "message": "M"}}),
        };
        let nf = || DirectoryError::GroupNotFound { selector: "s".into() };
        assert_eq!(answer(404).into_error(nf).reason(), Reason::GraphRequestRejected, "not Graph's own 404");
        assert_eq!(answer(403).into_error(nf).reason(), Reason::GraphPermissionDenied);
        assert_eq!(answer(429).into_error(nf), DirectoryError::Throttled { retry_after: Some(Duration::from_secs(2)) });
        assert_eq!(answer(503).into_error(nf).reason(), Reason::GraphUnavailable);
        assert_eq!(answer(401).into_error(nf).reason(), Reason::GraphAuthenticationFailed);
        assert_eq!(answer(400).into_error(nf).reason(), Reason::GraphRequestRejected);
        assert_eq!(answer(404).into_request_error().reason(), Reason::GraphRequestRejected);
    }

    #[test]
    fn a_404_is_not_found_only_when_graph_says_so() {
        let graph_404 = Answer {
            status: 404,
            retry_after: None,
            body: json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource 'x' does not exist"}}),
        };
        let nf = || DirectoryError::GroupNotFound { selector: "s".into() };
        assert_eq!(graph_404.into_error(nf).reason(), Reason::GroupNotFound);
        // A web server that is not Graph: no Graph error body.
        let plain_404 =
            Answer { status: 404, retry_after: None, body: json!({"error": {"code": "UnreadableResponse"}}) };
        let err = plain_404.into_error(nf);
        assert_eq!(err.reason(), Reason::GraphRequestRejected);
        assert!(err.to_string().contains("--graph-endpoint"), "{err}");
    }

    #[test]
    fn batch_items_are_matched_by_id_with_their_own_retry_after() {
        let body = json!({"responses": [
            {"id": "1", "status": 429, "headers": {"retry-after": "7"}, "body": {}},
            {"id": "0", "status": 200, "body": {"id": "g"}},
            {"id": "9", "status": 200, "body": {}},
        ]});
        let answers = unpack_batch(&body, 3);
        assert_eq!(answers[0].status, 200);
        assert_eq!(answers[0].body["id"], "g");
        assert_eq!((answers[1].status, answers[1].retry_after), (429, Some(Duration::from_secs(7))));
        assert_eq!(answers[2].status, 502, "a request the batch did not answer");
    }
}
