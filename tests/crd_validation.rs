//! Bad TeamAccess objects are rejected by the API server itself, at apply time,
//! with a message that says what to fix. No operator runs here: this is the CRD
//! schema and its CEL rules at work.

mod support;

use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
};
use serde_json::{Value, json};
use support::*;

const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

fn api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("teamaccess.dev", "v1alpha1", "TeamAccess");
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "teamaccesses"))
}

fn object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess", "metadata": {"name": name}, "spec": spec})
}

fn valid_spec() -> Value {
    json!({"group": {"objectId": APPDEV}, "namespace": "dev", "verbs": ["get", "list"]})
}

/// Applies the object as `kubectl apply --server-side` would and returns the API
/// server's answer: Ok, or the rejection's code and message.
async fn apply(client: &Client, obj: &Value) -> Result<(), (u16, String)> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    match api(client).patch(name, &PatchParams::apply("crd-validation-test").force(), &Patch::Apply(obj)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message.clone())),
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

/// One invalid object and a piece of the message the API server must give.
struct Case {
    what: &'static str,
    spec: Value,
    expected: &'static str,
}

fn with(changes: Value) -> Value {
    let mut spec = valid_spec();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            spec.as_object_mut().unwrap().remove(k);
        } else {
            spec[k] = v.clone();
        }
    }
    spec
}

fn invalid_cases() -> Vec<Case> {
    let long = |n: usize| "a".repeat(n);
    vec![
        Case {
            what: "two group selectors",
            spec: with(json!({"group": {"objectId": APPDEV, "displayName": "appdev"}})),
            expected: "spec.group must set exactly one of objectId, displayName or mailNickname",
        },
        Case {
            what: "no group selector",
            spec: with(json!({"group": {}})),
            expected: "spec.group must set exactly one of objectId, displayName or mailNickname",
        },
        Case {
            what: "malformed GUID",
            spec: with(json!({"group": {"objectId": "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a0Z"}})),
            expected: "spec.group.objectId must be a GUID",
        },
        Case {
            what: "GUID without dashes",
            spec: with(json!({"group": {"objectId": "5f0a1d3e8f8a4c1e9d550b0c2d7c1a01"}})),
            expected: "spec.group.objectId must be a GUID",
        },
        Case {
            what: "namespace with capitals and underscore",
            spec: with(json!({"namespace": "Dev_Team"})),
            expected: "spec.namespace must be a DNS-1123 label",
        },
        Case {
            what: "namespace longer than 63",
            spec: with(json!({"namespace": long(64)})),
            expected: "spec.namespace: Too long",
        },
        Case {
            what: "verbs and rules together",
            spec: with(json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})),
            expected: "set exactly one of spec.verbs, spec.rules or spec.clusterRole",
        },
        Case {
            what: "verbs and clusterRole together",
            spec: with(json!({"clusterRole": "edit"})),
            expected: "set exactly one of spec.verbs, spec.rules or spec.clusterRole",
        },
        Case {
            what: "no access at all",
            spec: with(json!({"verbs": null})),
            expected: "set exactly one of spec.verbs, spec.rules or spec.clusterRole",
        },
        Case {
            what: "unknown verb",
            spec: with(json!({"verbs": ["get", "destroy"]})),
            expected: "spec.verbs may hold only get, list, watch, create, update, patch, delete, deletecollection or *",
        },
        Case { what: "empty verbs", spec: with(json!({"verbs": []})), expected: "spec.verbs must not be empty" },
        Case {
            what: "repeated verb",
            spec: with(json!({"verbs": ["get", "get"]})),
            expected: "spec.verbs must not repeat a verb",
        },
        Case {
            what: "empty rules",
            spec: with(json!({"verbs": null, "rules": []})),
            expected: "spec.rules must not be empty",
        },
        Case {
            what: "a rule without verbs",
            spec: with(json!({"verbs": null, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]})),
            expected: "spec.rules[0].verbs",
        },
        Case {
            what: "a rule with an upper-case verb",
            spec: with(json!({"verbs": null, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["GET"]}]})),
            expected: "each of spec.rules[].verbs must be a lower-case verb",
        },
        Case {
            what: "over-long display name",
            spec: with(json!({"group": {"displayName": long(257)}})),
            expected: "spec.group.displayName: Too long",
        },
        Case {
            what: "display name with leading white space",
            spec: with(json!({"group": {"displayName": " appdev"}})),
            expected: "spec.group.displayName must not be empty or start or end with white space",
        },
        Case {
            what: "mail nickname with a space",
            spec: with(json!({"group": {"mailNickname": "app dev"}})),
            expected: "spec.group.mailNickname must not contain",
        },
        Case {
            what: "user with both UPN and objectId",
            spec: with(json!({"users": [{"userPrincipalName": "aksdev@contoso.com", "objectId": APPDEV}]})),
            expected: "each of spec.users must set exactly one of userPrincipalName or objectId",
        },
        Case {
            what: "user principal name without a domain",
            spec: with(json!({"users": [{"userPrincipalName": "aksdev"}]})),
            expected: "spec.users[].userPrincipalName must look like user@domain",
        },
        Case {
            what: "cluster role name with a slash",
            spec: with(json!({"verbs": null, "clusterRole": "edit/x"})),
            expected: "spec.clusterRole must be a ClusterRole name",
        },
        Case {
            what: "unknown deletion policy",
            spec: with(json!({"deletionPolicy": "Purge"})),
            expected: "spec.deletionPolicy: Unsupported value: \"Purge\"",
        },
        Case {
            what: "an expiry without a zone",
            spec: with(json!({"expiresAt": "2026-12-04T18:00:00"})),
            expected: "spec.expiresAt must be an RFC 3339 date-time with seconds and a zone",
        },
        Case {
            what: "an expiry as a date only",
            spec: with(json!({"expiresAt": "2026-12-04"})),
            expected: "spec.expiresAt must be an RFC 3339 date-time with seconds and a zone",
        },
        Case {
            what: "an expiry without seconds",
            spec: with(json!({"expiresAt": "2026-12-04T18:00Z"})),
            expected: "spec.expiresAt must be an RFC 3339 date-time with seconds and a zone",
        },
        Case {
            what: "a namespace profile that is no name",
            spec: with(json!({"namespaceProfile": "Open Season"})),
            expected: "spec.namespaceProfile must be a profile name",
        },
        Case {
            what: "too many users",
            spec: with(
                json!({"users": (0..33).map(|i| json!({"userPrincipalName": format!("u{i}@contoso.com")})).collect::<Vec<_>>()}),
            ),
            expected: "spec.users: Too many",
        },
    ]
}

