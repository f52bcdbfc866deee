//! Attack 4 of the red team: a grant written while the admission policies were
//! absent (between `helm uninstall`, which keeps the CRD, and a reinstall) must
//! not be honoured once they are back. The operator names the author of every
//! spec by the authorship policy's stamp, and checks that author's rights with
//! SubjectAccessReviews; a spec it cannot attribute grants nothing new.
//!
//! The test deletes the shipped policies for a while, which every writer of a
//! TeamAccess in the cluster would notice, so it runs on a control plane of its own.

mod support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{authors::*, operator::*, own_cluster::OwnCluster, *};
use teamaccess_operator::reconcile::{admission, authorship::stamp_key};

const SHORT: Duration = Duration::from_secs(30);
const PREFIX: &str = "teamaccess-operator";

/// Removes the admission policies on TeamAccess objects and their bindings, as
/// `helm uninstall` would: the shipped ones, and any a chart release of another
/// test left behind (they would refuse the attacker's writes in the gap).
async fn delete_teamaccess_policies(admin: &Client) {
    delete_policies::<ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding>(admin).await;
    delete_policies::<MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding>(admin).await;
}

/// Deletes every policy of kind `P` named like one of the chart's, and the
/// binding `B` of the same name.
async fn delete_policies<P, B>(admin: &Client)
where
    P: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    B: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    // The chart's policies, by the suffix of their names.
    let ours =
        |name: &str| admission::POLICIES.iter().chain(["authorship"].iter()).any(|s| name.ends_with(&format!("-{s}")));
    let policies = Api::<P>::all(admin.clone());
    let names: Vec<String> =
        policies.list(&Default::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    for name in names.iter().filter(|n| ours(n)) {
        let _ = Api::<B>::all(admin.clone()).delete(name, &Default::default()).await;
        let _ = policies.delete(name, &Default::default()).await;
    }
}

/// A stamp as a forger writes it while the policy is absent: the admin as author,
/// under the epoch of the policy that was there before (readable on any TeamAccess).
fn forged_stamp(epoch: &str) -> serde_json::Value {
    json!({
        stamp_key(PREFIX, "user"): "admin",
        stamp_key(PREFIX, "uid"): "",
        stamp_key(PREFIX, "groups"): "system:masters\nsystem:authenticated",
        stamp_key(PREFIX, "epoch"): epoch,
    })
}

