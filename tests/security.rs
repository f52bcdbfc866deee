//! Who can do what through a TeamAccess, as the real API server decides it:
//! - the admission policy admits a grant only when its author could make it
//!   directly (kubectl as impersonated users, against the policy deploy/ ships);
//! - the operator's guardrails refuse escalating grants even from an admin;
//! - a team cannot delete, relabel or re-quota the namespace it was given.

mod support;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{authors::*, operator::*, *};
use teamaccess_operator::{
    api::{AccessRule, TeamAccess},
    reconcile::default_set::{CORE_RESOURCES, EXCLUDED_CORE_RESOURCES},
};

const SHORT: Duration = Duration::from_secs(30);
const CHART: &str = "charts/teamaccess-operator";

/// The chart's admission policies as release `release` renders them, with `set`
/// values (`key=value`).
fn render_policies(release: &str, set: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        "teamaccess-system",
        "--show-only",
        "templates/admission-policy.yaml",
    ];
    for value in set {
        args.extend(["--set", value]);
    }
    let (ok, rendered, err) = run_tool("helm", &args, None);
    assert!(ok, "{err}");
    rendered
}

/// Removes the policies and bindings release `release` rendered.
fn delete_release_policies(release: &str) {
    for policy in teamaccess_operator::reconcile::admission::POLICIES {
        let name = format!("{release}-teamaccess-operator-{policy}");
        let (ok, _, err) =
            run_tool("kubectl", &["delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", &name], None);
        assert!(ok, "{err}");
    }
    let name = teamaccess_operator::reconcile::authorship::policy_name(&format!("{release}-teamaccess-operator"));
    let (ok, _, err) =
        run_tool("kubectl", &["delete", "mutatingadmissionpolicybinding,mutatingadmissionpolicy", &name], None);
    assert!(ok, "{err}");
}

async fn setup() -> (Client, String) {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let author = author_who_may_only_write_teamaccesses();
    wait_policy_enforced(&author).await;
    (admin, author)
}

async fn delete_teamaccess(admin: &Client, name: &str) {
    let _ = Api::<TeamAccess>::all(admin.clone()).delete(name, &Default::default()).await;
}

#[tokio::test]
async fn an_author_who_may_only_write_teamaccesses_can_grant_nothing() {
    let (_admin, author) = setup().await;
    let ns = unique("victim");
    for role in ["cluster-admin", "admin", "edit"] {
        let grant = manifest(&unique("grab"), &ns, None, json!({"clusterRole": role}));
        assert_refused(
            apply_as(&author, &grant),
            &format!("you cannot bind clusterroles.rbac.authorization.k8s.io/{role}"),
        );
    }
    let everything = manifest(&unique("grab"), &ns, None, json!({"verbs": ["*"]}));
    assert_refused(
        apply_as(&author, &everything),
        r#"you cannot use every verb on every resource of API group "" (core)"#,
    );
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"rules": [{"apiGroups": groups, "resources": resources, "verbs": verbs}]});
    for (grant, missing) in [
        (
            rule(&["rbac.authorization.k8s.io"], &["rolebindings"], &["create"]),
            "create rolebindings.rbac.authorization.k8s.io",
        ),
        (rule(&[""], &["serviceaccounts"], &["impersonate"]), "impersonate serviceaccounts in"),
        (rule(&["rbac.authorization.k8s.io"], &["roles"], &["escalate"]), "escalate roles.rbac.authorization.k8s.io"),
        (rule(&["*"], &["pods"], &["get"]), "get pods of every API group"),
        (rule(&[""], &["pods", "pods/exec"], &["get"]), "get pods in"),
    ] {
        assert_refused(apply_as(&author, &manifest(&unique("grab"), &ns, None, grant)), missing);
    }
}

