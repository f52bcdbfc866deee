//! spec.bind Members at scale: G groups of M members each (default 1,000 × 20,
//! so 20,000 people), every group bound by a TeamAccess in Members mode, on
//! the Graph emulator (50 ms added to every request) and the release operator
//! with --membership-poll P (default 10s).
//!
//! Usage: membership KUBECONFIG [OUTPUT.md]. Prints, and writes to OUTPUT.md
//! under "## Membership (spec.bind Members)" when given:
//! - cold: apply of the G objects until every RoleBinding names its M people;
//! - revocation: R members (default 20), each removed from its group in the
//!   emulator at a random moment of two poll intervals, until the operator's
//!   write of that RoleBinding without them (seen by a watch): p50, p99, max;
//! - idle: Graph requests per poll and Kubernetes writes over three quiet polls;
//! - peak RSS of the operator, after one more group of L members (default
//!   10,000) is bound.
//!
//! BENCH_MEMBERSHIP_GROUPS, _SIZE, _LARGE, _REMOVALS and _POLL override the
//! figures above (the test command's smoke run makes them small).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use azure_emulator::{Emulator, Faults};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use support::process::{GRAPH_ENV, OperatorProcess, graph_args, proc_status_mib};
use teamaccess_operator::{
    api::TeamAccess,
    directory::file_format::{DirectoryFile, GroupRecord, UserRecord},
};

struct Settings {
    groups: usize,
    size: usize,
    large: usize,
    removals: usize,
    poll: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        };
        let poll = std::env::var("BENCH_MEMBERSHIP_POLL").map_or(Duration::from_secs(10), |v| {
            humantime::parse_duration(&v).expect("BENCH_MEMBERSHIP_POLL is a duration such as 10s")
        });
        Self {
            groups: number("BENCH_MEMBERSHIP_GROUPS", 1000),
            size: number("BENCH_MEMBERSHIP_SIZE", 20),
            large: number("BENCH_MEMBERSHIP_LARGE", 10_000),
            removals: number("BENCH_MEMBERSHIP_REMOVALS", 20),
            poll,
        }
    }
}

fn id(kind: u32, i: usize) -> String {
    format!("{kind:08x}-{:04x}-4{:03x}-8000-{i:012x}", (i >> 12) & 0xffff, i & 0xfff)
}
fn group_id(i: usize) -> String {
    id(0x6b00_0000, i)
}
fn upn(group: usize, j: usize) -> String {
    format!("m{group}-{j}@contoso.com")
}
fn user_id(group: usize, j: usize) -> String {
    id(0x7b00_0000 + j as u32, group)
}

/// G groups of M members, and group G (the large one) of L members.
fn tenant(s: &Settings) -> DirectoryFile {
    let group = |i: usize| GroupRecord::security_group(group_id(i), format!("bench-members-{i}"));
    let user = |object_id: String, user_principal_name: String, group: usize| UserRecord {
        object_id,
        user_principal_name,
        display_name: None,
        user_type: None,
        member_of: vec![group_id(group)],
    };
    let mut users: Vec<UserRecord> = Vec::with_capacity(s.groups * s.size + s.large);
    for g in 0..s.groups {
        users.extend((0..s.size).map(|j| user(user_id(g, j), upn(g, j), g)));
    }
    users.extend((0..s.large).map(|j| user(id(0x8b00_0000, j), format!("big-{j}@contoso.com"), s.groups)));
    DirectoryFile { groups: (0..=s.groups).map(group).collect(), users, service_principals: vec![] }
}

fn manifest(run: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
        "metadata": {"name": format!("{run}-{i}"), "labels": {support::operator::TEST_LABEL: run}},
        "spec": {"group": {"objectId": group_id(i)}, "namespace": format!("{run}-{i}"),
                 "verbs": ["get", "list", "watch"], "bind": "Members"}
    })
}

/// How many of the objects name `size` members, when all are Ready.
async fn bound(api: &Api<TeamAccess>, selector: &str, size: u32) -> usize {
    let list = api.list(&kube::api::ListParams::default().labels(selector)).await.expect("list TeamAccess");
    list.items
        .iter()
        .filter(|ta| {
            support::is_ready(ta)
                && ta.status.as_ref().and_then(|s| s.members.as_ref()).is_some_and(|m| m.total == size)
        })
        .count()
}

