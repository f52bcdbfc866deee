//! The Azure half of the seed's recipe, through `teamaccess-operator run`: each
//! group gets the "Azure Kubernetes Service Cluster User Role" on the AKS cluster
//! through Azure Resource Manager (the emulator's), next to the Kubernetes
//! access on the real control plane.

mod support;

use std::time::Duration;

use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, Faults, RoleAssignment, TENANT_ID, arm::ArmRequest};
use serde_json::json;
use support::{
    arm::{Harness, cluster_id, fresh_group, groups_with_a_member, role_definition_id},
    operator::TEST_LABEL,
    process::OperatorProcess,
    *,
};
use teamaccess_operator::directory::file_format::GroupRecord;

/// A client-credentials token from the emulator's Entra ID for `resource`'s audience.
async fn token(emulator: &Emulator, resource: &str) -> String {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("client_secret", CLIENT_SECRET)
        .append_pair("scope", &format!("{resource}/.default"))
        .finish();
    let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", emulator.url());
    let request =
        graph::http(emulator).post(url).header("content-type", "application/x-www-form-urlencoded").body(form);
    let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    body["access_token"].as_str().expect("a token").to_string()
}

fn writes(requests: &[ArmRequest]) -> Vec<&ArmRequest> {
    requests.iter().filter(|r| r.method != "GET").collect()
}

