//! Azure Resource Manager: the role assignment endpoints of
//! `Microsoft.Authorization` (api-version 2022-04-01) that teamaccess-operator
//! uses, on a listener of their own, so ARM has its own origin and token
//! audience, as management.azure.com does next to graph.microsoft.com.
//!
//! As documented: PUT creates under a caller-chosen GUID name (idempotent for
//! the same properties, 400 `RoleAssignmentUpdateNotPermitted` for others);
//! the same principal, role and scope under another name is 409
//! `RoleAssignmentExists` naming the existing assignment; a principal the
//! directory does not know (or has not replicated yet) is 400
//! `PrincipalNotFound` unless `principalType` is given; GET lists with
//! `$filter=atScope()` and pages with `nextLink`; DELETE answers 200 with the
//! deleted assignment or 204 when there was none. Errors carry ARM's body
//! `{"error": {"code", "message"}}`.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use axum::{
    Router,
    body::Bytes,
    extract::{OriginalUri, State},
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
    routing::any,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Audience, GraphReply, Shared, TENANT_ID, is_guid};

pub const API_VERSION: &str = "2022-04-01";
const ASSIGNMENTS: &str = "/providers/microsoft.authorization/roleassignments";
/// Items per page of a list, unless a test sets another.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The object id the emulator gives the operator's application in messages.
const CALLER_OBJECT_ID: &str = "9c3e1d2b-7a6f-4e5d-8c4b-3a2f1e0d9c8b";

/// One role assignment as ARM returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    pub name: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: Option<String>,
    pub description: Option<String>,
}

impl RoleAssignment {
    pub fn new(scope: &str, name: &str, role_definition_id: &str, principal_id: &str) -> Self {
        Self {
            id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name: name.to_string(),
            scope: scope.to_string(),
            role_definition_id: role_definition_id.to_string(),
            principal_id: principal_id.to_string(),
            principal_type: Some("Group".into()),
            description: None,
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "Microsoft.Authorization/roleAssignments",
            "name": self.name,
            "properties": {
                "roleDefinitionId": self.role_definition_id,
                "principalId": self.principal_id,
                "principalType": self.principal_type,
                "scope": self.scope,
                "condition": null,
                "conditionVersion": null,
                "description": self.description,
                "createdOn": "2026-11-29T00:00:00.0000000Z",
                "updatedOn": "2026-11-29T00:00:00.0000000Z",
                "createdBy": CALLER_OBJECT_ID,
                "updatedBy": CALLER_OBJECT_ID,
                "delegatedManagedIdentityResourceId": null,
            }
        })
    }
}

/// One request ARM received, for tests that check what the client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmRequest {
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
    pub body: Option<Value>,
    /// The status it was answered with, and ARM's error code if any.
    pub status: u16,
    pub error_code: Option<String>,
}

/// Faults of the ARM endpoints (set through `Faults`).
#[derive(Debug, Default)]
pub(crate) struct ArmFaults {
    pub throttle_until: Option<Instant>,
    pub outage_until: Option<Instant>,
    pub retry_after_secs: Option<u64>,
    /// Writes get 403 AuthorizationFailed (the identity may read, not assign).
    pub forbidden: bool,
    /// The next N PUTs get 400 PrincipalNotFound, whatever principalType says.
    pub principal_not_found_next: u32,
    /// Groups that appeared in the directory less than this long ago are not
    /// known to ARM yet (replication), unless principalType is given.
    pub replication_delay: std::time::Duration,
    pub page_size: usize,
}

#[derive(Debug, Default)]
pub(crate) struct ArmState {
    pub assignments: Vec<RoleAssignment>,
    pub faults: ArmFaults,
    pub log: Vec<ArmRequest>,
    /// When each directory object was first seen, for the replication delay.
    pub first_seen: HashMap<String, Instant>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/{*path}", any(handle)).with_state(shared)
}

/// ARM's error body.
fn error(status: u16, code: &str, message: &str) -> GraphReply {
    GraphReply { status, retry_after: None, body: json!({"error": {"code": code, "message": message}}) }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Response {
    s.counters.arm_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.latency()).await;
    let body = serde_json::from_slice::<Value>(&body).ok();
    let reply = answer(&s, &method, &headers, &uri, body.clone());
    s.arm.lock().unwrap().log.push(ArmRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        body,
        status: reply.status,
        error_code: reply.body["error"]["code"].as_str().map(str::to_string),
    });
    reply.into_response()
}

