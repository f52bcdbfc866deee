//! The operator as its users run it: the image, made as the Dockerfile makes it,
//! in pods on a real node (kubelet, containerd, runc) of the test cluster,
//! installed, restarted, upgraded and uninstalled with Helm and kustomize.
//!
//! These tests need the node that `cluster.sh node-up` adds (root) and the image
//! that `scripts/image.sh` builds and `cluster.sh node-load` imports; scripts/test.sh
//! does both and runs them one at a time after the other integration tests,
//! because they replace the cluster-wide CRD and run operators that watch the whole
//! cluster. Every name here starts with `node_`, which is how test.sh tells them apart.

mod support;

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, TENANT_ID};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Node, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use support::{operator::*, *};
use teamaccess_operator::{api::TeamAccess, directory::file_format::DirectoryFile};

const NODE: &str = "teamaccess-node";
const CHART: &str = "charts/teamaccess-operator";
const PREVIOUS_CHART: &str = "tests/fixtures/previous-chart/teamaccess-operator";
const CRD: &str = "teamaccesses.teamaccess.dev";

/// The image scripts/image.sh built and the node imported.
fn image() -> (String, String) {
    let image = std::env::var("TEAMACCESS_TEST_IMAGE").unwrap_or_else(|_| "localhost/teamaccess-operator:dev".into());
    let (repository, tag) = image.rsplit_once(':').expect("TEAMACCESS_TEST_IMAGE is repository:tag");
    (repository.to_string(), tag.to_string())
}

/// Fails, saying why, unless the test cluster has a Ready node this machine runs.
async fn require_node(admin: &Client) -> IpAddr {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(
        root,
        "the node tests need root: the node (make node-up) runs a kubelet and containerd, and the tests look \
         into its network namespaces and processes. Run make test as root."
    );
    let node = Api::<Node>::all(admin.clone()).get_opt(NODE).await.unwrap().unwrap_or_else(|| {
        panic!(
            "the test cluster has no node {NODE}: scripts/test.sh adds one when run as root \
             (or run tests/cluster/cluster.sh node-up with KUBECONFIG set to the test cluster's)"
        )
    });
    let status = node.status.unwrap_or_default();
    let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node {NODE} is not Ready");
    let ip = status.addresses.unwrap_or_default().into_iter().find(|a| a.type_ == "InternalIP").expect("a node IP");
    ip.address.parse().unwrap()
}

fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = run_tool("kubectl", args, None);
    assert!(ok, "kubectl {}: {err}\n{out}", args.join(" "));
    out
}

fn kubectl_stdin(args: &[&str], stdin: &str) -> String {
    let (ok, out, err) = run_tool("kubectl", args, Some(stdin));
    assert!(ok, "kubectl {}: {err}\n{out}", args.join(" "));
    out
}

fn helm(args: &[&str]) -> String {
    let (ok, out, err) = run_tool("helm", args, None);
    assert!(ok, "helm {}: {err}\n{out}", args.join(" "));
    out
}

/// A command on this machine; returns (success, stdout + stderr).
fn host(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The Graph emulator on the node's IP, so that pods reach it; and, in `ns`, the
/// ConfigMap of its CA and the Secret of the client secret the chart points at.
async fn emulator_for_pods(admin: &Client, node_ip: IpAddr, ns: &str) -> Emulator {
    let dir = std::env::temp_dir().join(unique("node-emulator"));
    let emulator = Emulator::start_on(DirectoryFile::parse(SEED_DIRECTORY).unwrap(), &dir, node_ip).await.unwrap();
    let ca = std::fs::read_to_string(emulator.ca_path()).unwrap();
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "graph-ca"}, "data": {"ca.crt": ca}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&PostParams::default(), &config_map).await.unwrap();
    kubectl(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "azure-client",
        &format!("--from-literal=client-secret={CLIENT_SECRET}"),
    ]);
    emulator
}

/// Helm values: the chart's defaults but the image, the emulator as Microsoft
/// Graph and Entra ID, and a selector, since other operators share the cluster.
fn values(emulator: &Emulator, selector: &str, extra: &str) -> PathBuf {
    let (repository, tag) = image();
    let url = emulator.url();
    let values = format!(
        r#"
image: {{repository: "{repository}", tag: "{tag}"}}
graph: {{endpoint: "{url}", authorityHost: "{url}", caConfigMap: graph-ca}}
azure:
  tenantId: {TENANT_ID}
  clientId: {CLIENT_ID}
  credential: secret
  clientSecret: {{existingSecret: azure-client}}
selector: "{selector}"
{extra}
"#
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("values")));
    std::fs::write(&path, values).unwrap();
    path
}