/// Waits until the operator holds `name` back for want of an author it can name,
/// saying `why` and how to fix it.
async fn wait_unverified(op: &TestOperator, name: &str, why: &str) {
    let api = op.api();
    // Held back for a missing policy, the object is looked at again every 20 s at most.
    wait_for(Duration::from_secs(60), &format!("{name} to be held back: {why}"), || async {
        let ta = api.get(name).await.map_err(|e| e.to_string())?;
        let ready = ta.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
        match ready {
            Some(c)
                if c.reason == "AuthorUnverified"
                    && c.observed_generation == ta.metadata.generation
                    && c.message.contains(why)
                    && c.message.contains("kubectl annotate") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_grant_written_while_the_policies_were_absent_is_not_honoured_after_they_return() {
    let cluster = OwnCluster::start();
    // Every helper (clients, kubectl, the in-process operator) finds the cluster
    // through this variable. SAFETY: nothing else reads the environment yet: this
    // is the binary's only test, and cargo-nextest runs each test in a process of
    // its own (plain cargo test runs it alone in this binary too).
    unsafe { std::env::set_var(KUBECONFIG_ENV, cluster.kubeconfig()) };
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let attacker = author_who_may_only_write_teamaccesses();
    let op = TestOperator::start(SEED_DIRECTORY).await;

    // A team an admin set up: every verb of the default set on appdev's namespace.
    let (team, team_ns) = (unique("team"), unique("team"));
    op.apply(&op.team(&team, by_name("appdev"), &team_ns)).await;
    let ready = op.wait_ready(&team).await;
    write_team_data(&admin, &team_ns).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &team_ns, true).await;
    let old_epoch =
        ready.annotations().get(&stamp_key(PREFIX, "epoch")).cloned().expect("the admin's write is stamped");

    // A grant the admin gave until a set time.
    let (temporary, temporary_ns) = (unique("temporary"), unique("temporary"));
    let ends = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
    let mut until = op.team(&temporary, by_name("appdev"), &temporary_ns);
    until.spec.expires_at = Some(ends.to_string());
    op.apply(&until).await;
    op.wait_ready(&temporary).await;

    // The gap: the policies are gone, the CRD and the operator stay.
    delete_teamaccess_policies(&admin).await;
    // The attacker, who may only write TeamAccess objects, makes appdev admin of
    // the team's namespace, and of a new one, claiming the admin wrote both.
    let (grab, grab_ns) = (unique("grab"), unique("grab"));
    let mut written: serde_json::Value =
        serde_json::from_str(&manifest(&grab, &grab_ns, Some(&op.label), json!({"clusterRole": "admin"}))).unwrap();
    written["metadata"]["annotations"] = forged_stamp(&old_epoch);
    wait_for(SHORT, "the authors policy to be gone", || async { apply_as(&attacker, &written.to_string()) }).await;
    let widen = json!({"metadata": {"annotations": forged_stamp(&old_epoch)},
                       "spec": {"verbs": null, "clusterRole": "admin"}});
    patch_as(&attacker, &team, &widen, None).expect("nothing refuses a write while the policies are absent");

    // The attacker also makes the temporary grant last for ever: more access,
    // although everything is in place, so it ends when the admin said.
    let for_ever = json!({"spec": {"expiresAt": null}});
    patch_as(&attacker, &temporary, &for_ever, None).expect("nothing refuses a write while the policies are absent");
    tokio::time::sleep(std::time::Duration::try_from(jiff::Timestamp::now().duration_until(ends)).unwrap_or_default())
        .await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &temporary_ns, false).await;
    let expired = op.wait_condition(&temporary, "Ready", "False", Some("Expired"), SHORT).await;
    let ready = expired.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("The later spec.expiresAt is not granted"), "{}", ready.message);
    assert!(ready.message.contains("authorship policy"), "says why: {}", ready.message);

    // Nothing new is granted while the policies are absent, and the team keeps
    // what it was given.
    wait_unverified(&op, &grab, "not installed").await;
    // Created with no policy to add the cleanup finalizer, it has it from the
    // operator (and is cleaned up below, at the end).
    let finalizers = op.api().get(&grab).await.unwrap().metadata.finalizers.unwrap_or_default();
    assert_eq!(finalizers, [teamaccess_operator::api::FINALIZER], "the operator added it");
    wait_unverified(&op, &team, "not installed").await;
    let may_bind = |ns: String| {
        let admin = admin.clone();
        async move { allowed(&admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &ns).await }
    };
    assert!(!may_bind(team_ns.clone()).await, "appdev did not become admin of the team's namespace");
    assert!(!may_bind(grab_ns.clone()).await, "nor of a new one");
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone());
    assert!(namespaces.get_opt(&grab_ns).await.unwrap().is_none(), "and no namespace was made for it");
    assert!(allowed(&admin, AKSDEV, &[APPDEV], "create", "", "pods", &team_ns).await, "the team keeps its access");

    // The policies are back (a new epoch): the forged stamps still name no author.
    ensure_admission_policy(&admin).await;
    wait_unverified(&op, &team, "earlier authorship policy").await;
    wait_unverified(&op, &grab, "earlier authorship policy").await;
    assert!(!may_bind(team_ns.clone()).await, "still not admin after the policies returned");
    assert!(!may_bind(grab_ns.clone()).await);
    assert_team_data_kept(&admin, &team_ns).await;

    // Re-stamping does not launder the grant: the stamp then names the attacker,
    // whose rights the operator checks.
    kubectl_as(
        &attacker,
        &["annotate", "teamaccess", &team, "--overwrite", &format!("{}=me", stamp_key(PREFIX, "user"))],
        None,
    )
    .expect("a TeamAccess writer may annotate");
    let held = op.wait_condition(&team, "Ready", "False", Some("AuthorNotAllowed"), SHORT).await;
    let stamp = held.annotations().get(&stamp_key(PREFIX, "user")).cloned();
    assert_eq!(stamp.as_deref(), Some(attacker.as_str()), "the policy stamped the real writer");
    assert!(!may_bind(team_ns.clone()).await, "the attacker may not grant admin, so nothing changed");

    // The fix the condition names: someone who may grant it stamps it as theirs.
    let (ok, _, err) = run_tool(
        "kubectl",
        &["annotate", "teamaccess", &grab, "--overwrite", &format!("{}=me", stamp_key(PREFIX, "user"))],
        None,
    );
    assert!(ok, "{err}");
    op.wait_ready(&grab).await;
    wait_allowed(&admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &grab_ns, true)
        .await;

    op.delete(&grab).await;
    op.delete(&team).await;
    op.delete(&temporary).await;
}
