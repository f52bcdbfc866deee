//! The operator end to end with the Microsoft Graph directory, served by the
//! emulator, on the real control plane.

mod support;

use std::{sync::Arc, time::Duration};

use azure_emulator::{Emulator, Faults};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use support::{graph::*, operator::*, *};
use teamaccess_operator::directory::{Directory, graph::GraphSettings};

const LONG: Duration = Duration::from_secs(60);

/// An operator whose Graph cache expires quickly and which resyncs often, so
/// directory changes show within seconds.
async fn operator_on(emulator: &Emulator, cache_ttl: Duration, resync: Duration) -> TestOperator {
    let settings = GraphSettings { cache_ttl, ..fast_settings(emulator) };
    let graph: Arc<dyn Directory> = directory_with(emulator, &secret_settings(emulator), settings);
    TestOperator::start_with_directory(graph, resync).await
}

/// The group a TeamAccess's RoleBinding names, when it names exactly one Group
/// and nothing else; any other set of subjects comes back spelled out, so it
/// never equals a plain objectId.
async fn binding_subject(op: &TestOperator, namespace: &str, name: &str) -> Option<String> {
    let rb = Api::<RoleBinding>::namespaced(op.client.clone(), namespace)
        .get_opt(&format!("teamaccess-{name}"))
        .await
        .unwrap()?;
    match rb.subjects.unwrap_or_default().as_slice() {
        [only] if only.kind == "Group" => Some(only.name.clone()),
        other => Some(format!("unexpected subjects {other:?}")),
    }
}

#[tokio::test]
async fn seed_scenario_through_graph_then_rename_delete_and_recreate() {
    let emulator = emulator(SEED_DIRECTORY).await;
    let op = operator_on(&emulator, Duration::from_millis(500), Duration::from_secs(2)).await;
    let dev = unique("dev");
    let sre = unique("sre");
    let appdev = unique("appdev-dev");
    let opssre = unique("opssre-sre");
    op.apply(&op.team(&appdev, by_name("appdev"), &dev)).await;
    op.apply(&op.team(&opssre, by_name("opssre"), &sre)).await;
    op.wait_ready(&appdev).await;
    op.wait_ready(&opssre).await;
    wait_default_service_account(&op.client, &dev).await;
    wait_default_service_account(&op.client, &sre).await;
    wait_pod_create_status(AKSDEV, &[APPDEV], &dev, 200).await;
    assert_eq!(create_pod_as(AKSDEV, &[APPDEV], &sre).await, 403);
    wait_pod_create_status(AKSSRE, &[OPSSRE], &sre, 200).await;
    assert_eq!(create_pod_as(AKSSRE, &[OPSSRE], &dev).await, 403);

    // Renamed in Entra ID: status follows, the binding stays.
    let mut tenant = emulator.directory();
    tenant.groups.iter_mut().find(|g| g.object_id == APPDEV).unwrap().display_name = "app-developers".into();
    emulator.set_directory(tenant.clone());
    wait_for(Duration::from_secs(20), "status to follow the rename", || async {
        let ta = op.api().get(&appdev).await.map_err(|e| e.to_string())?;
        let group = ta.status.and_then(|s| s.group).ok_or("no group")?;
        if group.display_name.as_deref() == Some("app-developers") { Ok(()) } else { Err(format!("{group:?}")) }
    })
    .await;
    assert_eq!(binding_subject(&op, &dev, &appdev).await.as_deref(), Some(APPDEV));

    // Deleted: GroupMissing, and the binding is left as it was.
    tenant.groups.retain(|g| g.object_id != APPDEV);
    emulator.set_directory(tenant.clone());
    op.wait_condition(&appdev, "Ready", "False", Some("GroupMissing"), Duration::from_secs(20)).await;
    assert_eq!(binding_subject(&op, &dev, &appdev).await.as_deref(), Some(APPDEV));

    // Re-created under the original name with a new id: nothing new is bound.
    const NEW_APPDEV: &str = "bbbbbbbb-0000-4000-8000-000000000002";
    let mut recreated = tenant.groups[0].clone();
    recreated.object_id = NEW_APPDEV.into();
    recreated.display_name = "appdev".into();
    recreated.mail_nickname = Some("appdev".into());
    tenant.groups.push(recreated);
    emulator.set_directory(tenant);
    let ta = op.wait_condition(&appdev, "Ready", "False", Some("GroupObjectIdChanged"), Duration::from_secs(20)).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(NEW_APPDEV) && ready.message.contains(APPDEV), "{}", ready.message);
    assert_eq!(binding_subject(&op, &dev, &appdev).await.as_deref(), Some(APPDEV), "the pin holds");
    assert!(!allowed(&op.client, AKSDEV, &[NEW_APPDEV], "create", "", "pods", &dev).await);
    assert!(
        allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &dev).await,
        "the pinned group keeps its access"
    );

    for name in [&appdev, &opssre] {
        op.delete(name).await;
        op.wait_deleted(name, Duration::from_secs(30)).await;
    }
}

