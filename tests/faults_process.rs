//! Faults that take processes down: the API server (with an etcd compaction, so
//! watches come back to 410 Gone) and the operator itself in the middle of a
//! cleanup. The API server test runs on a control plane of its own.

mod support;

use std::{os::unix::process::CommandExt, path::Path, process::Command, time::Duration};

use k8s_openapi::api::{core::v1::Namespace, rbac::v1::RoleBinding};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use support::{operator::TEST_LABEL, own_cluster::OwnCluster, process::OperatorProcess, *};
use teamaccess_operator::api::TeamAccess;
use teamaccess_operator::api::labels::MANAGED_BY_SELECTOR as MANAGED_BY;

const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

/// Kills the API server, compacts etcd to its current revision, and starts the
/// API server again with the same arguments.
async fn restart_apiserver_after_compaction(cluster: &OwnCluster) {
    let pid = cluster.state()["pids"]["kube-apiserver"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let etcd = argv.iter().find_map(|a| a.strip_prefix("--etcd-servers=")).unwrap().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());

    // Compact etcd through its JSON gateway: watches resuming from an older
    // resourceVersion now get 410 Gone and must relist.
    let http = reqwest::Client::new();
    let range: serde_json::Value = http
        .post(format!("{etcd}/v3/kv/range"))
        .json(&serde_json::json!({"key": "Lw=="}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revision = range["header"]["revision"].as_str().unwrap().to_string();
    let compacted = http
        .post(format!("{etcd}/v3/kv/compaction"))
        .json(&serde_json::json!({"revision": revision, "physical": true}))
        .send()
        .await
        .unwrap();
    assert!(compacted.status().is_success(), "etcd compaction: {}", compacted.text().await.unwrap_or_default());

    // The old process must be gone before the new one binds its port. A zombie
    // leader is not enough: the other threads of a killed Go process exit after
    // it, and the listening socket goes with the last of them. So wait until the
    // port can be bound (with SO_REUSEADDR, as the API server binds it).
    let port: u16 = argv
        .iter()
        .find_map(|a| a.strip_prefix("--secure-port="))
        .and_then(|p| p.parse().ok())
        .expect("the API server's --secure-port");
    wait_for(Duration::from_secs(20), "the killed API server's port to be free", || async {
        std::net::TcpListener::bind(("127.0.0.1", port)).map(drop).map_err(|e| e.to_string())
    })
    .await;
    let log_path = cluster.kubeconfig.with_file_name("kube-apiserver.log");
    let log = std::fs::OpenOptions::new().append(true).open(&log_path).unwrap();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cluster.kubeconfig.parent().unwrap())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("restart kube-apiserver");
    let new_pid = child.id();
    // Kept so Drop reaps it after cluster-down has stopped it.
    *cluster.restarted.lock().unwrap() = Some(child);
    // Let cluster-down find and stop the new process.
    let mut state = cluster.state();
    state["pids"]["kube-apiserver"] = new_pid.into();
    std::fs::write(cluster.kubeconfig.with_file_name("cluster.json"), serde_json::to_string_pretty(&state).unwrap())
        .unwrap();
    // Ready again, or the reason it is not.
    let client = cluster.client().await;
    wait_for(Duration::from_secs(60), "the restarted API server's /readyz", || async {
        if let Some(status) = cluster.restarted.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the restarted API server exited ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        client.request_text(req).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}

/// Every TeamAccess has its binding to appdev, and there is no other binding.
async fn assert_bindings_exact(client: &Client, namespace: &str, names: &[String]) {
    let bindings =
        Api::<RoleBinding>::namespaced(client.clone(), namespace).list(&ListParams::default()).await.unwrap();
    let mut found: Vec<String> = bindings.items.iter().filter_map(|rb| rb.metadata.name.clone()).collect();
    found.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("teamaccess-{n}")).collect();
    expected.sort();
    assert_eq!(found, expected, "exactly the bindings that should exist");
    for rb in bindings.items {
        let subjects: Vec<(String, String)> =
            rb.subjects.unwrap_or_default().into_iter().map(|s| (s.kind, s.name)).collect();
        assert_eq!(subjects, [("Group".to_string(), APPDEV.to_string())], "{:?}", rb.metadata.name);
    }
    // And the API server grants the group what the TeamAccess objects say, no more.
    wait_allowed(client, "member@contoso.com", &[APPDEV], "get", "", "pods", namespace, true).await;
    assert!(!allowed(client, "member@contoso.com", &[APPDEV], "delete", "", "pods", namespace).await);
    assert!(!allowed(client, "outsider@contoso.com", &["someone-else"], "get", "", "pods", namespace).await);
}

#[tokio::test]
async fn the_api_server_killed_and_restarted_after_a_compaction_loses_nothing() {
    let cluster = OwnCluster::start();
    let client = cluster.client().await;
    ensure_crd(&client).await;
    let label = unique("apisrv");
    let selector = format!("{TEST_LABEL}={label}");
    let seed = seed_directory_file();
    let logs = std::env::temp_dir().join(&label);
    let operator = OperatorProcess::start(
        &cluster.kubeconfig,
        &["--directory", "static", "--directory-file", seed.to_str().unwrap(), "--selector", &selector],
        &[],
        &logs,
    );
    operator.wait_ready().await;

    let tas = Api::<TeamAccess>::all(client.clone());
    let ns = unique("restart");
    let names: Vec<String> = (0..100).map(|i| format!("{label}-{i}")).collect();
    futures::future::join_all(names.iter().map(|name| {
        let (tas, ns, label) = (&tas, &ns, &label);
        async move {
            tas.patch(
                name,
                &PatchParams::apply("fault-test"),
                &Patch::Apply(team_manifest(name, label, "appdev", ns, &["get"])),
            )
            .await
            .unwrap()
        }
    }))
    .await;
    // While they reconcile, the API server goes away and comes back to a compacted etcd.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready_at_kill = tas
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|ta| is_ready(ta))
        .count();
    restart_apiserver_after_compaction(&cluster).await;
    assert!(ready_at_kill < 100, "the fault must hit work in flight: {ready_at_kill} of 100 were Ready at the kill");
    let restarted = tokio::time::Instant::now();
    wait_all_ready(&tas, &selector, 100, Duration::from_secs(120)).await;
    println!("100 TeamAccess all Ready {:.1} s after the API server restart", restarted.elapsed().as_secs_f64());
    assert_bindings_exact(&client, &ns, &names).await;

    // The operator's watches survived: a change after the restart is still seen.
    let rb_api = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    rb_api.delete(&format!("teamaccess-{}", names[0]), &Default::default()).await.unwrap();
    // The watches back off while the API server is away (kube-runtime: up to 30 s
    // between tries), so the first event after the restart may take that long.
    wait_for(Duration::from_secs(60), "drift repaired after the restart", || async {
        rb_api
            .get_opt(&format!("teamaccess-{}", names[0]))
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or("absent".to_string())
    })
    .await;
    // The watches really resumed from a compacted revision and had to relist.
    let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
    let gone: Vec<&str> = log.lines().filter(|l| l.contains("too old resource version")).take(2).collect();
    assert!(
        !gone.is_empty(),
        "no 410 Gone in the operator log; the compaction did not reach a watch:\n{}",
        operator.log_tail()
    );
    println!("{ready_at_kill} of 100 Ready at the kill; the watches saw: {}", gone.join(" | "));
    drop(operator);
}

#[tokio::test]
async fn an_operator_killed_during_cleanup_finishes_it_after_restart() {
    const N: usize = 20;
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let label = unique("kill");
    let selector = format!("{TEST_LABEL}={label}");
    let seed = seed_directory_file();
    // Twenty namespaces go at once here: the brake on mass deletion is lifted, it
    // has a test of its own.
    let args = [
        "--directory",
        "static",
        "--directory-file",
        seed.to_str().unwrap(),
        "--selector",
        &selector,
        "--max-namespace-deletions",
        "0",
    ];
    let logs = std::env::temp_dir().join(&label);
    let start = |dir: &Path, extra: &[&str]| {
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        OperatorProcess::start(&kubeconfig_path(), &args, &[], dir)
    };
    // The first operator cleans up one object at a time, so a kill right after
    // its first step lands with most of the work still to do.
    let mut first = start(&logs, &["--concurrency", "1"]);
    first.wait_ready().await;
    let tas = Api::<TeamAccess>::all(admin.clone());
    let names: Vec<String> = (0..N).map(|i| format!("{label}-{i}")).collect();
    let namespaces: Vec<String> = (0..N).map(|i| format!("{label}-ns{i}")).collect();
    for (name, ns) in names.iter().zip(&namespaces) {
        tas.patch(
            name,
            &PatchParams::apply("fault-test"),
            &Patch::Apply(team_manifest(name, &label, "appdev", ns, &["get"])),
        )
        .await
        .unwrap();
    }
    wait_all_ready(&tas, &selector, N, Duration::from_secs(60)).await;

    // Delete all and SIGKILL the operator as soon as its cleanup has begun:
    // the first of our RoleBindings is gone.
    let our_bindings = Api::<RoleBinding>::all(admin.clone());
    let bindings_left = || async {
        let list = our_bindings.list_metadata(&ListParams::default().labels(MANAGED_BY)).await.unwrap();
        list.items.iter().filter(|rb| rb.metadata.name.as_deref().is_some_and(|n| n.contains(&label))).count()
    };
    assert_eq!(bindings_left().await, N);
    let delete = kube::api::DeleteParams::default();
    futures::future::join_all(names.iter().map(|n| tas.delete(n, &delete))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bindings_left().await == N {
        assert!(tokio::time::Instant::now() < deadline, "the operator never began the cleanup");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    drop(first);
    // The kill hit work in flight: objects still held by our finalizer.
    let held: Vec<TeamAccess> = tas
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|ta| ta.metadata.finalizers.iter().flatten().any(|f| f == teamaccess_operator::api::FINALIZER))
        .collect();
    println!(
        "when the operator was killed: {} of {N} TeamAccess still held by the finalizer, {} RoleBindings left",
        held.len(),
        bindings_left().await
    );
    assert!(
        !held.is_empty(),
        "the first operator had finished every cleanup before the kill; nothing was left for the restart"
    );

    let second = start(&logs, &[]);
    second.wait_ready().await;
    for (name, ns) in names.iter().zip(&namespaces) {
        wait_gone(&tas, name, Duration::from_secs(60)).await;
        wait_gone(
            &Api::<RoleBinding>::namespaced(admin.clone(), ns),
            &format!("teamaccess-{name}"),
            Duration::from_secs(10),
        )
        .await;
        wait_gone(&Api::<Namespace>::all(admin.clone()), ns, Duration::from_secs(90)).await;
    }
}
