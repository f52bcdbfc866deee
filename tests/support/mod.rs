//! Shared helpers of the integration tests. They run against the real control
//! plane named by TEAMACCESS_TEST_KUBECONFIG (`make test` starts one).
#![allow(dead_code)] // each test binary uses its own part of the helpers

pub mod arm;
pub mod authors;
pub mod operator;
pub mod own_cluster;
pub mod process;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};

pub const KUBECONFIG_ENV: &str = "TEAMACCESS_TEST_KUBECONFIG";

pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os(KUBECONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "{KUBECONFIG_ENV} is not set. These tests need a real control plane: run `make test` (it starts one), \
             or start one with `make cluster-up` and export {KUBECONFIG_ENV}=<the path it prints>"
        ),
    }
}

fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn config_with(auth: impl FnOnce(&mut Kubeconfig)) -> Config {
    config_from(&kubeconfig_path(), auth).await
}

async fn config_from(path: &Path, auth: impl FnOnce(&mut Kubeconfig)) -> Config {
    install_crypto_provider();
    let mut kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("cannot read {KUBECONFIG_ENV}={}: {e}", path.display()));
    auth(&mut kubeconfig);
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()))
}

/// A client with the credentials of the kubeconfig at `path` (a control plane a
/// test or the benchmark started itself). Long reads are allowed: a list of
/// thousands of objects on a busy machine takes a while.
pub async fn client_for(path: &Path) -> Client {
    let mut config = config_from(path, |_| {}).await;
    config.read_timeout = Some(Duration::from_secs(60));
    Client::try_from(config).expect("client")
}

/// A client with the cluster-admin credentials of the test cluster.
pub async fn admin_client() -> Client {
    Client::try_from(config_with(|_| {}).await).expect("client")
}

/// A client that acts as `user` in `groups`, the way the API server sees an Entra
/// ID user whose token carries group objectIds.
pub async fn impersonating(user: &str, groups: &[&str]) -> Client {
    let mut config = config_with(|_| {}).await;
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).expect("client")
}

/// A client that authenticates with a bearer token only.
pub async fn with_token(token: &str) -> Client {
    let config = config_with(|kc| {
        for named in &mut kc.auth_infos {
            named.auth_info = Some(AuthInfo { token: Some(token.to_string().into()), ..Default::default() });
        }
    })
    .await;
    Client::try_from(config).expect("client")
}

/// A name no other test uses: prefix plus a random suffix.
pub fn unique(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..6).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    format!("{prefix}-{suffix}")
}

/// Polls `check` every 250 ms until it returns Some, or panics after `timeout`
/// with `what` and the last state seen.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Creates a namespace with a unique name.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    name
}

/// Deletes a namespace, ignoring one that is already gone.
pub async fn delete_namespace(client: &Client, name: &str) {
    match Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => panic!("delete namespace {name}: {e}"),
    }
}

/// Waits until a namespace is really gone (not merely Terminating).
pub async fn wait_namespace_gone(client: &Client, name: &str, timeout: Duration) {
    let api = Api::<Namespace>::all(client.clone());
    wait_for(timeout, &format!("namespace {name} to be gone"), || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(ns)) => Err(format!("phase {:?}", ns.status.and_then(|s| s.phase))),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Whether `namespace` is gone or being deleted.
pub async fn namespace_going(client: &Client, namespace: &str) -> bool {
    match Api::<Namespace>::all(client.clone()).get_opt(namespace).await.unwrap() {
        None => true,
        Some(ns) => ns.metadata.deletion_timestamp.is_some(),
    }
}

/// Writes a ConfigMap of "team data" into `namespace`: what no uninstall may touch.
pub async fn write_team_data(client: &Client, namespace: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let data: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "team-data"}, "data": {"important": "yes"}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), namespace).create(&PostParams::default(), &data).await.unwrap();
}

/// Puts a ConfigMap that someone else's finalizer holds into `namespace`: once
/// deleted, the namespace stays Terminating until `release_namespace`.
pub async fn hold_namespace(client: &Client, namespace: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let held: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), namespace).create(&PostParams::default(), &held).await.unwrap();
}

/// Lets the namespace `hold_namespace` held finish deleting.
pub async fn release_namespace(client: &Client, namespace: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let release = kube::api::Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    configmaps.patch("held", &kube::api::PatchParams::default(), &release).await.unwrap();
}