/// A Helm release of a chart in a namespace of its own, installed and available:
/// the emulator on the node's IP as its Graph, its operator restricted to the
/// TeamAccess objects labelled `label`.
struct Release {
    name: String,
    ns: String,
    label: String,
    values: PathBuf,
    emulator: Emulator,
}

impl Release {
    async fn install(admin: &Client, node_ip: IpAddr, prefix: &str, chart: &str, extra_values: &str) -> Self {
        let ns = create_namespace(admin, &format!("node-{prefix}")).await;
        let emulator = emulator_for_pods(admin, node_ip, &ns).await;
        let label = unique(prefix);
        let values = values(&emulator, &format!("{TEST_LABEL}={label}"), extra_values);
        let name = unique("ta");
        helm(&["install", &name, chart, "-n", &ns, "-f", values.to_str().unwrap(), "--wait", "--timeout", "120s"]);
        let release = Self { name, ns, label, values, emulator };
        release.wait_authorship_stamps(admin).await;
        release
    }

    /// A chart with the authorship policy stamps writes a moment after it is
    /// installed; TeamAccess objects written before would be held back.
    async fn wait_authorship_stamps(&self, admin: &Client) {
        use k8s_openapi::api::admissionregistration::v1::MutatingAdmissionPolicy;
        let prefix = format!("{}-teamaccess-operator", self.name);
        let policy = teamaccess_operator::reconcile::authorship::policy_name(&prefix);
        if Api::<MutatingAdmissionPolicy>::all(admin.clone()).get_opt(&policy).await.unwrap().is_some() {
            support::wait_authorship_stamps(admin, &prefix).await;
        }
    }

    fn selector(&self) -> String {
        format!("{TEST_LABEL}={}", self.label)
    }

    fn deployment(&self) -> String {
        format!("deployment/{}-teamaccess-operator", self.name)
    }

    fn values(&self) -> &str {
        self.values.to_str().unwrap()
    }

    /// helm uninstall, then the namespace.
    async fn remove(&self, admin: &Client) {
        helm(&["uninstall", &self.name, "-n", &self.ns, "--wait"]);
        delete_namespace(admin, &self.ns).await;
    }
}

/// The seed's two teams (appdev → dev, opssre → sre), labelled for `selector`.
async fn apply_seed_teams(tas: &Api<TeamAccess>, label: &str) -> [(String, String); 2] {
    let teams = [(format!("{label}-appdev"), unique("dev")), (format!("{label}-opssre"), unique("sre"))];
    for ((name, namespace), group) in teams.iter().zip(["appdev", "opssre"]) {
        let manifest = team_manifest(name, label, group, namespace, &["*"]);
        tas.patch(name, &PatchParams::apply("node-test"), &Patch::Apply(manifest)).await.unwrap();
    }
    teams
}

/// The seed's access matrix, as the API server decides it.
async fn assert_seed_access(admin: &Client, dev: &str, sre: &str) {
    for namespace in [dev, sre] {
        wait_default_service_account(admin, namespace).await;
    }
    wait_pod_create_status(AKSDEV, &[APPDEV], dev, 200).await;
    assert_eq!(create_pod_as(AKSDEV, &[APPDEV], sre).await, 403, "appdev has no access to sre");
    wait_pod_create_status(AKSSRE, &[OPSSRE], sre, 200).await;
    assert_eq!(create_pod_as(AKSSRE, &[OPSSRE], dev).await, 403, "opssre has no access to dev");
    assert_eq!(list_all_pods_as(AKSDEV, &[APPDEV]).await, 403, "no cluster-wide access");
}

async fn delete_teams(tas: &Api<TeamAccess>, names: &[&str]) {
    for name in names {
        let _ = tas.delete(name, &Default::default()).await;
    }
    for name in names {
        wait_gone(tas, name, Duration::from_secs(60)).await;
    }
}

async fn operator_pods(admin: &Client, ns: &str) -> Vec<Pod> {
    let pods = Api::<Pod>::namespaced(admin.clone(), ns);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=teamaccess-operator")).await.unwrap();
    list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

/// The host PID of a container's main process: the one whose cgroup names it.
fn container_pid(pod: &Pod) -> u32 {
    let status = pod.status.as_ref().unwrap();
    let id = status.container_statuses.as_ref().unwrap()[0].container_id.clone().expect("a container ID");
    let id = id.trim_start_matches("containerd://");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id)))
        .collect();
    pids.sort();
    *pids.first().unwrap_or_else(|| panic!("no process of container {id}"))
}