fn answer(s: &Shared, method: &Method, headers: &HeaderMap, uri: &axum::http::Uri, body: Option<Value>) -> GraphReply {
    if let Some(reply) = check_bearer(s, headers) {
        return reply;
    }
    if let Some(reply) = storm_or_outage(s) {
        return reply;
    }
    let query = crate::parse_query(uri.query().unwrap_or("")).unwrap_or_default();
    match query.get("api-version").map(String::as_str) {
        None => {
            return error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(API_VERSION) => {}
        Some(other) => {
            return error(
                400,
                "InvalidApiVersionParameter",
                &format!(
                    "The api-version '{other}' is invalid. The supported versions are '{API_VERSION}' (this emulator)."
                ),
            );
        }
    }
    let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy().into_owned();
    let lower = path.to_ascii_lowercase();
    let Some(at) = lower.find(ASSIGNMENTS) else {
        return error(404, "InvalidResourceType", &format!("The resource type could not be found for '{path}'."));
    };
    let scope = path[..at].to_string();
    let rest = &path[at + ASSIGNMENTS.len()..];
    match (method.clone(), rest.trim_start_matches('/')) {
        (Method::GET, "") => list(s, &scope, &query),
        (Method::PUT, name) if !name.contains('/') && !name.is_empty() => put(s, &scope, name, body),
        (Method::DELETE, name) if !name.contains('/') && !name.is_empty() => delete(s, &scope, name),
        (method, _) => {
            error(405, "MethodNotAllowed", &format!("The requested resource does not support http method '{method}'."))
        }
    }
}

/// ARM wants a token for its own audience: a Graph token is refused.
fn check_bearer(s: &Shared, headers: &HeaderMap) -> Option<GraphReply> {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return Some(error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    match s.tokens.lock().unwrap().get(token) {
        None => Some(error(401, "InvalidAuthenticationToken", "The access token is invalid.")),
        Some(Audience::Arm) => None,
        Some(Audience::Graph) => Some(error(
            401,
            "InvalidAuthenticationTokenAudience",
            &format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences '{}/'.",
                s.base_url, s.arm_url
            ),
        )),
    }
}

fn storm_or_outage(s: &Shared) -> Option<GraphReply> {
    let arm = s.arm.lock().unwrap();
    let now = Instant::now();
    let f = &arm.faults;
    if f.outage_until.is_some_and(|t| now < t) {
        let mut reply = error(503, "ServiceUnavailable", "The service is temporarily unavailable.");
        reply.retry_after = f.retry_after_secs;
        return Some(reply);
    }
    if f.throttle_until.is_some_and(|t| now < t) {
        s.counters.arm_throttled.fetch_add(1, Ordering::Relaxed);
        let mut reply = error(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:05:00.",
        );
        reply.retry_after = f.retry_after_secs;
        return Some(reply);
    }
    None
}

fn authorization_failed(action: &str, scope: &str) -> GraphReply {
    error(
        403,
        "AuthorizationFailed",
        &format!(
            "The client '{CALLER_OBJECT_ID}' with object id '{CALLER_OBJECT_ID}' does not have authorization to perform action '{action}' over scope '{scope}/providers/Microsoft.Authorization/roleAssignments' or the scope is invalid. If access was recently granted, please refresh your credentials."
        ),
    )
}

/// The scope and the scopes above it, for `atScope()`.
fn is_at_or_above(assignment_scope: &str, scope: &str) -> bool {
    let a = assignment_scope.trim_end_matches('/').to_ascii_lowercase();
    let s = scope.trim_end_matches('/').to_ascii_lowercase();
    a.is_empty() || s == a || s.starts_with(&format!("{a}/"))
}

fn list(s: &Shared, scope: &str, query: &HashMap<String, String>) -> GraphReply {
    let filter = query.get("$filter").map(String::as_str);
    if let Some(f) = filter
        && f != "atScope()"
    {
        return error(400, "UnsupportedQuery", &format!("The filter '{f}' is not supported by this emulator."));
    }
    let skip: usize = query.get("$skipToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let arm = s.arm.lock().unwrap();
    let page_size = if arm.faults.page_size == 0 { DEFAULT_PAGE_SIZE } else { arm.faults.page_size };
    let matching: Vec<&RoleAssignment> = arm
        .assignments
        .iter()
        .filter(|a| {
            if filter.is_some() {
                is_at_or_above(&a.scope, scope)
            } else {
                // Without a filter: at, above and below the scope.
                is_at_or_above(&a.scope, scope) || is_at_or_above(scope, &a.scope)
            }
        })
        .collect();
    let value: Vec<Value> = matching.iter().skip(skip).take(page_size).map(|a| a.json()).collect();
    let mut body = json!({ "value": value });
    if skip + page_size < matching.len() {
        let mut next = format!(
            "{}{scope}/providers/Microsoft.Authorization/roleAssignments?api-version={API_VERSION}&$skipToken={}",
            s.arm_url,
            skip + page_size
        );
        if let Some(f) = filter {
            next.push_str(&format!("&$filter={}", crate::encode(f)));
        }
        body["nextLink"] = json!(next);
    }
    GraphReply::ok(body)
}

fn put(s: &Shared, scope: &str, name: &str, body: Option<Value>) -> GraphReply {
    if s.arm.lock().unwrap().faults.forbidden {
        return authorization_failed("Microsoft.Authorization/roleAssignments/write", scope);
    }
    if !is_guid(name) {
        return error(
            400,
            "InvalidRoleAssignmentId",
            &format!("The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."),
        );
    }
    let properties = body.as_ref().map(|b| &b["properties"]).filter(|p| p.is_object());
    let Some(properties) = properties else {
        return error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.");
    };
    let role_definition_id = properties["roleDefinitionId"].as_str().unwrap_or("");
    let principal_id = properties["principalId"].as_str().unwrap_or("");
    let principal_type = properties["principalType"].as_str().map(str::to_string);
    let subscription = scope.split('/').nth(2).unwrap_or("");
    let expected_prefix = format!("/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/");
    let role_ok = role_definition_id.len() > expected_prefix.len()
        && role_definition_id[..expected_prefix.len()].eq_ignore_ascii_case(&expected_prefix)
        && is_guid(&role_definition_id[expected_prefix.len()..]);
    if !role_ok {
        return error(
            400,
            "InvalidRoleDefinitionId",
            &format!("The role definition ID '{role_definition_id}' is not valid."),
        );
    }
    if !is_guid(principal_id) {
        return error(400, "InvalidPrincipalId", "A valid principal ID must be provided for role assignment.");
    }
    if let Some(t) = &principal_type
        && !["User", "Group", "ServicePrincipal", "ForeignGroup", "Device"].contains(&t.as_str())
    {
        return error(400, "InvalidPrincipalType", &format!("The principal type '{t}' is not valid."));
    }
    let principal_not_found = error(
        400,
        "PrincipalNotFound",
        &format!(
            "Principal {} does not exist in the directory {TENANT_ID}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
            principal_id.replace('-', "")
        ),
    );
    {
        let mut arm = s.arm.lock().unwrap();
        if arm.faults.principal_not_found_next > 0 {
            arm.faults.principal_not_found_next -= 1;
            return principal_not_found;
        }
    }
    if principal_type.is_none() && !s.principal_replicated(principal_id) {
        return principal_not_found;
    }
    let mut arm = s.arm.lock().unwrap();
    let same_name =
        arm.assignments.iter().find(|a| a.scope.eq_ignore_ascii_case(scope) && a.name.eq_ignore_ascii_case(name));
    if let Some(existing) = same_name {
        let same = existing.principal_id.eq_ignore_ascii_case(principal_id)
            && existing.role_definition_id.eq_ignore_ascii_case(role_definition_id);
        if same {
            return GraphReply { status: 201, retry_after: None, body: existing.json() };
        }
        return error(
            400,
            "RoleAssignmentUpdateNotPermitted",
            "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
        );
    }
    let duplicate = arm.assignments.iter().find(|a| {
        a.scope.eq_ignore_ascii_case(scope)
            && a.principal_id.eq_ignore_ascii_case(principal_id)
            && a.role_definition_id.eq_ignore_ascii_case(role_definition_id)
    });
    if let Some(existing) = duplicate {
        return error(
            409,
            "RoleAssignmentExists",
            &format!(
                "The role assignment already exists. The ID of the existing role assignment is {}.",
                existing.name.replace('-', "")
            ),
        );
    }
    let mut assignment = RoleAssignment::new(scope, name, role_definition_id, principal_id);
    assignment.principal_type = principal_type;
    assignment.description = properties["description"].as_str().map(str::to_string);
    let reply = GraphReply { status: 201, retry_after: None, body: assignment.json() };
    arm.assignments.push(assignment);
    s.counters.arm_writes.fetch_add(1, Ordering::Relaxed);
    reply
}

fn delete(s: &Shared, scope: &str, name: &str) -> GraphReply {
    let mut arm = s.arm.lock().unwrap();
    if arm.faults.forbidden {
        return authorization_failed("Microsoft.Authorization/roleAssignments/delete", scope);
    }
    let found =
        arm.assignments.iter().position(|a| a.scope.eq_ignore_ascii_case(scope) && a.name.eq_ignore_ascii_case(name));
    match found {
        Some(i) => {
            let removed = arm.assignments.remove(i);
            s.counters.arm_writes.fetch_add(1, Ordering::Relaxed);
            GraphReply::ok(removed.json())
        }
        None => GraphReply { status: 204, retry_after: None, body: Value::Null },
    }
}
