//! Faults, and what must survive them: every binding that should exist exists,
//! none that should not.

mod support;

use std::time::Duration;

use azure_emulator::Faults;
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use support::{graph::*, operator::*, *};
use teamaccess_operator::{api::TeamAccess, directory::graph::GraphSettings};

const SHORT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_namespace_stuck_terminating_is_reported_with_what_blocks_it() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("stuck");
    let name = unique("stuck");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;

    // Someone else's finalizer holds content in the namespace; then the namespace is deleted by hand.
    hold_namespace(&op.client, &ns).await;
    delete_namespace(&op.client, &ns).await;

    let ta = op.wait_condition(&name, "Ready", "False", Some("NamespaceTerminating"), Duration::from_secs(60)).await;
    // The namespace controller names the blocking finalizer in the namespace's conditions.
    let ta = if ta.status.as_ref().unwrap().conditions.iter().any(|c| c.message.contains("example.com/hold")) {
        ta
    } else {
        wait_for(Duration::from_secs(60), "the condition to name the finalizer", || async {
            let ta = op.api().get(&name).await.map_err(|e| e.to_string())?;
            let ready = ta.status.clone().unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
            if ready.message.contains("example.com/hold") { Ok(ta) } else { Err(ready.message) }
        })
        .await
    };
    let conditions = ta.status.unwrap().conditions;
    assert!(conditions.iter().any(|c| c.type_ == "Reconciling" && c.status == "True"), "{conditions:?}");

    // Released: the namespace goes, and the operator creates it again with the access.
    release_namespace(&op.client, &ns).await;
    op.wait_condition(&name, "Ready", "True", None, Duration::from_secs(120)).await;
    // The team has its access in the new namespace, as the API server decides it.
    wait_allowed(&op.client, AKSDEV, &[APPDEV], "create", "", "pods", &ns, true).await;
    assert!(!allowed(&op.client, AKSDEV, &[OPSSRE], "create", "", "pods", &ns).await, "only the team's group");
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

#[tokio::test]
async fn a_writer_fighting_over_a_managed_role_loses_without_a_hot_loop() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let ns = unique("fight");
    let name = unique("fight");
    let mut ta = op.team(&name, by_name("appdev"), &ns);
    ta.spec.verbs = Some(vec!["get".into()]);
    op.apply(&ta).await;
    op.wait_ready(&name).await;
    let roles = Api::<Role>::namespaced(op.client.clone(), &ns);
    let child = format!("teamaccess-{name}");

    // For 10 s another writer keeps widening the Role with read-modify-write updates;
    // some of them meet 409 Conflict because the operator wrote in between.
    let (mut writes, mut conflicts) = (0u32, 0u32);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let mut role = roles.get(&child).await.unwrap();
        let mut rules = role.rules.take().unwrap_or_default();
        rules[0].verbs = vec!["get".into(), "delete".into()];
        role.rules = Some(rules);
        // A slow read-modify-write: the operator's repair of the previous write
        // often lands in between, and this write then meets 409 Conflict.
        tokio::time::sleep(Duration::from_millis(150)).await;
        match roles.replace(&child, &PostParams::default(), &role).await {
            Ok(_) => writes += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!("the other writer: {writes} writes, {conflicts} conflicts");
    assert!(conflicts > 0 && writes > 0, "the fight happened: {writes} writes, {conflicts} conflicts");
    // Our state wins once the fight stops.
    wait_for(Duration::from_secs(10), "the Role to be ours again", || async {
        let rules = roles.get(&child).await.map_err(|e| e.to_string())?.rules.unwrap_or_default();
        if !rules.is_empty() && rules.iter().all(|r| r.verbs == ["get"]) { Ok(()) } else { Err(format!("{rules:?}")) }
    })
    .await;
    // And without a hot loop: the reconciles are bounded by the other writer's changes.
    let reconciles = op.reconciles();
    println!("operator reconciles during the fight: {reconciles}");
    assert!(reconciles <= 3 * u64::from(writes) + 20, "{reconciles} reconciles for {writes} foreign writes");
    op.delete(&name).await;
    op.wait_deleted(&name, SHORT).await;
}

/// The valid spec every corpus entry starts from (the test proves it is valid).
fn corpus_base() -> serde_json::Value {
    serde_json::json!({"group": {"objectId": APPDEV}, "namespace": "dev", "verbs": ["get"]})
}

