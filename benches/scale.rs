//! make bench: N TeamAccess objects applied at once to a real control plane, groups
//! resolved through the Graph emulator with added latency, measured beside the
//! ideal client (the same Namespaces, Roles and RoleBindings server-side-applied
//! directly at its best concurrency, without Graph).
//!
//!   cargo bench --bench scale -- KUBECONFIG N[,N...] OUTPUT.md
//!
//! T and T0 are each taken BENCH_SAMPLES times (default 3) under the same
//! conditions: a cold operator (new process, empty Graph cache) or a fresh set of
//! objects, and no namespace of an earlier sample still terminating. T and T0
//! samples alternate (after the ideal client's concurrency sweep), since the
//! API server slows as a run creates and deletes thousands of namespaces. The idle
//! window (BENCH_IDLE_SECS, default 60) must hold two resyncs (BENCH_RESYNC,
//! default 20s); the bench checks that they happened. With BENCH_REQUIRE_IDLE_ZERO=1
//! (the smoke run) any write during the idle window fails it. Every wait has a
//! timeout, so a stuck run fails instead of hanging.
//!
//! The operator's own requests are read from its `teamaccess_kube_requests_total`
//! (its client counts them), so nobody else's load is in them. BENCH_BIND=1 adds
//! TeamAccess objects binding `edit` into namespaces that exist, against one
//! client creating the same RoleBindings. First of all, one object at a time on an
//! idle operator, apply → Ready (BENCH_LATENCY_SAMPLES, default 20, per directory).
//!
//! Prints a table and writes it (with the machine and the command) to OUTPUT.md,
//! keeping a "## Where the time goes" section already there.

// The benchmark shares the integration tests' helpers: the same operator-process
// launcher, kubeconfig client, readiness wait and tenant generator.
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "scale/latency.rs"]
mod latency;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, Faults, TENANT_ID};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use support::{
    process::{KubeRequests, OperatorProcess},
    tenant,
};
use teamaccess_operator::{api::TeamAccess, reconcile::build};

const LABEL: &str = "teamaccess.dev/bench";

/// Repeated measurements of one quantity.
#[derive(Clone, Debug, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn spread(&self) -> f64 {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max - min
    }

    /// `median ±spread/2 (k)`, the form the table prints.
    fn show(&self) -> String {
        format!("{:.2} ±{:.2} ({})", self.median(), self.spread() / 2.0, self.0.len())
    }
}

struct Row {
    n: usize,
    t: Samples,
    t0: Samples,
    t0_concurrency: usize,
    graph_requests: Samples,
    /// The operator's own requests during T, per TeamAccess.
    per_ta: KubeRequests,
    peak_rss_mib: f64,
    cpu_seconds: Samples,
    restart: f64,
    /// Everything the restarted operator sent until every object was reconciled.
    restart_requests: KubeRequests,
    idle_cpu: f64,
    /// The operator's requests in the idle window, per 60 s.
    idle: KubeRequests,
    /// Seconds from deleting a RoleBinding by hand to its return.
    drift_repair: f64,
    /// Bindings of a ClusterRole into namespaces that exist, when measured.
    bind: Option<BindRow>,
}

/// TeamAccess objects binding `edit` into N namespaces that already exist,
/// beside one client creating the same N RoleBindings.
struct BindRow {
    t: f64,
    t0: f64,
    per_ta: KubeRequests,
}

