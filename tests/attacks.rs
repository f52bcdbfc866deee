//! The red team's attacks on what the operator acts on besides the spec:
//! metadata (owner references, finalizers, the labels a shard's selector reads),
//! status, the moment of deletion, and the meaning of `*`. Each is tried the way
//! a user with limited rights would (kubectl as an impersonated user, against the
//! admission policies deploy/ ships) and judged the way the API server decides
//! access (SubjectAccessReviews), with the namespace and its data checked to
//! survive.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use serde_json::json;
use support::{authors::*, operator::*, *};
use teamaccess_operator::api::{AccessRule, DeletionPolicy, TeamAccess};

const SHORT: Duration = Duration::from_secs(30);

async fn setup() -> (Client, String) {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let author = author_who_may_only_write_teamaccesses();
    wait_policy_enforced(&author).await;
    wait_integrity_enforced().await;
    (admin, author)
}

/// The integrity policy is loaded a moment after it is written: wait until an
/// owner reference is refused (to the admin too, whom the authors policy admits).
async fn wait_integrity_enforced() {
    let mut probe: serde_json::Value =
        serde_json::from_str(&manifest(&unique("probe"), "probe", None, json!({"verbs": ["get"]}))).unwrap();
    probe["metadata"]["ownerReferences"] = ghost_owner();
    let probe = probe.to_string();
    wait_for(SHORT, "the integrity policy to be enforced", || async {
        let (ok, out, err) = run_tool("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&probe));
        if !ok && err.contains("ownerReferences") { Ok(()) } else { Err(format!("{ok} {out} {err}")) }
    })
    .await;
}

/// An owner that does not exist: the garbage collector deletes what names it.
fn ghost_owner() -> serde_json::Value {
    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "6a1b2c3d-0000-4000-8000-000000000001"}])
}

/// A seed team (appdev, every verb of the default set) the test operator makes ready,
/// with team data in its namespace.
async fn ready_team(op: &TestOperator, name: &str, ns: &str, policy: DeletionPolicy) -> TeamAccess {
    let mut ta = op.team(name, by_name("appdev"), ns);
    ta.spec.deletion_policy = policy;
    op.apply(&ta).await;
    let ready = op.wait_ready(name).await;
    write_team_data(&op.client, ns).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", ns, true).await;
    ready
}

async fn delete_and_wait(op: &TestOperator, name: &str) {
    op.delete(name).await;
    op.wait_deleted(name, SHORT).await;
}

/// Attacks 1 and 8: a writer of TeamAccess objects adds a ghost owner (the
/// garbage collector would delete the victim under its own identity, passing the
/// removers policy, and the finalizer would delete the namespace), the orphan
/// finalizer (which would strip the RoleBinding's owner reference), or removes
/// the cleanup finalizer (which would keep the access forever). All refused.
#[tokio::test]
async fn metadata_cannot_get_another_teams_namespace_deleted_or_its_access_kept() {
    let (admin, attacker) = setup().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let (victim, ns) = (unique("victim"), unique("victim-ns"));
    ready_team(&op, &victim, &ns, DeletionPolicy::Delete).await;

    assert_refused(
        patch_as(&attacker, &victim, &json!({"metadata": {"ownerReferences": ghost_owner()}}), None),
        "a TeamAccess takes no ownerReferences",
    );
    assert_refused(
        patch_as(&attacker, &victim, &json!({"metadata": {"finalizers": ["teamaccess.dev/cleanup", "orphan"]}}), None),
        "the orphan finalizer is refused",
    );
    assert_refused(
        patch_as(&attacker, &victim, &json!({"metadata": {"finalizers": null}}), None),
        "only the operator removes the finalizer teamaccess.dev/cleanup",
    );
    // Not even an admin may give it an owner: nothing could tell the garbage
    // collector's deletion from its owner's.
    let (ok, _, err) = run_tool(
        "kubectl",
        &[
            "patch",
            "teamaccess",
            &victim,
            "--type",
            "merge",
            "-p",
            &json!({"metadata": {"ownerReferences": ghost_owner()}}).to_string(),
        ],
        None,
    );
    assert!(!ok && err.contains("takes no ownerReferences"), "{err}");

    // Given time for a garbage collection, the victim, its namespace, its data
    // and its access are all still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live = op.api().get(&victim).await.expect("the victim's TeamAccess is not deleted");
    assert!(live.metadata.deletion_timestamp.is_none() && live.owner_references().is_empty());
    assert_eq!(live.finalizers(), ["teamaccess.dev/cleanup"]);
    assert_team_data_kept(&admin, &ns).await;
    assert!(allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await);

    delete_and_wait(&op, &victim).await;
    wait_namespace_gone(&admin, &ns, Duration::from_secs(60)).await;
}

