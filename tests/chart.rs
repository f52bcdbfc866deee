//! The Helm chart and the kustomize manifests against the real API server, and
//! the operator run as the chart's ServiceAccount: its RBAC must be enough for
//! the seed's scenario, and a missing rule must show as a Forbidden condition.

mod support;

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{ResourceQuota, ServiceAccount},
    rbac::v1::ClusterRole,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use support::{operator::*, process::OperatorProcess, *};
use teamaccess_operator::api::TeamAccess;

const CHART: &str = "charts/teamaccess-operator";

fn all_features_values() -> &'static str {
    r#"
replicaCount: 2
directory:
  type: static
  static:
    groups: [{objectId: 5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01, displayName: appdev}]
    users: [{objectId: 0b9c7c52-1e6d-4a8a-9b4c-6a6f7b1f2e11, userPrincipalName: aksdev@contoso.com}]
azure:
  tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47
  clientId: 3b1f8e5a-2c4d-4e6f-8a9b-0c1d2e3f4a5b
  credential: workload
  workloadIdentity: {enabled: true}
  clusterResourceId: /subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks
  armEndpoint: "https://management.example"
graph: {cloud: usgov, caConfigMap: graph-ca, endpoint: "https://graph.example", authorityHost: "https://login.example", cacheTtl: 1m}
metrics: {serviceMonitor: {enabled: true, labels: {release: prometheus}}}
networkPolicy: {enabled: true}
selector: "team=a"
extraEnv: [{name: RUST_LOG, value: debug}]
"#
}

/// Server-side dry-run applies every object of a rendered manifest.
fn dry_run_apply(manifest: &str) {
    let (ok, out, err) = run_tool(
        "kubectl",
        &["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"],
        Some(manifest),
    );
    assert!(ok, "server-side dry-run failed:\n{err}\n{out}");
    let applied = out.lines().filter(|l| l.contains("serverside-applied")).count();
    let documents = manifest.matches("\nkind: ").count() + usize::from(manifest.starts_with("kind: "));
    assert_eq!(applied, documents, "every rendered object is accepted:\n{out}");
}

/// A stand-in for the Prometheus operator's ServiceMonitor CRD, so the optional
/// ServiceMonitor can be checked by the API server too.
async fn ensure_servicemonitor_crd() {
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors, listKind: ServiceMonitorList, singular: servicemonitor}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    let (ok, _, err) = run_tool("kubectl", &["apply", "--server-side", "-f", "-"], Some(crd));
    assert!(ok, "{err}");
    let (ok, _, err) = run_tool(
        "kubectl",
        &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com"],
        None,
    );
    assert!(ok, "{err}");
}

#[tokio::test]
async fn the_chart_lints_and_every_rendered_object_is_accepted_by_the_api_server() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    ensure_servicemonitor_crd().await;
    let ns = create_namespace(&admin, "chart-dry").await;
    let (ok, out, err) = run_tool("helm", &["lint", CHART, "--strict"], None);
    assert!(ok, "helm lint:\n{out}\n{err}");

    let (ok, defaults, err) = run_tool("helm", &["template", "ta", CHART, "--namespace", &ns], None);
    assert!(ok, "{err}");
    dry_run_apply(&defaults);

    let values = std::env::temp_dir().join(format!("{}-values.yaml", unique("all")));
    std::fs::write(&values, all_features_values()).unwrap();
    let (ok, everything, err) =
        run_tool("helm", &["template", "ta", CHART, "--namespace", &ns, "-f", values.to_str().unwrap()], None);
    assert!(ok, "{err}");
    for kind in ["ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"] {
        assert!(everything.contains(&format!("kind: {kind}")), "all features render a {kind}");
    }
    assert!(everything.contains("azure.workload.identity/use: \"true\""));
    assert!(everything.contains("azure.workload.identity/client-id: 3b1f8e5a-2c4d-4e6f-8a9b-0c1d2e3f4a5b"));
    assert!(
        everything.contains("name: TEAMACCESS_AKS_CLUSTER_RESOURCE_ID"),
        "azure.clusterResourceId reaches the operator"
    );
    assert!(everything.contains("name: TEAMACCESS_ARM_ENDPOINT"));
    dry_run_apply(&everything);
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn the_kustomize_base_renders_objects_the_api_server_accepts() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let (ok, rendered, err) = run_tool("kubectl", &["kustomize", "deploy/"], None);
    assert!(ok, "{err}");
    for kind in ["Namespace", "CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"] {
        assert!(rendered.contains(&format!("kind: {kind}")), "deploy/ renders a {kind}");
    }
    // Namespaced objects need their namespace to exist for a dry run.
    let (_, _, _) = run_tool("kubectl", &["create", "namespace", "teamaccess-system"], None);
    dry_run_apply(&rendered);
}

