//! Time-bound access (spec.expiresAt) through `teamaccess-operator run`, on the
//! real control plane and the emulated Azure Resource Manager. Access is read
//! as the API server decides it: SubjectAccessReviews for a member of the group.

mod support;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{core::v1::Namespace, events::v1::Event, rbac::v1::RoleBinding};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use support::{
    arm::{Harness, groups_with_a_member},
    authors::{assert_refused, author_who_may_only_write_teamaccesses, patch_as, wait_policy_enforced},
    *,
};

const MEMBER: &str = "member@contoso.com";

/// An instant `secs` from now, as spec.expiresAt takes it.
fn in_secs(secs: i64) -> Timestamp {
    Timestamp::now() + SignedDuration::from_secs(secs)
}

/// The spec of `group` in `namespace`, ending at `at` (none: lasting).
fn spec(group: &str, namespace: &str, at: Option<Timestamp>) -> serde_json::Value {
    let mut spec = Harness::spec(group, namespace);
    if let Some(at) = at {
        spec["expiresAt"] = json!(at.to_string());
    }
    spec
}

/// Whether the group's member may create pods in `namespace`, as the API server decides.
async fn member_allowed(admin: &Client, group: &str, namespace: &str) -> bool {
    allowed(admin, MEMBER, &[group], "create", "", "pods", namespace).await
}