/// `namespace` is there, not being deleted, and still holds its team data.
pub async fn assert_team_data_kept(client: &Client, namespace: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let live = Api::<Namespace>::all(client.clone()).get_opt(namespace).await.unwrap();
    let live = live.unwrap_or_else(|| panic!("namespace {namespace} was deleted"));
    assert!(live.metadata.deletion_timestamp.is_none(), "namespace {namespace} is being deleted");
    let data = Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt("team-data").await.unwrap();
    assert_eq!(
        data.and_then(|cm| cm.data).unwrap_or_default().get("important").map(String::as_str),
        Some("yes"),
        "{namespace} keeps its data"
    );
}

/// The HTTP status of an API error, or 0 for other errors.
pub fn api_status<T>(result: &Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(_) => 0,
    }
}

/// Installs (or updates) the TeamAccess CRD from the Rust types and waits until
/// it is Established, and installs the admission policy as deploy/ ships it, so
/// every test's writes (and the operator's) pass through it as they would in a
/// real installation. Every test binary that uses TeamAccess calls this first.
pub async fn ensure_crd(client: &Client) {
    install_admission_policies(client).await;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{
        CustomResourceExt,
        api::{Patch, PatchParams},
    };
    let crd = teamaccess_operator::api::TeamAccess::crd();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = "teamaccesses.teamaccess.dev";
    api.patch(name, &PatchParams::apply("teamaccess-tests").force(), &Patch::Apply(&crd))
        .await
        .expect("apply the TeamAccess CRD");
    wait_for(Duration::from_secs(30), "the CRD to be Established", || async {
        let crd = api.get(name).await.map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established { Ok(()) } else { Err("not Established".into()) }
    })
    .await;
    // The API server serves a new CRD's schema a moment after Established; a list
    // that succeeds means requests are routed to it.
    let tas = Api::<teamaccess_operator::api::TeamAccess>::all(client.clone());
    wait_for(Duration::from_secs(30), "TeamAccess to be served", || async {
        tas.list(&kube::api::ListParams::default().limit(1)).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    wait_authorship_stamps(client, "teamaccess-operator").await;
}

/// The validating admission policies and their bindings, exactly as
/// `deploy/admission-policy.yaml` (generated from the chart) has them.
pub fn shipped_admission_policies() -> (
    Vec<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>,
    Vec<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>,
) {
    let (mut policies, mut bindings) = (Vec::new(), Vec::new());
    for value in shipped_policy_documents() {
        match value["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => policies.push(serde_json::from_value(value).expect("a policy")),
            Some("ValidatingAdmissionPolicyBinding") => {
                bindings.push(serde_json::from_value(value).expect("a binding"))
            }
            _ => {}
        }
    }
    assert!(!policies.is_empty() && policies.len() == bindings.len(), "a binding per validating policy");
    (policies, bindings)
}

/// The authorship policy (a MutatingAdmissionPolicy) and its binding, as
/// `deploy/admission-policy.yaml` has them.
pub fn shipped_authorship_policy() -> (
    k8s_openapi::api::admissionregistration::v1::MutatingAdmissionPolicy,
    k8s_openapi::api::admissionregistration::v1::MutatingAdmissionPolicyBinding,
) {
    let documents = shipped_policy_documents();
    let find = |kind: &str| {
        let found: Vec<_> = documents.iter().filter(|v| v["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} in deploy/admission-policy.yaml");
        found[0].clone()
    };
    (
        serde_json::from_value(find("MutatingAdmissionPolicy")).expect("the authorship policy"),
        serde_json::from_value(find("MutatingAdmissionPolicyBinding")).expect("its binding"),
    )
}

fn shipped_policy_documents() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/admission-policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let documents = yaml_documents(&text);
    for value in &documents {
        let kind = value["kind"].as_str().unwrap_or_default();
        assert!(
            kind.ends_with("AdmissionPolicy") || kind.ends_with("AdmissionPolicyBinding"),
            "unexpected {kind} in {}",
            path.display()
        );
    }
    documents
}

/// The documents of a multi-document YAML text (such as `helm template` prints),
/// without the empty and comment-only ones.
pub fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    text.split("\n---")
        .filter(|doc| {
            doc.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---")
        })
        .map(|doc| serde_saphyr::from_str(doc).expect("a YAML document"))
        .collect()
}

/// Applies the shipped admission policies and waits until the authorship
/// policy stamps writes: the API server takes a moment to start enforcing a new
/// policy, and a TeamAccess written in that moment carries no stamp, so the
/// operator would rightly grant nothing for it. The CRD must be served.
pub async fn ensure_admission_policy(client: &Client) {
    install_admission_policies(client).await;
    wait_authorship_stamps(client, "teamaccess-operator").await;
}

/// Applies the shipped admission policies (server-side apply, idempotent).
async fn install_admission_policies(client: &Client) {
    let (policies, bindings) = shipped_admission_policies();
    let (authorship, authorship_binding) = shipped_authorship_policy();
    apply_all(client, policies).await;
    apply_all(client, bindings).await;
    apply_all(client, [authorship]).await;
    apply_all(client, [authorship_binding]).await;
}

/// Server-side applies cluster-scoped objects as the tests' field manager.
async fn apply_all<K>(client: &Client, objects: impl IntoIterator<Item = K>)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    use kube::{
        ResourceExt,
        api::{Patch, PatchParams},
    };
    let params = PatchParams::apply("teamaccess-tests").force();
    for object in objects {
        let name = object.name_any();
        Api::<K>::all(client.clone())
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&())));
    }
}

