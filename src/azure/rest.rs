//! What the Graph and ARM clients share about talking to an Azure REST service:
//! reading an answer into status, Retry-After and JSON body, and deciding
//! whether a link the service returned may receive our bearer token.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backoff::parse_retry_after;

/// One HTTP answer of Graph or ARM.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The JSON body; an unreadable one becomes an error body of code
    /// `UnreadableResponse`, a 204 is null.
    pub body: Value,
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