struct Settings {
    samples: usize,
    resync: Duration,
    idle: Duration,
    require_idle_zero: bool,
    /// Also measure bindings into existing namespaces (BENCH_BIND=1, make bench).
    bind: bool,
    /// Measure the ideal client too (BENCH_IDEAL, default 1). Without it the last
    /// sample's namespaces are not waited for either: a quick look at a large N.
    ideal: bool,
    /// Single objects timed apply → Ready, per directory (BENCH_LATENCY_SAMPLES).
    latency_samples: usize,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let settings = Settings {
            samples: var("BENCH_SAMPLES").map_or(3, |v| v.parse().expect("BENCH_SAMPLES is a number")),
            resync: var("BENCH_RESYNC").map_or(Duration::from_secs(20), |v| {
                humantime::parse_duration(&v).expect("BENCH_RESYNC is a duration such as 20s")
            }),
            idle: Duration::from_secs(var("BENCH_IDLE_SECS").map_or(60, |v| v.parse().expect("BENCH_IDLE_SECS"))),
            require_idle_zero: var("BENCH_REQUIRE_IDLE_ZERO").is_some_and(|v| v == "1"),
            bind: var("BENCH_BIND").is_some_and(|v| v == "1"),
            ideal: var("BENCH_IDEAL").is_none_or(|v| v != "0"),
            latency_samples: var("BENCH_LATENCY_SAMPLES")
                .map_or(20, |v| v.parse().expect("BENCH_LATENCY_SAMPLES is a number")),
        };
        assert!(settings.samples >= 1, "BENCH_SAMPLES must be at least 1");
        assert!(
            settings.idle >= settings.resync * 2,
            "the idle window ({:?}) must hold at least two resyncs (BENCH_RESYNC = {:?})",
            settings.idle,
            settings.resync
        );
        settings
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let kubeconfig = PathBuf::from(args.first().expect("usage: scale KUBECONFIG N[,N...] OUTPUT.md"));
    let sizes: Vec<usize> = args.get(1).map_or("100", String::as_str).split(',').map(|n| n.parse().unwrap()).collect();
    let output = args.get(2).map(PathBuf::from);
    let settings = Settings::from_env();
    let client = support::client_for(&kubeconfig).await;
    // scripts/bench.sh says where the release build is (CARGO_TARGET_DIR may move it).
    let operator_bin = std::env::var_os("BENCH_OPERATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/teamaccess-operator"));
    assert!(operator_bin.exists(), "build the operator first: cargo build --release ({})", operator_bin.display());

    let mut latencies = Vec::new();
    for lookup in [latency::Lookup::StaticFile, latency::Lookup::Graph] {
        let row = latency::measure(&client, &kubeconfig, &operator_bin, lookup, settings.latency_samples).await;
        latencies.push(row);
    }
    let latency_table = latency::LatencyRow::render(&latencies);
    println!("{latency_table}");
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("== N = {n}");
        rows.push(measure(&client, &kubeconfig, &operator_bin, n, &settings).await);
        // Written after every N, so a long run that is stopped keeps what it measured.
        let table = format!("{}{latency_table}", render(&rows));
        println!("{table}");
        if let Some(path) = &output {
            write_report(path, &table, &settings);
        }
    }
}

/// Writes the table, with the machine, the command and what the columns mean, to
/// `path`, keeping a "## Where the time goes" section already there.
fn write_report(path: &Path, table: &str, settings: &Settings) {
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
        "# Benchmarks\n\nCommand: `make bench` (scripts/bench.sh → `cargo bench --bench scale`).\nMachine: {machine}.\nControl plane: local etcd + kube-apiserver + kube-controller-manager v1.37.2 (tests/cluster), the admission policies installed. Graph: the emulator with 50 ms added latency per request. Operator: the release binary, default settings, static leader (no election).\n\n{table}\n\nColumns: figures given as `median ±half-spread (samples)` are repeated under the same conditions (one sample at N ≥ 5000). T = apply of N TeamAccess (each its own new namespace) to all Ready, each sample with a new operator process (cold Graph cache); T0 = the ideal client server-side-applying the same N Namespaces, Roles and RoleBindings directly, at its best concurrency from a sweep (in brackets), its samples alternating with T's; every sample starts once the namespaces of the previous one are gone. Graph = Graph HTTP requests (to /v1.0; the one token request to Entra ID is not counted) for the cold resolution. reads / writes / reviews / events per TA = the requests the operator itself sent during T (its `teamaccess_kube_requests_total`, counted in its own client: get and list / create, update, patch, delete / SubjectAccessReviews of the authorship step / Events), per TeamAccess, from the median sample. RSS = the operator's peak resident memory over all samples; CPU = its CPU seconds during T; restart = a new process until every object is reconciled again, and everything it sent meanwhile (lists and probes + watches / writes); idle = {idle} s with N objects and --resync {resync} (the bench checks every object was resynced at least twice): operator CPU seconds, reads and writes, per 60 s; drift repair = a RoleBinding deleted by hand until the operator has made it again (from its watch event).\n",
        idle = settings.idle.as_secs(),
        resync = humantime::format_duration(settings.resync),
    );
    // A hand-written analysis below the generated part is kept across runs.
    let notes = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find("\n## Where the time goes").map(|at| old[at..].to_string()))
        .unwrap_or_default();
    let doc = format!("{doc}{notes}");
    std::fs::write(path, doc).unwrap();
    eprintln!("wrote {}", path.display());
}