#[tokio::test]
async fn bind_on_one_cluster_role_in_one_namespace_allows_that_grant_and_no_other() {
    let (admin, author) = setup().await;
    let (team_a, team_b) = (create_namespace(&admin, "team-a").await, unique("team-b"));
    // What a team lead is given: bind on clusterroles/edit and create and delete
    // on rolebindings in team-a, and create on namespaces/team-a.
    admin_apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "lead", "namespace": team_a},
             "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                        "resourceNames": ["edit"], "verbs": ["bind"]},
                       {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create", "delete"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "lead", "namespace": team_a},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lead"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": author}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": format!("{team_a}-creator")},
             "rules": [{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [team_a], "verbs": ["create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": format!("{team_a}-creator")},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{team_a}-creator")},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": author}]}
        ]})
        .to_string(),
    );
    let editors = unique("editors");
    wait_for(SHORT, "RBAC to see the lead's Role", || async {
        apply_as(&author, &manifest(&editors, &team_a, None, json!({"clusterRole": "edit"})))
    })
    .await;
    assert_refused(
        apply_as(&author, &manifest(&unique("admins"), &team_a, None, json!({"clusterRole": "admin"}))),
        "you cannot bind clusterroles.rbac.authorization.k8s.io/admin",
    );
    assert_refused(
        apply_as(&author, &manifest(&unique("editors"), &team_b, None, json!({"clusterRole": "edit"}))),
        &format!("you cannot bind clusterroles.rbac.authorization.k8s.io/edit in namespace {team_b}"),
    );

    // A change of spec is checked like a create: the admin's view → the lead's admin.
    let viewers = unique("viewers");
    admin_apply(&manifest(&viewers, &team_a, None, json!({"clusterRole": "view"})));
    assert_refused(
        apply_as(&author, &manifest(&viewers, &team_a, None, json!({"clusterRole": "admin"}))),
        "you cannot bind clusterroles.rbac.authorization.k8s.io/admin",
    );
    apply_as(&author, &manifest(&viewers, &team_a, None, json!({"clusterRole": "edit"})))
        .expect("the lead may move the team to edit, which they may bind");

    // Writes that leave the spec as it is grant nothing new and are not checked
    // as grants: the finalizer the operator adds, on the admin's grant of admin.
    // A label change may move the object to another operator's --selector, so it
    // needs the rights of deleting it (tests/attacks.rs has the rest).
    let admins = unique("admins");
    admin_apply(&manifest(&admins, &team_a, None, json!({"clusterRole": "admin"})));
    let original: serde_json::Value =
        serde_json::from_str(&manifest(&admins, &team_a, None, json!({"clusterRole": "admin"}))).unwrap();
    let mut relabelled = original.clone();
    relabelled["metadata"]["labels"] = json!({"owner": "lead"});
    assert_refused(apply_as(&author, &relabelled.to_string()), &format!("you cannot delete namespaces/{team_a}"));
    let finalizer = json!({"metadata": {"finalizers": ["teamaccess.dev/cleanup"]}}).to_string();
    let (ok, _, err) = run_tool(
        "kubectl",
        &["patch", "teamaccess", &admins, "--as", &author, "--type", "merge", "-p", &finalizer],
        None,
    );
    assert!(ok, "a finalizer write is admitted: {err}");
    // ...while any change of its spec is checked in full.
    let mut retained = original.clone();
    retained["spec"]["deletionPolicy"] = json!("Retain");
    assert_refused(
        apply_as(&author, &retained.to_string()),
        "you cannot bind clusterroles.rbac.authorization.k8s.io/admin",
    );
    let (ok, _, err) = run_tool(
        "kubectl",
        &["patch", "teamaccess", &admins, "--type", "merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
        None,
    );
    assert!(ok, "{err}");

    // Deleting is checked too: removing access needs the right to delete the
    // RoleBinding, and with deletionPolicy Delete the right to delete the namespace.
    let other_team = unique("other");
    admin_apply(&manifest(&other_team, &team_b, None, json!({"clusterRole": "view"})));
    let delete_as = |name: &str| {
        let (ok, out, err) =
            run_tool("kubectl", &["delete", "teamaccess", name, "--as", &author, "--wait=false"], None);
        if ok { Ok(()) } else { Err(format!("{err}{out}")) }
    };
    assert_refused(
        delete_as(&other_team),
        &format!("you cannot delete rolebindings.rbac.authorization.k8s.io in namespace {team_b}"),
    );
    assert_refused(delete_as(&editors), &format!("you cannot delete namespaces/{team_a}"));
    apply_as(&author, &manifest(&editors, &team_a, None, json!({"clusterRole": "edit", "deletionPolicy": "Retain"})))
        .expect("the lead may retain the namespace");
    delete_as(&editors).expect("a TeamAccess that keeps its namespace is the lead's to delete");

    for name in [&viewers, &admins, &other_team] {
        delete_teamaccess(&admin, name).await;
    }
    delete_namespace(&admin, &team_a).await;
}

