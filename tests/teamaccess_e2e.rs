//! The operator end to end on the real control plane: the seed's scenario, the
//! lifecycle of what it creates, drift repair, policy, and directory changes.
//! Access is checked as the API server decides it (impersonation and
//! SubjectAccessReview), never by reading our own objects back.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{PolicyRule, Role, RoleBinding},
};
use kube::{Api, api::DeleteParams};
use support::{operator::*, *};
use teamaccess_operator::{
    api::{AccessRule, DeletionPolicy, GroupSelector, TeamAccess, UserRef},
    reconcile::default_set::default_rules,
};

const SHORT: Duration = Duration::from_secs(30);

async fn namespace_exists(op: &TestOperator, name: &str) -> bool {
    Api::<Namespace>::all(op.client.clone()).get_opt(name).await.unwrap().is_some()
}

async fn role_binding(op: &TestOperator, namespace: &str, name: &str) -> Option<RoleBinding> {
    Api::<RoleBinding>::namespaced(op.client.clone(), namespace).get_opt(name).await.unwrap()
}

#[tokio::test]
async fn seed_scenario_each_team_gets_in_to_its_own_namespace_only() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let dev = unique("dev");
    let sre = unique("sre");
    let appdev = unique("appdev-dev");
    let opssre = unique("opssre-sre");
    op.apply(&op.team(&appdev, by_name("appdev"), &dev)).await;
    op.apply(&op.team(&opssre, by_name("opssre"), &sre)).await;
    let ready = op.wait_ready(&appdev).await;
    op.wait_ready(&opssre).await;
    assert_eq!(ready.status.unwrap().group.unwrap().object_id, APPDEV);
    wait_default_service_account(&op.client, &dev).await;
    wait_default_service_account(&op.client, &sre).await;

    // aksdev, member of appdev
    wait_pod_create_status(AKSDEV, &[APPDEV], &dev, 200).await;
    assert_eq!(create_pod_as(AKSDEV, &[APPDEV], &sre).await, 403, "aksdev must be Forbidden in sre");
    assert_eq!(list_all_pods_as(AKSDEV, &[APPDEV]).await, 403, "aksdev must not list pods cluster-wide");
    // akssre, member of opssre: the mirror image
    wait_pod_create_status(AKSSRE, &[OPSSRE], &sre, 200).await;
    assert_eq!(create_pod_as(AKSSRE, &[OPSSRE], &dev).await, 403, "akssre must be Forbidden in dev");
    assert_eq!(list_all_pods_as(AKSSRE, &[OPSSRE]).await, 403, "akssre must not list pods cluster-wide");
    // The seed's Role also grants batch jobs, and nothing in other API groups.
    assert!(allowed(&op.client, AKSDEV, &[APPDEV], "create", "batch", "cronjobs", &dev).await);
    assert!(!allowed(&op.client, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "roles", &dev).await);

    for name in [&appdev, &opssre] {
        op.delete(name).await;
        op.wait_deleted(name, SHORT).await;
    }
}

/// The shipped authorship policy adds the cleanup finalizer in the create itself
/// (a dry run shows what admission made of the object), next to any other.
#[tokio::test]
async fn the_api_server_adds_the_cleanup_finalizer_on_create_beside_any_other() {
    use kube::api::PostParams;
    let client = admin_client().await;
    ensure_crd(&client).await;
    let api = Api::<TeamAccess>::all(client.clone());
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let create = |finalizers: Option<Vec<String>>| {
        let mut ta = TeamAccess::new(
            &unique("finalized"),
            teamaccess_operator::api::TeamAccessSpec::new(by_name("appdev"), unique("fin")),
        );
        ta.metadata.finalizers = finalizers;
        let (api, dry_run) = (api.clone(), dry_run.clone());
        async move { api.create(&dry_run, &ta).await.unwrap().metadata.finalizers.unwrap_or_default() }
    };
    wait_for(SHORT, "the authorship policy to be loaded", || async {
        let made = create(None).await;
        if made == [teamaccess_operator::api::FINALIZER] { Ok(()) } else { Err(format!("{made:?}")) }
    })
    .await;
    let made = create(Some(vec!["example.com/keep".into()])).await;
    assert_eq!(made, ["example.com/keep", teamaccess_operator::api::FINALIZER]);
    let made = create(Some(vec![teamaccess_operator::api::FINALIZER.into()])).await;
    assert_eq!(made, [teamaccess_operator::api::FINALIZER], "never doubled");
}