/// Waits until writes of TeamAccess objects are stamped by the authorship
/// policy of `prefix` (a server-side dry run shows the stamp without writing).
pub async fn wait_authorship_stamps(client: &Client, prefix: &str) {
    use teamaccess_operator::{
        api::{GroupSelector, TeamAccess, TeamAccessSpec},
        reconcile::authorship::stamp_key,
    };
    let api = Api::<TeamAccess>::all(client.clone());
    let key = stamp_key(prefix, "epoch");
    wait_for(Duration::from_secs(60), "the authorship policy to stamp writes", || async {
        let probe = TeamAccess::new(
            &unique("stamp-probe"),
            TeamAccessSpec::new(GroupSelector::by_object_id("00000000-0000-0000-0000-000000000000"), "stamp-probe"),
        );
        let dry_run = PostParams { dry_run: true, ..Default::default() };
        let created = api.create(&dry_run, &probe).await.map_err(|e| e.to_string())?;
        if created.metadata.annotations.unwrap_or_default().contains_key(&key) {
            Ok(())
        } else {
            Err("no stamp yet".into())
        }
    })
    .await;
}

/// Creates a pod as `user` in `groups` (impersonated) and returns the HTTP status:
/// 200 when created, 403 when RBAC forbids it.
pub async fn create_pod_as(user: &str, groups: &[&str], namespace: &str) -> u16 {
    use k8s_openapi::api::core::v1::Pod;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": unique("nginx")},
        // Within Pod Security "restricted", which the chart's default namespace
        // profile enforces: a refusal here is RBAC's, never the profile's.
        "spec": {"containers": [{"name": "nginx", "image": "mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine",
                                 "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                                     "runAsUser": 101, "capabilities": {"drop": ["ALL"]},
                                                     "seccompProfile": {"type": "RuntimeDefault"}}}]}
    }))
    .unwrap();
    let client = impersonating(user, groups).await;
    match Api::<Pod>::namespaced(client, namespace).create(&PostParams::default(), &pod).await {
        Ok(_) => 200,
        // Only RBAC's own denial counts as 403; a missing ServiceAccount also gives
        // 403 and must not pass for a denial.
        Err(kube::Error::Api(s)) if s.code == 403 && !s.message.contains("cannot create resource") => 0,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("create pod as {user}: {e}"),
    }
}

/// The namespace profiles file the chart's default values render
/// (namespaceProfiles), as the operator reads it.
pub fn chart_namespace_profiles() -> String {
    let args =
        ["template", "t", "charts/teamaccess-operator", "--show-only", "templates/namespace-profiles-configmap.yaml"];
    let (ok, rendered, err) = run_tool("helm", &args, None);
    assert!(ok, "{err}");
    let configmap: serde_json::Value = serde_saphyr::from_str(&rendered).expect("the ConfigMap parses");
    configmap["data"]["profiles.yaml"].as_str().expect("data.profiles.yaml").to_string()
}

/// Lists pods across all namespaces as `user` in `groups` and returns the HTTP status.
pub async fn list_all_pods_as(user: &str, groups: &[&str]) -> u16 {
    use k8s_openapi::api::core::v1::Pod;
    let client = impersonating(user, groups).await;
    api_status(&Api::<Pod>::all(client).list(&Default::default()).await)
}

/// Asks the API server whether `user` in `groups` may `verb` `resource` of
/// `api_group` in `namespace` (a SubjectAccessReview).
pub async fn allowed(
    admin: &Client,
    user: &str,
    groups: &[&str],
    verb: &str,
    api_group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    allowed_by_name(admin, user, groups, verb, api_group, resource, None, namespace).await
}