/// A pod of the pause image: something on the pod network to send traffic from.
async fn pause_pod(admin: &Client, ns: &str) -> Pod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "pause", "image": "localhost/teamaccess-pause:1", "imagePullPolicy": "Never"}]}
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(admin.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for(Duration::from_secs(60), "the probe pod running", || async {
        let pod = pods.get("probe").await.map_err(|e| e.to_string())?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phase == "Running" { Ok(pod) } else { Err(phase) }
    })
    .await
}

/// Runs a bash snippet in the network namespace of the pod whose IP is `ip`.
fn in_pod_network(ip: &str, script: &str) -> (bool, String) {
    let (_, list) = host("ip", &["netns", "list"]);
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let (_, addrs) = host("ip", &["netns", "exec", ns, "ip", "-o", "-4", "addr", "show"]);
        if addrs.contains(&format!(" {ip}/")) {
            return host("ip", &["netns", "exec", ns, "timeout", "10", "bash", "-c", script]);
        }
    }
    panic!("no network namespace holds {ip}")
}

fn egress_rejected_packets() -> u64 {
    let (ok, out) = host("iptables", &["-t", "filter", "-L", "TEAMACCESS-NODE-EGRESS", "-v", "-x", "-n"]);
    assert!(ok, "the node's egress chain: {out}");
    out.lines().filter(|l| l.contains("REJECT")).filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok()).sum()
}

#[tokio::test]
async fn node_traffic_to_unserved_addresses_fails_on_this_machine() {
    let admin = admin_client().await;
    require_node(&admin).await;

    // From the machine: an unserved Service IP and a pod IP of the range that no
    // pod has fail at once with "no route to host", instead of following the
    // default route off the machine.
    for addr in ["10.0.0.77:80", "10.244.200.7:80"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let started = Instant::now();
        let err = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect_err("nothing serves it");
        assert_eq!(err.kind(), std::io::ErrorKind::HostUnreachable, "{addr}: {err}");
        assert!(started.elapsed() < Duration::from_secs(1), "{addr} failed locally, not after a timeout");
        let (ok, route) = host("ip", &["route", "get", &addr.ip().to_string()]);
        assert!(!ok && route.contains("No route to host"), "the kernel has no route for {addr}: {route}");
    }

    // From a pod: the kubernetes Service answers (DNATed to the API server), an
    // unserved Service IP is unreachable, and an address off the machine is
    // rejected here: the egress chain counts the packet.
    let ns = create_namespace(&admin, "node-net").await;
    wait_default_service_account(&admin, &ns).await;
    let pod = pause_pod(&admin, &ns).await;
    let ip = pod.status.unwrap().pod_ip.unwrap();
    let (ok, out) = in_pod_network(&ip, "exec 3<>/dev/tcp/10.0.0.1/443 && echo connected");
    assert!(ok && out.contains("connected"), "the kubernetes Service from a pod: {out}");
    let (ok, out) = in_pod_network(&ip, "exec 3<>/dev/tcp/10.0.0.77/80");
    assert!(!ok && out.contains("No route to host"), "an unserved Service IP from a pod: {out}");
    let before = egress_rejected_packets();
    let (ok, out) = in_pod_network(&ip, "exec 3<>/dev/tcp/203.0.113.10/443");
    assert!(!ok && out.contains("No route to host"), "an address off the machine from a pod: {out}");
    assert!(egress_rejected_packets() > before, "the packet was stopped by the node's egress chain");
    delete_namespace(&admin, &ns).await;
}