fn render(rows: &[Row]) -> String {
    let mut t = String::from(
        "| N | T (s) | T0 (s) [conc.] | T/T0 | Graph requests | reads / writes / reviews / events per TA | peak RSS (MiB) | CPU (s) | restart (s) | restart requests (reads + watches / writes) | idle CPU (s/60s) | idle reads / writes (/60s) | drift repair (s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} / {:.2} / {:.2} / {:.2} | {:.1} | {:.2} | {:.2} | {:.0} + {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {:.2} |\n",
            r.n,
            r.t.show(),
            if r.t0.median().is_nan() {
                "not measured".to_string()
            } else {
                format!("{} [{}]", r.t0.show(), r.t0_concurrency)
            },
            if r.t0.median().is_nan() { "–".to_string() } else { format!("{:.2}", r.t.median() / r.t0.median()) },
            r.graph_requests.median(),
            r.per_ta.reads,
            r.per_ta.writes,
            r.per_ta.reviews,
            r.per_ta.events,
            r.peak_rss_mib,
            r.cpu_seconds.median(),
            r.restart,
            r.restart_requests.reads,
            r.restart_requests.watches,
            r.restart_requests.writes,
            r.idle_cpu,
            r.idle.reads,
            r.idle.writes,
            r.drift_repair,
        ));
    }
    let binds: Vec<&Row> = rows.iter().filter(|r| r.bind.is_some()).collect();
    if !binds.is_empty() {
        t.push_str(
            "\nBindings of ClusterRole edit into N namespaces that exist, against one client creating the same N RoleBindings (concurrency 64):\n\n| N | T (s) | T0 (s) | T/T0 | reads / writes / reviews / events per TA |\n|---|---|---|---|---|\n",
        );
        for r in binds {
            let b = r.bind.as_ref().unwrap();
            t.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} / {:.2} |\n",
                r.n,
                b.t,
                b.t0,
                b.t / b.t0,
                b.per_ta.reads,
                b.per_ta.writes,
                b.per_ta.reviews,
                b.per_ta.events
            ));
        }
    }
    t
}

fn run_id() -> String {
    format!("b{:06x}", fastrand::u32(..1 << 24))
}

/// How long any one wait may take at size `n` before the run fails.
fn patience(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(500) * n as u32
}

/// Polls `check` every `interval` until it holds; panics with `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, interval: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(interval).await;
    }
}

/// Waits until no namespace whose name starts with `prefix` exists, so the next
/// sample does not share the API server with the namespace controller's cleanup.
async fn wait_namespaces_gone(client: &Client, prefix: &str, n: usize) {
    let api = Api::<Namespace>::all(client.clone());
    wait_until(&format!("the namespaces {prefix}* to be gone"), patience(n), Duration::from_millis(500), || async {
        let list = api.list_metadata(&ListParams::default()).await.unwrap();
        !list.items.iter().any(|ns| ns.metadata.name.as_deref().is_some_and(|name| name.starts_with(prefix)))
    })
    .await
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

fn proc_stat(pid: u32) -> (f64, f64) {
    let hwm_mib = support::process::proc_status_mib(pid, "VmHWM");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_mib, ticks / 100.0)
}