/// Applies `n` TeamAccess objects (one group each) in one namespace, waits until all
/// are Ready, and returns their names.
async fn apply_teams(op: &TestOperator, n: usize, namespace: &str) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{}-{i}", op.label)).collect();
    futures::future::join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| async move { op.apply(&op.team(name, by_name(&format!("team-{i}")), namespace)).await }),
    )
    .await;
    for name in &names {
        op.wait_condition(name, "Ready", "True", None, LONG).await;
    }
    names
}

async fn delete_teams(op: &TestOperator, names: &[String]) {
    futures::future::join_all(names.iter().map(|n| op.delete(n))).await;
    for name in names {
        op.wait_deleted(name, LONG).await;
    }
}

#[tokio::test]
async fn a_hundred_teamaccess_resolve_cold_in_few_graph_requests_and_warm_resyncs_in_none() {
    let emulator = emulator(&tenant::groups_yaml("team", 100)).await;
    let mut op = operator_on(&emulator, Duration::from_secs(300), Duration::from_secs(2)).await;
    // "Applied at once": all 100 land while the operator is away (a GitOps sync,
    // or a new operator), so they arrive together in its initial list.
    op.stop().await;
    let ns = unique("hundred");
    let names: Vec<String> = (0..100).map(|i| format!("{}-{i}", op.label)).collect();
    futures::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let (op, ns) = (&op, &ns);
        async move { op.apply(&op.team(name, by_name(&format!("team-{i}")), ns)).await }
    }))
    .await;
    op.resume().await;
    for name in &names {
        op.wait_condition(name, "Ready", "True", None, LONG).await;
    }
    let stats = emulator.stats();
    println!(
        "100 TeamAccess resolved cold through the operator: {} Graph HTTP requests ({} $batch, {} lookups)",
        stats.graph_requests, stats.batch_requests, stats.lookups
    );
    assert!(stats.graph_requests <= 5 + 100_u64.div_ceil(20), "{stats:?}");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(binding_subject(&op, &ns, name).await, Some(tenant::group_id(i)));
    }

    // Resyncs within the cache's TTL ask Graph nothing.
    emulator.reset_stats();
    let before = op.reconciles();
    wait_for(LONG, "two resyncs of every object", || async {
        let done = op.reconciles() - before;
        if done >= 200 { Ok(()) } else { Err(format!("{done} reconciles")) }
    })
    .await;
    assert_eq!(emulator.stats().graph_requests, 0, "{:?}", emulator.stats());
    delete_teams(&op, &names).await;
}

#[tokio::test]
async fn a_429_storm_loses_no_binding_and_ends_with_all_ready() {
    storm(Faults { throttle_for_secs: 30, retry_after_secs: 2, ..Default::default() }, 45, 10).await;
}

/// Graph throttles the items of a `$batch` one by one: the batch answers 200.
#[tokio::test]
async fn a_storm_answered_item_by_item_is_met_like_a_throttled_request() {
    storm(Faults { throttle_for_secs: 30, retry_after_secs: 2, per_item: true, ..Default::default() }, 45, 10).await;
}

/// Without Retry-After the operator's own backoff must bound the requests, and
/// objects look again at least every 20 s, so they recover within about that.
#[tokio::test]
async fn a_storm_without_retry_after_is_bounded_by_the_backoff() {
    let faults = Faults { throttle_for_secs: 30, omit_retry_after: true, per_item: true, ..Default::default() };
    storm(faults, 90, 30).await;
}