#[tokio::test]
async fn deleting_a_teamaccess_removes_its_children_and_the_namespace_it_created() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("gone");
    let name = unique("appdev");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    wait_default_service_account(&op.client, &ns).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns, 200).await;
    let created: Namespace = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert_eq!(created.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "teamaccess-operator");

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    // The finalizer removed the binding before the object went: access ends
    // (RBAC sees the removal through its informer, a moment later).
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
    wait_namespace_gone(&op.client, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_preexisting_namespace_is_used_and_never_deleted() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = create_namespace(&op.client, "existing").await;
    let name = unique("appdev");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    wait_default_service_account(&op.client, &ns).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns, 200).await;
    let untouched: Namespace = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(!untouched.metadata.labels.unwrap_or_default().contains_key("app.kubernetes.io/managed-by"));

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns_after = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(ns_after.metadata.deletion_timestamp.is_none(), "a namespace that existed before is never deleted");
    delete_namespace(&op.client, &ns).await;
}

#[tokio::test]
async fn deletion_policy_retain_keeps_the_namespace_it_created() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("retained");
    let name = unique("appdev");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.deletion_policy = DeletionPolicy::Retain;
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "Retain keeps the namespace");
    // ...and unmarks it, so no later TeamAccess deletion can take it for ours.
    let labels = kept.metadata.labels.unwrap_or_default();
    let annotations = kept.metadata.annotations.unwrap_or_default();
    assert!(!labels.contains_key("app.kubernetes.io/managed-by"), "{labels:?}");
    assert!(!annotations.contains_key("teamaccess.dev/created-by"), "{annotations:?}");
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_none(), "the binding still goes");
    delete_namespace(&op.client, &ns).await;
}

