//! People with limited rights, as the admission policies see them: RBAC given by
//! the admin, and kubectl run as those users (impersonated).

use std::time::Duration;

use serde_json::json;

use super::{operator::TEST_LABEL, run_tool, unique, wait_for};

const SHORT: Duration = Duration::from_secs(30);

/// Applies RBAC objects (JSON or YAML) as the cluster admin.
pub fn admin_apply(manifest: &str) {
    let (ok, out, err) =
        run_tool("kubectl", &["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(manifest));
    assert!(ok, "kubectl apply:\n{out}\n{err}");
}

/// Gives `user` the rules of a ClusterRole, cluster-wide.
pub fn grant_cluster_wide(user: &str, name: &str, rules: serde_json::Value) {
    admin_apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": format!("{name}-{}", user.replace('@', "-at-"))},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}
        ]})
        .to_string(),
    );
}

/// Gives `user` the rules of a Role in `namespace`.
pub fn grant_in(user: &str, namespace: &str, name: &str, rules: serde_json::Value) {
    admin_apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": name, "namespace": namespace}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": name, "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}
        ]})
        .to_string(),
    );
}

/// A new user whose only right is to write TeamAccess objects.
pub fn author_who_may_only_write_teamaccesses() -> String {
    let user = format!("{}@contoso.com", unique("author"));
    let rules = json!([{"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"],
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]);
    grant_cluster_wide(&user, "teamaccess-tests-author", rules);
    user
}

/// A TeamAccess manifest for kubectl, with the test operator's label when given.
pub fn manifest(name: &str, namespace: &str, label: Option<&str>, grant: serde_json::Value) -> String {
    let mut spec = json!({"group": {"displayName": "appdev"}, "namespace": namespace});
    spec.as_object_mut().unwrap().extend(grant.as_object().unwrap().clone());
    let labels = label.map_or(json!({}), |l| json!({TEST_LABEL: l}));
    json!({"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
           "metadata": {"name": name, "labels": labels}, "spec": spec})
    .to_string()
}

/// `kubectl apply` as `user`: Ok, or Err with what kubectl printed.
pub fn apply_as(user: &str, manifest: &str) -> Result<(), String> {
    kubectl_as(user, &["apply", "-f", "-"], Some(manifest))
}

/// `kubectl ARGS --as user`: Ok, or Err with what kubectl printed.
pub fn kubectl_as(user: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let args: Vec<&str> = args.iter().copied().chain(["--as", user]).collect();
    let (ok, out, err) = run_tool("kubectl", &args, stdin);
    if ok { Ok(()) } else { Err(format!("{err}{out}")) }
}

/// `kubectl patch teamaccess NAME --type merge -p PATCH` as `user` (the status
/// subresource with `subresource` "status").
pub fn patch_as(user: &str, name: &str, patch: &serde_json::Value, subresource: Option<&str>) -> Result<(), String> {
    let patch = patch.to_string();
    let mut args = vec!["patch", "teamaccess", name, "--type", "merge", "-p", &patch];
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    kubectl_as(user, &args, None)
}

/// Asserts a refusal by an admission policy whose message names `missing`.
pub fn assert_refused(result: Result<(), String>, missing: &str) {
    let message = result.expect_err("the admission policy must refuse this");
    assert!(message.contains("denied request"), "refused by the admission policy: {message}");
    assert!(message.contains(missing), "the refusal names {missing:?}: {message}");
}

/// The policy is loaded by the API server a moment after it is written: wait
/// until a grant nobody may make is refused.
pub async fn wait_policy_enforced(author: &str) {
    let probe = manifest(&unique("probe"), "kube-system", None, json!({"clusterRole": "cluster-admin"}));
    wait_for(SHORT, "the admission policy to be enforced", || async {
        let (ok, out, err) =
            run_tool("kubectl", &["apply", "--dry-run=server", "--as", author, "-f", "-"], Some(&probe));
        if !ok && err.contains("denied request") { Ok(()) } else { Err(format!("{ok} {out} {err}")) }
    })
    .await;
}
