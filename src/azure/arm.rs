//! The Azure Resource Manager client: role assignments only (api-version
//! 2022-04-01), with a token for ARM's own audience from the shared credential.
//!
//! No retry loop inside a request: a 429 or 5xx returns at once with the
//! service's Retry-After, the caller (a reconcile) comes back after it, and
//! until then every call fails fast without a request, so a throttled
//! subscription is not hammered by every TeamAccess in turn.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use azure_core::credentials::TokenCredential;
use serde::Deserialize;
use serde_json::{Value, json};

use super::rest::{self, BearerClient, Reply};
use crate::{api::Reason, telemetry::metrics::Metrics};

pub const API_VERSION: &str = "2022-04-01";
/// Pages of a role assignment list followed at most.
const MAX_PAGES: usize = 100;
/// How long a 429 or 503 without Retry-After keeps every request back.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why an ARM request did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    #[error(
        "the operator's Azure identity may not {action} role assignments on {scope}: it needs Microsoft.Authorization/roleAssignments/{verb} there. The least built-in role that grants it is \"Role Based Access Control Administrator\" on the cluster, which a condition can limit to the Azure Kubernetes Service Cluster User Role (the README shows the command). Azure said: {message}"
    )]
    AuthorizationFailed { action: &'static str, verb: &'static str, scope: String, message: String },

    #[error(
        "Azure does not know principal {principal} yet (a group created moments ago takes a while to reach ARM); retrying. Azure said: {message}"
    )]
    PrincipalNotFound { principal: String, message: String },

    #[error("the group already holds the role in assignment {existing:?}: {message}")]
    RoleAssignmentExists { existing: Option<String>, message: String },

    #[error("Azure Resource Manager is throttling the operator; retrying after {}", describe(*retry_after))]
    Throttled { retry_after: Option<Duration> },

    #[error("Azure Resource Manager is unavailable ({message}); retrying")]
    Unavailable { message: String, retry_after: Option<Duration> },

    #[error("cannot authenticate to Azure Resource Manager: {message}")]
    AuthenticationFailed { message: String },

    #[error("Azure Resource Manager refused the request: {message}")]
    Rejected { message: String },
}

fn describe(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(|| "a backoff".into(), |d| format!("{}s", d.as_secs().max(1)))
}

impl ArmError {
    pub fn reason(&self) -> Reason {
        match self {
            ArmError::AuthorizationFailed { .. } => Reason::AuthorizationFailed,
            ArmError::PrincipalNotFound { .. } => Reason::PrincipalNotFound,
            ArmError::RoleAssignmentExists { .. } => Reason::AssignedByOther,
            ArmError::Throttled { .. } => Reason::ArmThrottled,
            ArmError::Unavailable { .. } => Reason::ArmUnavailable,
            ArmError::AuthenticationFailed { .. } => Reason::ArmAuthenticationFailed,
            ArmError::Rejected { .. } => Reason::ArmRequestRejected,
        }
    }

    /// Failures that end on their own (retried with backoff) rather than by an admin.
    pub fn is_transient(&self) -> bool {
        matches!(self, ArmError::PrincipalNotFound { .. } | ArmError::Throttled { .. } | ArmError::Unavailable { .. })
    }

    /// When the service asked to be called again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ArmError::Throttled { retry_after } | ArmError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A role assignment as ARM lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleAssignment {
    /// The full resource ID: `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    pub name: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAssignment {
    id: String,
    name: String,
    properties: WireProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProperties {
    #[serde(default)]
    scope: String,
    role_definition_id: String,
    principal_id: String,
}

impl From<WireAssignment> for RoleAssignment {
    fn from(w: WireAssignment) -> Self {
        Self {
            id: w.id,
            name: w.name,
            scope: w.properties.scope,
            role_definition_id: w.properties.role_definition_id,
            principal_id: w.properties.principal_id,
        }
    }
}

/// What to create: a role for a principal at a scope, under a name we choose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAssignment<'a> {
    pub scope: &'a str,
    pub name: &'a str,
    pub role_definition_id: &'a str,
    pub principal_id: &'a str,
}