/// Attack 2: a team lead who may create namespace X (the README's delegation)
/// changes spec.namespaceMetadata to turn Pod Security off on the existing X.
/// Changing it needs patch on the namespace, as relabelling it by hand would.
#[tokio::test]
async fn a_lead_who_may_only_create_the_namespace_cannot_relabel_it() {
    let (admin, _) = setup().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let lead = format!("{}@contoso.com", unique("lead"));
    let (name, ns) = (unique("lead-team"), unique("lead-ns"));
    grant_cluster_wide(
        &lead,
        &unique("lead"),
        json!([
            {"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"], "verbs": ["get", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [ns], "verbs": ["create"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit"], "verbs": ["bind"]}
        ]),
    );
    let grant = |labels: serde_json::Value| {
        manifest(&name, &ns, Some(&op.label), json!({"clusterRole": "edit", "namespaceMetadata": {"labels": labels}}))
    };
    let restricted = json!({"pod-security.kubernetes.io/enforce": "restricted"});
    wait_for(SHORT, "RBAC to see the lead's role", || async { apply_as(&lead, &grant(restricted.clone())) }).await;
    op.wait_ready(&name).await;

    assert_refused(
        apply_as(&lead, &grant(json!({"pod-security.kubernetes.io/enforce": "privileged"}))),
        &format!("you cannot patch namespaces/{ns}"),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live = Api::<Namespace>::all(admin.clone()).get(&ns).await.unwrap();
    assert_eq!(live.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));

    // Someone who may patch the namespace may change it, and the operator applies it.
    admin_apply(&grant(json!({"pod-security.kubernetes.io/enforce": "baseline"})));
    wait_for(SHORT, "the namespace to be relabelled", || async {
        let live = Api::<Namespace>::all(admin.clone()).get(&ns).await.map_err(|e| e.to_string())?;
        let level = live.labels().get("pod-security.kubernetes.io/enforce").cloned();
        if level.as_deref() == Some("baseline") { Ok(()) } else { Err(format!("{level:?}")) }
    })
    .await;
    delete_and_wait(&op, &name).await;
}

/// Attack 3: a lead without delete on the namespace deletes a Retain TeamAccess
/// (which the removers policy allows), then patches deletionPolicy Delete while it
/// terminates. The spec is frozen once deletion begins, for everyone; and the
/// operator acts only on a Delete it applied itself.
#[tokio::test]
async fn deletion_policy_cannot_be_changed_while_the_teamaccess_terminates() {
    let (admin, _) = setup().await;
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("retained"), unique("retained-ns"));
    ready_team(&op, &name, &ns, DeletionPolicy::Retain).await;
    let lead = format!("{}@contoso.com", unique("lead"));
    grant_cluster_wide(
        &lead,
        &unique("remover"),
        json!([{"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"], "verbs": ["get", "patch", "delete"]}]),
    );
    grant_in(
        &lead,
        &ns,
        "remover",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["delete"]}]),
    );

    // The operator is away, so the object stays Terminating while we try.
    op.stop().await;
    wait_for(SHORT, "RBAC to see the lead's role", || async {
        kubectl_as(&lead, &["delete", "teamaccess", &name, "--wait=false"], None)
    })
    .await;
    let to_delete = json!({"spec": {"deletionPolicy": "Delete"}});
    // The lead meets the authors policy first (a spec change is a grant); the
    // admin, who may grant anything, meets the frozen spec.
    assert_refused(patch_as(&lead, &name, &to_delete, None), "denied request");
    let (ok, _, err) =
        run_tool("kubectl", &["patch", "teamaccess", &name, "--type", "merge", "-p", &to_delete.to_string()], None);
    assert!(!ok && err.contains("its spec can no longer change"), "the admin too: {err}");

    op.resume().await;
    op.wait_deleted(&name, SHORT).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
    assert_team_data_kept(&admin, &ns).await;
    delete_namespace(&admin, &ns).await;
}