#[tokio::test]
async fn a_grant_the_author_holds_is_admitted_and_the_operator_makes_it() {
    let (admin, author) = setup().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = create_namespace(&admin, "held").await;
    // The author may read pods and create RoleBindings in ns, and nothing else.
    admin_apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "author", "namespace": ns},
             "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
                       {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "author", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "author"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": author}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": format!("{ns}-creator")},
             "rules": [{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [ns], "verbs": ["create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": format!("{ns}-creator")},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-creator")},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": author}]}
        ]})
        .to_string(),
    );
    let readers = unique("readers");
    let grant = |verbs: &[&str]| {
        manifest(
            &readers,
            &ns,
            Some(&op.label),
            json!({"rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": verbs}]}),
        )
    };
    wait_for(SHORT, "RBAC to see the author's Role", || async { apply_as(&author, &grant(&["get", "list"])) }).await;
    // The operator's own writes (finalizer, status) pass the policy.
    op.wait_ready(&readers).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "list", "", "pods", &ns, true).await;
    assert!(!allowed(&admin, AKSDEV, &[APPDEV], "delete", "", "pods", &ns).await);
    // One verb more than the author holds is refused, and the grant stays as it was.
    assert_refused(
        apply_as(&author, &grant(&["get", "list", "delete"])),
        &format!("you cannot delete pods in namespace {ns}"),
    );
    assert!(!allowed(&admin, AKSDEV, &[APPDEV], "delete", "", "pods", &ns).await);

    op.delete(&readers).await;
    op.wait_deleted(&readers, SHORT).await;
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn the_operator_refuses_escalating_grants_even_from_an_admin_unless_allowed() {
    let admin = admin_client().await;
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = create_namespace(&admin, "guard").await;
    let rbac_writer = unique("rbac-writer");
    let mut ta = op.team(&rbac_writer, by_name("appdev"), &ns);
    ta.spec.verbs = None;
    ta.spec.rules = Some(vec![AccessRule {
        api_groups: vec!["rbac.authorization.k8s.io".into()],
        resources: vec!["rolebindings".into()],
        verbs: vec!["create".into()],
        resource_names: vec![],
    }]);
    op.apply(&ta).await;
    let cluster_admins = unique("cluster-admins");
    let mut grab = op.team(&cluster_admins, by_name("appdev"), &ns);
    grab.spec.verbs = None;
    grab.spec.cluster_role = Some("cluster-admin".into());
    op.apply(&grab).await;

    let refused = op.wait_condition(&rbac_writer, "Stalled", "True", Some("RuleNotAllowed"), SHORT).await;
    let message = ready_message(&refused);
    assert!(
        message
            .contains("spec.rules[0] (apiGroups=[rbac.authorization.k8s.io] resources=[rolebindings] verbs=[create])")
            && message.contains("--allow-escalating-rules"),
        "{message}"
    );
    let refused = op.wait_condition(&cluster_admins, "Stalled", "True", Some("ClusterRoleNotAllowed"), SHORT).await;
    assert!(ready_message(&refused).contains("cluster-admin"), "{}", ready_message(&refused));
    // Nothing was created, and the API server grants the group nothing.
    let roles = Api::<Role>::namespaced(admin.clone(), &ns).list(&Default::default()).await.unwrap();
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &ns).list(&Default::default()).await.unwrap();
    assert!(roles.items.is_empty() && bindings.items.is_empty(), "{:?} {:?}", roles.items, bindings.items);
    assert!(!allowed(&admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &ns).await);
    assert!(!allowed(&admin, AKSDEV, &[APPDEV], "delete", "", "nodes", "").await);

    // The admin allows both explicitly: then they are granted.
    op.stop().await;
    op.allow_escalating_rules = true;
    op.allowed_cluster_roles = Some(vec!["view".into(), "cluster-admin".into()]);
    op.resume().await;
    op.wait_ready(&rbac_writer).await;
    op.wait_ready(&cluster_admins).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &ns, true).await;

    // Tightened again: the access granted before is taken back (the namespace stays).
    op.stop().await;
    op.allow_escalating_rules = false;
    op.allowed_cluster_roles = None;
    op.resume().await;
    op.wait_condition(&cluster_admins, "Stalled", "True", Some("ClusterRoleNotAllowed"), SHORT).await;
    op.wait_condition(&rbac_writer, "Stalled", "True", Some("RuleNotAllowed"), SHORT).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &ns, false).await;
    assert!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns).list(&Default::default()).await.unwrap().items.is_empty()
    );

    for name in [&rbac_writer, &cluster_admins] {
        op.delete(name).await;
        op.wait_deleted(name, SHORT).await;
    }
    delete_namespace(&admin, &ns).await;
}

fn ready_message(ta: &TeamAccess) -> String {
    let status = ta.status.clone().unwrap_or_default();
    status.conditions.into_iter().find(|c| c.type_ == "Ready").map(|c| c.message).unwrap_or_default()
}