/// `allowed`, for the object called `name` when given.
#[allow(clippy::too_many_arguments)]
pub async fn allowed_by_name(
    admin: &Client,
    user: &str,
    groups: &[&str],
    verb: &str,
    api_group: &str,
    resource: &str,
    name: Option<&str>,
    namespace: &str,
) -> bool {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some(verb.into()),
                group: Some(api_group.into()),
                resource: Some(resource.into()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.expect("SubjectAccessReview status").allowed
}

/// Waits until a SubjectAccessReview answers `expected` for `user` in `groups`
/// (RBAC sees a new or removed binding a moment after it is written).
#[allow(clippy::too_many_arguments)]
pub async fn wait_allowed(
    admin: &Client,
    user: &str,
    groups: &[&str],
    verb: &str,
    api_group: &str,
    resource: &str,
    namespace: &str,
    expected: bool,
) {
    let what = format!(
        "{user} {groups:?} to be {} to {verb} {resource} in {namespace}",
        if expected { "allowed" } else { "denied" }
    );
    wait_for(Duration::from_secs(15), &what, || async {
        let answer = allowed(admin, user, groups, verb, api_group, resource, namespace).await;
        if answer == expected { Ok(()) } else { Err(format!("allowed = {answer}")) }
    })
    .await
}

/// Waits until an impersonated pod creation gives `expected` (RBAC sees new
/// bindings through an informer, a moment after they are written).
pub async fn wait_pod_create_status(user: &str, groups: &[&str], namespace: &str, expected: u16) {
    wait_for(
        Duration::from_secs(15),
        &format!("{user} creating a pod in {namespace} to get HTTP {expected}"),
        || async {
            match create_pod_as(user, groups, namespace).await {
                code if code == expected => Ok(()),
                code => Err(format!("HTTP {code}")),
            }
        },
    )
    .await
}

/// The Graph emulator and a Graph directory that talks to it through the real
/// azure_identity client-secret credential, over HTTPS with the emulator's CA.
pub mod graph {
    use std::{sync::Arc, time::Duration};

    use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, TENANT_ID};
    use teamaccess_operator::{
        azure::credential::{self, Cloud, CredentialKind, CredentialSettings},
        backoff::Backoff,
        directory::{
            file_format::DirectoryFile,
            graph::{GraphDirectory, GraphSettings},
        },
    };

    pub async fn emulator(directory_yaml: &str) -> Emulator {
        emulator_of(DirectoryFile::parse(directory_yaml).expect("directory YAML")).await
    }

    pub async fn emulator_of(directory: DirectoryFile) -> Emulator {
        let dir = std::env::temp_dir().join(super::unique("azure-emulator"));
        Emulator::start(directory, &dir).await.expect("start the emulator")
    }

    /// An HTTP client that trusts the emulator's CA, as `--ca-file` sets it up.
    pub fn http(emulator: &Emulator) -> reqwest::Client {
        let pem = std::fs::read(emulator.ca_path()).unwrap();
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap()
    }

    pub fn secret_settings(emulator: &Emulator) -> CredentialSettings {
        CredentialSettings {
            kind: Some(CredentialKind::Secret),
            tenant_id: Some(TENANT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            federated_token_file: None,
            authority_host: Some(emulator.url().to_string()),
        }
    }

    pub fn fast_settings(emulator: &Emulator) -> GraphSettings {
        GraphSettings {
            endpoint: emulator.url().to_string(),
            backoff: Backoff::GRAPH.starting_at(Duration::from_millis(100)),
            ..Default::default()
        }
    }

    pub fn directory_with(
        emulator: &Emulator,
        credential: &CredentialSettings,
        settings: GraphSettings,
    ) -> Arc<GraphDirectory> {
        let http = http(emulator);
        let (credential, _) = credential::build(credential, Cloud::Public, http.clone()).expect("credential");
        Arc::new(GraphDirectory::new(http, credential, settings, None))
    }

    pub fn directory(emulator: &Emulator) -> Arc<GraphDirectory> {
        directory_with(emulator, &secret_settings(emulator), fast_settings(emulator))
    }
}

/// A binary built with the control plane (kubectl, helm): from TEAMACCESS_TEST_BIN,
/// else the cached build (tests/cluster/cluster.sh bin builds it when missing).
pub fn cluster_tool(name: &str) -> PathBuf {
    cached_tool("TEAMACCESS_TEST_BIN", "tests/cluster/cluster.sh", name)
}

/// A GitOps tool built from tests/gitops (argocd-health): from TEAMACCESS_GITOPS_BIN,
/// else the cached build (tests/gitops/gitops.sh bin builds it when missing).
pub fn gitops_tool(name: &str) -> PathBuf {
    cached_tool("TEAMACCESS_GITOPS_BIN", "tests/gitops/gitops.sh", name)
}

/// `name` in the directory `env` names, else in the one `script bin` prints last.
fn cached_tool(env: &str, script: &str, name: &str) -> PathBuf {
    let dir = match std::env::var_os(env) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let out = std::process::Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script))
                .arg("bin")
                .output()
                .unwrap_or_else(|e| panic!("run {script} bin: {e}"));
            assert!(out.status.success(), "{script} bin failed: {}", String::from_utf8_lossy(&out.stderr));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim())
        }
    };
    dir.join(name)
}