/// Attack 5: escalate on roles without bind. Kubernetes demands bind (or holding
/// every permission) to create the RoleBinding, so the policy demands it too.
#[tokio::test]
async fn escalate_without_bind_grants_nothing_and_with_bind_it_does() {
    let (admin, _) = setup().await;
    let ns = create_namespace(&admin, "escalate").await;
    let author = format!("{}@contoso.com", unique("escalator"));
    let name = unique("escalated");
    grant_cluster_wide(
        &author,
        &unique("escalator"),
        json!([
            {"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"], "verbs": ["get", "create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [ns], "verbs": ["create"]}
        ]),
    );
    grant_in(
        &author,
        &ns,
        "escalator",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create", "escalate"]},
               {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create", "delete"]}]),
    );
    let grant =
        manifest(&name, &ns, None, json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}));
    // What Kubernetes says of the same grant made by hand: the Role, yes; its binding, no.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": format!("teamaccess-{name}"), "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]});
    wait_for(SHORT, "RBAC to see the author's role", || async {
        kubectl_as(&author, &["create", "--dry-run=server", "-f", "-"], Some(&role.to_string()))
    })
    .await;
    admin_apply(&role.to_string());
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "by-hand", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("teamaccess-{name}")},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": APPDEV}]});
    let (ok, _, err) =
        run_tool("kubectl", &["create", "--dry-run=server", "--as", &author, "-f", "-"], Some(&binding.to_string()));
    assert!(!ok && err.contains("forbidden"), "Kubernetes refuses the binding without bind: {err}");
    assert_refused(apply_as(&author, &grant), &format!("you cannot get secrets in namespace {ns}"));

    // With bind on that Role as well, the author could make both by hand: admitted.
    grant_in(
        &author,
        &ns,
        "binder",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "resourceNames": [format!("teamaccess-{name}")], "verbs": ["bind"]}]),
    );
    wait_for(SHORT, "the grant to be admitted", || async { apply_as(&author, &grant) }).await;
    delete_teamaccess(&admin, &name).await;
    delete_namespace(&admin, &ns).await;
}

/// Attack 6: whoever may patch teamaccesses/status replaces status.group, which
/// the operator takes as the pin. Only the operator writes status.
#[tokio::test]
async fn a_status_writer_cannot_rebind_another_group() {
    let (admin, _) = setup().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("pinned"), unique("pinned-ns"));
    ready_team(&op, &name, &ns, DeletionPolicy::Delete).await;
    let writer = format!("{}@contoso.com", unique("status-writer"));
    grant_cluster_wide(
        &writer,
        &unique("status-writer"),
        json!([{"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses", "teamaccesses/status"], "verbs": ["get", "patch", "update"]}]),
    );
    let forged = json!({"status": {"group": {"objectId": OPSSRE, "selector": "displayName=appdev"}}});
    wait_for(SHORT, "RBAC to see the writer's role", || async {
        match patch_as(&writer, &name, &forged, Some("status")) {
            Err(e) if e.contains("denied request") => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_refused(patch_as(&writer, &name, &forged, Some("status")), "written by the operator alone");
    let live = op.api().get(&name).await.unwrap();
    assert_eq!(live.status.and_then(|s| s.group).map(|g| g.object_id).as_deref(), Some(APPDEV));
    // The binding still names appdev, and opssre gets nothing.
    assert!(!allowed(&admin, AKSSRE, &[OPSSRE], "create", "", "pods", &ns).await);
    assert!(allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await);
    delete_and_wait(&op, &name).await;
}

/// Attack 7: a relabel takes a TeamAccess out of its operator's --selector, and
/// deleting it then revokes nothing. A label change needs the rights of deleting.
#[tokio::test]
async fn a_relabel_cannot_move_a_teamaccess_out_of_its_shard() {
    let (admin, author) = setup().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("sharded"), unique("sharded-ns"));
    ready_team(&op, &name, &ns, DeletionPolicy::Delete).await;
    let moved = json!({"metadata": {"labels": {TEST_LABEL: "another-shard"}}});
    assert_refused(
        patch_as(&author, &name, &moved, None),
        &format!("you cannot delete rolebindings.rbac.authorization.k8s.io in namespace {ns}"),
    );
    // With delete on the RoleBinding but not on the namespace, Delete still refuses it.
    grant_in(
        &author,
        &ns,
        "remover",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["delete"]}]),
    );
    wait_for(SHORT, "RBAC to see the author's role", || async {
        match patch_as(&author, &name, &moved, None) {
            Err(e) if e.contains(&format!("you cannot delete namespaces/{ns}")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let live = op.api().get(&name).await.unwrap();
    assert_eq!(live.labels().get(TEST_LABEL), Some(&op.label), "still in its shard");
    // Other metadata changes need nothing more.
    patch_as(&author, &name, &json!({"metadata": {"annotations": {"note": "fine"}}}), None)
        .expect("annotations are free");
    delete_and_wait(&op, &name).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
}

/// Attack 8, the part admission cannot refuse: a delete with
/// propagationPolicy Orphan adds the orphan finalizer in the delete itself, and
/// the garbage collector strips the owner references from the RoleBinding and
/// Role. The operator removes them anyway: they are ours because we made them.
#[tokio::test]
async fn a_grant_deleted_with_orphan_propagation_is_still_revoked() {
    let (admin, _) = setup().await;
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("orphaned"), unique("orphaned-ns"));
    let ready = ready_team(&op, &name, &ns, DeletionPolicy::Retain).await;
    let recorded = ready.status.clone().unwrap().children;
    assert_eq!(recorded.len(), 2, "the Role and RoleBinding are recorded: {recorded:?}");

    op.stop().await;
    let orphan = DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..Default::default() };
    op.api().delete(&name, &orphan).await.unwrap();
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &ns);
    let child = ready.child_name();
    wait_for(SHORT, "the garbage collector to orphan the RoleBinding", || async {
        let rb = bindings.get(&child).await.map_err(|e| e.to_string())?;
        if rb.owner_references().is_empty() { Ok(()) } else { Err(format!("{:?}", rb.owner_references())) }
    })
    .await;

    op.resume().await;
    op.wait_deleted(&name, SHORT).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
    assert!(bindings.get_opt(&child).await.unwrap().is_none(), "the orphaned RoleBinding is gone");
    assert!(Api::<Role>::namespaced(admin.clone(), &ns).get_opt(&child).await.unwrap().is_none());
    assert_team_data_kept(&admin, &ns).await;
    delete_namespace(&admin, &ns).await;
}