/// Asks every 100 ms until the member is denied, and returns when that was;
/// panics if it was denied before `not_before`, or still allowed 10 s past it.
async fn first_denial(admin: &Client, group: &str, namespace: &str, not_before: Timestamp) -> Timestamp {
    let give_up = not_before + SignedDuration::from_secs(10);
    loop {
        let asked = Timestamp::now();
        if !member_allowed(admin, group, namespace).await {
            assert!(asked >= not_before, "denied at {asked}, before the grant's end at {not_before}");
            return asked;
        }
        assert!(asked < give_up, "still allowed at {asked}, 10 s after the grant ended at {not_before}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Events the operator published about TeamAccess `name` with `reason`.
async fn events(admin: &Client, name: &str, reason: &str) -> Vec<Event> {
    let selector = format!("regarding.name={name},reason={reason}");
    let listed = Api::<Event>::all(admin.clone()).list(&ListParams::default().fields(&selector)).await.unwrap();
    listed.items
}

/// How many times an Event happened, counting a series kube aggregated.
fn occurrences(events: &[Event]) -> i32 {
    events.iter().map(|e| e.series.as_ref().map_or(1, |s| s.count)).sum()
}

#[tokio::test]
async fn access_ends_within_2s_of_expires_at_and_the_namespace_its_data_and_a_live_grants_role_stay() {
    let (directory, groups) = groups_with_a_member(2);
    let emulator = graph::emulator_of(directory).await;
    let arm = Harness::arm_args(&emulator);
    let h = Harness::start_on(emulator, &arm).await;
    let admin = admin_client().await;
    let (ending, lasting, other) = (h.name("ending"), h.name("lasting"), h.name("other"));
    let namespaces = [unique("exp-a"), unique("exp-b"), unique("exp-c")];
    // Two grants of one group, one ending; a grant of another group ending with it.
    let end = in_secs(20);
    h.apply_spec(&ending, spec(&groups[0], &namespaces[0], Some(end))).await;
    h.apply_spec(&lasting, spec(&groups[0], &namespaces[1], None)).await;
    h.apply_spec(&other, spec(&groups[1], &namespaces[2], Some(end))).await;
    for name in [&ending, &lasting, &other] {
        h.wait_condition(name, "Ready", "True", "Reconciled").await;
    }
    h.wait_holders(&[&groups[0], &groups[1]]).await;
    write_team_data(&admin, &namespaces[0]).await;
    let ta = h.tas.get(&ending).await.unwrap();
    assert_eq!(ta.status.unwrap().expires_at, Some(end.to_string()), "status shows the end, in UTC");
    assert!(Timestamp::now() < end, "set up after the end: nothing left to time");

    // Allowed until the instant, denied within 2 s of it.
    let denied = first_denial(&admin, &groups[0], &namespaces[0], end).await;
    let late = end.duration_until(denied);
    println!("revoked {late:?} after expiresAt");
    assert!(late <= SignedDuration::from_secs(2), "revoked {late:?} after expiresAt");
    first_denial(&admin, &groups[1], &namespaces[2], end).await;

    let ta = h.wait_condition(&ending, "Ready", "False", "Expired").await;
    let ready = ta.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().clone();
    assert!(ready.message.contains("everything in it are kept"), "{}", ready.message);
    assert!(ready.message.contains("move spec.expiresAt later"), "says how to renew: {}", ready.message);
    h.wait_condition(&ending, "Stalled", "True", "Expired").await;
    // Expiry is not deletion: the namespace and its data stay; the binding goes.
    assert_team_data_kept(&admin, &namespaces[0]).await;
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &namespaces[0]);
    assert!(bindings.get_opt(&format!("teamaccess-{ending}")).await.unwrap().is_none());
    assert!(member_allowed(&admin, &groups[0], &namespaces[1]).await, "the group's lasting grant stays");
    // The Cluster User Role stays for the group with a live grant, and goes for the other.
    h.wait_holders(&[&groups[0]]).await;
    h.op.wait_metric("teamaccess_grants_expired", 2.0).await;
    let expired = events(&admin, &ending, "Expired").await;
    assert_eq!(occurrences(&expired), 1, "one Event says it expired: {expired:?}");

    h.cleanup(&[ending, lasting, other]).await;
    h.op.stop().await;
    for ns in namespaces {
        delete_namespace(&admin, &ns).await;
    }
}

#[tokio::test]
async fn a_grant_warns_once_as_it_enters_its_last_window_and_a_renewal_keeps_access_without_a_gap() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let h = Harness::start_on(emulator, &["--expiry-warning".into(), "8s".into()]).await;
    let admin = admin_client().await;
    let name = h.name("renewed");
    let namespace = unique("exp-renew");
    // The renewal lands about 4 s before the end: margin for a loaded 2-core
    // machine, where nextest runs other tests beside this one.
    let end = in_secs(20);
    h.apply_spec(&name, spec(&groups[0], &namespace, Some(end))).await;
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    let conditions = ta.status.unwrap().conditions;
    assert!(!conditions.iter().any(|c| c.type_ == "Expiring"), "not yet in its window: {conditions:?}");

    // Eight seconds before the end: the Expiring condition and one Warning.
    h.wait_condition(&name, "Expiring", "True", "ExpiresSoon").await;
    assert!(Timestamp::now() >= end - SignedDuration::from_secs(8), "not before its window");
    h.op.wait_metric("teamaccess_grants_expiring", 1.0).await;
    // Resyncs every 2 s meanwhile: no second Warning.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warned = events(&admin, &name, "ExpiresSoon").await;
    assert_eq!(occurrences(&warned), 1, "one Warning on entering the window: {warned:?}");
    assert_eq!(warned[0].type_.as_deref(), Some("Warning"));
    assert!(warned[0].note.as_deref().is_some_and(|n| n.contains(&end.to_string())), "{warned:?}");

    // Renewed a moment before the end: access never lapses, through the old instant and past it.
    let renewed = in_secs(3600);
    let margin = Timestamp::now().duration_until(end);
    println!("renewed {margin:?} before the old end");
    assert!(margin >= SignedDuration::from_secs(1), "the renewal came {margin:?} before the end: too late to test");
    h.apply_spec(&name, spec(&groups[0], &namespace, Some(renewed))).await;
    let watch_until = end + SignedDuration::from_secs(4);
    let mut checks = 0;
    while Timestamp::now() < watch_until {
        assert!(member_allowed(&admin, &groups[0], &namespace).await, "denied during the renewal");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 20, "asked {checks} times");
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    let status = ta.status.unwrap();
    assert_eq!(status.expires_at, Some(renewed.to_string()));
    assert!(!status.conditions.iter().any(|c| c.type_ == "Expiring"), "out of the window again");

    h.cleanup(std::slice::from_ref(&name)).await;
    h.op.stop().await;
    delete_namespace(&admin, &namespace).await;
}

#[tokio::test]
async fn an_expired_grant_is_renewed_by_a_later_expires_at_and_a_past_one_on_create_binds_nothing() {
    let (directory, groups) = groups_with_a_member(2);
    let emulator = graph::emulator_of(directory).await;
    let arm = Harness::arm_args(&emulator);
    let h = Harness::start_on(emulator, &arm).await;
    let admin = admin_client().await;

    // Already past on create: nothing is made, neither in Kubernetes nor in Azure.
    let past = h.name("past");
    let past_ns = unique("exp-past");
    h.apply_spec(&past, spec(&groups[1], &past_ns, Some(in_secs(-3600)))).await;
    let ta = h.wait_condition(&past, "Ready", "False", "Expired").await;
    assert!(ta.status.unwrap().role_binding.is_none());
    assert!(!member_allowed(&admin, &groups[1], &past_ns).await);
    assert!(Api::<Namespace>::all(admin.clone()).get_opt(&past_ns).await.unwrap().is_none(), "no namespace made");

    // A grant that expires, then is renewed.
    let name = h.name("lapsed");
    let namespace = unique("exp-lapsed");
    let end = in_secs(10);
    h.apply_spec(&name, spec(&groups[0], &namespace, Some(end))).await;
    h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    first_denial(&admin, &groups[0], &namespace, end).await;
    h.wait_condition(&name, "Ready", "False", "Expired").await;
    h.wait_holders(&[]).await;
    assert!(!h.holders().iter().any(|(g, _)| g == &groups[1]), "the past grant never held the role");

    h.apply_spec(&name, spec(&groups[0], &namespace, Some(in_secs(3600)))).await;
    h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    wait_allowed(&admin, MEMBER, &[&groups[0]], "create", "", "pods", &namespace, true).await;
    h.wait_holders(&[&groups[0]]).await;
    // Removing expiresAt renews it for good.
    h.apply_spec(&name, spec(&groups[0], &namespace, None)).await;
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    assert_eq!(ta.status.unwrap().expires_at, None);

    h.cleanup(&[name, past]).await;
    h.op.stop().await;
    delete_namespace(&admin, &namespace).await;
}

#[tokio::test]
async fn an_operator_started_after_the_instant_revokes_at_start_up() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let h = Harness::start_on(emulator, &[]).await;
    let admin = admin_client().await;
    let name = h.name("restart");
    let namespace = unique("exp-restart");
    let end = in_secs(10);
    h.apply_spec(&name, spec(&groups[0], &namespace, Some(end))).await;
    h.wait_condition(&name, "Ready", "True", "Reconciled").await;

    // Down over the instant: nothing revokes it meanwhile (RBAC knows no time).
    let (emulator, label) = h.stop().await;
    let wait = Timestamp::now().duration_until(end + SignedDuration::from_secs(1));
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    assert!(member_allowed(&admin, &groups[0], &namespace).await, "the binding outlives a stopped operator");

    let h = Harness::start_labelled(emulator, label, &[]).await;
    let started = Timestamp::now();
    let denied = first_denial(&admin, &groups[0], &namespace, end).await;
    let after_start = started.duration_until(denied);
    println!("denied {after_start:?} after the operator's /readyz answered");
    assert!(after_start <= SignedDuration::from_secs(5), "revoked {after_start:?} after start-up");
    h.wait_condition(&name, "Ready", "False", "Expired").await;
    assert!(Api::<Namespace>::all(admin.clone()).get_opt(&namespace).await.unwrap().is_some(), "the namespace stays");

    h.cleanup(std::slice::from_ref(&name)).await;
    h.op.stop().await;
    delete_namespace(&admin, &namespace).await;
}

