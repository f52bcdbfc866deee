//! Argo CD's view of TeamAccess objects, decided by Argo CD's own code: the
//! health check shipped in deploy/examples/argocd-application.yaml is put into
//! an argocd-cm ConfigMap on the real control plane, and `argocd-health`
//! (tests/gitops, Argo CD's settings manager, gitops-engine's health assessment
//! and Argo CD's Lua VM at the version pinned there) judges live objects in each
//! state the operator produces. Argo CD waits on a sync wave and reports an
//! Application's health from exactly these verdicts.

mod support;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, api::PostParams};
use serde::Deserialize;
use serde_json::json;
use support::{
    arm::{Harness, apply_labelled, groups_with_a_member},
    *,
};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/argocd-application.yaml");

/// One verdict of Argo CD's health assessment.
#[derive(Debug, Deserialize)]
struct Health {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
}

/// A namespace holding the example's argocd-cm, as it is once merged into an
/// Argo CD install's own (which carries the label Argo CD reads it by).
async fn argocd_with_the_shipped_health_check(admin: &Client) -> String {
    let namespace = create_namespace(admin, "argocd").await;
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut cm = yaml_documents(&text)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "argocd-cm")
        .expect("the example holds an argocd-cm");
    assert!(
        cm["data"]["resource.customizations.health.teamaccess.dev_TeamAccess"].is_string(),
        "the example's health check for TeamAccess: {cm}"
    );
    cm["metadata"]["namespace"] = json!(namespace);
    cm["metadata"]["labels"] = json!({"app.kubernetes.io/part-of": "argocd"});
    let cm: ConfigMap = serde_json::from_value(cm).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), &namespace).create(&PostParams::default(), &cm).await.unwrap();
    namespace
}