/// Attack 9: a team bound to admin strips the owner reference (and our label)
/// from its own RoleBinding, so the cleanup, which deleted only what carried its
/// owner reference, left it. The operator recorded the binding's uid when it made
/// it, and its Event says what it removed.
#[tokio::test]
async fn a_team_that_strips_its_bindings_owner_reference_still_loses_its_access() {
    let admin = admin_client().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("admins"), unique("admins-ns"));
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.verbs = None;
    ta.spec.cluster_role = Some("admin".into());
    // Retain: the namespace stays, so the access is judged on it, not on its absence.
    ta.spec.deletion_policy = DeletionPolicy::Retain;
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    let binding = format!("teamaccess-{name}-admin");
    wait_allowed(&admin, AKSDEV, &[APPDEV], "update", "rbac.authorization.k8s.io", "rolebindings", &ns, true).await;

    let member = Api::<RoleBinding>::namespaced(impersonating(AKSDEV, &[APPDEV]).await, &ns);
    let strip = json!({"metadata": {"ownerReferences": null, "labels": null, "annotations": null}});
    member
        .patch(&binding, &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .expect("the team may edit its binding");
    let stripped = Api::<RoleBinding>::namespaced(admin.clone(), &ns).get(&binding).await.unwrap();
    assert!(stripped.owner_references().is_empty() && stripped.labels().is_empty());

    delete_and_wait(&op, &name).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
    assert!(Api::<RoleBinding>::namespaced(admin.clone(), &ns).get_opt(&binding).await.unwrap().is_none());
    let events = cleanup_events(&admin, &name).await;
    assert!(
        events.iter().any(|e| e.contains(&format!("removed RoleBinding {binding}"))),
        "the CleanedUp Event says what was removed: {events:?}"
    );
    delete_namespace(&admin, &ns).await;
}

/// The notes of the CleanedUp Events about TeamAccess `name`.
async fn cleanup_events(admin: &Client, name: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    wait_for(SHORT, "the CleanedUp Event", || async {
        let events = Api::<Event>::all(admin.clone())
            .list(&kube::api::ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .map_err(|e| e.to_string())?;
        let notes: Vec<String> = events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("CleanedUp"))
            .filter_map(|e| e.note)
            .collect();
        if notes.is_empty() { Err("none yet".to_string()) } else { Ok(notes) }
    })
    .await
}