/// The release operator against the emulator, as `make bench` runs it.
fn start_operator(bin: &Path, kubeconfig: &Path, emulator: &Emulator, selector: &str, resync: &str) -> OperatorProcess {
    let graph = support::process::graph_args(emulator);
    let mut args: Vec<&str> = graph.iter().map(String::as_str).collect();
    args.extend([
        "--selector",
        selector,
        "--resync",
        resync,
        "--log-format",
        "json",
        // The bench deletes N namespaces at once on purpose: no brake.
        "--max-namespace-deletions",
        "0",
    ]);
    let env = [
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("RUST_LOG", "warn"),
    ];
    OperatorProcess::start_binary(bin, kubeconfig, &args, &env, &std::env::temp_dir().join("teamaccess-bench"))
}

/// What one T sample measured.
struct TSample {
    t: f64,
    graph_requests: u64,
    per_ta: KubeRequests,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

async fn measure(client: &Client, kubeconfig: &Path, bin: &Path, n: usize, settings: &Settings) -> Row {
    let id = run_id();
    let tenant = tenant::groups(&format!("{id}-team"), n);
    let emulator = Emulator::start(tenant, &std::env::temp_dir().join(format!("bench-{id}"))).await.unwrap();
    emulator.set_faults(&Faults { latency_ms: 50, ..Default::default() });
    let api = Api::<TeamAccess>::all(client.clone());

    let mut t = Vec::new();
    let mut restart = 0.0;
    let mut restart_requests = KubeRequests::default();
    let mut drift_repair = None;
    let (mut idle_cpu, mut idle) = (0.0, KubeRequests::default());
    // At N = 5000 a sample and its cleanup take minutes: one of each.
    let samples = if n >= 5000 { 1 } else { settings.samples };
    // The API server slows as a run goes on (thousands of namespaces made and
    // deleted): T and T0 samples alternate, so both see the same server.
    let t0_concurrency = if settings.ideal { ideal_concurrency(client, n).await } else { 0 };
    let mut t0 = Vec::new();
    for sample in 0..samples {
        let last = sample + 1 == samples;
        let prefix = format!("{id}-s{sample}-");
        let selector = format!("{LABEL}={id}-s{sample}");
        // A new process per sample: every sample resolves its groups cold.
        let operator = start_operator(bin, kubeconfig, &emulator, &selector, "10m");
        operator.wait_ready().await;
        emulator.reset_stats();
        let (_, cpu0) = proc_stat(operator.pid());
        let requests0 = operator.kube_requests().await;
        let took = measure_t(&api, &prefix, &selector, &id, n).await;
        let per_ta = per_object(operator.kube_requests().await.since(&requests0), n);
        let (peak_rss_mib, cpu1) = proc_stat(operator.pid());
        let graph_requests = emulator.stats().graph_requests;
        eprintln!(
            "T sample {}: {took:.2}s, graph {graph_requests}, rss {peak_rss_mib:.1} MiB, per TeamAccess {per_ta:?}",
            sample + 1
        );
        t.push(TSample { t: took, graph_requests, per_ta, peak_rss_mib, cpu_seconds: cpu1 - cpu0 });
        let operator = if last {
            let (restarted, figures) =
                restart_and_idle(kubeconfig, bin, &emulator, operator, &selector, n, settings).await;
            (restart, restart_requests, idle_cpu, idle) = figures;
            drift_repair = Some(measure_drift_repair(client, &format!("{prefix}0")).await);
            restarted
        } else {
            operator
        };
        if last && !settings.ideal && !settings.bind {
            operator.stop().await; // nothing follows that needs a quiet cluster
        } else {
            delete_all(client, &api, &selector, &prefix, n, operator).await;
        }
        if settings.ideal {
            let took = ideal_run(client, n, t0_concurrency).await;
            eprintln!("T0 sample {}: {took:.2}s at concurrency {t0_concurrency}", sample + 1);
            t0.push(took);
        }
    }
    let t0 = if settings.ideal { Samples(t0) } else { Samples(vec![f64::NAN]) };
    // Bindings are measured up to N = 1000, where the target is set.
    let bind =
        if settings.bind && n <= 1000 { Some(measure_bind(client, kubeconfig, bin, &emulator, n).await) } else { None };
    // The sample with the median T gives the request figures.
    let mut by_t: Vec<&TSample> = t.iter().collect();
    by_t.sort_by(|a, b| a.t.total_cmp(&b.t));
    Row {
        n,
        t: Samples(t.iter().map(|s| s.t).collect()),
        t0,
        t0_concurrency,
        graph_requests: Samples(t.iter().map(|s| s.graph_requests as f64).collect()),
        per_ta: by_t[by_t.len() / 2].per_ta,
        peak_rss_mib: t.iter().map(|s| s.peak_rss_mib).fold(0.0, f64::max),
        cpu_seconds: Samples(t.iter().map(|s| s.cpu_seconds).collect()),
        restart,
        restart_requests,
        idle_cpu,
        idle,
        drift_repair: drift_repair.unwrap_or(f64::NAN),
        bind,
    }
}

/// Deletes the RoleBinding of TeamAccess `name` (in namespace `name`) by hand and
/// returns the seconds until the operator has made it again.
async fn measure_drift_repair(client: &Client, name: &str) -> f64 {
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), name);
    let child = format!("teamaccess-{name}");
    let before = bindings.get(&child).await.expect("the RoleBinding to delete").metadata.uid;
    let started = Instant::now();
    bindings.delete(&child, &DeleteParams::default()).await.unwrap();
    wait_until("the deleted RoleBinding to be back", Duration::from_secs(30), Duration::from_millis(20), || async {
        bindings.get_opt(&child).await.ok().flatten().is_some_and(|rb| rb.metadata.uid != before)
    })
    .await;
    let took = started.elapsed().as_secs_f64();
    eprintln!("drift repair: a deleted RoleBinding was back after {took:.2}s");
    took
}