#[tokio::test]
async fn invalid_teamaccess_objects_are_rejected_with_a_message_saying_what_to_fix() {
    let client = admin_client().await;
    ensure_crd(&client).await;
    let cases = invalid_cases();
    let mut wrong = Vec::new();
    for case in &cases {
        let name = unique("invalid");
        match apply(&client, &object(&name, case.spec.clone())).await {
            Ok(()) => {
                wrong.push(format!("{}: accepted", case.what));
                let _ = api(&client).delete(&name, &DeleteParams::default()).await;
            }
            Err((code, message)) if code == 422 && message.contains(case.expected) => {}
            Err((code, message)) => {
                wrong.push(format!("{}: HTTP {code} {message:?}, expected to contain {:?}", case.what, case.expected))
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases went wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[tokio::test]
async fn an_over_long_name_is_rejected_because_children_are_named_after_it() {
    let client = admin_client().await;
    ensure_crd(&client).await;
    let name = format!("{}-{}", unique("n"), "a".repeat(200));
    let err = apply(&client, &object(&name, valid_spec())).await.unwrap_err();
    assert_eq!(err.0, 422);
    assert!(err.1.contains("metadata.name must be at most 200 characters"), "{}", err.1);
}

#[tokio::test]
async fn valid_objects_of_every_shape_are_accepted() {
    let client = admin_client().await;
    ensure_crd(&client).await;
    let shapes = [
        valid_spec(),
        json!({"group": {"displayName": "appdev"}, "namespace": "dev", "verbs": ["*"],
               "users": [{"userPrincipalName": "aksdev@contoso.com"}, {"objectId": APPDEV}],
               "namespaceMetadata": {"labels": {"team": "appdev"}}, "deletionPolicy": "Retain",
               "expiresAt": "2026-12-04T18:00:00Z"}),
        with(json!({"expiresAt": "2026-12-04T19:00:00.250+01:00"})),
        json!({"group": {"mailNickname": "appdev"}, "namespace": "dev", "clusterRole": "edit"}),
        json!({"group": {"objectId": APPDEV.to_uppercase()}, "namespace": "d", "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"], "resourceNames": ["a"]}]}),
    ];
    for spec in shapes {
        let name = unique("valid");
        let result = apply(&client, &object(&name, spec.clone())).await;
        let _ = api(&client).delete(&name, &DeleteParams::default()).await;
        assert!(result.is_ok(), "{spec} was rejected: {result:?}");
    }
}

#[tokio::test]
async fn the_namespace_cannot_be_changed_after_creation() {
    let client = admin_client().await;
    ensure_crd(&client).await;
    let name = unique("immutable");
    apply(&client, &object(&name, valid_spec())).await.expect("create");
    let changed = apply(&client, &object(&name, with(json!({"namespace": "prod"})))).await;
    let _ = api(&client).delete(&name, &DeleteParams::default()).await;
    let (code, message) = changed.expect_err("changing spec.namespace must be rejected");
    assert_eq!(code, 422);
    assert!(message.contains("spec.namespace is immutable"), "{message}");
}