/// Attack 10: the seed's verbs ["*"] granted writing Endpoints (CVE-2021-25740,
/// which built-in edit and admin leave out since 1.22). Read, yes; write, no.
#[tokio::test]
async fn every_verb_of_the_default_set_does_not_write_endpoints() {
    let admin = admin_client().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let (name, ns) = (unique("endpoints"), unique("endpoints-ns"));
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns, true).await;
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!allowed(&admin, AKSDEV, &[APPDEV], verb, "", "endpoints", &ns).await, "{verb} endpoints");
        assert!(!allowed(&admin, AKSDEV, &[APPDEV], verb, "discovery.k8s.io", "endpointslices", &ns).await);
    }
    for verb in ["get", "list", "watch"] {
        assert!(allowed(&admin, AKSDEV, &[APPDEV], verb, "", "endpoints", &ns).await, "{verb} endpoints");
    }
    assert!(allowed(&admin, AKSDEV, &[APPDEV], "create", "", "services", &ns).await);
    delete_and_wait(&op, &name).await;
}

/// Attack 11: the guardrail refused `impersonate` by spelling, but granted
/// `verbs: ["*"]` on serviceaccounts, which holds impersonate. By meaning now.
#[tokio::test]
async fn every_verb_on_serviceaccounts_is_refused_as_impersonate() {
    let admin = admin_client().await;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = create_namespace(&admin, "impersonate").await;
    let cases =
        [(vec![""], vec!["serviceaccounts"]), (vec![""], vec!["*"]), (vec!["authentication.k8s.io"], vec!["*"])];
    let mut names = Vec::new();
    for (groups, resources) in cases {
        let name = unique("impersonators");
        let mut ta = op.team(&name, by_name("appdev"), &ns);
        ta.spec.verbs = None;
        ta.spec.rules = Some(vec![AccessRule {
            api_groups: groups.iter().map(|g| g.to_string()).collect(),
            resources: resources.iter().map(|r| r.to_string()).collect(),
            verbs: vec!["*".into()],
            resource_names: vec![],
        }]);
        op.apply(&ta).await;
        let refused = op.wait_condition(&name, "Stalled", "True", Some("RuleNotAllowed"), SHORT).await;
        let message = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
        assert!(message.contains("which includes impersonate"), "{message}");
        names.push(name);
    }
    assert!(!allowed(&admin, AKSDEV, &[APPDEV], "impersonate", "", "serviceaccounts", &ns).await);
    assert!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns).list(&Default::default()).await.unwrap().items.is_empty()
    );
    for name in &names {
        delete_and_wait(&op, name).await;
    }
    delete_namespace(&admin, &ns).await;
}

async fn delete_teamaccess(admin: &Client, name: &str) {
    let _ = Api::<TeamAccess>::all(admin.clone()).delete(name, &Default::default()).await;
}

/// Attack 12: the brake on namespace deletions lived in process memory, so a
/// restart let another window's worth through. The window is in a Lease now:
/// deletions before a restart count after it, and every operator naming the
/// Lease draws on that one allowance.
#[tokio::test]
async fn a_restart_does_not_reset_the_namespace_deletion_brake() {
    const MAX: u32 = 2;
    let admin = admin_client().await;
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    op.stop().await;
    op.namespace_deletions = (MAX, Duration::from_secs(600));
    op.resume().await;
    let prefix = unique("braked");
    let names: Vec<String> = (0..4).map(|i| format!("{prefix}-{i}")).collect();
    for name in &names {
        ready_team(&op, name, name, DeletionPolicy::Delete).await;
    }
    for name in &names[..2] {
        delete_and_wait(&op, name).await;
        wait_namespace_gone(&admin, name, Duration::from_secs(60)).await;
    }

    // A restart (a failover is the same: a process with an empty memory).
    op.stop().await;
    op.resume().await;
    for name in &names[2..] {
        op.delete(name).await;
        op.wait_condition(name, "Ready", "False", Some("NamespaceDeletionDelayed"), SHORT).await;
        wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", name, false).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in &names[2..] {
        assert_team_data_kept(&admin, name).await;
    }
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), "default");
    let lease = leases.get(&format!("brake-{}", op.label)).await.expect("the brake's Lease");
    let recent = lease.annotations().get("teamaccess.dev/recent-namespace-deletions").cloned().unwrap_or_default();
    assert!(recent.contains(&names[0]) && recent.contains(&names[1]) && !recent.contains(&names[2]), "{recent}");

    // Lifted, the held-back deletions go.
    op.stop().await;
    op.namespace_deletions = (0, Duration::from_secs(600));
    op.resume().await;
    for name in &names[2..] {
        op.wait_deleted(name, SHORT).await;
        wait_namespace_gone(&admin, name, Duration::from_secs(60)).await;
    }
    let _ = leases.delete(&format!("brake-{}", op.label), &Default::default()).await;
}