#[tokio::test]
async fn node_the_chart_runs_a_hardened_pod_that_grants_the_seeds_access() {
    let admin = admin_client().await;
    let node_ip = require_node(&admin).await;
    ensure_crd(&admin).await;
    let started = Instant::now();
    let release = Release::install(&admin, node_ip, "chart", CHART, "crds: {install: false}").await;
    eprintln!("helm install to an available Deployment: {:.1}s", started.elapsed().as_secs_f64());
    let (ns, label) = (&release.ns, &release.label);

    let tas = Api::<TeamAccess>::all(admin.clone());
    let [(appdev, dev), (opssre, sre)] = apply_seed_teams(&tas, label).await;
    wait_teamaccess_ready(&tas, &appdev, Duration::from_secs(60)).await;
    wait_teamaccess_ready(&tas, &opssre, Duration::from_secs(60)).await;
    eprintln!("helm install to both TeamAccess Ready: {:.1}s", started.elapsed().as_secs_f64());
    assert_seed_access(&admin, &dev, &sre).await;
    assert!(release.emulator.stats().graph_requests > 0, "the pod asked the emulator's Graph");

    // The container's process, as the kernel sees it: uid and gid 65532, no
    // capability at all, no privilege escalation, seccomp on, a read-only root.
    let pod = operator_pods(&admin, ns).await.pop().expect("the operator's pod");
    let pid = container_pid(&pod);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), ["65532"; 4], "{status}");
    assert_eq!(field("Gid"), ["65532"; 4], "{status}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"]);
    assert_eq!(field("Seccomp"), ["2"], "seccomp filter mode (RuntimeDefault)");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    assert!(root.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "read-only root: {root}");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "/usr/local/bin/teamaccess-operator\0run\0", "the image's entrypoint and the chart's args");

    // The kubelet's probes reached /readyz and /healthz: its own counters say so.
    let pod_name = pod.metadata.name.clone().unwrap();
    wait_for(Duration::from_secs(90), "the kubelet's readiness and liveness probes to succeed", || async {
        let metrics = kubectl(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/metrics/probes")]);
        let succeeded = |probe: &str| {
            metrics.lines().any(|l| {
                l.starts_with("prober_probe_total{")
                    && l.contains(&format!("pod=\"{pod_name}\""))
                    && l.contains(&format!("probe_type=\"{probe}\""))
                    && l.contains("result=\"successful\"")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 1.0)
            })
        };
        if succeeded("Readiness") && succeeded("Liveness") { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    let restarts = operator_pods(&admin, ns).await[0].status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .restart_count;
    assert_eq!(restarts, 0, "the liveness probe never failed");

    // kubectl logs (through the API server to the kubelet) shows JSON lines.
    let logs = kubectl(&["-n", ns, "logs", &pod_name]);
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["fields"]["message"].is_string(), "{line}");
    }
    assert!(logs.contains("became the leader"), "{logs}");

    delete_teams(&tas, &[&appdev, &opssre]).await;
    release.remove(&admin).await;
}

/// The Lease's holder, without the identity's random suffix: the pod name.
async fn lease_holder(
    leases: &Api<Lease>,
) -> Option<(String, Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>)> {
    let lease = leases.get_opt("teamaccess-operator").await.ok()??;
    let spec = lease.spec?;
    Some((spec.holder_identity?, spec.acquire_time))
}

#[tokio::test]
async fn node_a_rollout_restart_of_two_replicas_loses_no_reconcile_and_hands_the_lease_over() {
    let admin = admin_client().await;
    let node_ip = require_node(&admin).await;
    ensure_crd(&admin).await;
    let release = Release::install(
        &admin,
        node_ip,
        "rollout",
        CHART,
        "crds: {install: false}\nreplicaCount: 2\nmaxNamespaceDeletions: 0",
    )
    .await;
    let (ns, label, deployment) = (release.ns.as_str(), release.label.as_str(), release.deployment());
    let leases = Api::<Lease>::namespaced(admin.clone(), ns);
    let (leader, _) = wait_for(Duration::from_secs(30), "a leader", || async {
        lease_holder(&leases).await.ok_or("no holder yet".to_string())
    })
    .await;
    let leader_pod = operator_pods(&admin, ns)
        .await
        .into_iter()
        .find(|p| leader.starts_with(p.metadata.name.as_deref().unwrap()))
        .expect("the leader is one of the pods");
    let leader_pod = leader_pod.metadata.name.unwrap();
    // Follow the old leader's log to its end: it must say it released the Lease.
    let log_path = std::env::temp_dir().join(format!("{}.log", unique("old-leader")));
    let mut follow = std::process::Command::new(cluster_tool("kubectl"))
        .args(["-n", ns, "logs", "-f", &leader_pod])
        .env("KUBECONFIG", kubeconfig_path())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // TeamAccess objects keep coming while the pods are replaced.
    let tas = Api::<TeamAccess>::all(admin.clone());
    kubectl(&["-n", ns, "rollout", "restart", &deployment]);
    let mut names = Vec::new();
    let mut namespaces = Vec::new();
    for i in 0..12 {
        let (name, namespace) = (format!("{label}-{i}"), unique("roll"));
        let manifest = team_manifest(&name, label, if i % 2 == 0 { "appdev" } else { "opssre" }, &namespace, &["get"]);
        tas.patch(&name, &PatchParams::apply("node-test"), &Patch::Apply(manifest)).await.unwrap();
        names.push(name);
        namespaces.push(namespace);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kubectl(&["-n", ns, "rollout", "status", &deployment, "--timeout=180s"]);
    wait_all_ready(&tas, &release.selector(), names.len(), Duration::from_secs(90)).await;
    for (i, namespace) in namespaces.iter().enumerate() {
        let (user, group) = if i % 2 == 0 { (AKSDEV, APPDEV) } else { (AKSSRE, OPSSRE) };
        wait_allowed(&admin, user, &[group], "get", "", "pods", namespace, true).await;
    }

    // The old leader released the Lease when it got SIGTERM: a new pod held it
    // well before the 15 s lease could have expired.
    let _ = tokio::task::spawn_blocking(move || follow.wait()).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("released the leader Lease"), "the old leader's log:\n{log}");
    let (holder, acquired) = lease_holder(&leases).await.expect("a leader after the rollout");
    assert!(!holder.starts_with(&leader_pod), "a new pod leads");
    let new_pods = operator_pods(&admin, ns).await;
    for pod in &new_pods {
        let restarts = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count;
        assert_eq!(restarts, 0, "no pod lost the Lease to a second leader and restarted");
    }
    let new_pods: Vec<String> = new_pods.into_iter().filter_map(|p| p.metadata.name).collect();
    assert!(new_pods.iter().any(|p| holder.starts_with(p.as_str())), "{holder} is one of {new_pods:?}");
    let released_at = log
        .lines()
        .filter(|l| l.contains("released the leader Lease"))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["timestamp"].as_str().map(str::to_string))
        .expect("the release's timestamp");
    let released_at: jiff::Timestamp = released_at.parse().unwrap();
    let acquired = acquired.expect("acquireTime").0;
    let handover = acquired.as_second() - released_at.as_second();
    eprintln!("Lease handed over {handover} s after the old leader released it");
    assert!(handover < 10, "the new leader took the Lease {handover} s after the release; the lease lasts 15 s");

    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_teams(&tas, &refs).await;
    release.remove(&admin).await;
}

