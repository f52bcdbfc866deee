//! make bench: N TeamAccess objects applied at once to a real control plane, groups
//! resolved through the Graph emulator with added latency, measured beside the
//! ideal client (the same Namespaces, Roles and RoleBindings server-side-applied
//! directly at its best concurrency, without Graph).
//!
//!   cargo bench --bench scale -- KUBECONFIG N[,N...] OUTPUT.md
//!
//! Prints a table and writes it (with the machine and the command) to OUTPUT.md.

// The benchmark shares the integration tests' helpers: the same operator-process
// launcher, kubeconfig client, readiness wait and tenant generator.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use graph_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, Faults, TENANT_ID};
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use support::{process::OperatorProcess, tenant};
use teamaccess_operator::{api::TeamAccess, reconcile::build};

const LABEL: &str = "teamaccess.dev/bench";

struct Row {
    n: usize,
    t: f64,
    t0: f64,
    t0_concurrency: usize,
    graph_requests: u64,
    api_requests_per_ta: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    restart: f64,
    idle_cpu: f64,
    idle_writes: f64,
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let kubeconfig = PathBuf::from(args.first().expect("usage: scale KUBECONFIG N[,N...] OUTPUT.md"));
    let sizes: Vec<usize> = args.get(1).map_or("100", String::as_str).split(',').map(|n| n.parse().unwrap()).collect();
    let output = args.get(2).map(PathBuf::from);
    let client = support::client_for(&kubeconfig).await;
    // scripts/bench.sh says where the release build is (CARGO_TARGET_DIR may move it).
    let operator_bin = std::env::var_os("BENCH_OPERATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/teamaccess-operator"));
    assert!(operator_bin.exists(), "build the operator first: cargo build --release ({})", operator_bin.display());

    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("== N = {n}");
        rows.push(measure(&client, &kubeconfig, &operator_bin, n).await);
    }
    let table = render(&rows);
    println!("{table}");
    if let Some(path) = output {
        let machine = format!(
            "{} CPUs, {} — {}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| m.lines().next().map(str::to_string))
                .unwrap_or_default(),
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string()))
                .unwrap_or_default()
        );
        let doc = format!(
            "# Benchmarks\n\nCommand: `make bench` (scripts/bench.sh → `cargo bench --bench scale`).\nMachine: {machine}.\nControl plane: local etcd + kube-apiserver + kube-controller-manager v1.37.2 (tests/cluster). Graph: the emulator with 50 ms added latency per request. Operator: the release binary, default settings, static leader (no election).\n\n{table}\n\nColumns: T = apply of N TeamAccess (each its own namespace) to all Ready; T0 = the ideal client server-side-applying the same N Namespaces, Roles and RoleBindings directly, best time over concurrency 1–64 (the winning concurrency in brackets); Graph = Graph HTTP requests for the cold resolution; API/TA = API server requests during T per TeamAccess, from apiserver_request_total, minus the benchmark's own applies and polls (it includes the controller-manager's work for new namespaces); RSS = the operator's peak resident memory; CPU = its CPU seconds during T; restart = operator restart to every object reconciled again; idle = 60 s with N objects and --resync 20s (three resyncs of every object): operator CPU seconds, and write requests (apply, patch, update, create) to TeamAccess, Roles, RoleBindings and Namespaces as the API server counts them.\n"
        );
        std::fs::write(&path, doc).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

fn render(rows: &[Row]) -> String {
    let mut t = String::from(
        "| N | T (s) | T0 (s) [conc.] | T/T0 | Graph requests | API req/TA | peak RSS (MiB) | CPU (s) | restart (s) | idle CPU (s/60s) | idle writes (/60s) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {:.2} | {:.2} [{}] | {:.2} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            r.n,
            r.t,
            r.t0,
            r.t0_concurrency,
            r.t / r.t0,
            r.graph_requests,
            r.api_requests_per_ta,
            r.peak_rss_mib,
            r.cpu_seconds,
            r.restart,
            r.idle_cpu,
            r.idle_writes
        ));
    }
    t
}