#[tokio::test]
async fn extending_a_grant_takes_the_right_to_grant_it_and_a_bad_instant_is_refused_by_the_crd() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let h = Harness::start_on(emulator, &[]).await;
    let admin = admin_client().await;
    let name = h.name("extend");
    let namespace = unique("exp-extend");
    let end = in_secs(3600);
    h.apply_spec(&name, spec(&groups[0], &namespace, Some(end))).await;
    h.wait_condition(&name, "Ready", "True", "Reconciled").await;

    // Someone who may write TeamAccess objects but not grant this access.
    let author = author_who_may_only_write_teamaccesses();
    wait_policy_enforced(&author).await;
    let later = json!({"spec": {"expiresAt": in_secs(7200).to_string()}});
    let refusal = "a TeamAccess may grant only permissions you hold yourself";
    assert_refused(patch_as(&author, &name, &later, None), refusal);
    let for_good = json!({"spec": {"expiresAt": null}});
    assert_refused(patch_as(&author, &name, &for_good, None), refusal);
    let ta = h.tas.get(&name).await.unwrap();
    assert_eq!(ta.spec.expires_at, Some(end.to_string()), "the grant still ends when it did");
    // A bad instant is refused by the CRD with what to fix.
    let patch = Patch::Merge(json!({"spec": {"expiresAt": "2026-12-04 18:00"}}));
    let refused = h.tas.patch(&name, &PatchParams::default(), &patch).await.unwrap_err().to_string();
    assert!(refused.contains("spec.expiresAt must be an RFC 3339 date-time"), "{refused}");

    h.cleanup(std::slice::from_ref(&name)).await;
    h.op.stop().await;
    delete_namespace(&admin, &namespace).await;
}