fn crd_has_cluster_user_role() -> bool {
    let schema = kubectl(&[
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties}",
    ]);
    schema.contains("clusterUserRole")
}

#[tokio::test]
async fn node_helm_upgrade_from_the_previous_chart_updates_the_crd_and_uninstall_keeps_every_team() {
    let admin = admin_client().await;
    let node_ip = require_node(&admin).await;
    ensure_crd(&admin).await;
    // The cluster as the previous chart left it: its CRD, which Helm installed
    // from crds/ once and never owned.
    let previous_crd = std::fs::read_to_string(Path::new(PREVIOUS_CHART).join("crds/teamaccess.yaml")).unwrap();
    kubectl_stdin(&["replace", "-f", "-"], &previous_crd);
    assert!(!crd_has_cluster_user_role(), "the previous CRD lacks spec.clusterUserRole");

    let release = Release::install(&admin, node_ip, "upgrade", PREVIOUS_CHART, "").await;
    let (ns, label, selector) = (release.ns.as_str(), release.label.as_str(), release.selector());
    // The cluster already holds a newer integrity policy (deploy/'s), which lets
    // only holders of reconcile on teamaccesses write status and remove the
    // finalizer; the previous chart's ClusterRole lacks it. The README's
    // migration step: give it to the old release's ServiceAccount until it upgrades.
    support::authors::grant_cluster_wide(
        &format!("system:serviceaccount:{ns}:{}-teamaccess-operator", release.name),
        &unique("previous-operator"),
        serde_json::json!([{"apiGroups": ["teamaccess.dev"], "resources": ["teamaccesses"], "verbs": ["reconcile"]}]),
    );
    // The previous chart runs this build's image (there is no older one here),
    // which checks authors through deploy/'s authorship policy (the previous chart
    // sets no prefix, so the default's): it needs to read that policy and ask
    // SubjectAccessReviews, as the new chart's ClusterRole allows.
    support::authors::grant_cluster_wide(
        &format!("system:serviceaccount:{ns}:{}-teamaccess-operator", release.name),
        &unique("previous-operator-authorship"),
        serde_json::json!([
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
             "resourceNames": ["teamaccess-operator-authorship"], "verbs": ["get"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
        ]),
    );
    let tas = Api::<TeamAccess>::all(admin.clone());
    let [(appdev, dev), (opssre, sre)] = apply_seed_teams(&tas, label).await;
    wait_all_ready(&tas, &selector, 2, Duration::from_secs(60)).await;
    for namespace in [&dev, &sre] {
        write_team_data(&admin, namespace).await;
    }

    // Watch Ready through the upgrade: it must never turn False.
    let not_ready = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (tas, not_ready) = (tas.clone(), not_ready.clone());
        let selector = selector.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(list) = tas.list(&ListParams::default().labels(&selector)).await {
                    let names = list.items.iter().filter(|ta| !is_ready(ta)).filter_map(|ta| ta.metadata.name.clone());
                    not_ready.lock().unwrap().extend(names);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The previous CRD prunes the field the new one adds.
    let opt_out = serde_json::json!({"spec": {"clusterUserRole": false}});
    tas.patch(&appdev, &PatchParams::default(), &Patch::Merge(&opt_out)).await.unwrap();
    assert_eq!(tas.get(&appdev).await.unwrap().spec.cluster_user_role, None, "pruned by the previous CRD");
    // The one-time step from a chart that kept the CRD in crds/: Helm adopts the
    // existing CRD only when told to (README, "Upgrading from 0.1").
    let (ok, _, err) = run_tool(
        "helm",
        &["upgrade", &release.name, CHART, "-n", ns, "-f", release.values(), "--wait", "--timeout", "120s"],
        None,
    );
    assert!(!ok && err.contains("invalid ownership metadata"), "without --take-ownership Helm refuses: {err}");
    helm(&[
        "upgrade",
        &release.name,
        CHART,
        "-n",
        ns,
        "-f",
        release.values(),
        "--take-ownership",
        "--wait",
        "--timeout",
        "120s",
    ]);
    release.wait_authorship_stamps(&admin).await;
    assert!(crd_has_cluster_user_role(), "helm upgrade updated the CRD");
    let annotations = kubectl(&["get", "crd", CRD, "-o", "jsonpath={.metadata.annotations}"]);
    assert!(annotations.contains("\"helm.sh/resource-policy\":\"keep\""), "{annotations}");
    // The new operator pod takes over; both objects stay Ready and the access holds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_all_ready(&tas, &selector, 2, Duration::from_secs(60)).await;
    watcher.abort();
    assert_eq!(*not_ready.lock().unwrap(), Vec::<String>::new(), "no TeamAccess left Ready during the upgrade");
    assert_seed_access(&admin, &dev, &sre).await;
    tas.patch(&appdev, &PatchParams::default(), &Patch::Merge(&opt_out)).await.unwrap();
    assert_eq!(tas.get(&appdev).await.unwrap().spec.cluster_user_role, Some(false), "the upgraded CRD keeps the field");

    // helm uninstall: the operator goes; the CRD, the objects, the namespaces and
    // their data stay, and so does the access they grant.
    helm(&["uninstall", &release.name, "-n", ns, "--wait"]);
    assert!(operator_pods(&admin, ns).await.is_empty(), "the operator's pod is gone");
    assert!(crd_has_cluster_user_role(), "the CRD stays");
    let left = tas.list(&ListParams::default().labels(&selector)).await.unwrap();
    assert_eq!(left.items.len(), 2, "both TeamAccess objects stay");
    for namespace in [&dev, &sre] {
        assert_team_data_kept(&admin, namespace).await;
    }
    assert_seed_access(&admin, &dev, &sre).await;

    // Clean up by hand, as a user removing the operator for good would.
    for name in [&appdev, &opssre] {
        tas.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})))
            .await
            .unwrap();
        let _ = tas.delete(name, &Default::default()).await;
    }
    for namespace in [ns, &dev, &sre] {
        delete_namespace(&admin, namespace).await;
    }
}