fn run_id() -> String {
    format!("b{:06x}", fastrand::u32(..1 << 24))
}

/// Whether all `n` objects matching `selector` are Ready. Two requests: a cheap
/// metadata count first, the full list only once all exist.
async fn all_ready(api: &Api<TeamAccess>, selector: &str, n: usize) -> bool {
    let list = api.list_metadata(&ListParams::default().labels(selector)).await;
    if list.map(|l| l.items.len()).unwrap_or(0) < n {
        return false;
    }
    let list = api.list(&ListParams::default().labels(selector)).await.unwrap();
    list.items.iter().filter(|ta| support::is_ready(ta)).count() == n
}

/// API server requests so far, from its own metrics. With `operator_writes`, only
/// the writes the operator makes and the controller-manager does not: apply, patch,
/// update or create of TeamAccess (and status), Roles, RoleBindings and Namespaces.
/// Events are left out: theirs and ours cannot be told apart.
async fn apiserver_requests(client: &Client, operator_writes: bool) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let writes = ["\"APPLY\"", "\"PATCH\"", "\"PUT\"", "\"POST\""];
    let ours = ["\"teamaccesses\"", "\"roles\"", "\"rolebindings\"", "\"namespaces\""];
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            !operator_writes
                || (writes.iter().any(|v| l.contains(&format!("verb={v}")))
                    && ours.iter().any(|r| l.contains(&format!("resource={r}")))
                    && !l.contains("subresource=\"finalize\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn proc_stat(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kib / 1024.0, ticks / 100.0)
}

/// The release operator against the emulator, as `make bench` runs it.
fn start_operator(bin: &Path, kubeconfig: &Path, emulator: &Emulator, selector: &str, resync: &str) -> OperatorProcess {
    let ca = emulator.ca_path().to_str().unwrap().to_string();
    let args = [
        "--directory",
        "graph",
        "--credential",
        "secret",
        "--graph-endpoint",
        emulator.url(),
        "--authority-host",
        emulator.url(),
        "--ca-file",
        &ca,
        "--selector",
        selector,
        "--resync",
        resync,
        "--log-format",
        "json",
    ];
    let env = [
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("RUST_LOG", "warn"),
    ];
    OperatorProcess::start_binary(bin, kubeconfig, &args, &env, &std::env::temp_dir().join("teamaccess-bench"))
}

async fn measure(client: &Client, kubeconfig: &Path, bin: &Path, n: usize) -> Row {
    let id = run_id();
    let selector = format!("{LABEL}={id}");
    let tenant = tenant::groups(&format!("{id}-team"), n);
    let emulator = Emulator::start(tenant, &std::env::temp_dir().join(format!("bench-{id}"))).await.unwrap();
    emulator.set_faults(&Faults { latency_ms: 50, ..Default::default() });
    let api = Api::<TeamAccess>::all(client.clone());
    let operator = start_operator(bin, kubeconfig, &emulator, &selector, "10m");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // T: apply N at once, wait for all Ready.
    let before = apiserver_requests(client, false).await;
    let started = Instant::now();
    let polls = std::sync::atomic::AtomicU64::new(0);
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let (id, selector_value) = (id.clone(), id.clone());
            async move {
                let name = format!("{id}-{i}");
                let obj = serde_json::json!({
                    "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
                    "metadata": {"name": name, "labels": {LABEL: selector_value}},
                    "spec": {"group": {"displayName": format!("{id}-team-{i}")}, "namespace": name, "verbs": ["*"]}
                });
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(obj)).await.unwrap();
            }
        })
        .await;
    while !all_ready(&api, &selector, n).await {
        polls.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = started.elapsed().as_secs_f64();
    let after = apiserver_requests(client, false).await;
    let own = n as f64 + polls.load(std::sync::atomic::Ordering::Relaxed) as f64 + 2.0;
    let (peak_rss_mib, cpu_seconds) = proc_stat(operator.pid());
    let graph_requests = emulator.stats().graph_requests;
    eprintln!("T = {t:.2}s, graph {graph_requests}, rss {peak_rss_mib:.1} MiB");

    // Restart: a new process reconciles every object again.
    operator.stop().await;
    let restarted = Instant::now();
    let operator = start_operator(bin, kubeconfig, &emulator, &selector, "20s");
    while operator.metric_sum("teamaccess_reconciles_total").await.unwrap_or(0.0) < n as f64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = restarted.elapsed().as_secs_f64();

    // Idle: 60 s (BENCH_IDLE_SECS) with N objects, resyncing every 20 s; figures per 60 s.
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, cpu0) = proc_stat(operator.pid());
    let writes0 = apiserver_requests(client, true).await;
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (_, cpu1) = proc_stat(operator.pid());
    let writes1 = apiserver_requests(client, true).await;
    let per_minute = 60.0 / idle_secs as f64;
    let (idle_cpu, idle_writes) = ((cpu1 - cpu0) * per_minute, (writes1 - writes0) * per_minute);

    // Clean up through the operator, then stop it.
    let names: Vec<String> = (0..n).map(|i| format!("{id}-{i}")).collect();
    stream::iter(names.iter())
        .for_each_concurrent(32, |name| {
            let api = api.clone();
            async move {
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
        })
        .await;
    while !api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items.is_empty())
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    operator.stop().await;

    let (t0, t0_concurrency) = ideal_client(client, n).await;
    Row {
        n,
        t,
        t0,
        t0_concurrency,
        graph_requests,
        api_requests_per_ta: (after - before - own) / n as f64,
        peak_rss_mib,
        cpu_seconds,
        restart,
        idle_cpu,
        idle_writes,
    }
}