fn per_object(requests: KubeRequests, n: usize) -> KubeRequests {
    requests.scaled(1.0 / n as f64)
}

/// N namespaces made first, then N TeamAccess binding `edit` in them (timed, with
/// the operator's requests counted), then the same N RoleBindings made by one
/// client at concurrency 64 into N other existing namespaces (timed).
/// Waits until the controller-manager has made the `default` ServiceAccount in
/// each of the N new namespaces, so its writes are not in either timed run.
async fn wait_service_accounts(client: &Client, prefix: &str, n: usize) {
    let accounts = Api::<ServiceAccount>::all(client.clone());
    wait_until(&format!("{n} default ServiceAccounts"), patience(n), Duration::from_millis(500), || async {
        let list = accounts.list_metadata(&ListParams::default().fields("metadata.name=default")).await;
        list.is_ok_and(|l| {
            l.items
                .iter()
                .filter(|sa| sa.metadata.namespace.as_deref().is_some_and(|ns| ns.starts_with(prefix)))
                .count()
                == n
        })
    })
    .await;
}

async fn measure_bind(client: &Client, kubeconfig: &Path, bin: &Path, emulator: &Emulator, n: usize) -> BindRow {
    let id = run_id();
    let namespaces = Api::<Namespace>::all(client.clone());
    let make_namespaces = |prefix: String| {
        let namespaces = namespaces.clone();
        stream::iter(0..n).for_each_concurrent(32, move |i| {
            let namespaces = namespaces.clone();
            let name = format!("{prefix}{i}");
            async move {
                let ns: Namespace = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {LABEL: "bind"}}
                }))
                .unwrap();
                namespaces.create(&Default::default(), &ns).await.unwrap();
            }
        })
    };
    let prefix = format!("{id}-b-");
    make_namespaces(prefix.clone()).await;
    wait_service_accounts(client, &prefix, n).await;
    let selector = format!("{LABEL}={id}-b");
    let operator = start_operator(bin, kubeconfig, emulator, &selector, "10m");
    operator.wait_ready().await;
    let requests0 = operator.kube_requests().await;
    let api = Api::<TeamAccess>::all(client.clone());
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let name = format!("{prefix}{i}");
            let label = format!("{id}-b");
            async move {
                let obj = serde_json::json!({
                    "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
                    "metadata": {"name": name, "labels": {LABEL: label}},
                    "spec": {"group": {"objectId": tenant::group_id(i)}, "namespace": name, "clusterRole": "edit"}
                });
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(obj)).await.unwrap();
            }
        })
        .await;
    wait_until(&format!("{n} bindings Ready"), patience(n), Duration::from_millis(200), || async {
        all_ready(&api, &selector, n).await
    })
    .await;
    let t = started.elapsed().as_secs_f64();
    let per_ta = per_object(operator.kube_requests().await.since(&requests0), n);
    eprintln!("bind: {t:.2}s, per TeamAccess {per_ta:?}");
    // The namespaces existed before: the operator keeps them, the bench deletes them.
    delete_teamaccesses(&api, &selector, &prefix, n).await;
    operator.stop().await;
    delete_namespaces(client, &prefix, n).await;

    // One client, the same RoleBindings, into namespaces that exist.
    let prefix = format!("{id}-b0-");
    make_namespaces(prefix.clone()).await;
    wait_service_accounts(client, &prefix, n).await;
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            let name = format!("{prefix}{i}");
            async move {
                let rb: RoleBinding = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "teamaccess-edit", "namespace": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": tenant::group_id(i)}]
                }))
                .unwrap();
                Api::<RoleBinding>::namespaced(client, &name).create(&Default::default(), &rb).await.unwrap();
            }
        })
        .await;
    let t0 = started.elapsed().as_secs_f64();
    eprintln!("bind, one client: {t0:.2}s");
    delete_namespaces(client, &prefix, n).await;
    BindRow { t, t0, per_ta }
}