#[tokio::test]
async fn node_kubectl_apply_k_deploy_runs_the_operator_as_a_pod() {
    let admin = admin_client().await;
    let node_ip = require_node(&admin).await;
    ensure_crd(&admin).await;
    let ns = "teamaccess-system";
    // deploy/'s namespace; a run stopped halfway may have left it.
    delete_namespace(&admin, ns).await;
    wait_namespace_gone(&admin, ns, Duration::from_secs(60)).await;
    kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Namespace\nmetadata: {name: teamaccess-system}\n");
    let emulator = emulator_for_pods(&admin, node_ip, ns).await;
    let label = unique("kust");
    // An overlay as the README suggests: the image, the Azure settings, here the
    // emulator, and a selector, since other operators share the cluster.
    // kustomize takes a base only by a relative path: the overlay lives in target/.
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(unique("overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    let (repository, tag) = image();
    let url = emulator.url();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            r#"
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["../../deploy"]
images:
- name: ghcr.io/teamaccess-operator/teamaccess-operator
  newName: {repository}
  newTag: "{tag}"
patches:
- target: {{kind: Deployment, name: teamaccess-operator}}
  patch: |
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: teamaccess-operator}}
    spec:
      template:
        spec:
          containers:
          - name: operator
            env:
            - {{name: TEAMACCESS_GRAPH_ENDPOINT, value: "{url}"}}
            - {{name: TEAMACCESS_AUTHORITY_HOST, value: "{url}"}}
            - {{name: TEAMACCESS_CA_FILE, value: /etc/teamaccess/ca/ca.crt}}
            - {{name: AZURE_TENANT_ID, value: "{TENANT_ID}"}}
            - {{name: AZURE_CLIENT_ID, value: "{CLIENT_ID}"}}
            - {{name: TEAMACCESS_CREDENTIAL, value: secret}}
            - {{name: TEAMACCESS_CLIENT_SECRET_FILE, value: /etc/teamaccess/client-secret/client-secret}}
            - {{name: TEAMACCESS_SELECTOR, value: "{TEST_LABEL}={label}"}}
            volumeMounts:
            - {{name: ca, mountPath: /etc/teamaccess/ca, readOnly: true}}
            - {{name: client-secret, mountPath: /etc/teamaccess/client-secret, readOnly: true}}
          volumes:
          - {{name: ca, configMap: {{name: graph-ca}}}}
          - {{name: client-secret, secret: {{secretName: azure-client}}}}
"#
        ),
    )
    .unwrap();
    let rendered = kubectl(&["kustomize", overlay.to_str().unwrap()]);
    assert!(rendered.contains(&format!("image: {repository}:{tag}")), "{rendered}");
    kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &rendered);
    kubectl(&["-n", ns, "rollout", "status", "deployment/teamaccess-operator", "--timeout=120s"]);

    let tas = Api::<TeamAccess>::all(admin.clone());
    let [(appdev, dev), (opssre, sre)] = apply_seed_teams(&tas, &label).await;
    wait_all_ready(&tas, &format!("{TEST_LABEL}={label}"), 2, Duration::from_secs(60)).await;
    assert_seed_access(&admin, &dev, &sre).await;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), ns).get("teamaccess-operator").await.unwrap();
    assert_eq!(deployment.status.unwrap().available_replicas, Some(1));

    delete_teams(&tas, &[&appdev, &opssre]).await;
    // Everything but the CRD and the admission policy, which the other tests share.
    let kept_kinds = ["CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"];
    let docs: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|doc| !kept_kinds.iter().any(|k| doc.lines().any(|l| l == format!("kind: {k}"))))
        .collect();
    kubectl_stdin(&["delete", "--wait=false", "-f", "-"], &docs.join("\n---\n"));
    wait_namespace_gone(&admin, ns, Duration::from_secs(60)).await;
    let _ = std::fs::remove_dir_all(&overlay);
}