/// The ideal client: the same objects the operator creates, applied directly.
async fn ideal_client(client: &Client, n: usize) -> (f64, usize) {
    let mut best = (f64::MAX, 0);
    for concurrency in [1, 2, 4, 8, 16, 32, 64] {
        if n >= 1000 && concurrency < 4 {
            continue; // minutes of sequential requests would not win
        }
        let id = run_id();
        let started = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(concurrency, |i| {
                let client = client.clone();
                let id = id.clone();
                async move { apply_ideal(&client, &format!("{id}-{i}"), i).await }
            })
            .await;
        let took = started.elapsed().as_secs_f64();
        eprintln!("ideal client, concurrency {concurrency}: {took:.2}s");
        if took < best.0 {
            best = (took, concurrency);
        }
        stream::iter(0..n)
            .for_each_concurrent(32, |i| {
                let api = Api::<Namespace>::all(client.clone());
                let name = format!("{id}-{i}");
                async move {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            })
            .await;
    }
    best
}

async fn apply_ideal(client: &Client, name: &str, i: usize) {
    let pp = PatchParams::apply("ideal-client").force();
    let ta = TeamAccess::new(
        name,
        serde_json::from_value(
            serde_json::json!({"group": {"objectId": tenant::group_id(i)}, "namespace": name, "verbs": ["*"]}),
        )
        .unwrap(),
    );
    let mut ns = build::build_namespace(&ta);
    ns.metadata.labels = Some(BTreeMap::from([(LABEL.to_string(), "ideal".to_string())]));
    Api::<Namespace>::all(client.clone()).patch(name, &pp, &Patch::Apply(&ns)).await.unwrap();
    let role: Role = build::build_role(&ta).unwrap();
    Api::<Role>::namespaced(client.clone(), name).patch(&ta.child_name(), &pp, &Patch::Apply(&role)).await.unwrap();
    let rb: RoleBinding = build::build_role_binding(&ta, &tenant::group_id(i), &[]);
    Api::<RoleBinding>::namespaced(client.clone(), name)
        .patch(&ta.child_name(), &pp, &Patch::Apply(&rb))
        .await
        .unwrap();
}