#[tokio::test]
async fn values_schema_rejects_bad_values() {
    for (set, expected) in [
        ("logFormat=xml", "/logFormat"),
        ("replicaCount=0", "/replicaCount"),
        ("directory.type=ldap", "/directory/type"),
        ("resync=soon", "/resync"),
        ("unknownValue=1", "unknownValue"),
        // An empty or padded entry would protect nothing: refused, not ignored.
        ("protectedNamespaces={prod,}", "/protectedNamespaces/1"),
        ("protectedNamespaces={ prod}", "/protectedNamespaces/0"),
        ("allowedClusterRoles={view,}", "/allowedClusterRoles/1"),
        ("admissionPolicy.enabled=maybe", "/admissionPolicy/enabled"),
        ("azure.clusterResourceId=my-cluster", "/azure/clusterResourceId"),
    ] {
        let (ok, _, err) = run_tool("helm", &["template", "ta", CHART, "--set", set], None);
        assert!(!ok, "--set {set} must be rejected");
        assert!(err.contains(expected), "--set {set}: {err}");
    }
    let (ok, _, err) = run_tool(
        "helm",
        &["template", "ta", CHART, "--set", "replicaCount=2", "--set", "leaderElection.enabled=false"],
        None,
    );
    assert!(!ok && err.contains("needs leaderElection.enabled"), "{err}");
}