/// An image archive scripts/image.sh made, unpacked: its configuration, the
/// listing of its one layer, and the layer's files.
struct UnpackedImage {
    config: serde_json::Value,
    listing: String,
    rootfs: PathBuf,
    dir: PathBuf,
}

impl UnpackedImage {
    fn of(arch: &str) -> Self {
        let archive =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/image/teamaccess-operator-{arch}.oci.tar"));
        assert!(
            archive.exists(),
            "no {}: scripts/test.sh builds it with ARCH={arch} scripts/image.sh",
            archive.display()
        );
        let dir = std::env::temp_dir().join(unique("oci"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ok, out) = host("tar", &["-xf", archive.to_str().unwrap(), "-C", dir.to_str().unwrap()]);
        assert!(ok, "{out}");
        let read_json =
            |path: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
        let blob = |digest: &serde_json::Value| {
            dir.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"))
        };
        let index = read_json(dir.join("index.json"));
        let manifest = read_json(blob(&index["manifests"][0]["digest"]));
        let config = read_json(blob(&manifest["config"]["digest"]));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "one layer");
        let layer = blob(&layers[0]["digest"]);
        let (ok, listing) = host("tar", &["-tvf", layer.to_str().unwrap()]);
        assert!(ok, "{listing}");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let (ok, out) = host("tar", &["-xf", layer.to_str().unwrap(), "-C", rootfs.to_str().unwrap()]);
        assert!(ok, "{out}");
        Self { config, listing, rootfs, dir }
    }

    fn binary(&self) -> PathBuf {
        self.rootfs.join("usr/local/bin/teamaccess-operator")
    }

    /// The ELF header's machine field: 0x3e x86-64, 0xb7 AArch64.
    fn binary_machine(&self) -> u16 {
        let header = std::fs::read(self.binary()).unwrap();
        assert_eq!(&header[..4], b"\x7fELF");
        u16::from_le_bytes([header[18], header[19]])
    }
}

