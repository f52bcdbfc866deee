//! The checks `make demo` shows, owned by a test: the seed's two teams through
//! `teamaccess-operator run` on the Graph emulator (the code path it uses
//! against Azure) with the AKS cluster's Cluster User Role, then
//! - the access matrix as the API server decides it (SubjectAccessReview): each
//!   team gets into its own namespace only, and the namespace stays the admin's;
//! - each group holds the Cluster User Role on the cluster exactly once (ARM);
//! - the operator's /metrics show it asked Graph and missed its cache first;
//! - with the chart's default namespace profile, the seed's namespaces enforce
//!   Pod Security "restricted": a privileged pod of appdev's is refused in dev.
//!
//! - opssre switched to `bind: Members`: akssre, removed from the group in the
//!   directory, is denied in sre within seconds, with no token to expire.
//!
//! The demo's last check, that a user who may only write TeamAccess objects
//! cannot grant cluster-admin, is `security::an_author_who_may_only_write_teamaccesses_can_grant_nothing`.
//!
//! The demo prints the same matrix and checks the same facts on its own
//! cluster; here the objects carry this test's label and names of their own, so
//! the test runs beside the others on the shared control plane.

mod support;

use std::time::Duration;

use azure_emulator::Emulator;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use support::{
    operator::{AKSDEV, AKSSRE, APPDEV, OPSSRE, SEED_DIRECTORY, TEST_LABEL},
    process::OperatorProcess,
    *,
};
use teamaccess_operator::api::TeamAccess;

const SUBSCRIPTION: &str = "6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b";
const CLUSTER_USER_ROLE: &str = "4abbcc35-e782-43d8-92c5-2d3f1bd2253f";

fn aks_cluster_id() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-contoso/providers/Microsoft.ContainerService/managedClusters/aks-contoso"
    )
}

/// The seed's two teams, on the Graph emulator, through the operator binary.
struct Seed {
    admin: Client,
    emulator: Emulator,
    op: OperatorProcess,
    label: String,
    /// (TeamAccess name, namespace) of appdev and of opssre.
    appdev: (String, String),
    opssre: (String, String),
}

impl Seed {
    async fn start() -> Self {
        let admin = admin_client().await;
        ensure_crd(&admin).await;
        let emulator = graph::emulator(SEED_DIRECTORY).await;
        let label = unique("seed");
        let selector = format!("{TEST_LABEL}={label}");
        let profiles = std::env::temp_dir().join(format!("{label}-profiles.yaml"));
        std::fs::write(&profiles, chart_namespace_profiles()).unwrap();
        let profiles = profiles.display().to_string();
        let args = [
            "--selector",
            &selector,
            "--namespace-profiles",
            &profiles,
            "--resync",
            "10m",
            "--membership-poll",
            "5s",
            "--aks-cluster-resource-id",
            &aks_cluster_id(),
            "--arm-endpoint",
            emulator.arm_url(),
        ]
        .map(String::from);
        let op = OperatorProcess::start_on_emulator(&emulator, &args, &label);
        op.wait_ready().await;
        let appdev = (format!("{label}-appdev-dev"), format!("{label}-dev"));
        let opssre = (format!("{label}-opssre-sre"), format!("{label}-sre"));
        Self { admin, emulator, op, label, appdev, opssre }
    }

    /// deploy/examples/seed/teamaccesses.yaml, under this test's names.
    async fn apply_the_seed(&self) {
        wait_authorship_stamps(&self.admin, "teamaccess-operator").await;
        let api = Api::<TeamAccess>::all(self.admin.clone());
        for ((name, namespace), group) in [(&self.appdev, "appdev"), (&self.opssre, "opssre")] {
            let manifest = team_manifest(name, &self.label, group, namespace, &["*"]);
            api.patch(name, &PatchParams::apply("seed-demo").force(), &Patch::Apply(manifest)).await.unwrap();
        }
        wait_all_ready(&api, &format!("{TEST_LABEL}={}", self.label), 2, Duration::from_secs(60)).await;
    }

    async fn delete_the_seed(&self) {
        let api = Api::<TeamAccess>::all(self.admin.clone());
        for (name, _) in [&self.appdev, &self.opssre] {
            let _ = api.delete(name, &DeleteParams::default()).await;
            wait_gone(&api, name, Duration::from_secs(60)).await;
        }
    }
}

/// One row of the demo's matrix: may `user` in `group` `verb` `resource`
/// (`name`) in `namespace` ("" for every namespace)?
struct Check<'a> {
    user: &'a str,
    group: &'a str,
    verb: &'a str,
    resource: &'a str,
    name: Option<&'a str>,
    namespace: &'a str,
    expected: bool,
}