async fn wait_bound(api: &Api<TeamAccess>, selector: &str, n: usize, size: u32, timeout: Duration) {
    let start = Instant::now();
    loop {
        let done = bound(api, selector, size).await;
        if done == n {
            return;
        }
        assert!(start.elapsed() < timeout, "{done} of {n} bound after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Removes one member of each of `s.removals` groups, each at a random moment
/// within two polls, and times each until the operator wrote its RoleBinding
/// without them (from a watch of the bindings). Seconds, sorted.
async fn revocations(client: &Client, emulator: &Emulator, run: &str, s: &Settings) -> Vec<f64> {
    // namespace -> (the UPN removed, when)
    let pending: Arc<Mutex<HashMap<String, (String, Instant)>>> = Arc::default();
    let seen: Arc<Mutex<Vec<f64>>> = Arc::default();
    let watch = {
        let (pending, seen) = (pending.clone(), seen.clone());
        let api = Api::<RoleBinding>::all(client.clone());
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=teamaccess-operator");
        tokio::spawn(async move {
            let mut events = watcher(api, config).applied_objects().boxed();
            while let Ok(Some(rb)) = events.try_next().await {
                let Some(ns) = rb.metadata.namespace.clone() else { continue };
                let mut pending = pending.lock().unwrap();
                let Some((gone, at)) = pending.get(&ns).cloned() else { continue };
                if !rb.subjects.iter().flatten().any(|s| s.name == gone) {
                    seen.lock().unwrap().push(at.elapsed().as_secs_f64());
                    pending.remove(&ns);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let step = s.groups / s.removals.max(1);
    stream::iter(0..s.removals.min(s.groups))
        .for_each_concurrent(None, |k| {
            let pending = pending.clone();
            let delay = s.poll.mul_f64(2.0 * fastrand::f64());
            async move {
                tokio::time::sleep(delay).await;
                let g = k * step.max(1);
                pending.lock().unwrap().insert(format!("{run}-{g}"), (upn(g, 0), Instant::now()));
                assert!(emulator.remove_member(&group_id(g), &user_id(g, 0)));
            }
        })
        .await;
    let deadline = Instant::now() + s.poll * 4 + Duration::from_secs(30);
    while !pending.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "revocations not seen: {:?}", pending.lock().unwrap().keys());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let mut times = seen.lock().unwrap().clone();
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let kubeconfig = PathBuf::from(args.first().expect("usage: membership KUBECONFIG [OUTPUT.md]"));
    let output = args.get(1).map(PathBuf::from);
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var(support::KUBECONFIG_ENV, &kubeconfig) };
    let s = Settings::from_env();
    let client = support::client_for(&kubeconfig).await;
    let bin = std::env::var_os("BENCH_OPERATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/teamaccess-operator"));

    let emulator = Emulator::start(tenant(&s), &std::env::temp_dir().join(support::unique("bench-members-emu")))
        .await
        .expect("start the emulator");
    emulator.set_faults(&Faults { latency_ms: 50, ..Default::default() });
    let run = support::unique("mb");
    let selector = format!("{}={run}", support::operator::TEST_LABEL);
    let poll = humantime::format_duration(s.poll).to_string();
    let mut op_args = graph_args(&emulator);
    op_args.extend(
        ["--selector", &selector, "--membership-poll", &poll, "--max-namespace-deletions", "0", "--log-format", "json"]
            .map(String::from),
    );
    let op_args: Vec<&str> = op_args.iter().map(String::as_str).collect();
    let mut env = GRAPH_ENV.to_vec();
    env.push(("RUST_LOG", "warn"));
    let op = OperatorProcess::start_binary(&bin, &kubeconfig, &op_args, &env, &std::env::temp_dir().join(&run));
    op.wait_ready().await;

    // Cold: every object bound to its members.
    let api = Api::<TeamAccess>::all(client.clone());
    let started = Instant::now();
    stream::iter(0..s.groups)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let run = run.clone();
            async move {
                let name = format!("{run}-{i}");
                api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(manifest(&run, i)))
                    .await
                    .expect("apply a TeamAccess");
            }
        })
        .await;
    let cold_timeout = Duration::from_secs(60 + s.groups as u64);
    wait_bound(&api, &selector, s.groups, s.size as u32, cold_timeout).await;
    let cold = started.elapsed().as_secs_f64();
    eprintln!("cold: {} groups x {} bound in {cold:.1}s", s.groups, s.size);

    // Idle: three quiet polls.
    tokio::time::sleep(s.poll + Duration::from_secs(2)).await;
    emulator.reset_stats();
    let before = op.kube_requests().await;
    let polls = 3;
    tokio::time::sleep(s.poll * polls).await;
    let graph_per_poll = emulator.stats().graph_requests as f64 / f64::from(polls);
    let idle_writes = op.kube_requests().await.since(&before).writes;
    let target = s.groups.div_ceil(50) + 1;
    eprintln!("idle: {graph_per_poll:.1} Graph requests per poll (target <= {target}), {idle_writes} writes");
    if std::env::var("BENCH_REQUIRE_IDLE_ZERO").is_ok_and(|v| v == "1") {
        assert_eq!(idle_writes, 0.0, "the operator wrote to Kubernetes while the directory was quiet");
        assert!(graph_per_poll <= target as f64, "{graph_per_poll} Graph requests per quiet poll, over {target}");
    }

    let times = revocations(&client, &emulator, &run, &s).await;
    let (p50, p99, max) = (percentile(&times, 50.0), percentile(&times, 99.0), times[times.len() - 1]);
    eprintln!("revocation: p50 {p50:.2}s p99 {p99:.2}s max {max:.2}s over {} removals", times.len());

    // One more group, of L members.
    let large = s.groups;
    api.patch(&format!("{run}-{large}"), &PatchParams::apply("bench").force(), &Patch::Apply(manifest(&run, large)))
        .await
        .expect("apply the large group's TeamAccess");
    let large_started = Instant::now();
    let api_l = api.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ta = api_l.get(&format!("{run}-{large}")).await.expect("get");
        if ta.status.as_ref().and_then(|s| s.members.as_ref()).is_some_and(|m| m.total as usize == s.large) {
            break;
        }
        assert!(Instant::now() < deadline, "the large group was not bound within 300s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let large_bound = large_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = proc_status_mib(op.pid(), "VmHWM");
    let rss = proc_status_mib(op.pid(), "VmRSS");

    let people = s.groups * s.size;
    let table = format!(
        "| groups × members | poll | cold: all bound | revocation p50 / p99 / max ({n} removals) | idle Graph requests per poll (target ≤ {target}) | idle Kubernetes writes | +1 group of {large_n}: bound in | peak RSS / RSS after (MiB) |\n|---|---|---|---|---|---|---|---|\n| {groups} × {size} ({people} people) | {poll} | {cold:.1} s | {p50:.2} / {p99:.2} / {max:.2} s | {graph_per_poll:.1} | {idle_writes} | {large_bound:.1} s | {peak:.1} / {rss:.1} |\n",
        n = times.len(),
        large_n = s.large,
        groups = s.groups,
        size = s.size,
    );
    println!("{table}");
    if let Some(path) = &output {
        write_section(path, &table);
    }

    // The operator removes what it made, then stops.
    cleanup(&api, &selector, &run, s.groups + 1).await;
    op.stop().await;
}

/// Replaces the membership section of the report (or appends it).
fn write_section(path: &Path, table: &str) {
    const HEADING: &str = "\n## Membership (spec.bind Members)\n";
    let section = format!(
        "{HEADING}\nCommand: `make bench` (scripts/bench.sh → `cargo bench --bench membership`). Every group bound by a TeamAccess with `bind: Members`, on the Graph emulator with 50 ms added latency per request, the release operator with `--membership-poll` as shown. Revocation: from the removal in the emulator to the operator's write of that RoleBinding without the person (a watch of the bindings), each removal at a random moment of two polls. Idle: three polls with nothing changed (Graph requests counted by the emulator, writes by the operator's own client).\n\n{table}"
    );
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let doc = match old.find(HEADING) {
        Some(at) => {
            let rest = &old[at + HEADING.len()..];
            let end = rest.find("\n## ").map_or(old.len(), |e| at + HEADING.len() + e);
            format!("{}{section}{}", &old[..at], &old[end..])
        }
        None => format!("{}{section}", old.trim_end_matches('\n').to_string() + "\n"),
    };
    std::fs::write(path, doc).unwrap();
    eprintln!("wrote {}", path.display());
}

async fn cleanup(api: &Api<TeamAccess>, selector: &str, run: &str, n: usize) {
    stream::iter(0..n)
        .for_each_concurrent(32, |i| async move {
            let _ = api.delete(&format!("{run}-{i}"), &DeleteParams::default()).await;
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let left = api.list(&kube::api::ListParams::default().labels(selector)).await.map_or(1, |l| l.items.len());
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("some TeamAccess objects of {run} were still being deleted after 300s");
}