#[tokio::test]
async fn the_team_cannot_touch_its_namespace_or_its_limits_and_the_seed_matrix_holds() {
    use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("dev");
    let name = unique("appdev-dev");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    admin_apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "quota", "namespace": ns},
             "spec": {"hard": {"pods": "10"}}},
            {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits", "namespace": ns},
             "spec": {"limits": [{"type": "Container", "default": {"memory": "256Mi"}}]}}
        ]})
        .to_string(),
    );
    wait_default_service_account(&op.client, &ns).await;

    // The seed's matrix: a member works in the namespace.
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns, 200).await;
    for (group, resource) in [
        ("apps", "deployments"),
        ("", "services"),
        ("", "configmaps"),
        ("", "secrets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ] {
        for verb in ["create", "delete", "list"] {
            assert!(allowed(&op.client, AKSDEV, &[APPDEV], verb, group, resource, &ns).await, "{verb} {resource}");
        }
    }

    // ...but the namespace and its limits stay the admin's, as the API server decides.
    let member = impersonating(AKSDEV, &[APPDEV]).await;
    let namespaces = Api::<Namespace>::all(member.clone());
    let relabel = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}});
    let merge = kube::api::Patch::Merge(&relabel);
    assert_eq!(api_status(&namespaces.patch(&ns, &Default::default(), &merge).await), 403, "label the namespace");
    let annotate = json!({"metadata": {"annotations": {"scheduler.alpha.kubernetes.io/node-selector": "pool=x"}}});
    let merge = kube::api::Patch::Merge(&annotate);
    assert_eq!(api_status(&namespaces.patch(&ns, &Default::default(), &merge).await), 403, "annotate the namespace");
    assert_eq!(api_status(&namespaces.delete(&ns, &Default::default()).await), 403, "delete the namespace");
    let quotas = Api::<ResourceQuota>::namespaced(member.clone(), &ns);
    assert_eq!(api_status(&quotas.delete("quota", &Default::default()).await), 403, "delete the quota");
    let raise = json!({"spec": {"hard": {"pods": "1000"}}});
    assert_eq!(api_status(&quotas.patch("quota", &Default::default(), &kube::api::Patch::Merge(&raise)).await), 403);
    assert_eq!(api_status(&quotas.get("quota").await), 200, "the team may read its quota");
    let limits = Api::<LimitRange>::namespaced(member, &ns);
    assert_eq!(api_status(&limits.delete("limits", &Default::default()).await), 403, "delete the limit range");
    assert_eq!(api_status(&limits.get("limits").await), 200, "the team may read its limit range");
    let still = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    assert!(!still.labels().contains_key("pod-security.kubernetes.io/enforce"));

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn the_default_set_names_every_namespaced_core_resource_but_the_excluded_ones() {
    let admin = admin_client().await;
    let discovered = admin.list_core_api_resources("v1").await.expect("core API discovery");
    let served: BTreeSet<&str> =
        discovered.resources.iter().filter(|r| r.namespaced).map(|r| r.name.as_str()).collect();
    let decided: BTreeSet<&str> =
        CORE_RESOURCES.iter().copied().chain(EXCLUDED_CORE_RESOURCES.iter().map(|(r, _)| *r)).collect();
    let undecided: Vec<_> = served.difference(&decided).collect();
    let gone: Vec<_> = decided.difference(&served).collect();
    assert!(
        undecided.is_empty() && gone.is_empty(),
        "src/reconcile/default_set.rs is out of date with this Kubernetes: served but neither granted nor \
         excluded: {undecided:?}; listed but not served: {gone:?}"
    );
    assert!(!served.contains("namespaces"), "the Namespace object is cluster-scoped");
}