/// What Argo CD says of each TeamAccess in `names`, as the objects are now.
fn argo_health(argocd: &str, names: &[&str]) -> BTreeMap<String, Health> {
    let out = std::process::Command::new(gitops_tool("argocd-health"))
        .args(["-namespace", argocd])
        .args(names)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .expect("run argocd-health");
    assert!(out.status.success(), "argocd-health failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Asserts Argo CD's status of `name` and that its message contains `says`.
fn assert_health(judged: &BTreeMap<String, Health>, name: &str, status: &str, says: &str) {
    let health = judged.get(name).unwrap_or_else(|| panic!("no verdict for {name}: {judged:?}"));
    assert_eq!(health.status, status, "{name}: {health:?}");
    assert!(health.message.contains(says), "{name}: {health:?} should say {says:?}");
}

#[tokio::test]
async fn argo_cd_is_healthy_only_for_a_grant_ready_at_its_generation_and_degraded_or_suspended_as_the_operator_says() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let h = Harness::start_on(emulator, &[]).await;
    let admin = admin_client().await;
    let argocd = argocd_with_the_shipped_health_check(&admin).await;
    let group = &groups[0];
    let [ready, refused, stuck, ended, fresh] = ["ready", "refused", "stuck", "ended", "fresh"].map(|n| h.name(n));
    let [ready_ns, refused_ns, stuck_ns, ended_ns, fresh_ns] =
        ["argo-ready", "argo-refused", "argo-stuck", "argo-ended", "argo-fresh"].map(unique);

    // Ready for its generation; refused by the guardrails (Stalled); its
    // namespace stuck terminating (Reconciling); ended (spec.expiresAt).
    apply_labelled(&h.tas, &h.label, &ready, Harness::spec(group, &ready_ns)).await;
    let cluster_admin = json!({"group": {"objectId": group}, "namespace": refused_ns, "clusterRole": "cluster-admin"});
    apply_labelled(&h.tas, &h.label, &refused, cluster_admin).await;
    apply_labelled(&h.tas, &h.label, &stuck, Harness::spec(group, &stuck_ns)).await;
    let mut past = Harness::spec(group, &ended_ns);
    past["expiresAt"] = json!((Timestamp::now() - SignedDuration::from_secs(60)).to_string());
    apply_labelled(&h.tas, &h.label, &ended, past).await;
    h.wait_condition(&ready, "Ready", "True", "Reconciled").await;
    h.wait_condition(&refused, "Stalled", "True", "ClusterRoleNotAllowed").await;
    h.wait_condition(&stuck, "Ready", "True", "Reconciled").await;
    hold_namespace(&admin, &stuck_ns).await;
    delete_namespace(&admin, &stuck_ns).await;
    h.wait_condition(&stuck, "Reconciling", "True", "NamespaceTerminating").await;
    h.wait_condition(&ended, "Ready", "False", "Expired").await;

    let judged = argo_health(&argocd, &[&ready, &refused, &stuck, &ended]);
    assert_health(&judged, &ready, "Healthy", "Reconciled: group");
    assert_health(&judged, &refused, "Degraded", "ClusterRoleNotAllowed: ");
    assert_health(&judged, &stuck, "Progressing", "NamespaceTerminating: ");
    assert_health(&judged, &ended, "Suspended", "Expired: ");

    // With the operator down: a change it has not seen yet is not Healthy on
    // the old generation's Ready, and an object it never saw waits for it.
    let tas = h.tas.clone();
    let (emulator, label) = h.stop().await;
    let mut changed = Harness::spec(group, &ready_ns);
    changed["verbs"] = json!(["get", "list"]);
    apply_labelled(&tas, &label, &ready, changed).await;
    apply_labelled(&tas, &label, &fresh, Harness::spec(group, &fresh_ns)).await;
    let judged = argo_health(&argocd, &[&ready, &fresh]);
    assert_health(&judged, &ready, "Progressing", "Reconciled: ");
    assert_health(&judged, &fresh, "Progressing", "Waiting for the operator");

    // Back: both Healthy once Ready for their current generation.
    let h = Harness::start_labelled(emulator, label, &[]).await;
    h.wait_condition(&ready, "Ready", "True", "Reconciled").await;
    h.wait_condition(&fresh, "Ready", "True", "Reconciled").await;
    let judged = argo_health(&argocd, &[&ready, &fresh]);
    assert_health(&judged, &ready, "Healthy", "verbs [get, list]");
    assert_health(&judged, &fresh, "Healthy", "Reconciled: ");

    release_namespace(&admin, &stuck_ns).await;
    h.cleanup(&[ready, refused, stuck, ended, fresh]).await;
    h.op.stop().await;
    for ns in [ready_ns, refused_ns, stuck_ns, ended_ns, fresh_ns, argocd] {
        delete_namespace(&admin, &ns).await;
    }
}

#[tokio::test]
async fn argo_cd_shows_a_teamaccess_being_deleted_or_held_by_the_brake_as_pending_deletion() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    // One namespace deletion per 30 s, on a Lease of this test's own.
    let brake = ["--max-namespace-deletions", "1", "--namespace-deletion-window", "30s", "--deletion-brake-lease"];
    let mut args: Vec<String> = brake.map(String::from).to_vec();
    args.push(unique("argo-brake"));
    let h = Harness::start_on(emulator, &args).await;
    let admin = admin_client().await;
    let argocd = argocd_with_the_shipped_health_check(&admin).await;
    let [first, braked, pending] = ["first", "braked", "pending"].map(|n| h.name(n));
    let [first_ns, braked_ns, pending_ns] = ["argo-del-first", "argo-del-braked", "argo-del-pending"].map(unique);
    apply_labelled(&h.tas, &h.label, &first, Harness::spec(&groups[0], &first_ns)).await;
    apply_labelled(&h.tas, &h.label, &braked, Harness::spec(&groups[0], &braked_ns)).await;
    let mut retain = Harness::spec(&groups[0], &pending_ns);
    retain["deletionPolicy"] = json!("Retain");
    apply_labelled(&h.tas, &h.label, &pending, retain).await;
    for name in [&first, &braked, &pending] {
        h.wait_condition(name, "Ready", "True", "Reconciled").await;
    }

    // A prune of two: the first namespace goes, the brake holds the second.
    h.delete(&first).await;
    h.tas.delete(&braked, &Default::default()).await.unwrap();
    h.wait_condition(&braked, "Reconciling", "True", "NamespaceDeletionDelayed").await;
    // Deleted while the operator is down: still Ready, its cleanup not yet run.
    let tas = h.tas.clone();
    let (emulator, label) = h.stop().await;
    tas.delete(&pending, &Default::default()).await.unwrap();
    let live = tas.get(&pending).await.unwrap();
    assert!(live.metadata.deletion_timestamp.is_some() && is_ready(&live), "Ready and being deleted: {live:?}");

    // Argo CD judges an object being deleted before any health check runs.
    let judged = argo_health(&argocd, &[&braked, &pending]);
    assert_health(&judged, &braked, "Progressing", "Pending deletion");
    assert_health(&judged, &pending, "Progressing", "Pending deletion");

    let h = Harness::start_labelled(emulator, label, &args).await;
    h.cleanup(&[braked, pending]).await;
    h.op.stop().await;
    for ns in [pending_ns, argocd] {
        delete_namespace(&admin, &ns).await;
    }
}