pub struct ArmClient {
    /// With tokens of ARM's audience, never Graph's: `<endpoint>/.default`.
    client: BearerClient,
    /// The ARM root, such as https://management.azure.com.
    endpoint: String,
    metrics: Option<Arc<Metrics>>,
    /// No request goes out before this (after a 429 or 503).
    quiet_until: Mutex<Option<Instant>>,
}

impl ArmClient {
    /// `endpoint` is the ARM root of the cloud (or `--arm-endpoint`); `http` must
    /// be the client the credential uses too (same trusted CAs).
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        endpoint: &str,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let root = endpoint.trim_end_matches('/').to_string();
        Self {
            client: BearerClient::new(http, credential, &root, timeout),
            endpoint: root,
            metrics,
            quiet_until: Mutex::new(None),
        }
    }

    fn assignments_url(&self, scope: &str) -> String {
        format!("{}{scope}/providers/Microsoft.Authorization/roleAssignments", self.endpoint)
    }

    /// The role assignments at `scope` and above it (`atScope()`), every page.
    pub async fn list_role_assignments(&self, scope: &str) -> Result<Vec<RoleAssignment>, ArmError> {
        let mut url = format!("{}?api-version={API_VERSION}&$filter=atScope()", self.assignments_url(scope));
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let answer = self.send(reqwest::Method::GET, &url, None).await?;
            if answer.status != 200 {
                return Err(self.error(answer, "list", "read", scope));
            }
            let items: Vec<WireAssignment> = serde_json::from_value(answer.body["value"].clone())
                .map_err(|e| ArmError::Rejected { message: format!("unreadable role assignment list: {e}") })?;
            all.extend(items.into_iter().map(RoleAssignment::from));
            let Some(next) = answer.body["nextLink"].as_str().filter(|n| !n.is_empty()) else {
                return Ok(all);
            };
            // The token goes to the configured ARM endpoint and nowhere else.
            if !self.is_on_endpoint(next) {
                return Err(ArmError::Rejected {
                    message: format!("ARM returned a next-page link off {}; it was not followed", self.endpoint),
                });
            }
            url = next.to_string();
        }
        Err(ArmError::Rejected { message: format!("more than {MAX_PAGES} pages of role assignments at {scope}") })
    }

    /// Creates the assignment (PUT is idempotent for the same name and properties).
    pub async fn create_role_assignment(&self, new: &NewAssignment<'_>) -> Result<RoleAssignment, ArmError> {
        let url = format!("{}/{}?api-version={API_VERSION}", self.assignments_url(new.scope), new.name);
        let body = json!({"properties": {
            "roleDefinitionId": new.role_definition_id,
            "principalId": new.principal_id,
            // Tells ARM what the principal is, so it does not look it up in a
            // directory replica that may not have a new group yet.
            "principalType": "Group",
        }});
        let answer = self.send(reqwest::Method::PUT, &url, Some(&body)).await?;
        match answer.status {
            200 | 201 => serde_json::from_value::<WireAssignment>(answer.body)
                .map(RoleAssignment::from)
                .map_err(|e| ArmError::Rejected { message: format!("unreadable role assignment: {e}") }),
            _ => Err(self.error(answer, "create", "write", new.scope)),
        }
    }

    /// Deletes the assignment `name` at `scope`; one that is not there is fine.
    pub async fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<(), ArmError> {
        let url = format!("{}/{name}?api-version={API_VERSION}", self.assignments_url(scope));
        let answer = self.send(reqwest::Method::DELETE, &url, None).await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.error(answer, "delete", "delete", scope)),
        }
    }

    fn is_on_endpoint(&self, url: &str) -> bool {
        rest::same_origin(url, &self.endpoint)
    }

    /// Maps a failed answer to the error a user can act on.
    fn error(&self, answer: Reply, action: &'static str, verb: &'static str, scope: &str) -> ArmError {
        let message = answer.error_summary();
        match (answer.status, answer.error_code()) {
            (403, _) => ArmError::AuthorizationFailed { action, verb, scope: scope.to_string(), message },
            (400, "PrincipalNotFound") => {
                let principal =
                    answer.body["error"]["message"].as_str().and_then(principal_in_message).unwrap_or_default();
                ArmError::PrincipalNotFound { principal, message }
            }
            (409, "RoleAssignmentExists") => ArmError::RoleAssignmentExists {
                existing: answer.body["error"]["message"].as_str().and_then(existing_assignment_in_message),
                message,
            },
            (401, _) => ArmError::AuthenticationFailed { message },
            (429, _) => ArmError::Throttled { retry_after: answer.retry_after },
            (500..=599, _) => ArmError::Unavailable { message, retry_after: answer.retry_after },
            _ => ArmError::Rejected { message },
        }
    }

    async fn send(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Result<Reply, ArmError> {
        if let Some(until) = *self.quiet_until.lock().unwrap_or_else(|e| e.into_inner()) {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(ArmError::Throttled { retry_after: Some(left) });
            }
        }
        let mut request = self
            .client
            .request(method.clone(), url)
            .await
            .map_err(|message| ArmError::AuthenticationFailed { message })?;
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = read(request.send().await).await;
        if let Some(m) = &self.metrics {
            m.arm_request(method.as_str(), answer.as_ref().ok().map(|a| a.status));
        }
        let answer = answer?;
        if matches!(answer.status, 429 | 503) {
            let wait = answer.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            *self.quiet_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + wait);
        }
        Ok(answer)
    }
}