#[tokio::test]
async fn every_rendering_of_the_policy_is_accepted_and_turning_it_off_warns() {
    ensure_crd(&admin_client().await).await;
    // deploy/ (kubectl apply -k) ships the policy the tests enforce.
    let (ok, kustomized, err) = run_tool("kubectl", &["kustomize", "deploy/"], None);
    assert!(ok, "{err}");
    let (policies, bindings) = shipped_admission_policies();
    let names = policies.iter().map(|p| p.name_any()).chain(bindings.iter().map(|b| b.name_any()));
    for name in names {
        assert!(kustomized.contains(&format!("name: {name}")), "deploy/ renders {name}");
    }
    // A chart release of another name installs its own copy: the API server
    // compiles every expression when the policy is written, so an accepted write
    // is a policy it can run (its twin, deploy/'s, is enforced in every test here).
    let release = unique("ta");
    let rendered = render_policies(&release, &[]);
    let (ok, out, err) = run_tool("kubectl", &["apply", "--server-side", "-f", "-"], Some(&rendered));
    assert!(ok && out.matches("serverside-applied").count() == 8, "{out}\n{err}");
    delete_release_policies(&release);
    // A policy the API server cannot compile is refused at write time, with the
    // expression and the error: the check above would have caught one.
    let broken = rendered.replacen("expression: object.spec.namespace", "expression: object.spec.namespace +", 1);
    let (ok, _, err) = run_tool("kubectl", &["apply", "--server-side", "--dry-run=server", "-f", "-"], Some(&broken));
    assert!(!ok && err.contains("compilation failed"), "{err}");

    // Turned off: no policy is rendered, and the release notes say what that means.
    let (ok, off, err) =
        run_tool("helm", &["template", &release, CHART, "--set", "admissionPolicy.enabled=false"], None);
    assert!(ok, "{err}");
    assert!(!off.contains("kind: ValidatingAdmissionPolicy"), "{off}");
    // The test cluster's CRD belongs to no release: crds.install=false, as for a
    // second release in a cluster (a dry run still checks ownership).
    let install = ["install", &release, CHART, "--dry-run", "--namespace", "default", "--set", "crds.install=false"];
    let (ok, notes, err) =
        run_tool("helm", &[&install[..], &["--set", "admissionPolicy.enabled=false"]].concat(), None);
    assert!(ok, "{err}");
    assert!(notes.contains("WARNING: admissionPolicy.enabled is false"), "{notes}");
    let (ok, notes_on, err) = run_tool("helm", &install, None);
    assert!(ok && notes_on.contains("teamaccess-operator is installed"), "{err}\n{notes_on}");
    assert!(!notes_on.contains("WARNING: admissionPolicy"), "{notes_on}");
}

/// With the Azure side on (`azure.clusterResourceId`), a TeamAccess also gives its
/// group the Cluster User Role on the AKS cluster: that needs `assign` on
/// `clusteruserroles.teamaccess.dev`, beyond what the RoleBinding needs.
#[tokio::test]
async fn giving_a_group_the_cluster_user_role_needs_a_right_of_its_own() {
    let (_admin, _) = setup().await;
    let (release, label) = (unique("aks"), unique("aks"));
    let rendered = render_policies(
        &release,
        &[
            "azure.clusterResourceId=/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks",
        ],
    );
    // This release's copy judges only this test's objects, so tests beside it
    // (whose authors hold no such right) are not refused by it.
    let documents: Vec<serde_json::Value> = yaml_documents(&rendered)
        .into_iter()
        .map(|mut doc| {
            if doc["kind"] == "ValidatingAdmissionPolicyBinding" {
                doc["spec"]["matchResources"] = json!({"objectSelector": {"matchLabels": {TEST_LABEL: label}}});
            }
            doc
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": documents}).to_string();
    admin_apply(&list);

    let lead = format!("{}@contoso.com", unique("lead"));
    let ns = unique("aks-team");
    grant_cluster_wide(
        &lead,
        &unique("aks-lead"),
        json!([
            {"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [ns], "verbs": ["create"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit"], "verbs": ["bind"]}
        ]),
    );
    let name = unique("aks-editors");
    let grant = |extra: serde_json::Value| {
        let mut spec = json!({"clusterRole": "edit"});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        manifest(&name, &ns, Some(&label), spec)
    };
    let dry_run = |manifest: String| kubectl_as(&lead, &["apply", "--dry-run=server", "-f", "-"], Some(&manifest));
    let needs = "needs assign on clusteruserroles.teamaccess.dev";
    let refusal = wait_for(SHORT, "the Azure check to be enforced", || async {
        match dry_run(grant(json!({}))) {
            Err(e) if e.contains(needs) => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(refusal.contains("set spec.clusterUserRole to false"), "{refusal}");
    dry_run(grant(json!({"clusterUserRole": false})))
        .expect("without the Azure role, the RoleBinding's rights suffice");
    grant_cluster_wide(
        &lead,
        &unique("aks-assigner"),
        json!([{"apiGroups": ["teamaccess.dev"], "resources": ["clusteruserroles"], "verbs": ["assign"]}]),
    );
    wait_for(SHORT, "RBAC to see the assign right", || async { dry_run(grant(json!({}))) }).await;
    delete_release_policies(&release);
}