#[tokio::test]
async fn two_teams_of_a_group_share_its_assignment_which_goes_with_the_last_of_them() {
    let (directory, groups) = groups_with_a_member(2);
    let emulator = graph::emulator_of(directory).await;
    let arm = Harness::arm_args(&emulator);
    let h = Harness::start_on(emulator, &arm).await;
    let (a1, a2, b) = (h.name("a1"), h.name("a2"), h.name("b"));
    let namespaces = [unique("arm-a1"), unique("arm-a2"), unique("arm-b")];
    h.apply(&a1, &groups[0], &namespaces[0], None).await;
    h.apply(&a2, &groups[0], &namespaces[1], None).await;
    h.apply(&b, &groups[1], &namespaces[2], None).await;
    for name in [&a1, &a2, &b] {
        h.wait_condition(name, "Ready", "True", "Reconciled").await;
    }

    // One assignment per group, with exactly the body the role needs.
    h.wait_holders(&[&groups[0], &groups[1]]).await;
    let requests = h.emulator.take_arm_requests();
    let puts: Vec<&ArmRequest> = requests.iter().filter(|r| r.method == "PUT" && r.status == 201).collect();
    assert_eq!(puts.len(), 2, "one create per group: {requests:#?}");
    for put in &puts {
        let body = put.body.clone().unwrap();
        let principal = body["properties"]["principalId"].as_str().unwrap().to_string();
        assert_eq!(
            body,
            json!({"properties": {"roleDefinitionId": role_definition_id(), "principalId": principal, "principalType": "Group"}})
        );
        assert!(put.uri.starts_with(&format!("{}/providers/Microsoft.Authorization/roleAssignments/", cluster_id())));
        assert!(put.uri.ends_with("?api-version=2022-04-01"), "{}", put.uri);
    }
    assert!(requests.iter().all(|r| r.status != 401), "never a token for another audience: {requests:#?}");
    for name in [&a1, &a2, &b] {
        let ta = h.wait_condition(name, "ClusterUserRole", "True", "Assigned").await;
        let held = ta.status.unwrap().cluster_user_role.expect("the assignment in status");
        assert!(held.created_by_operator);
        assert!(h.holders().iter().any(|(_, a)| a.id == held.assignment_id), "{held:?}");
    }
    // The Kubernetes half, as the API server decides it.
    let admin = admin_client().await;
    assert!(allowed(&admin, "member@contoso.com", &[&groups[0]], "create", "", "pods", &namespaces[0]).await);
    assert!(!allowed(&admin, "member@contoso.com", &[&groups[1]], "create", "", "pods", &namespaces[0]).await);

    // Resyncs every 2 s with nothing changed: lists, and no write.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let idle = h.emulator.take_arm_requests();
    assert!(writes(&idle).is_empty(), "an idle resync writes nothing to ARM: {idle:#?}");
    assert!(idle.len() <= 5, "about one list per resync for all objects: {idle:#?}");

    // The group's assignment stays while one of its TeamAccess objects does.
    h.delete(&a1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.wait_holders(&[&groups[0], &groups[1]]).await;
    h.delete(&a2).await;
    h.wait_holders(&[&groups[1]]).await;
    h.delete(&b).await;
    h.wait_holders(&[]).await;
    h.op.stop().await;
    for ns in namespaces {
        delete_namespace(&admin, &ns).await;
    }
}

#[tokio::test]
async fn an_assignment_someone_else_made_satisfies_the_group_and_is_never_deleted() {
    let (directory, groups) = groups_with_a_member(3);
    let emulator = graph::emulator_of(directory).await;
    // Listed before the operator starts: found in the list.
    let listed = RoleAssignment::new(&cluster_id(), &fresh_group(), &role_definition_id(), &groups[0]);
    emulator.add_role_assignment(listed.clone());
    let mut args = Harness::arm_args(&emulator);
    // A long resync: the second one made below is not in the list the operator holds.
    args.extend(["--resync".into(), "5m".into()]);
    let h = Harness::start_on(emulator, &args).await;
    let (listed_ta, warm, unlisted_ta) = (h.name("listed"), h.name("warm"), h.name("unlisted"));
    let ns = unique("arm-other");
    h.apply(&listed_ta, &groups[0], &ns, None).await;
    let ta = h.wait_condition(&listed_ta, "ClusterUserRole", "True", "AssignedByOther").await;
    let status = ta.status.unwrap();
    let held = status.cluster_user_role.unwrap();
    assert_eq!(held.assignment_id, listed.id);
    assert!(!held.created_by_operator);
    assert_eq!(status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().status, "True");

    // Made after the operator listed: its create gets 409 RoleAssignmentExists.
    h.apply(&warm, &groups[1], &ns, None).await;
    h.wait_condition(&warm, "ClusterUserRole", "True", "Assigned").await;
    let unlisted = RoleAssignment::new(&cluster_id(), &fresh_group(), &role_definition_id(), &groups[2]);
    h.emulator.add_role_assignment(unlisted.clone());
    h.emulator.take_arm_requests();
    h.apply(&unlisted_ta, &groups[2], &ns, None).await;
    let ta = h.wait_condition(&unlisted_ta, "ClusterUserRole", "True", "AssignedByOther").await;
    assert_eq!(ta.status.unwrap().cluster_user_role.unwrap().assignment_id, unlisted.id);
    let requests = h.emulator.take_arm_requests();
    assert!(
        requests.iter().any(|r| r.method == "PUT" && r.status == 409),
        "the create met the existing one: {requests:#?}"
    );

    // Deleting the TeamAccess objects removes only what the operator made.
    for name in [&listed_ta, &warm, &unlisted_ta] {
        h.delete(name).await;
    }
    h.wait_holders(&[&groups[0], &groups[2]]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<RoleAssignment> = h.holders().into_iter().map(|(_, a)| a).collect();
    assert_eq!(left.len(), 2, "{left:#?}");
    assert!(left.contains(&listed) && left.contains(&unlisted), "someone else's are never deleted: {left:#?}");
    h.op.stop().await;
    delete_namespace(&admin_client().await, &ns).await;
}

#[tokio::test]
async fn azure_refusals_throttling_and_replication_keep_the_kubernetes_access_and_converge() {
    let (directory, groups) = groups_with_a_member(3);
    let emulator = graph::emulator_of(directory).await;
    let args = Harness::arm_args(&emulator);
    let h = Harness::start_on(emulator, &args).await;
    let admin = admin_client().await;
    let member_may_create_pods = |group: String, ns: String| {
        let admin = admin.clone();
        async move { allowed(&admin, "member@contoso.com", &[&group], "create", "", "pods", &ns).await }
    };

    // 403: the identity may not assign roles. Stalled, saying what to grant; the
    // namespace access is in place all the same.
    h.emulator.set_faults(&Faults { arm_forbidden: true, ..Default::default() });
    let (refused, ns_refused) = (h.name("refused"), unique("arm-403"));
    h.apply(&refused, &groups[0], &ns_refused, None).await;
    let ta = h.wait_condition(&refused, "Ready", "False", "AuthorizationFailed").await;
    let status = ta.status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("Microsoft.Authorization/roleAssignments/write"), "{}", ready.message);
    assert!(ready.message.contains("Role Based Access Control Administrator"), "{}", ready.message);
    assert!(status.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True"));
    assert!(status.role_binding.is_some(), "the RoleBinding is in place");
    assert!(member_may_create_pods(groups[0].clone(), ns_refused.clone()).await);
    h.emulator.set_faults(&Faults::default());
    h.wait_condition(&refused, "Ready", "True", "Reconciled").await;
    h.wait_condition(&refused, "ClusterUserRole", "True", "Assigned").await;

    // A 429 storm: an object already assigned stays Ready (its assignment did not
    // go away); a new one waits, Reconciling, with its access in place.
    h.emulator.set_faults(&Faults { arm_throttle_for_secs: 8, retry_after_secs: 2, ..Default::default() });
    let (throttled, ns_throttled) = (h.name("throttled"), unique("arm-429"));
    h.apply(&throttled, &groups[1], &ns_throttled, None).await;
    let ta = h.wait_condition(&throttled, "Ready", "False", "ArmThrottled").await;
    assert!(ta.status.unwrap().conditions.iter().any(|c| c.type_ == "Reconciling" && c.status == "True"));
    assert!(member_may_create_pods(groups[1].clone(), ns_throttled.clone()).await);
    let still = h.tas.get(&refused).await.unwrap();
    assert!(is_ready(&still), "an assigned object is not disturbed by the storm: {:?}", still.status);
    h.wait_condition(&throttled, "Ready", "True", "Reconciled").await;
    h.wait_condition(&throttled, "ClusterUserRole", "True", "Assigned").await;

    // A group ARM has not seen yet: PrincipalNotFound, retried until it is there.
    h.emulator.set_faults(&Faults { arm_principal_not_found_next: 3, ..Default::default() });
    let (fresh, ns_fresh) = (h.name("fresh"), unique("arm-400"));
    h.apply(&fresh, &groups[2], &ns_fresh, None).await;
    h.wait_condition(&fresh, "ClusterUserRole", "False", "PrincipalNotFound").await;
    assert!(member_may_create_pods(groups[2].clone(), ns_fresh.clone()).await);
    h.wait_condition(&fresh, "Ready", "True", "Reconciled").await;
    h.wait_holders(&[&groups[0], &groups[1], &groups[2]]).await;

    let requests = h.emulator.take_arm_requests();
    assert!(requests.iter().all(|r| r.status != 401), "never a Graph token at ARM: {requests:#?}");
    h.cleanup(&[refused, throttled, fresh]).await;
    h.wait_holders(&[]).await;
    h.op.stop().await;
    for ns in [ns_refused, ns_throttled, ns_fresh] {
        delete_namespace(&admin, &ns).await;
    }
}

#[tokio::test]
async fn opting_out_removes_the_assignment_and_without_a_cluster_id_arm_is_never_called() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory.clone()).await;
    let args = Harness::arm_args(&emulator);
    let h = Harness::start_on(emulator, &args).await;
    let (name, ns) = (h.name("optout"), unique("arm-opt"));
    h.apply(&name, &groups[0], &ns, Some(false)).await;
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    let status = ta.status.unwrap();
    assert!(status.cluster_user_role.is_none() && !status.conditions.iter().any(|c| c.type_ == "ClusterUserRole"));
    assert!(h.holders().is_empty());
    h.apply(&name, &groups[0], &ns, Some(true)).await;
    h.wait_condition(&name, "ClusterUserRole", "True", "Assigned").await;
    h.wait_holders(&[&groups[0]]).await;
    h.apply(&name, &groups[0], &ns, Some(false)).await;
    h.wait_holders(&[]).await;
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    assert!(ta.status.unwrap().cluster_user_role.is_none());
    h.cleanup(&[name]).await;
    h.op.stop().await;

    // No cluster ID: Graph only, not one ARM request.
    let h = Harness::start(directory, &[]).await;
    let name = h.name("noarm");
    h.apply(&name, &groups[0], &ns, None).await;
    let ta = h.wait_condition(&name, "Ready", "True", "Reconciled").await;
    assert!(!ta.status.unwrap().conditions.iter().any(|c| c.type_ == "ClusterUserRole"));
    assert_eq!(h.emulator.stats().arm_requests, 0);
    assert!(h.emulator.stats().graph_requests > 0, "Graph was used");
    h.cleanup(&[name]).await;
    h.op.stop().await;
    delete_namespace(&admin_client().await, &ns).await;
}