/// One invalid spec: which rule it breaks, the spec, and the fragments of which
/// one must be in the API server's answer (the message that says what to fix).
struct Violation {
    what: &'static str,
    spec: serde_json::Value,
    expected: &'static [&'static str],
}

/// Invalid TeamAccess specs made from a valid one by one random violation each,
/// from a fixed seed so a failure can be replayed.
fn invalid_corpus(n: usize, seed: u64) -> Vec<Violation> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rand_string = |len: usize, alphabet: &[u8]| -> String {
        (0..len).map(|_| alphabet[rng.usize(..alphabet.len())] as char).collect()
    };
    let mut corpus = Vec::new();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    for i in 0..n {
        let mut spec = corpus_base();
        let (what, expected): (&str, &[&str]) = match i % 10 {
            0 => {
                // a GUID with one character out of place
                let mut id: Vec<char> = APPDEV.chars().collect();
                let at = rng.usize(..id.len());
                id[at] = ['g', 'Z', '-', '_', ' ', '{'][rng.usize(..6)];
                if id.iter().collect::<String>() == APPDEV {
                    id.push('0');
                }
                spec["group"]["objectId"] = id.into_iter().collect::<String>().into();
                ("objectId", &["spec.group.objectId must be a GUID"])
            }
            1 => {
                // a namespace name with an upper-case letter, '_' or '.', or over 63 characters
                let bad = match rng.usize(..3) {
                    0 => format!("{}{}", rand_string(rng.usize(1..10), b"abc"), ['A', '_', '.'][rng.usize(..3)]),
                    1 => format!("-{}", rand_string(rng.usize(1..10), b"abc")),
                    _ => rand_string(64 + rng.usize(..20), b"abcdef"),
                };
                spec["namespace"] = bad.into();
                ("namespace", &["spec.namespace must be a DNS-1123 label", "spec.namespace: Too long"])
            }
            2 => {
                spec["verbs"] = serde_json::json!(["get", rand_string(rng.usize(3..12), b"xyzqw")]);
                ("verbs", &["spec.verbs may hold only"])
            }
            3 => {
                spec["rules"] = serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
                ("verbs and rules", &["set exactly one of spec.verbs, spec.rules or spec.clusterRole"])
            }
            4 => {
                spec["group"]["displayName"] = rand_string(rng.usize(1..20), b"abcdef").into();
                ("two selectors", &["spec.group must set exactly one of objectId, displayName or mailNickname"])
            }
            5 => {
                spec["group"] = serde_json::json!({});
                ("no selector", &["spec.group must set exactly one of objectId, displayName or mailNickname"])
            }
            6 => {
                spec["group"] = serde_json::json!({"displayName": rand_string(257 + rng.usize(..50), b"ab")});
                ("long displayName", &["spec.group.displayName: Too long"])
            }
            7 => {
                spec["users"] = serde_json::json!([{"userPrincipalName": rand_string(rng.usize(1..20), b"abc")}]);
                ("upn without domain", &["userPrincipalName must look like user@domain"])
            }
            8 => {
                spec["deletionPolicy"] = rand_string(rng.usize(1..10), b"XYZ").into();
                ("deletionPolicy", &["spec.deletionPolicy: Unsupported value"])
            }
            _ => {
                spec.as_object_mut().unwrap().remove("verbs");
                spec["clusterRole"] = format!("{}/{}", rand_string(3, b"ab"), rand_string(3, b"ab")).into();
                ("clusterRole", &["spec.clusterRole must be a ClusterRole name"])
            }
        };
        corpus.push(Violation { what, spec, expected });
    }
    corpus
}

