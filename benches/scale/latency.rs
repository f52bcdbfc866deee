//! Latency: one TeamAccess at a time on an idle operator, from the apply to
//! Ready, each for a group not looked up before (a new team), once with the
//! static directory and once with the Graph emulator and its added latency.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, Faults, TENANT_ID};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    runtime::wait::await_condition,
};
use teamaccess_operator::api::TeamAccess;

use super::{LABEL, delete_namespaces, run_id, support, wait_until};

/// Where the operator under measurement looks groups up.
#[derive(Clone, Copy, Debug)]
pub enum Lookup {
    StaticFile,
    /// The emulator, with 50 ms added to every Graph request.
    Graph,
}

/// apply → Ready, in milliseconds, one per sample.
pub struct LatencyRow {
    pub lookup: Lookup,
    pub millis: Vec<f64>,
}

impl LatencyRow {
    /// The nearest-rank percentile `p` (0 < p ≤ 100) of the samples.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.millis.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    }

    pub fn render(rows: &[LatencyRow]) -> String {
        let mut t = String::from(
            "\nOne TeamAccess applied on an idle operator, until Ready (a new group each time, so every sample looks it up):\n\n| directory | samples | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|\n",
        );
        for r in rows {
            let directory = match r.lookup {
                Lookup::StaticFile => "static file",
                Lookup::Graph => "Graph emulator (+50 ms per request)",
            };
            t.push_str(&format!(
                "| {directory} | {} | {:.0} | {:.0} | {:.0} |\n",
                r.millis.len(),
                r.percentile(50.0),
                r.percentile(99.0),
                r.percentile(100.0)
            ));
        }
        t
    }
}

/// Applies `samples` TeamAccess objects one after the other to an operator of
/// its own and times each from the apply until the API server shows it Ready.
pub async fn measure(client: &Client, kubeconfig: &Path, bin: &Path, lookup: Lookup, samples: usize) -> LatencyRow {
    let id = run_id();
    let prefix = format!("{id}-lat-");
    let label = format!("{id}-lat");
    let selector = format!("{LABEL}={label}");
    let tenant = support::tenant::groups(&format!("{id}-lat"), samples);
    let dir = std::env::temp_dir().join(format!("bench-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut emulator = None;
    let args: Vec<String> = match lookup {
        Lookup::StaticFile => {
            let file = dir.join("directory.yaml");
            std::fs::write(&file, serde_saphyr::to_string(&tenant).unwrap()).unwrap();
            ["--directory", "static", "--directory-file", file.to_str().unwrap()].map(String::from).to_vec()
        }
        Lookup::Graph => {
            let started = Emulator::start(tenant, &dir).await.unwrap();
            started.set_faults(&Faults { latency_ms: 50, ..Default::default() });
            let args = support::process::graph_args(&started);
            emulator = Some(started);
            args
        }
    };
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--selector", &selector, "--resync", "10m", "--log-format", "json"]);
    let env = [
        ("AZURE_TENANT_ID", TENANT_ID),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("RUST_LOG", "warn"),
    ];
    let operator = support::process::OperatorProcess::start_binary(bin, kubeconfig, &args, &env, &dir);
    operator.wait_ready().await;

    let api = Api::<TeamAccess>::all(client.clone());
    let mut millis = Vec::new();
    for i in 0..samples {
        let name = format!("{prefix}{i}");
        // Retain: the namespaces go together at the end, not under the next sample.
        let obj = serde_json::json!({
            "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
            "metadata": {"name": name, "labels": {LABEL: label}},
            "spec": {"group": {"displayName": format!("{id}-lat-{i}")}, "namespace": name, "verbs": ["*"],
                     "deletionPolicy": "Retain"}
        });
        let started = Instant::now();
        api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(obj)).await.unwrap();
        let ready = await_condition(api.clone(), &name, |ta: Option<&TeamAccess>| ta.is_some_and(support::is_ready));
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .unwrap_or_else(|_| panic!("{name} not Ready within 30 s; log: {}", operator.log_tail()))
            .unwrap();
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        wait_until(&format!("{name} to be deleted"), Duration::from_secs(30), Duration::from_millis(50), || async {
            api.get_opt(&name).await.is_ok_and(|ta| ta.is_none())
        })
        .await;
        // Idle again: no watch event of the previous sample still on its way.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    operator.stop().await;
    drop(emulator);
    delete_namespaces(client, &prefix, samples).await;
    eprintln!("apply → Ready, {lookup:?}: {millis:.0?} ms");
    LatencyRow { lookup, millis }
}