#[tokio::test]
async fn a_malformed_cluster_id_stops_the_operator_at_startup_with_what_to_fix() {
    let seed = seed_directory_file();
    let label = unique("badid");
    let mut op = OperatorProcess::start(
        &kubeconfig_path(),
        &[
            "--directory",
            "static",
            "--directory-file",
            seed.to_str().unwrap(),
            "--aks-cluster-resource-id",
            "/subscriptions/my-sub/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks",
        ],
        &[],
        &std::env::temp_dir().join(&label),
    );
    op.wait_exit(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&op.log).unwrap();
    assert!(log.contains("--aks-cluster-resource-id"), "{log}");
    assert!(log.contains("the subscription \"my-sub\" is not a GUID"), "{log}");
}

#[tokio::test]
async fn arm_and_graph_each_refuse_the_others_token() {
    let (directory, _) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory).await;
    let http = graph::http(&emulator);
    let graph_token = token(&emulator, emulator.url()).await;
    let arm_token = token(&emulator, emulator.arm_url()).await;
    let list = format!(
        "{}{}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01",
        emulator.arm_url(),
        cluster_id()
    );
    let answer = http.get(&list).bearer_auth(&graph_token).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationTokenAudience", "{body}");
    assert_eq!(http.get(&list).bearer_auth(&arm_token).send().await.unwrap().status(), 200);
    let group = format!("{}/v1.0/groups?$top=1", emulator.url());
    assert_eq!(http.get(&group).bearer_auth(&arm_token).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&group).bearer_auth(&graph_token).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn arm_requests_for_100_teams_over_20_groups_cold_and_idle() {
    let (directory, groups) = groups_with_a_member(20);
    let emulator = graph::emulator_of(directory).await;
    // Pages of 8: the list of 20 takes 3 requests, and every page is followed.
    emulator.set_faults(&Faults { arm_page_size: 8, ..Default::default() });
    let mut args = Harness::arm_args(&emulator);
    args.extend(["--resync".into(), "10s".into()]);
    let h = Harness::start_on(emulator, &args).await;
    let namespaces: Vec<String> = (0..10).map(|i| unique(&format!("arm-n{i}"))).collect();
    let names: Vec<String> = (0..100).map(|i| h.name(&format!("t{i}"))).collect();
    futures::future::join_all(
        names.iter().enumerate().map(|(i, name)| h.apply(name, &groups[i % 20], &namespaces[i % 10], None)),
    )
    .await;
    wait_all_ready(&h.tas, &format!("{TEST_LABEL}={}", h.label), 100, Duration::from_secs(120)).await;
    h.wait_holders(&groups.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let cold = h.emulator.take_arm_requests();
    let (gets, puts) = (cold.iter().filter(|r| r.method == "GET").count(), writes(&cold).len());
    println!(
        "ARM requests for 100 TeamAccess over 20 groups, cold: {} ({gets} list pages, {puts} creates)",
        cold.len()
    );
    assert_eq!(puts, 20, "one create per group: {cold:#?}");
    assert!(gets <= 6, "one list (of at most a few pages) serves every object: {cold:#?}");

    // An idle resync (every 10 s): one list, no write.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let idle = h.emulator.take_arm_requests();
    println!("ARM requests over 12 s idle (resync 10 s): {} ({} writes)", idle.len(), writes(&idle).len());
    assert!(writes(&idle).is_empty(), "{idle:#?}");
    assert!(!idle.is_empty() && idle.len() <= 6, "one list of 3 pages per resync: {idle:#?}");
    h.cleanup(&names).await;
    h.wait_holders(&[]).await;
    h.op.stop().await;
    let admin = admin_client().await;
    for ns in namespaces {
        delete_namespace(&admin, &ns).await;
    }
}

#[tokio::test]
async fn the_emulated_arm_answers_as_the_documented_service() {
    let (directory, groups) = groups_with_a_member(1);
    let emulator = graph::emulator_of(directory.clone()).await;
    let http = graph::http(&emulator);
    let token = token(&emulator, emulator.arm_url()).await;
    let assignments =
        format!("{}{}/providers/Microsoft.Authorization/roleAssignments", emulator.arm_url(), cluster_id());
    let put = |name: String, principal: String, with_type: bool| {
        let (http, token, url) = (http.clone(), token.clone(), format!("{assignments}/{name}?api-version=2022-04-01"));
        async move {
            let mut properties = json!({"roleDefinitionId": role_definition_id(), "principalId": principal});
            if with_type {
                properties["principalType"] = json!("Group");
            }
            let answer =
                http.put(url).bearer_auth(token).json(&json!({"properties": properties})).send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };

    // A group created a moment ago is unknown to ARM unless principalType is given.
    let mut newer = directory.clone();
    let new_group = fresh_group();
    newer.groups.push(GroupRecord::security_group(new_group.clone(), "just-created"));
    emulator.set_directory(newer);
    emulator.set_faults(&Faults { arm_replication_delay_secs: 60, ..Default::default() });
    let (status, body) = put(fresh_group(), new_group.clone(), false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("PrincipalNotFound")), "{body}");
    let name = fresh_group();
    let (status, body) = put(name.clone(), new_group.clone(), true).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["properties"]["principalType"], "Group");

    // The same name and properties again: idempotent. Other properties: refused.
    assert_eq!(put(name.clone(), new_group.clone(), true).await.0, 201);
    let (status, body) = put(name.clone(), groups[0].clone(), true).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("RoleAssignmentUpdateNotPermitted")));
    // The same principal and role under another name: 409 naming the existing one.
    let (status, body) = put(fresh_group(), new_group.clone(), true).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("RoleAssignmentExists")));
    assert!(body["error"]["message"].as_str().unwrap().contains(&name.replace('-', "")), "{body}");

    // The api-version is required; DELETE answers 200 with the assignment, then 204.
    let missing = http.get(&assignments).bearer_auth(&token).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    let delete = format!("{assignments}/{name}?api-version=2022-04-01");
    let gone = http.delete(&delete).bearer_auth(&token).send().await.unwrap();
    assert_eq!(gone.status(), 200);
    assert_eq!(http.delete(&delete).bearer_auth(&token).send().await.unwrap().status(), 204);
}