/// 20 TeamAccess Ready, then 30 s of throttling (`faults`) during which 10 more are
/// applied: no binding is lost or changed, nothing new is bound, Graph sees at
/// most `max_requests` requests, and all 30 are Ready within `recovery_secs`.
async fn storm(faults: Faults, max_requests: u64, recovery_secs: u64) {
    assert_eq!(faults.throttle_for_secs, 30);
    let emulator = emulator(&tenant::groups_yaml("team", 30)).await;
    // A short TTL and resync keep the operator asking Graph during the storm.
    let op = operator_on(&emulator, Duration::from_millis(500), Duration::from_secs(2)).await;
    let ns = unique("storm");
    let names = apply_teams(&op, 20, &ns).await;
    let bindings_before: Vec<Option<String>> =
        futures::future::join_all(names.iter().map(|n| binding_subject(&op, &ns, n))).await;

    emulator.reset_stats();
    let storm_end = tokio::time::Instant::now() + Duration::from_secs(30);
    emulator.set_faults(&faults);
    // The storm shows in status...
    op.wait_condition(&names[0], "Ready", "False", Some("GraphThrottled"), Duration::from_secs(15)).await;
    // ...a bulk apply lands in the middle of it and binds nothing while it lasts...
    let late: Vec<String> = (20..30).map(|i| format!("{}-{i}", op.label)).collect();
    futures::future::join_all(late.iter().enumerate().map(|(i, name)| {
        let (op, ns) = (&op, &ns);
        async move { op.apply(&op.team(name, by_name(&format!("team-{}", i + 20)), ns)).await }
    }))
    .await;
    tokio::time::sleep_until(storm_end - Duration::from_secs(1)).await;
    for (i, name) in late.iter().enumerate() {
        assert_eq!(binding_subject(&op, &ns, name).await, None, "nothing new is bound during the storm");
        let group = tenant::group_id(i + 20);
        assert!(!allowed(&op.client, "member@contoso.com", &[&group], "get", "", "pods", &ns).await);
    }
    let during = emulator.stats();
    // ...no binding is lost or changed...
    let bindings_during: Vec<Option<String>> =
        futures::future::join_all(names.iter().map(|n| binding_subject(&op, &ns, n))).await;
    assert_eq!(bindings_during, bindings_before);
    // ...and the request rate stays bounded: 20 objects resyncing every 2 s would be
    // 300 lookups in 30 s; Retry-After and the batch keep it to a few per window.
    println!(
        "during a 30 s 429 storm ({faults:?}): {} Graph HTTP requests, {} throttled answers",
        during.graph_requests, during.throttled
    );
    assert!(during.throttled > 0, "the storm reached Graph: {during:?}");
    assert!(during.graph_requests <= max_requests, "{during:?}");

    // After the storm: all Ready soon after its end, the late ones bound too.
    tokio::time::sleep_until(storm_end).await;
    for name in names.iter().chain(&late) {
        let left = Duration::from_secs(recovery_secs).saturating_sub(storm_end.elapsed());
        op.wait_condition(name, "Ready", "True", None, left).await;
    }
    println!("all 30 Ready {:.1} s after the storm ended", storm_end.elapsed().as_secs_f64());
    let bindings_after: Vec<Option<String>> =
        futures::future::join_all(names.iter().map(|n| binding_subject(&op, &ns, n))).await;
    assert_eq!(bindings_after, bindings_before);
    for (i, name) in late.iter().enumerate() {
        assert_eq!(binding_subject(&op, &ns, name).await, Some(tenant::group_id(i + 20)));
    }
    // As the API server decides it: every group of the 30 has its access.
    for i in 0..30 {
        wait_allowed(&op.client, "member@contoso.com", &[&tenant::group_id(i)], "create", "", "pods", &ns, true).await;
    }
    delete_teams(&op, &names).await;
    delete_teams(&op, &late).await;
}