/// Deletes the namespaces `{prefix}{i}` and waits until they are gone.
async fn delete_namespaces(client: &Client, prefix: &str, n: usize) {
    let namespaces = Api::<Namespace>::all(client.clone());
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let namespaces = namespaces.clone();
            let name = format!("{prefix}{i}");
            async move {
                let _ = namespaces.delete(&name, &DeleteParams::default()).await;
            }
        })
        .await;
    wait_namespaces_gone(client, prefix, n).await;
}

/// T: N TeamAccess named `{prefix}{i}` applied at once, until all are Ready.
async fn measure_t(api: &Api<TeamAccess>, prefix: &str, selector: &str, id: &str, n: usize) -> f64 {
    let label_value = selector.split_once('=').map(|(_, v)| v.to_string()).unwrap_or_default();
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let label_value = label_value.clone();
            async move {
                let name = format!("{prefix}{i}");
                let obj = serde_json::json!({
                    "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
                    "metadata": {"name": name, "labels": {LABEL: label_value}},
                    "spec": {"group": {"displayName": format!("{id}-team-{i}")}, "namespace": name, "verbs": ["*"]}
                });
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(obj)).await.unwrap();
            }
        })
        .await;
    wait_until(&format!("{n} TeamAccess Ready"), patience(n), Duration::from_millis(200), || async {
        all_ready(api, selector, n).await
    })
    .await;
    started.elapsed().as_secs_f64()
}

