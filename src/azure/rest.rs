//! What the Graph and ARM clients share about talking to an Azure REST service:
//! a bearer token for the service's own audience on every request, reading an
//! answer into status, Retry-After and JSON body, and deciding whether a link
//! the service returned may receive that token.

use std::{sync::Arc, time::Duration};

use azure_core::credentials::TokenCredential;
use serde_json::{Value, json};

use crate::backoff::parse_retry_after;

/// An HTTP client whose requests carry a token for one audience: `<root>/.default`
/// of the service it was made for (Graph or ARM), never another's.
pub struct BearerClient {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    timeout: Duration,
}

impl BearerClient {
    /// `root` is the service's root URL; `http` must be the client the credential
    /// uses too (same trusted CAs).
    pub fn new(http: reqwest::Client, credential: Arc<dyn TokenCredential>, root: &str, timeout: Duration) -> Self {
        Self { http, credential, scope: format!("{}/.default", root.trim_end_matches('/')), timeout }
    }

    /// A request to `url` with a token (the credential caches it until it expires).
    /// Err: why no token could be had, for the caller's error.
    pub async fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, String> {
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| format!("cannot get a token for {}: {e}", self.scope))?;
        Ok(self.http.request(method, url).bearer_auth(token.token.secret()).timeout(self.timeout))
    }
}

/// One HTTP answer of Graph or ARM (Graph also unpacks `$batch` items into these).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The JSON body; an unreadable one becomes an error body of code
    /// `UnreadableResponse`, a 204 is null.
    pub body: Value,
}

impl Reply {
    /// The `error.code` of the body both services use for errors ("" if none).
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `HTTP <status> <code>: <message>`, for an error a user reads.
    pub fn error_summary(&self) -> String {
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        format!("HTTP {} {}: {message}", self.status, self.error_code())
    }
}

pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
    let body = if status == 204 {
        Value::Null
    } else {
        response
            .json::<Value>()
            .await
            .unwrap_or_else(|e| json!({"error": {"code": "UnreadableResponse", "message": e.to_string()}}))
    };
    Reply { status, retry_after, body }
}

/// Whether `url` has the origin (scheme, host, port) of `endpoint`: a next-page
/// link elsewhere must not receive the token.
pub fn same_origin(url: &str, endpoint: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(endpoint)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_scheme_host_and_port_is_the_same_origin() {
        let arm = "https://management.azure.com";
        assert!(same_origin("https://management.azure.com/subscriptions/x?a=b", arm));
        assert!(!same_origin("http://management.azure.com/x", arm));
        assert!(!same_origin("https://management.azure.com.evil.example/x", arm));
        assert!(!same_origin("https://management.azure.com:8443/x", arm));
        assert!(!same_origin("not a url", arm));
    }
}