/// The matrix the demo prints, as the API server answers it; every mismatch is named.
async fn access_matrix_mismatches(admin: &Client, checks: &[Check<'_>]) -> Vec<String> {
    let mut wrong = Vec::new();
    for c in checks {
        let answer = allowed_by_name(admin, c.user, &[c.group], c.verb, "", c.resource, c.name, c.namespace).await;
        println!(
            "{:<22} {:<6} {:<16} {:<28} {answer:<5} (expected {})",
            c.user,
            c.verb,
            c.name.map_or(c.resource.to_string(), |n| format!("{}/{n}", c.resource)),
            if c.namespace.is_empty() { "--all-namespaces" } else { c.namespace },
            c.expected
        );
        if answer != c.expected {
            wrong.push(format!("{} {} {} in {:?}: {answer}", c.user, c.verb, c.resource, c.namespace));
        }
    }
    wrong
}

/// What the API server answers `user` creating a privileged pod in `namespace`.
async fn privileged_pod_refusal(user: &str, groups: &[&str], namespace: &str) -> String {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": unique("privileged")},
        "spec": {"containers": [{"name": "root", "image": "mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine",
                                 "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let client = impersonating(user, groups).await;
    match Api::<Pod>::namespaced(client, namespace).create(&PostParams::default(), &pod).await {
        Ok(_) => "admitted".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_seed_gives_each_team_its_own_namespace_only_and_the_cluster_user_role_once() {
    let seed = Seed::start().await;
    seed.apply_the_seed().await;
    let (dev, sre) = (seed.appdev.1.as_str(), seed.opssre.1.as_str());
    let check = |user, group, verb, resource, namespace, expected| Check {
        user,
        group,
        verb,
        resource,
        name: None,
        namespace,
        expected,
    };
    let on_namespace =
        |verb, expected| Check { name: Some(dev), ..check(AKSDEV, APPDEV, verb, "namespaces", dev, expected) };
    let matrix = [
        check(AKSDEV, APPDEV, "create", "pods", dev, true),
        check(AKSDEV, APPDEV, "create", "pods", sre, false),
        check(AKSDEV, APPDEV, "list", "pods", "", false),
        check(AKSSRE, OPSSRE, "create", "pods", sre, true),
        check(AKSSRE, OPSSRE, "create", "pods", dev, false),
        check(AKSSRE, OPSSRE, "list", "pods", "", false),
        // The namespace and its limits stay the admin's.
        on_namespace("delete", false),
        on_namespace("patch", false),
        check(AKSDEV, APPDEV, "delete", "resourcequotas", dev, false),
        check(AKSDEV, APPDEV, "get", "resourcequotas", dev, true),
    ];
    // RBAC sees a new binding a moment after it is written.
    wait_allowed(&seed.admin, AKSDEV, &[APPDEV], "create", "", "pods", dev, true).await;
    wait_allowed(&seed.admin, AKSSRE, &[OPSSRE], "create", "", "pods", sre, true).await;
    let wrong = access_matrix_mismatches(&seed.admin, &matrix).await;
    assert!(wrong.is_empty(), "the access matrix differs from the seed's expectations: {wrong:#?}");

    // Each group holds the Cluster User Role on the cluster, once.
    let role =
        format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{CLUSTER_USER_ROLE}");
    for group in [APPDEV, OPSSRE] {
        let held: Vec<_> = seed
            .emulator
            .role_assignments()
            .into_iter()
            .filter(|a| a.principal_id == group && a.role_definition_id == role && a.scope == aks_cluster_id())
            .collect();
        assert_eq!(held.len(), 1, "group {group} holds the Cluster User Role once: {held:?}");
    }

    // The operator asked Graph, and its cache missed first.
    for series in
        [r#"teamaccess_graph_requests_total{status="200"}"#, r#"teamaccess_directory_cache_total{result="miss"}"#]
    {
        let value = seed.op.metric(series).await;
        assert!(value.is_some_and(|v| v >= 1.0), "{series} = {value:?}");
    }

    // The chart's default namespace profile: Pod Security "restricted" in the
    // seed's namespaces, as the API server enforces it on appdev's own request.
    let namespace = Api::<Namespace>::all(seed.admin.clone()).get(dev).await.unwrap();
    assert_eq!(namespace.labels()["pod-security.kubernetes.io/enforce"], "restricted");
    wait_default_service_account(&seed.admin, dev).await;
    let refusal = privileged_pod_refusal(AKSDEV, &[APPDEV], dev).await;
    assert!(refusal.contains("violates PodSecurity \"restricted:latest\""), "{refusal}");

    // The role is released only when no TeamAccess in the cluster wants the
    // group, and other tests bind the seed's groups too: tests/azure_roles.rs
    // checks the release, with groups of its own.
    seed.delete_the_seed().await;
}

#[tokio::test]
async fn a_team_in_members_mode_loses_a_removed_member_within_seconds() {
    let seed = Seed::start().await;
    seed.apply_the_seed().await;
    let api = Api::<TeamAccess>::all(seed.admin.clone());
    let (name, sre) = (&seed.opssre.0, seed.opssre.1.as_str());
    let patch = serde_json::json!({"spec": {"bind": "Members"}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for(Duration::from_secs(60), "opssre to bind its members", || async {
        let ta = api.get(name).await.map_err(|e| e.to_string())?;
        let total = ta.status.as_ref().and_then(|s| s.members.as_ref()).map(|m| m.total);
        if total == Some(1) { Ok(()) } else { Err(format!("status.members.total = {total:?}")) }
    })
    .await;
    // Without a groups claim: the binding names akssre.
    wait_allowed(&seed.admin, AKSSRE, &[], "create", "", "pods", sre, true).await;
    let akssre_id = "9d4f1a27-6b3c-4e8d-a5f2-1c7b3e9d0a12";
    assert!(seed.emulator.remove_member(OPSSRE, akssre_id));
    let removed = std::time::Instant::now();
    wait_allowed(&seed.admin, AKSSRE, &[], "create", "", "pods", sre, false).await;
    println!("akssre, removed from opssre, denied in {sre} after {:?}", removed.elapsed());
    seed.delete_the_seed().await;
}