/// Restart: a new process reconciles every object again. Idle: the objects in
/// place, resyncing. Returns the restarted operator, still running, and
/// (restart s, the restart's requests, idle CPU s/60s, idle requests/60s).
async fn restart_and_idle(
    kubeconfig: &Path,
    bin: &Path,
    emulator: &Emulator,
    operator: OperatorProcess,
    selector: &str,
    n: usize,
    settings: &Settings,
) -> (OperatorProcess, (f64, KubeRequests, f64, KubeRequests)) {
    operator.stop().await;
    let restarted = Instant::now();
    let resync = humantime::format_duration(settings.resync).to_string();
    let operator = start_operator(bin, kubeconfig, emulator, selector, &resync);
    const RECONCILES: &str = "teamaccess_reconcile_duration_seconds_count";
    wait_until("every object reconciled after the restart", patience(n), Duration::from_millis(100), || async {
        operator.metric(RECONCILES).await.unwrap_or(0.0) >= n as f64
    })
    .await;
    let restart = restarted.elapsed().as_secs_f64();
    // A new process: its counters hold everything it sent since it started.
    let restart_requests = operator.kube_requests().await;
    eprintln!("restart: {restart:.2}s, {restart_requests:?}");

    // Idle: settle for a moment, then count over a window of at least two resyncs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, cpu0) = proc_stat(operator.pid());
    let requests0 = operator.kube_requests().await;
    let reconciled0 = operator.metric(RECONCILES).await.expect("the operator's metrics");
    tokio::time::sleep(settings.idle).await;
    let (_, cpu1) = proc_stat(operator.pid());
    let idle = operator.kube_requests().await.since(&requests0);
    let reconciled1 = operator.metric(RECONCILES).await.expect("the operator's metrics");
    let resyncs = reconciled1 - reconciled0;
    eprintln!("idle {:?}: {resyncs} reconciles, {idle:?}", settings.idle);
    // The window held resyncs, so "no requests" means resyncs cost nothing. The
    // resync is jittered by the controller's queue, so allow one period of slack.
    let expected = (settings.idle.as_secs_f64() / settings.resync.as_secs_f64()).floor() - 1.0;
    assert!(
        resyncs >= expected.max(1.0) * n as f64,
        "only {resyncs} reconciles of {n} objects in an idle window of {:?} with --resync {resync}",
        settings.idle
    );
    if settings.require_idle_zero {
        assert_eq!((idle.reads, idle.writes, idle.reviews), (0.0, 0.0, 0.0), "an idle resync sent requests: {idle:?}");
    }
    let per_minute = 60.0 / settings.idle.as_secs_f64();
    let idle = idle.scaled(per_minute);
    (operator, (restart, restart_requests, (cpu1 - cpu0) * per_minute, idle))
}

/// Deletes every TeamAccess of a sample through the running operator (so the
/// finalizers run), stops it, and waits until the namespaces are gone too.
async fn delete_all(
    client: &Client,
    api: &Api<TeamAccess>,
    selector: &str,
    prefix: &str,
    n: usize,
    operator: OperatorProcess,
) {
    delete_teamaccesses(api, selector, prefix, n).await;
    operator.stop().await;
    wait_namespaces_gone(client, prefix, n).await;
}

/// Deletes the TeamAccess objects `{prefix}{i}` and waits until their finalizers ran.
async fn delete_teamaccesses(api: &Api<TeamAccess>, selector: &str, prefix: &str, n: usize) {
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            async move {
                let _ = api.delete(&format!("{prefix}{i}"), &DeleteParams::default()).await;
            }
        })
        .await;
    wait_until("the TeamAccess objects to be deleted", patience(n), Duration::from_millis(500), || async {
        api.list_metadata(&ListParams::default().labels(selector)).await.is_ok_and(|l| l.items.is_empty())
    })
    .await;
}

/// The ideal client's best concurrency for `n` objects, from a sweep (one run
/// each, every run after the namespaces of the previous one are gone).
async fn ideal_concurrency(client: &Client, n: usize) -> usize {
    let mut best = (f64::MAX, 0);
    for concurrency in [1, 2, 4, 8, 16, 32, 64] {
        if (n >= 1000 && concurrency < 4) || (n >= 5000 && concurrency < 32) {
            continue; // minutes of sequential requests would not win
        }
        let took = ideal_run(client, n, concurrency).await;
        eprintln!("ideal client, concurrency {concurrency}: {took:.2}s");
        if took < best.0 {
            best = (took, concurrency);
        }
    }
    best.1
}

/// One timed run of the ideal client, then its cleanup.
async fn ideal_run(client: &Client, n: usize, concurrency: usize) -> f64 {
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
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = Api::<Namespace>::all(client.clone());
            let name = format!("{id}-{i}");
            async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        })
        .await;
    wait_namespaces_gone(client, &format!("{id}-"), n).await;
    took
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
    let mut ns = build::build_namespace(&ta, &build::no_profile());
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