/// A kubeconfig that authenticates with `token` only, for the test cluster.
fn token_kubeconfig(token: &str) -> PathBuf {
    let mut kc = Kubeconfig::read_from(kubeconfig_path()).unwrap();
    for named in &mut kc.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() });
    }
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("sa")));
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn the_operator_runs_the_seed_scenario_with_only_the_charts_rbac() {
    let admin = admin_client().await;
    ensure_crd(&admin).await;
    let ns = unique("chart-sa");
    let release = unique("ta");
    let (ok, out, err) = run_tool(
        "helm",
        &[
            "install",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--create-namespace",
            "--set",
            "directory.type=static",
            "--set",
            "crds.install=false",
        ],
        None,
    );
    assert!(ok, "helm install:\n{out}\n{err}");
    let service_account = format!("{release}-teamaccess-operator");

    // The operator runs outside the cluster, authenticated only as that ServiceAccount.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create_token_request(&service_account, &PostParams::default(), &request)
        .await
        .expect("a token for the chart's ServiceAccount")
        .status
        .and_then(|s| s.token)
        .unwrap();
    let kubeconfig = token_kubeconfig(&token);
    let label = unique("chart");
    let seed_file = seed_directory_file();
    let selector = format!("{TEST_LABEL}={label}");
    // The chart's default namespace profile: its RBAC must cover the guardrails too.
    let profiles = std::env::temp_dir().join(format!("{label}-profiles.yaml"));
    std::fs::write(&profiles, chart_namespace_profiles()).unwrap();
    let operator = OperatorProcess::start(
        &kubeconfig,
        &[
            "--namespace-profiles",
            profiles.to_str().unwrap(),
            "--directory",
            "static",
            "--directory-file",
            seed_file.to_str().unwrap(),
            "--operator-namespace",
            &ns,
            "--leader-election",
            "--lease-namespace",
            &ns,
            "--lease-duration",
            "5s",
            "--selector",
            &selector,
            // As the chart's Deployment sets it: this release's policies.
            "--admission-policy-prefix",
            &service_account,
        ],
        &[("POD_NAME", "chart-test")],
        &std::env::temp_dir().join(&label),
    );
    operator.wait_ready().await;
    wait_authorship_stamps(&admin, &service_account).await;

    let tas = Api::<TeamAccess>::all(admin.clone());
    let team = |name: &str, group: &str, namespace: &str| team_manifest(name, &label, group, namespace, &["*"]);
    let (dev, sre) = (unique("dev"), unique("sre"));
    let (appdev, opssre) = (format!("{label}-appdev"), format!("{label}-opssre"));
    for (name, group, namespace) in [(&appdev, "appdev", &dev), (&opssre, "opssre", &sre)] {
        tas.patch(name, &PatchParams::apply("chart-test"), &Patch::Apply(team(name, group, namespace))).await.unwrap();
    }
    wait_teamaccess_ready(&tas, &appdev, Duration::from_secs(30)).await;
    wait_teamaccess_ready(&tas, &opssre, Duration::from_secs(30)).await;
    // The default profile's guardrails, written with only the chart's RBAC.
    let quota = Api::<ResourceQuota>::namespaced(admin.clone(), &dev).get_opt("teamaccess-profile").await.unwrap();
    assert!(quota.is_some(), "the chart's default namespace profile is applied");
    for namespace in [&dev, &sre] {
        wait_default_service_account(&admin, namespace).await;
    }
    wait_pod_create_status(AKSDEV, &[APPDEV], &dev, 200).await;
    assert_eq!(create_pod_as(AKSDEV, &[APPDEV], &sre).await, 403);
    wait_pod_create_status(AKSSRE, &[OPSSRE], &sre, 200).await;
    assert_eq!(list_all_pods_as(AKSSRE, &[OPSSRE]).await, 403);
    assert!(
        operator.metric("teamaccess_reconciles_total{result=\"ready\",reason=\"Reconciled\"}").await.unwrap_or(0.0)
            >= 2.0,
        "metrics move"
    );

    // The chart lets the operator bind the allowed ClusterRoles (view, edit,
    // admin) and no other: spec.clusterRole edit works with exactly that.
    let sa_user = format!("system:serviceaccount:{ns}:{service_account}");
    let sa_groups = ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")];
    let sa_groups: Vec<&str> = sa_groups.iter().map(String::as_str).collect();
    let rbac = "rbac.authorization.k8s.io";
    for (cluster_role, expected) in [("edit", true), ("admin", true), ("cluster-admin", false)] {
        let answer =
            allowed_by_name(&admin, &sa_user, &sa_groups, "bind", rbac, "clusterroles", Some(cluster_role), &dev).await;
        assert_eq!(answer, expected, "the operator may bind {cluster_role}: {answer}");
    }
    let editors = format!("{label}-editors");
    let mut edit = team(&editors, "appdev", &dev);
    edit["spec"] = serde_json::json!({"group": {"displayName": "appdev"}, "namespace": dev, "clusterRole": "edit"});
    tas.patch(&editors, &PatchParams::apply("chart-test"), &Patch::Apply(edit)).await.unwrap();
    wait_teamaccess_ready(&tas, &editors, Duration::from_secs(30)).await;

    // Take one permission away: the operator reports it, and keeps running.
    let cluster_roles = Api::<ClusterRole>::all(admin.clone());
    let mut role = cluster_roles.get(&service_account).await.unwrap();
    let rules = role.rules.take().unwrap_or_default();
    role.rules = Some(
        rules
            .into_iter()
            .filter(|r| !r.resources.clone().unwrap_or_default().contains(&"rolebindings".to_string()))
            .collect(),
    );
    role.metadata.managed_fields = None;
    cluster_roles.replace(&service_account, &PostParams::default(), &role).await.unwrap();
    let third = format!("{label}-third");
    tas.patch(&third, &PatchParams::apply("chart-test"), &Patch::Apply(team(&third, "appdev", &unique("third"))))
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "a Forbidden condition", || async {
        let ta = tas.get(&third).await.map_err(|e| e.to_string())?;
        let ready = ta.status.map(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Ready");
        match ready {
            Some(c) if c.reason == "Forbidden" && c.message.contains("RoleBinding") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut operator = operator;
    assert!(operator.is_running(), "a missing permission must not crash the operator: {}", operator.log_tail());

    // Put the rule back and clean up through the operator's finalizer.
    let (ok, _, err) = run_tool(
        "helm",
        &[
            "upgrade",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--set",
            "directory.type=static",
            "--set",
            "crds.install=false",
        ],
        None,
    );
    assert!(ok, "{err}");
    for name in [&appdev, &opssre, &third, &editors] {
        let _ = tas.delete(name, &Default::default()).await;
    }
    for name in [&appdev, &opssre, &third, &editors] {
        wait_gone(&tas, name, Duration::from_secs(30)).await;
    }
    operator.signal("TERM");
    operator.wait_exit(Duration::from_secs(20)).await;
    let _ = run_tool("helm", &["uninstall", &release, "--namespace", &ns], None);
    delete_namespace(&admin, &ns).await;
}

/// The chart's version and appVersion are the crate's, and its default image is
/// the one the release workflow publishes for that version.
#[test]
fn the_chart_version_app_version_and_default_image_follow_the_crate() {
    let crate_version = env!("CARGO_PKG_VERSION");
    let chart =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(CHART).join("Chart.yaml")).unwrap();
    let field = |name: &str| {
        chart
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("Chart.yaml has no {name}"))
    };
    assert_eq!(field("version"), crate_version, "Chart.yaml version follows Cargo.toml");
    assert_eq!(field("appVersion"), crate_version, "Chart.yaml appVersion follows Cargo.toml");
    let (ok, rendered, err) = run_tool("helm", &["template", "ta", CHART], None);
    assert!(ok, "{err}");
    assert!(
        rendered.contains(&format!("image: \"ghcr.io/teamaccess-operator/teamaccess-operator:{crate_version}\"")),
        "the default image is the release's: {rendered}"
    );
    let release =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/release.yml"))
            .unwrap();
    assert!(release.contains("IMAGE: ghcr.io/${{ needs.version.outputs.owner }}/teamaccess-operator"), "{release}");
    assert!(release.contains("tags: ${{ env.IMAGE }}:${{ needs.version.outputs.version }}"), "{release}");
}