#[tokio::test]
async fn a_generated_corpus_of_invalid_objects_is_rejected_entirely() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let tas = Api::<TeamAccess>::all(admin.clone());
    let dry_run = |spec: &serde_json::Value| {
        let name = unique("corpus");
        let obj = serde_json::json!({"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess", "metadata": {"name": name}, "spec": spec});
        let tas = tas.clone();
        async move {
            let params = PatchParams { dry_run: true, ..PatchParams::apply("corpus-test").force() };
            tas.patch(&name, &params, &Patch::Apply(&obj)).await.map(|_| ())
        }
    };
    // Every violation is one change away from this spec, which itself is valid.
    dry_run(&corpus_base()).await.expect("the corpus's base spec is valid");
    let corpus = invalid_corpus(220, 20261128);
    let mut wrong = Vec::new();
    for Violation { what, spec, expected } in &corpus {
        match dry_run(spec).await {
            Err(kube::Error::Api(s)) if s.code == 422 && expected.iter().any(|e| s.message.contains(e)) => {}
            other => wrong.push(format!("{what}: {spec} -> {other:?}, expected 422 with one of {expected:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} of {} invalid objects went wrong:\n{}", wrong.len(), corpus.len(), wrong.join("\n"));
}

#[tokio::test]
async fn objects_valid_by_schema_but_against_policy_bind_nothing() {
    let op = TestOperator::start(SEED_DIRECTORY).await;
    let mut names = Vec::new();
    for ns in ["kube-system", "kube-public", "kube-node-lease", "default"] {
        let name = unique("policy");
        op.apply(&op.team(&name, by_name("appdev"), ns)).await;
        names.push(name);
    }
    for name in &names {
        op.wait_condition(name, "Stalled", "True", Some("ProtectedNamespace"), SHORT).await;
    }
    for ns in ["kube-system", "kube-public", "kube-node-lease", "default"] {
        let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), ns).list(&Default::default()).await.unwrap();
        assert!(
            !bindings.items.iter().any(|rb| rb
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("teamaccess-policy"))),
            "no binding in {ns}"
        );
        assert!(!allowed(&op.client, AKSDEV, &[APPDEV], "get", "", "secrets", ns).await);
    }
    for name in &names {
        op.delete(name).await;
        op.wait_deleted(name, SHORT).await;
    }
}

#[tokio::test]
async fn a_60s_graph_outage_keeps_every_binding_and_recovers() {
    let emulator = emulator(SEED_DIRECTORY).await;
    let settings = GraphSettings { cache_ttl: Duration::from_millis(500), ..fast_settings(&emulator) };
    let graph = directory_with(&emulator, &secret_settings(&emulator), settings);
    let op = TestOperator::start_with_directory(graph, Duration::from_secs(3)).await;
    let ns = unique("outage");
    let name = unique("outage");
    op.apply(&op.team(&name, by_name("appdev"), &ns)).await;
    op.wait_ready(&name).await;
    let bindings = Api::<RoleBinding>::namespaced(op.client.clone(), &ns);
    let child = format!("teamaccess-{name}");
    let before = bindings.get(&child).await.unwrap();

    emulator.set_faults(&Faults { outage_for_secs: 60, retry_after_secs: 5, ..Default::default() });
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(60);
    op.wait_condition(&name, "Ready", "False", Some("GraphUnavailable"), SHORT).await;
    // A new TeamAccess during the outage binds nothing; the existing binding stays.
    let newcomer = unique("newcomer");
    op.apply(&op.team(&newcomer, by_name("opssre"), &ns)).await;
    tokio::time::sleep_until(outage_end - Duration::from_secs(2)).await;
    let during = bindings.get(&child).await.unwrap();
    assert_eq!(during.metadata.uid, before.metadata.uid);
    assert_eq!(during.subjects, before.subjects);
    assert!(
        bindings.get_opt(&format!("teamaccess-{newcomer}")).await.unwrap().is_none(),
        "nothing new bound during the outage"
    );
    let requests = emulator.stats().graph_requests;
    println!("Graph HTTP requests during a 60 s outage: {requests}");
    assert!(requests <= 60, "no hammering: {requests}");

    tokio::time::sleep_until(outage_end).await;
    // Objects look again at least every 20 s (plus jitter) while the directory is down.
    op.wait_condition(&name, "Ready", "True", None, Duration::from_secs(40)).await;
    op.wait_condition(&newcomer, "Ready", "True", None, Duration::from_secs(40)).await;
    println!("both Ready {:.1} s after the outage ended", outage_end.elapsed().as_secs_f64());
    for n in [&name, &newcomer] {
        op.delete(n).await;
        op.wait_deleted(n, SHORT).await;
    }
    let _ = Api::<Namespace>::all(op.client.clone()).delete(&ns, &DeleteParams::default()).await;
}
