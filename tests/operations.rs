//! The operator binary as it runs in production: leader election between two
//! processes, metrics that move, and readiness around startup and shutdown.

mod support;

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Event};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use support::{operator::TEST_LABEL, process::OperatorProcess, *};
use teamaccess_operator::api::TeamAccess;

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let ns = create_namespace(&admin, "leader").await;
    let label = unique("le");
    let selector = format!("{TEST_LABEL}={label}");
    let lease_seconds = 5;
    let seed = seed_directory_file();
    let args = [
        "--directory",
        "static",
        "--directory-file",
        seed.to_str().unwrap(),
        "--leader-election",
        "--lease-namespace",
        &ns,
        "--lease-name",
        "teamaccess-test",
        "--lease-duration",
        "5s",
        "--selector",
        &selector,
        "--operator-namespace",
        &ns,
    ];
    let logs = std::env::temp_dir().join(&label);
    let a = OperatorProcess::start(&kubeconfig_path(), &args, &[("POD_NAME", "op-a")], &logs);
    let b = OperatorProcess::start(&kubeconfig_path(), &args, &[("POD_NAME", "op-b")], &logs);
    a.wait_ready().await;
    b.wait_ready().await;

    let leases = Api::<Lease>::namespaced(admin.clone(), &ns);
    let holder = wait_for(Duration::from_secs(20), "a leader", || async {
        let lease = leases.get_opt("teamaccess-test").await.map_err(|e| e.to_string())?;
        lease.and_then(|l| l.spec?.holder_identity).ok_or_else(|| "no holder".to_string())
    })
    .await;
    let (leader, standby) = if holder.starts_with("op-a") { (a, b) } else { (b, a) };
    assert_eq!(leader.metric("teamaccess_leader").await, Some(1.0));
    assert_eq!(standby.metric("teamaccess_leader").await, Some(0.0));

    let tas = Api::<TeamAccess>::all(admin.clone());
    let first = format!("{label}-first");
    tas.patch(
        &first,
        &PatchParams::apply("le-test"),
        &Patch::Apply(team_manifest(&first, &label, "appdev", &unique("le1"), &["get"])),
    )
    .await
    .unwrap();
    wait_teamaccess_ready(&tas, &first, Duration::from_secs(30)).await;
    let count = "teamaccess_reconcile_duration_seconds_count";
    assert!(leader.metric(count).await.is_some_and(|n| n >= 1.0), "the leader reconciled");
    assert_eq!(standby.metric(count).await, Some(0.0), "the standby reconciled nothing");
    // As the API server saw it: every Event about the object came from the leader.
    let leader_name = if holder.starts_with("op-a") { "op-a" } else { "op-b" };
    let events = Api::<Event>::all(admin.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={first}")))
        .await
        .unwrap();
    let reporters: Vec<Option<String>> = events.items.iter().map(|e| e.reporting_instance.clone()).collect();
    assert!(!reporters.is_empty(), "the leader published Events about {first}");
    assert!(reporters.iter().all(|r| r.as_deref() == Some(leader_name)), "only the leader wrote: {reporters:?}");

    // The leader dies without releasing the Lease.
    leader.signal("KILL");
    let killed = tokio::time::Instant::now();
    let second = format!("{label}-second");
    tas.patch(
        &second,
        &PatchParams::apply("le-test"),
        &Patch::Apply(team_manifest(&second, &label, "appdev", &unique("le2"), &["get"])),
    )
    .await
    .unwrap();
    wait_teamaccess_ready(&tas, &second, Duration::from_secs(lease_seconds + 10)).await;
    println!(
        "failover: the standby reconciled a new TeamAccess {:.1} s after the leader was killed (lease {lease_seconds} s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(standby.metric("teamaccess_leader").await, Some(1.0));

    for name in [&first, &second] {
        let _ = tas.delete(name, &Default::default()).await;
    }
    for name in [&first, &second] {
        wait_gone(&tas, name, Duration::from_secs(30)).await;
    }
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn readyz_turns_ready_on_start_and_unready_on_shutdown() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let label = unique("rz");
    let selector = format!("{TEST_LABEL}={label}");
    let seed = seed_directory_file();
    let mut op = OperatorProcess::start(
        &kubeconfig_path(),
        &["--directory", "static", "--directory-file", seed.to_str().unwrap(), "--selector", &selector],
        &[],
        &std::env::temp_dir().join(&label),
    );
    op.wait_ready().await;
    assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
    op.signal("TERM");
    wait_for(Duration::from_secs(5), "/readyz to turn unready", || async {
        match op.get("/readyz").await {
            Some((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    op.wait_exit(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn the_binary_counts_its_graph_lookups_cache_and_api_requests_on_metrics() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let emulator = graph::emulator(operator::SEED_DIRECTORY).await;
    let label = unique("metrics");
    let selector = format!("{TEST_LABEL}={label}");
    let op = OperatorProcess::start_on_emulator(&emulator, &["--selector".to_string(), selector.clone()], &label);
    op.wait_ready().await;
    let tas = Api::<TeamAccess>::all(admin.clone());
    let (dev, sre) = (unique("dev"), unique("sre"));
    let (appdev, opssre) = (format!("{label}-appdev"), format!("{label}-opssre"));
    for (name, group, namespace) in [(&appdev, "appdev", &dev), (&opssre, "opssre", &sre)] {
        let manifest = team_manifest(name, &label, group, namespace, &["*"]);
        tas.patch(name, &PatchParams::apply("metrics-test"), &Patch::Apply(manifest)).await.unwrap();
    }
    wait_teamaccess_ready(&tas, &appdev, Duration::from_secs(30)).await;
    wait_teamaccess_ready(&tas, &opssre, Duration::from_secs(30)).await;

    // The counters of a running process move, so /metrics shows what Graph and
    // the API server cost.
    let graph_ok = op.metric("teamaccess_graph_requests_total{status=\"200\"}").await.unwrap_or(0.0);
    assert!(graph_ok >= 1.0, "Graph requests are counted: {graph_ok}");
    assert!(emulator.stats().graph_requests as f64 >= graph_ok, "no more than the emulator served");
    let misses = op.metric("teamaccess_directory_cache_total{result=\"miss\"}").await.unwrap_or(0.0);
    assert!(misses >= 2.0, "both cold lookups are cache misses: {misses}");
    let requests = op.kube_requests().await;
    // Per TeamAccess: the namespace, the Role, the RoleBinding, the status (the
    // admission policy added the finalizer), and the checks of its author.
    assert!(requests.writes >= 8.0, "{requests:?}");
    assert!(requests.reviews >= 2.0, "{requests:?}");
    assert!(requests.events >= 2.0, "{requests:?}");
    assert!(requests.watches >= 4.0, "the TeamAccess, Role, RoleBinding and Namespace watches: {requests:?}");

    for name in [&appdev, &opssre] {
        tas.delete(name, &Default::default()).await.unwrap();
    }
    for name in [&appdev, &opssre] {
        wait_gone(&tas, name, Duration::from_secs(30)).await;
    }
    op.stop().await;
}

/// The operator says when the admission policies its safety rests on are not in
/// force: a warning naming them, and teamaccess_admission_policies_missing.
#[tokio::test]
async fn missing_admission_policies_are_reported() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let label = unique("policies");
    let seed = seed_directory_file();
    let selector = format!("{TEST_LABEL}={label}");
    let start = |prefix: &str| {
        OperatorProcess::start(
            &kubeconfig_path(),
            &[
                "--directory",
                "static",
                "--directory-file",
                seed.to_str().unwrap(),
                "--selector",
                &selector,
                "--admission-policy-prefix",
                prefix,
            ],
            &[],
            &std::env::temp_dir().join(&label),
        )
    };
    let reports_missing = |op: OperatorProcess, expected: f64| async move {
        op.wait_ready().await;
        wait_for(Duration::from_secs(10), &format!("{expected} missing policies to be reported"), || async {
            match op.metric("teamaccess_admission_policies_missing").await {
                Some(n) if n == expected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        op
    };
    // deploy/admission-policy.yaml's, which ensure_crd installed: all in force.
    drop(reports_missing(start("teamaccess-operator"), 0.0).await);
    let absent = reports_missing(start("no-such-release"), 4.0).await;
    let log = absent.log_tail();
    assert!(
        log.contains("admission policies are missing")
            && log.contains("no-such-release-integrity")
            && log.contains("no-such-release-authorship"),
        "the warning names them: {log}"
    );
}