impl Drop for UnpackedImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The amd64 archive: its layer holds exactly what the Dockerfile's final stage
/// copies (the binary, the CA certificates, passwd and group for 65532), and its
/// configuration is the final stage's USER, ENTRYPOINT, CMD and EXPOSE.
#[tokio::test]
async fn node_the_image_is_the_dockerfiles_final_stage_and_nothing_else() {
    let image = UnpackedImage::of("amd64");
    let files: Vec<&str> =
        image.listing.lines().filter_map(|l| l.split_whitespace().last()).filter(|f| !f.ends_with('/')).collect();
    assert_eq!(
        files,
        ["etc/group", "etc/passwd", "etc/ssl/certs/ca-certificates.crt", "usr/local/bin/teamaccess-operator"],
        "{}",
        image.listing
    );
    for line in image.listing.lines() {
        assert!(line.contains("0/0"), "owned by root, not by the user it runs as: {line}");
    }
    let passwd = std::fs::read_to_string(image.rootfs.join("etc/passwd")).unwrap();
    assert_eq!(passwd.trim(), "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin");
    let (ok, version) = host(image.binary().to_str().unwrap(), &["--version"]);
    assert!(ok && version.starts_with("teamaccess-operator "), "the static binary runs: {version}");
    assert_eq!(image.binary_machine(), 0x3e, "an x86-64 binary");
    let (_, kind) = host("file", &[image.binary().to_str().unwrap()]);
    assert!(kind.is_empty() || kind.contains("statically linked") || kind.contains("static-pie"), "{kind}");

    // The Dockerfile's final stage, read here independently of ociarchive.
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let final_stage = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(final_stage.starts_with("\nFROM scratch"), "{final_stage}");
    let instruction = |keyword: &str| {
        final_stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{keyword} ")))
            .unwrap_or_else(|| panic!("no {keyword}"))
    };
    let runtime = &image.config["config"];
    assert_eq!(runtime["User"], instruction("USER"));
    assert_eq!(runtime["Entrypoint"], serde_json::from_str::<serde_json::Value>(instruction("ENTRYPOINT")).unwrap());
    assert_eq!(runtime["Cmd"], serde_json::from_str::<serde_json::Value>(instruction("CMD")).unwrap());
    assert_eq!(runtime["ExposedPorts"], serde_json::json!({format!("{}/tcp", instruction("EXPOSE")): {}}));
    assert_eq!(image.config["architecture"], "amd64");
    let adds: Vec<&str> = final_stage.lines().filter(|l| l.starts_with("COPY ") || l.starts_with("RUN ")).collect();
    assert_eq!(adds, ["COPY --from=build /rootfs /"], "the final stage adds only image-rootfs.sh's root filesystem");
    // The build stage makes that root filesystem with the scripts image.sh runs.
    assert!(
        dockerfile.contains(r#"scripts/image-rootfs.sh "$(scripts/static-binary.sh "$TARGETARCH")" /rootfs"#),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("FROM --platform=$BUILDPLATFORM "), "the build stage never runs emulated");
}

/// The arm64 image, cross-compiled here as the Dockerfile's build stage does it:
/// an AArch64 binary that, run under qemu-user, prints what the amd64 one prints.
#[tokio::test]
async fn node_the_arm64_image_runs_under_qemu_and_says_what_the_amd64_one_says() {
    let (amd64, arm64) = (UnpackedImage::of("amd64"), UnpackedImage::of("arm64"));
    assert_eq!(arm64.config["architecture"], "arm64");
    assert_eq!(arm64.config["config"], amd64.config["config"], "the same runtime configuration");
    assert_eq!(arm64.binary_machine(), 0xb7, "an AArch64 binary");
    let files = |image: &UnpackedImage| {
        image.listing.lines().filter_map(|l| l.split_whitespace().last().map(str::to_string)).collect::<Vec<_>>()
    };
    assert_eq!(files(&arm64), files(&amd64), "the same files");
    assert!(
        which("qemu-aarch64-static"),
        "qemu-aarch64-static is missing: scripts/test.sh installs Debian's qemu-user-static as root"
    );
    for args in [&["--version"][..], &["crd"][..]] {
        let (ok, native) = host(amd64.binary().to_str().unwrap(), args);
        assert!(ok, "{native}");
        let (ok, emulated) = host("qemu-aarch64-static", &[&[arm64.binary().to_str().unwrap()][..], args].concat());
        assert!(ok, "{emulated}");
        assert_eq!(emulated, native, "teamaccess-operator {args:?} under qemu-aarch64");
    }
    let (_, crd) = host(amd64.binary().to_str().unwrap(), &["crd"]);
    assert!(crd.contains("kind: CustomResourceDefinition") && crd.contains("teamaccesses.teamaccess.dev"), "{crd}");
    eprintln!(
        "static binaries: amd64 {} bytes, arm64 {} bytes",
        std::fs::metadata(amd64.binary()).unwrap().len(),
        std::fs::metadata(arm64.binary()).unwrap().len()
    );
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// One node per machine: a second node-up refuses and says why, and the first
/// node keeps running.
#[tokio::test]
async fn node_a_second_node_on_the_machine_is_refused() {
    let admin = admin_client().await;
    require_node(&admin).await;
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/cluster.sh"))
        .arg("node-up")
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node-up must fail");
    assert!(
        stderr.contains("a node already runs on this machine") && stderr.contains("one node per machine"),
        "{stderr}"
    );
    require_node(&admin).await;
}