/// Runs a tool with the test cluster's kubeconfig; returns (success, stdout, stderr).
pub fn run_tool(name: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    run_tool_on(&kubeconfig_path(), name, args, stdin)
}

/// Runs a tool against the cluster of `kubeconfig`; returns (success, stdout, stderr).
pub fn run_tool_on(kubeconfig: &Path, name: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(cluster_tool(name))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pods need their namespace's default ServiceAccount, which the serviceaccount
/// controller creates a moment after the namespace.
pub async fn wait_default_service_account(client: &Client, namespace: &str) {
    let api = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), namespace);
    wait_for(Duration::from_secs(30), "the default ServiceAccount", || async {
        api.get_opt("default").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await
}

/// Waits until an object is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(timeout, &format!("{name} to be gone"), || async {
        api.get_opt(name).await.map_err(|e| e.to_string())?.map_or(Ok(()), |_| Err("present".to_string()))
    })
    .await
}

/// The seed's directory file, for operators run as processes.
pub fn seed_directory_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/seed/directory.yaml")
}

/// A TeamAccess manifest carrying the test label, for objects applied as JSON.
pub fn team_manifest(name: &str, label: &str, group: &str, namespace: &str, verbs: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
        "metadata": {"name": name, "labels": {operator::TEST_LABEL: label}},
        "spec": {"group": {"displayName": group}, "namespace": namespace, "verbs": verbs}
    })
}

/// Waits until exactly `n` TeamAccess objects matching `selector` report Ready=True.
pub async fn wait_all_ready(
    api: &Api<teamaccess_operator::api::TeamAccess>,
    selector: &str,
    n: usize,
    timeout: Duration,
) {
    wait_for(timeout, &format!("{n} TeamAccess Ready"), || async {
        let list = api.list(&kube::api::ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        let ready = list.items.iter().filter(|ta| is_ready(ta)).count();
        if ready == n && list.items.len() == n { Ok(()) } else { Err(format!("{ready} of {n} Ready")) }
    })
    .await
}

/// Whether a TeamAccess reports Ready=True.
pub fn is_ready(ta: &teamaccess_operator::api::TeamAccess) -> bool {
    ta.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A random objectId (a version 4 UUID), for a group or user of one test.
pub fn fresh_object_id() -> String {
    let r = || fastrand::u64(..);
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", r() as u32, r() as u16, r() % 4096, r() % 4096, r() % (1 << 48))
}

/// Generated tenants for tests at scale: `n` security groups named
/// `{prefix}-{i}`, with objectIds derived from `i`.
pub mod tenant {
    use teamaccess_operator::directory::file_format::{DirectoryFile, GroupRecord};

    pub fn group_id(i: usize) -> String {
        format!("{i:08x}-2222-4222-8222-222222222222")
    }

    pub fn groups(prefix: &str, n: usize) -> DirectoryFile {
        DirectoryFile {
            groups: (0..n).map(|i| GroupRecord::security_group(group_id(i), format!("{prefix}-{i}"))).collect(),
            users: vec![],
            service_principals: vec![],
        }
    }

    /// The same tenant as a directory file's YAML.
    pub fn groups_yaml(prefix: &str, n: usize) -> String {
        serde_saphyr::to_string(&groups(prefix, n)).expect("a directory file serializes")
    }
}

/// Waits until a TeamAccess reports Ready=True.
pub async fn wait_teamaccess_ready(api: &Api<teamaccess_operator::api::TeamAccess>, name: &str, timeout: Duration) {
    wait_for(timeout, &format!("{name} Ready"), || async {
        let ta = api.get(name).await.map_err(|e| e.to_string())?;
        if is_ready(&ta) { Ok(()) } else { Err(format!("{:?}", ta.status.map(|s| s.conditions))) }
    })
    .await
}
