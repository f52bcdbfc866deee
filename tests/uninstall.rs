//! Uninstalling loses no team's data: deleting the CRD, `helm uninstall` and
//! `kubectl delete -k deploy/` each leave every team namespace and its contents.
//! Each test runs on a control plane of its own, since it deletes the CRD or
//! installs the chart's cluster-wide objects.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::rbac::v1::RoleBinding, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use support::{operator::TEST_LABEL, own_cluster::OwnCluster, process::OperatorProcess, *};
use teamaccess_operator::api::TeamAccess;

const CRD: &str = "teamaccesses.teamaccess.dev";

/// An operator (this build, static seed directory) for the objects labelled `label`.
fn operator(cluster: &OwnCluster, label: &str) -> OperatorProcess {
    let seed = seed_directory_file();
    let selector = format!("{TEST_LABEL}={label}");
    OperatorProcess::start(
        cluster.kubeconfig(),
        &["--directory", "static", "--directory-file", seed.to_str().unwrap(), "--selector", &selector],
        &[],
        &std::env::temp_dir().join(label),
    )
}

/// Two TeamAccess objects, Ready, each in a namespace the operator created, with a
/// ConfigMap of "team data" in each. Returns the namespaces.
async fn two_teams_with_data(client: &Client, label: &str) -> Vec<String> {
    let tas = Api::<TeamAccess>::all(client.clone());
    let mut namespaces = Vec::new();
    for group in ["appdev", "opssre"] {
        let name = format!("{label}-{group}");
        let ns = format!("{label}-{group}-ns");
        tas.patch(
            &name,
            &PatchParams::apply("uninstall-test"),
            &Patch::Apply(team_manifest(&name, label, group, &ns, &["get"])),
        )
        .await
        .unwrap();
        wait_teamaccess_ready(&tas, &name, Duration::from_secs(60)).await;
        write_team_data(client, &ns).await;
        namespaces.push(ns);
    }
    namespaces
}

/// Every namespace is there, not terminating, with its data; the bindings are gone.
async fn assert_teams_data_kept(client: &Client, label: &str, namespaces: &[String]) {
    for ns in namespaces {
        assert_team_data_kept(client, ns).await;
        let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns).list(&Default::default()).await.unwrap();
        assert!(
            !bindings.items.iter().any(|rb| rb.metadata.name.as_deref().is_some_and(|n| n.contains(label))),
            "the access went with the TeamAccess objects in {ns}"
        );
    }
}

async fn wait_crd_gone(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    wait_gone(&crds, CRD, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn deleting_the_crd_with_the_operator_running_keeps_every_namespace_and_its_data() {
    let cluster = OwnCluster::start();
    let client = cluster.client().await;
    ensure_crd(&client).await;
    let label = unique("crd");
    let op = operator(&cluster, &label);
    op.wait_ready().await;
    let namespaces = two_teams_with_data(&client, &label).await;

    Api::<CustomResourceDefinition>::all(client.clone()).delete(CRD, &DeleteParams::default()).await.unwrap();
    // The operator removes its bindings and finalizers, so the CRD really goes.
    wait_crd_gone(&client).await;
    assert_teams_data_kept(&client, &label, &namespaces).await;
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(log.contains("the TeamAccess CRD is being deleted"), "the log says why: {}", op.log_tail());
}

#[tokio::test]
async fn helm_uninstall_keeps_the_crd_the_teamaccess_objects_and_every_namespace() {
    let cluster = OwnCluster::start();
    let client = cluster.client().await;
    // The cluster is this test's own, so the release takes the chart's default
    // name, whose policies (teamaccess-operator-*) the operator below looks for.
    let release = "teamaccess-operator";
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/teamaccess-operator");
    let install = ["install", release, chart, "-n", "teamaccess-system", "--create-namespace", "--wait=false"];
    let (ok, out, err) = run_tool_on(cluster.kubeconfig(), "helm", &install, None);
    assert!(ok, "helm install:\n{out}\n{err}");
    let label = unique("helm");
    let op = operator(&cluster, &label);
    op.wait_ready().await;
    wait_authorship_stamps(&client, release).await;
    let namespaces = two_teams_with_data(&client, &label).await;

    let (ok, out, err) =
        run_tool_on(cluster.kubeconfig(), "helm", &["uninstall", release, "-n", "teamaccess-system"], None);
    assert!(ok, "helm uninstall:\n{out}\n{err}");
    // The operator's pod would stop with its Deployment.
    op.stop().await;
    // Helm never deletes a chart's CRDs: the TeamAccess objects stay, and so does
    // everything they made, until someone deletes them on purpose.
    assert!(Api::<CustomResourceDefinition>::all(client.clone()).get_opt(CRD).await.unwrap().is_some());
    let tas = Api::<TeamAccess>::all(client.clone());
    let left = tas.list(&kube::api::ListParams::default().labels(&format!("{TEST_LABEL}={label}"))).await.unwrap();
    assert_eq!(left.items.len(), 2);
    for ns in &namespaces {
        assert_team_data_kept(&client, ns).await;
    }
}

#[tokio::test]
async fn kubectl_delete_k_deploy_removes_the_operator_and_access_but_no_namespace() {
    let cluster = OwnCluster::start();
    let client = cluster.client().await;
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let (ok, out, err) = run_tool_on(cluster.kubeconfig(), "kubectl", &["apply", "--server-side", "-k", deploy], None);
    assert!(ok, "kubectl apply -k deploy/:\n{out}\n{err}");
    ensure_crd(&client).await;
    let label = unique("kustomize");
    // The kustomize Deployment has no node to run on here; the same binary runs as
    // a process, as its pod would, until the uninstall removes it.
    let op = operator(&cluster, &label);
    op.wait_ready().await;
    let namespaces = two_teams_with_data(&client, &label).await;

    let (ok, out, err) =
        run_tool_on(cluster.kubeconfig(), "kubectl", &["delete", "-k", deploy, "--timeout=120s"], None);
    assert!(ok, "kubectl delete -k deploy/:\n{out}\n{err}");
    wait_crd_gone(&client).await;
    assert_teams_data_kept(&client, &label, &namespaces).await;
    drop(op);
}