async fn read(response: Result<reqwest::Response, reqwest::Error>) -> Result<Reply, ArmError> {
    let response = response.map_err(|e| ArmError::Unavailable {
        message: format!("cannot reach Azure Resource Manager: {e}"),
        retry_after: None,
    })?;
    Ok(rest::read(response).await)
}

/// The first GUID in a message, written with or without dashes, as a GUID.
fn first_guid(message: &str) -> Option<String> {
    message
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .map(|word| word.replace('-', ""))
        .find(|hex| hex.len() == 32)
        .map(|h| format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]).to_ascii_lowercase())
}

/// "The ID of the existing role assignment is 17bbe8f3...": the existing name.
fn existing_assignment_in_message(message: &str) -> Option<String> {
    message.split_once("existing role assignment is").and_then(|(_, rest)| first_guid(rest))
}

/// "Principal 5f0a1d3e... does not exist in the directory ...".
fn principal_in_message(message: &str) -> Option<String> {
    message.strip_prefix("Principal ").and_then(first_guid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_existing_assignment_is_read_from_a_409_with_or_without_dashes() {
        let m = "The role assignment already exists. The ID of the existing role assignment is 17bbe8f38ab9421c87c6f9e2b0d43bd0.";
        assert_eq!(existing_assignment_in_message(m).as_deref(), Some("17bbe8f3-8ab9-421c-87c6-f9e2b0d43bd0"));
        let dashed = "The ID of the existing role assignment is 17BBE8F3-8ab9-421c-87c6-f9e2b0d43bd0.";
        assert_eq!(existing_assignment_in_message(dashed).as_deref(), Some("17bbe8f3-8ab9-421c-87c6-f9e2b0d43bd0"));
        assert_eq!(existing_assignment_in_message("The role assignment already exists."), None);
    }

    #[test]
    fn the_principal_is_read_from_principal_not_found() {
        let m = "Principal 5f0a1d3e8f8a4c1e9d550b0c2d7c1a01 does not exist in the directory 72f988bf-86f1-41af-91ab-2d7cd011db47.";
        assert_eq!(principal_in_message(m).as_deref(), Some("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"));
    }

    #[test]
    fn reasons_and_transience_follow_the_error() {
        let throttled = ArmError::Throttled { retry_after: Some(Duration::from_secs(7)) };
        assert_eq!((throttled.reason(), throttled.is_transient()), (Reason::ArmThrottled, true));
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        assert!(throttled.to_string().contains("after 7s"), "{throttled}");
        let forbidden = ArmError::AuthorizationFailed {
            action: "create",
            verb: "write",
            scope: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c".into(),
            message: "HTTP 403 AuthorizationFailed: no".into(),
        };
        assert_eq!((forbidden.reason(), forbidden.is_transient()), (Reason::AuthorizationFailed, false));
        let text = forbidden.to_string();
        assert!(text.contains("Microsoft.Authorization/roleAssignments/write"), "{text}");
        assert!(text.contains("Role Based Access Control Administrator"), "{text}");
        let missing = ArmError::PrincipalNotFound { principal: "p".into(), message: "m".into() };
        assert!(missing.is_transient());
    }
}