#[tokio::test]
async fn a_misconfigured_graph_endpoint_changes_no_binding() {
    let emulator = emulator(SEED_DIRECTORY).await;
    let op = operator_on(&emulator, Duration::from_millis(500), Duration::from_secs(2)).await;
    let ns = unique("endpoint");
    let name = unique("endpoint");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, true).await;

    // The endpoint now answers like a web server that does not serve Graph: a bare 404.
    emulator.set_faults(&Faults { not_graph: true, ..Default::default() });
    let ta = op.wait_condition(&name, "Ready", "False", Some("GraphRequestRejected"), Duration::from_secs(20)).await;
    let ready = ta.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("--graph-endpoint"), "{}", ready.message);
    // Not "group missing": the pinned group and its access stay exactly as they were.
    assert_eq!(binding_subject(&op, &ns, &name).await.as_deref(), Some(APPDEV));
    assert!(allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns).await);

    emulator.set_faults(&Faults::default());
    op.wait_condition(&name, "Ready", "True", None, Duration::from_secs(30)).await;
    op.delete(&name).await;
    op.wait_deleted(&name, Duration::from_secs(30)).await;
}

/// --strict-group-names: a display name binds only a group no ordinary user could
/// have created, spelled exactly. Users may create security groups by default,
/// and Graph's `eq` ignores case, so anyone can squat a name before or after the
/// TeamAccess that names it is written.
#[tokio::test]
async fn strict_group_names_bind_no_group_a_user_could_have_squatted() {
    use teamaccess_operator::directory::file_format::GroupRecord;
    let emulator = emulator(SEED_DIRECTORY).await;
    let (synced, squatted) = (fresh_object_id(), fresh_object_id());
    let mut tenant = emulator.directory();
    let record = |object_id: &str, name: &str, on_premises_sync_enabled: bool| GroupRecord {
        on_premises_sync_enabled,
        ..GroupRecord::security_group(object_id, name)
    };
    let (platform, payments) = (unique("platform-admins"), unique("payments"));
    tenant.groups.push(record(&synced, &platform, true));
    tenant.groups.push(record(&squatted, &payments, false));
    emulator.set_directory(tenant);
    let mut op = operator_on(&emulator, Duration::from_millis(500), Duration::from_secs(60)).await;
    op.stop().await;
    op.strict_group_names = true;
    op.resume().await;

    // A group synchronized from on-premises, named exactly: bound.
    let (trusted, trusted_ns) = (unique("trusted"), unique("trusted"));
    op.apply(&op.team(&trusted, by_name(&platform), &trusted_ns)).await;
    op.wait_ready(&trusted).await;
    wait_allowed(&op.client, "lead@contoso.com", &[&synced], "create", "", "pods", &trusted_ns, true).await;

    // A cloud-only group any user could have made, and the synced one spelled in
    // another case: nothing bound, and the condition says to use the objectId.
    let (squat, squat_ns) = (unique("squat"), unique("squat"));
    op.apply(&op.team(&squat, by_name(&payments), &squat_ns)).await;
    let (shouted, shouted_ns) = (unique("shouted"), unique("shouted"));
    op.apply(&op.team(&shouted, by_name(&platform.to_uppercase()), &shouted_ns)).await;
    for (name, why) in [(&squat, "any user could have created"), (&shouted, "spelled differently")] {
        let held = op.wait_condition(name, "Ready", "False", Some("GroupNameNotTrusted"), LONG).await;
        let message = held.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
        assert!(message.contains(why) && message.contains("spec.group.objectId"), "{message}");
    }
    assert!(!allowed(&op.client, "mallory@contoso.com", &[&squatted], "create", "", "pods", &squat_ns).await);
    assert!(!allowed(&op.client, "lead@contoso.com", &[&synced], "create", "", "pods", &shouted_ns).await);
    assert!(binding_subject(&op, &squat_ns, &squat).await.is_none(), "no RoleBinding for the squatted name");

    // By objectId, the admin says which group is meant: bound.
    let (by_id, by_id_ns) = (unique("by-id"), unique("by-id"));
    op.apply(&op.team(&by_id, teamaccess_operator::api::GroupSelector::by_object_id(&squatted), &by_id_ns)).await;
    op.wait_ready(&by_id).await;
    wait_allowed(&op.client, "mallory@contoso.com", &[&squatted], "create", "", "pods", &by_id_ns, true).await;
    for name in [&trusted, &squat, &shouted, &by_id] {
        op.delete(name).await;
    }
}