#[tokio::test]
async fn two_teamaccess_share_a_namespace_until_the_last_one_goes() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("shared");
    let dev = unique("appdev");
    let sre = unique("opssre");
    op.apply(&op.team(&dev, by_name("appdev"), &ns)).await;
    op.apply(&op.team(&sre, by_name("opssre"), &ns)).await;
    op.wait_ready(&dev).await;
    op.wait_ready(&sre).await;
    wait_default_service_account(&op.client, &ns).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns, 200).await;
    wait_pod_create_status(AKSSRE, &[OPSSRE], &ns, 200).await;

    op.delete(&dev).await;
    op.wait_deleted(&dev, SHORT).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await; // appdev's access went with its TeamAccess
    assert_eq!(create_pod_as(AKSSRE, &[OPSSRE], &ns).await, 200, "opssre keeps its access");
    assert!(namespace_exists(&op, &ns).await);
    let still: Namespace = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none(), "the namespace stays while another TeamAccess uses it");

    op.delete(&sre).await;
    op.wait_deleted(&sre, SHORT).await;
    wait_namespace_gone(&op.client, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn cluster_role_edit_binds_the_builtin_cluster_role() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("edit");
    let name = unique("editors");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.verbs = None;
    ta.spec.cluster_role = Some("edit".into());
    op.apply(&ta).await;
    let ready = op.wait_ready(&name).await;
    let status = ready.status.unwrap();
    assert_eq!(status.role, None, "no Role of our own when a ClusterRole is bound");
    assert_eq!(status.role_binding, Some(format!("teamaccess-{name}-edit")), "named after the role it binds");
    let rb = role_binding(&op, &ns, &format!("teamaccess-{name}-edit")).await.unwrap();
    assert_eq!((rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()), ("ClusterRole", "edit"));
    let admin = &op.client;
    wait_for(SHORT, "edit to allow creating deployments", || async {
        if allowed(admin, AKSDEV, &[APPDEV], "create", "apps", "deployments", &ns).await {
            Ok(())
        } else {
            Err("denied".into())
        }
    })
    .await;
    assert!(!allowed(admin, AKSDEV, &[APPDEV], "create", "rbac.authorization.k8s.io", "rolebindings", &ns).await);
    assert!(!allowed(admin, AKSDEV, &[APPDEV], "create", "apps", "deployments", "default").await);

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

/// An operator whose --allowed-cluster-roles names a ClusterRole that does not
/// exist, as an admin's typo would.
async fn operator_allowing_a_missing_cluster_role() -> TestOperator {
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    op.stop().await;
    op.allowed_cluster_roles = Some(vec!["edit".into(), "no-such-cluster-role".into()]);
    op.resume().await;
    op
}

#[tokio::test]
async fn a_missing_cluster_role_is_reported() {
    let op = operator_allowing_a_missing_cluster_role().await;
    let name = unique("nocr");
    let mut ta = op.team(&name, by_name("appdev"), &unique("nocr"));
    ta.spec.verbs = None;
    ta.spec.cluster_role = Some("no-such-cluster-role".into());
    op.apply(&ta).await;
    let ta = op.wait_condition(&name, "Ready", "False", Some("ClusterRoleNotFound"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("no-such-cluster-role"), "{}", ready.message);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn rules_replace_the_default_resource_set() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("rules");
    let name = unique("readers");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.verbs = None;
    ta.spec.rules = Some(vec![AccessRule {
        api_groups: vec!["".into()],
        resources: vec!["pods".into()],
        verbs: vec!["get".into(), "list".into()],
        resource_names: vec![],
    }]);
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    let admin = &op.client;
    wait_for(SHORT, "the rules to allow listing pods", || async {
        if allowed(admin, AKSDEV, &[APPDEV], "list", "", "pods", &ns).await { Ok(()) } else { Err("denied".into()) }
    })
    .await;
    assert!(!allowed(admin, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await, "only the listed verbs");
    assert!(!allowed(admin, AKSDEV, &[APPDEV], "list", "apps", "deployments", &ns).await, "only the listed resources");
    assert!(!allowed(admin, AKSDEV, &[APPDEV], "list", "batch", "jobs", &ns).await, "the default set is replaced");

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn drift_is_repaired_a_deleted_binding_returns_and_an_added_verb_goes() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("drift");
    let name = unique("appdev");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.verbs = Some(vec!["get".into(), "list".into()]);
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    let child = format!("teamaccess-{name}");
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &ns);
    let roles = Api::<Role>::namespaced(op.client.clone(), &ns);

    let before = bindings.get(&child).await.unwrap();
    bindings.delete(&child, &DeleteParams::default()).await.unwrap();
    let restored = wait_for(Duration::from_secs(10), "the RoleBinding to be restored", || async {
        match bindings.get_opt(&child).await.map_err(|e| e.to_string())? {
            Some(rb) if rb.metadata.uid != before.metadata.uid => Ok(rb),
            _ => Err("not restored".into()),
        }
    })
    .await;
    assert_eq!(restored.subjects.unwrap()[0].name, APPDEV);

    // Someone widens the Role by hand.
    let mut role = roles.get(&child).await.unwrap();
    let mut rules = role.rules.take().unwrap();
    rules[0].verbs.push("delete".into());
    rules.push(PolicyRule {
        api_groups: Some(vec!["rbac.authorization.k8s.io".into()]),
        resources: Some(vec!["roles".into()]),
        verbs: vec!["create".into()],
        ..Default::default()
    });
    role.rules = Some(rules);
    role.metadata.managed_fields = None;
    roles.replace(&child, &Default::default(), &role).await.unwrap();
    wait_for(Duration::from_secs(10), "the hand-added verbs to be removed", || async {
        let rules = roles.get(&child).await.map_err(|e| e.to_string())?.rules.unwrap_or_default();
        if rules == default_rules(&["get".into(), "list".into()]) { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;
    // RBAC sees the repaired Role through an informer, a moment after the write.
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "delete", "", "pods", &ns, false).await;

    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn a_protected_namespace_is_refused_and_nothing_is_created() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let name = unique("grab-kube-system");
    op.apply(&op.team(&name, by_name("appdev"), "kube-system")).await;
    let ta = op.wait_condition(&name, "Stalled", "True", Some("ProtectedNamespace"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ProtectedNamespace"));
    assert!(ready.message.contains("kube-system") && ready.message.contains("protected"), "{}", ready.message);
    let child = format!("teamaccess-{name}");
    assert!(Api::<Role>::namespaced(op.client.clone(), "kube-system").get_opt(&child).await.unwrap().is_none());
    assert!(role_binding(&op, "kube-system", &child).await.is_none());
    assert!(!allowed(&op.client, AKSDEV, &[APPDEV], "get", "", "secrets", "kube-system").await);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    assert!(namespace_exists(&op, "kube-system").await);
}

#[tokio::test]
async fn a_missing_group_binds_nothing_until_the_directory_has_it() {
    let op = TestOperator::start("groups: []\nusers: []\n").await;
    let ns = unique("late");
    let name = unique("late");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    let ta = op.wait_condition(&name, "GroupResolved", "False", Some("GroupNotFound"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "GroupNotFound");
    assert!(ready.message.contains("displayName=appdev"), "{}", ready.message);
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_none(), "nothing bound");
    assert!(!namespace_exists(&op, &ns).await, "nothing created");

    // Adding the group to the directory file is enough: the TeamAccess is not touched.
    op.write_directory(SEED_DIRECTORY);
    op.wait_condition(&name, "Ready", "True", None, SHORT).await;
    wait_default_service_account(&op.client, &ns).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns, 200).await;
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn an_ambiguous_group_name_binds_nothing() {
    let directory = format!("{SEED_DIRECTORY}\n",)
        .replace("groups:\n", "groups:\n- objectId: 11111111-1111-4111-8111-111111111111\n  displayName: appdev\n");
    let op = TestOperator::start(&directory).await;
    let ns = unique("ambiguous");
    let name = unique("ambiguous");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    let ta = op.wait_condition(&name, "Ready", "False", Some("AmbiguousGroup"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(APPDEV) && ready.message.contains("11111111-1111-4111-8111-111111111111"));
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_none());
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn a_group_recreated_under_the_same_name_is_not_bound_silently() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("pinned");
    let name = unique("pinned");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;

    const NEW_APPDEV: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    op.write_directory(&SEED_DIRECTORY.replace(APPDEV, NEW_APPDEV));
    let ta = op.wait_condition(&name, "Ready", "False", Some("GroupObjectIdChanged"), SHORT).await;
    let status = ta.status.unwrap();
    assert_eq!(status.group.unwrap().object_id, APPDEV, "the pin holds");
    let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(NEW_APPDEV), "the message names the new group: {}", ready.message);
    let rb = role_binding(&op, &ns, &format!("teamaccess-{name}")).await.unwrap();
    assert_eq!(rb.subjects.unwrap()[0].name, APPDEV, "the binding still names the pinned group");
    assert!(!allowed(&op.client, AKSDEV, &[NEW_APPDEV], "create", "", "pods", &ns).await);

    // The deliberate act: name the new group by objectId.
    let mut ta = op.team(&name, GroupSelector { object_id: Some(NEW_APPDEV.into()), ..Default::default() }, &ns);
    ta.spec.group.display_name = None;
    op.apply(&ta).await;
    let ta = op.wait_ready(&name).await;
    assert_eq!(ta.status.unwrap().group.unwrap().object_id, NEW_APPDEV);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn extra_users_are_bound_and_unknown_users_are_reported() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("users");
    let name = unique("users");
    let mut ta = op.team(&name, by_name("opssre"), &ns);
    ta.spec.users = vec![
        UserRef { user_principal_name: Some(AKSDEV.into()), object_id: None },
        UserRef { user_principal_name: Some("ghost@contoso.com".into()), object_id: None },
    ];
    op.apply(&ta).await;
    let ta = op.wait_condition(&name, "Ready", "False", Some("UserNotFound"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("ghost@contoso.com"), "{}", ready.message);
    // aksdev is bound by UPN without its group; the unknown user is not bound.
    wait_default_service_account(&op.client, &ns).await;
    wait_pod_create_status(AKSDEV, &[], &ns, 200).await;
    assert_eq!(create_pod_as("ghost@contoso.com", &[], &ns).await, 403);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn a_restarted_operator_converges_and_cleans_up_what_was_deleted_while_it_was_down() {
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let ns_kept = unique("kept");
    let ns_gone = unique("gone");
    let kept = unique("kept");
    let gone = unique("gone");
    op.apply(&op.team(&kept, by_name("appdev"), &ns_kept)).await;
    op.apply(&op.team(&gone, by_name("opssre"), &ns_gone)).await;
    op.wait_ready(&kept).await;
    op.wait_ready(&gone).await;

    op.stop().await;
    // While it is down: one object is deleted (the finalizer holds it), and a
    // child of the other is removed by hand.
    op.delete(&gone).await;
    let child = format!("teamaccess-{kept}");
    Api::<RoleBinding>::namespaced(op.client.clone(), &ns_kept).delete(&child, &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(op.api().get_opt(&gone).await.unwrap().is_some(), "the finalizer keeps it until the operator is back");

    op.resume().await;
    op.wait_deleted(&gone, SHORT).await;
    wait_namespace_gone(&op.client, &ns_gone, Duration::from_secs(60)).await;
    wait_for(SHORT, "the RoleBinding to be restored", || async {
        role_binding(&op, &ns_kept, &child).await.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;
    op.wait_ready(&kept).await;
    wait_default_service_account(&op.client, &ns_kept).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &ns_kept, 200).await;
    op.delete(&kept).await;
    op.wait_deleted(&kept, SHORT).await;
}

#[tokio::test]
async fn namespace_metadata_is_put_on_a_namespace_we_create() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("labelled");
    let name = unique("labelled");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.namespace_metadata = Some(teamaccess_operator::api::NamespaceMetadata {
        labels: [("team".to_string(), "appdev".to_string())].into(),
        annotations: [("contact".to_string(), "appdev@contoso.com".to_string())].into(),
    });
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    let created = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert_eq!(created.metadata.labels.unwrap()["team"], "appdev");
    let annotations = created.metadata.annotations.unwrap();
    assert_eq!(annotations["contact"], "appdev@contoso.com");
    assert_eq!(annotations["teamaccess.dev/created-by"], name);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    wait_namespace_gone(&op.client, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_shutdown_before_the_cache_syncs_stops_at_once() {
    // kube-runtime holds the controller until its cache is ready; a shutdown that
    // came first used to leave the controller waiting for a sync that never came.
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let started = tokio::time::Instant::now();
    op.stop().await; // panics when the controller does not stop within 20 s
    assert!(started.elapsed() < Duration::from_secs(10), "stopped in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_role_and_binding_of_the_same_name_made_by_someone_else_are_never_taken_over() {
    use k8s_openapi::api::rbac::v1::{RoleRef, Subject};
    use kube::api::PostParams;
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = create_namespace(&op.client, "shared").await;
    let name = unique("pay");
    let child = format!("teamaccess-{name}");
    const OPS: &str = "0a0a0a0a-0000-4000-8000-0000000000ee";
    // Someone else's Role and RoleBinding, with the names the operator would use.
    let theirs_role = Role {
        metadata: kube::api::ObjectMeta { name: Some(child.clone()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        }]),
    };
    let theirs_binding = RoleBinding {
        metadata: kube::api::ObjectMeta { name: Some(child.clone()), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: child.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "Group".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: OPS.into(),
            ..Default::default()
        }]),
    };
    let pp = PostParams { field_manager: Some("ops-tool".into()), ..Default::default() };
    let roles = Api::<Role>::namespaced(op.client.clone(), &ns);
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &ns);
    roles.create(&pp, &theirs_role).await.unwrap();
    bindings.create(&pp, &theirs_binding).await.unwrap();
    wait_allowed(&op.client, "ops@contoso.com", &[OPS], "get", "", "secrets", &ns, true).await;

    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    let ta = op.wait_condition(&name, "Stalled", "True", Some("ChildConflict"), SHORT).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ChildConflict"));
    assert!(
        ready.message.contains(&format!("Role {ns}/{child}")) && ready.message.contains("ops-tool"),
        "{}",
        ready.message
    );

    // Theirs is untouched: same rules, same subjects, no owner reference of ours.
    let role = roles.get(&child).await.unwrap();
    assert_eq!(role.rules, theirs_role.rules);
    assert!(role.metadata.owner_references.is_none());
    let binding = bindings.get(&child).await.unwrap();
    assert_eq!(binding.subjects, theirs_binding.subjects);
    assert!(binding.metadata.owner_references.is_none());
    // As the API server decides it: ops keeps its access and the team got none.
    assert!(allowed(&op.client, "ops@contoso.com", &[OPS], "get", "", "secrets", &ns).await);
    assert!(!allowed(&op.client, AKSDEV, &[APPDEV], "get", "", "secrets", &ns).await);
    assert!(!allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await);

    // Deleting the TeamAccess deletes neither.
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    assert!(roles.get_opt(&child).await.unwrap().is_some(), "their Role survives");
    assert!(bindings.get_opt(&child).await.unwrap().is_some(), "their RoleBinding survives");
    assert!(allowed(&op.client, "ops@contoso.com", &[OPS], "get", "", "secrets", &ns).await);
    delete_namespace(&op.client, &ns).await;
}

#[tokio::test]
async fn a_namespace_protected_after_the_fact_loses_the_access_but_is_never_deleted() {
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("later");
    let name = unique("later");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, true).await;

    // The admin adds the namespace to --protected-namespaces and restarts the operator.
    op.stop().await;
    op.protected = vec![format!(" {ns} ")];
    op.resume().await;
    let ta = op.wait_condition(&name, "Stalled", "True", Some("ProtectedNamespace"), SHORT).await;
    let status = ta.status.unwrap();
    assert_eq!((status.role, status.role_binding), (None, None));
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_none(), "the binding is removed");
    let role = Api::<Role>::namespaced(op.client.clone(), &ns).get_opt(&format!("teamaccess-{name}")).await.unwrap();
    assert!(role.is_none(), "the Role is removed");
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
    // The namespace stays, also when the TeamAccess goes.
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = Api::<Namespace>::all(op.client.clone()).get(&ns).await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "a protected namespace is never deleted");
    delete_namespace(&op.client, &ns).await;
}

#[tokio::test]
async fn switching_verbs_to_a_cluster_role_never_leaves_the_team_without_access() {
    let op = operator_allowing_a_missing_cluster_role().await;
    let ns = unique("switch");
    let name = unique("switch");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, true).await;

    // A switch whose new role is missing fails, and the old binding stays in use.
    ta.spec.verbs = None;
    ta.spec.cluster_role = Some("no-such-cluster-role".into());
    op.apply(&ta).await;
    op.wait_condition(&name, "Ready", "False", Some("ClusterRoleNotFound"), SHORT).await;
    assert!(role_binding(&op, &ns, &format!("teamaccess-{name}")).await.is_some(), "the old binding stays");
    assert!(allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await, "and still grants access");

    // The switch to edit, watched by a SubjectAccessReview every 50 ms throughout.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (client, ns, watching) = (op.client.clone(), ns.clone(), watching.clone());
        tokio::spawn(async move {
            let (mut checks, mut denials) = (0u32, 0u32);
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                checks += 1;
                if !allowed(&client, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await {
                    denials += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (checks, denials)
        })
    };
    ta.spec.cluster_role = Some("edit".into());
    op.apply(&ta).await;
    let ready = op.wait_ready(&name).await;
    assert_eq!(ready.status.unwrap().role_binding, Some(format!("teamaccess-{name}-edit")));
    // Until the old binding and Role are gone, and a moment after.
    wait_for(SHORT, "the old binding and Role to go", || async {
        let old_binding = role_binding(&op, &ns, &format!("teamaccess-{name}")).await;
        let old_role = Api::<Role>::namespaced(op.client.clone(), &ns).get_opt(&format!("teamaccess-{name}")).await;
        match (old_binding, old_role) {
            (None, Ok(None)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let (checks, denials) = watcher.await.unwrap();
    println!("{checks} SubjectAccessReviews during the switch, {denials} denied");
    assert!(checks >= 10, "the switch was watched: {checks} checks");
    assert_eq!(denials, 0, "access lapsed during the switch");
    // edit grants what the Role did not: deployments in apps are still fine, and
    // the new binding is the one the API server uses.
    assert!(allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "configmaps", &ns).await);
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, false).await;
}

#[tokio::test]
async fn a_bulk_delete_is_braked_to_a_few_namespaces_per_window() {
    const N: usize = 20;
    const MAX: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(15);
    let mut op = TestOperator::start(SEED_DIRECTORY).await;
    op.stop().await;
    op.namespace_deletions = (MAX, WINDOW);
    op.resume().await;
    let prefix = unique("brake");
    let names: Vec<String> = (0..N).map(|i| format!("{prefix}-{i}")).collect();
    let teams: Vec<_> = names.iter().map(|n| op.team(n, by_name("appdev"), n)).collect();
    futures::future::join_all(teams.iter().map(|ta| op.apply(ta))).await;
    for name in &names {
        op.wait_condition(name, "Ready", "True", None, Duration::from_secs(60)).await;
    }
    let going = || async {
        let mut going = 0;
        for ns in &names {
            if namespace_going(&op.client, ns).await {
                going += 1;
            }
        }
        going
    };

    // A bulk delete, as a GitOps prune would do it.
    let deleted = tokio::time::Instant::now();
    futures::future::join_all(names.iter().map(|n| op.delete(n))).await;
    // The window opens at the first namespace deletion, which comes after the
    // deletes above, so the first window lasts at least until deleted + WINDOW:
    // counted 3 s before that (20 reads), it is the first window's count however
    // late a loaded machine saw the first namespace go.
    // Within it exactly MAX namespaces go, and the rest say why they wait.
    wait_for(SHORT, "the first namespace to go", || async {
        if going().await >= 1 { Ok(()) } else { Err("none yet".to_string()) }
    })
    .await;
    let first_window = deleted + WINDOW - Duration::from_secs(3);
    wait_for(WINDOW - Duration::from_secs(2), "the first window's namespaces to go", || async {
        if going().await >= MAX as usize { Ok(()) } else { Err("fewer".to_string()) }
    })
    .await;
    // Which ones wait depends on the order of the reconciles: look for any.
    let held_back = |ta: &TeamAccess| {
        names.contains(&ta.metadata.name.clone().unwrap_or_default())
            && ta.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "NamespaceDeletionDelayed")
            })
    };
    let waiting: TeamAccess = wait_for(SHORT, "a TeamAccess held back by the brake", || async {
        let list = op.api().list(&Default::default()).await.map_err(|e| e.to_string())?;
        list.items.into_iter().find(|ta| held_back(ta)).ok_or_else(|| "none yet".to_string())
    })
    .await;
    let message = waiting.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains("--max-namespace-deletions") && message.contains("deletionPolicy"), "{message}");
    let waiting_name = waiting.metadata.name.unwrap();
    tokio::time::sleep_until(first_window).await;
    assert_eq!(going().await, MAX as usize, "exactly {MAX} namespaces went in the first {WINDOW:?}");
    let delayed = op.api().list(&Default::default()).await.unwrap().items.into_iter().filter(|ta| held_back(ta));
    assert_eq!(delayed.count(), N - MAX as usize, "every held-back TeamAccess says so");
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(op.client.clone())
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={waiting_name}")))
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NamespaceDeletionDelayed") && e.type_.as_deref() == Some("Warning")),
        "a Warning event says so"
    );
    // The access went at once for everyone, held back or not.
    for ns in &names {
        wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", ns, false).await;
    }

    // All go eventually, a window at a time.
    for name in &names {
        op.wait_deleted(name, Duration::from_secs(120)).await;
    }
    println!(
        "{N} TeamAccess with a brake of {MAX} per {WINDOW:?}: all deleted after {:.0} s",
        deleted.elapsed().as_secs_f64()
    );
    assert!(deleted.elapsed() >= WINDOW * (N as u32 / MAX - 1), "the brake spread them over the windows");
}
