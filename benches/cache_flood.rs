//! A flood of forged Roles carrying the operator's label in one namespace, as a
//! team with `admin` there could write them: what it costs the operator's memory.
//!
//! Usage: cache_flood KUBECONFIG [N]. Starts the release operator (or
//! BENCH_OPERATOR), reads its resident memory once it is ready, writes N Roles
//! labelled `app.kubernetes.io/managed-by=teamaccess-operator` with 16 rules of
//! 64 resources each (about 25 KiB apiece) and no TeamAccess owner, waits for its
//! watch to have seen them, reads its memory again, and prints both. The watched
//! cache keeps only children a TeamAccess controls and names, so the figure
//! stays flat; a cache of everything labelled grows by about N x 25 KiB.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use support::process::{OperatorProcess, proc_status_mib};

fn forged_role(namespace: &str, i: usize) -> Role {
    let resources: Vec<String> = (0..64).map(|r| format!("forged-resource-{r:04}-padding-padding-padding")).collect();
    let rules = (0..16)
        .map(|g| PolicyRule {
            api_groups: Some(vec![format!("group-{g}.example.com")]),
            resources: Some(resources.clone()),
            verbs: vec!["get".into()],
            ..Default::default()
        })
        .collect();
    Role {
        metadata: ObjectMeta {
            name: Some(format!("teamaccess-forged-{i}")),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "teamaccess-operator".to_string())].into()),
            ..Default::default()
        },
        rules: Some(rules),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let kubeconfig = PathBuf::from(args.next().expect("usage: cache_flood KUBECONFIG [N]"));
    let n: usize = args.next().map_or(2000, |n| n.parse().expect("N"));
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var(support::KUBECONFIG_ENV, &kubeconfig) };
    let admin = support::admin_client().await;
    let bin = std::env::var_os("BENCH_OPERATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/teamaccess-operator"));
    let seed = support::seed_directory_file();
    let label = support::unique("flood");
    let selector = format!("{}={label}", support::operator::TEST_LABEL);
    let args = ["--directory", "static", "--directory-file", seed.to_str().unwrap(), "--selector", &selector];
    let operator = OperatorProcess::start_binary(
        &bin,
        &kubeconfig,
        &args,
        &[("RUST_LOG", "warn")],
        &std::env::temp_dir().join(&label),
    );
    operator.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = proc_status_mib(operator.pid(), "VmRSS");

    let namespace = support::create_namespace(&admin, "flood").await;
    let roles = Api::<Role>::namespaced(admin.clone(), &namespace);
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let roles = roles.clone();
            let role = forged_role(&namespace, i);
            async move {
                roles.create(&PostParams::default(), &role).await.expect("create a forged Role");
            }
        })
        .await;
    let written = started.elapsed().as_secs_f64();
    let size_kib = serde_json::to_vec(&forged_role(&namespace, 0)).unwrap().len() as f64 / 1024.0;
    // The watch delivers them within moments; give the allocator time to settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = proc_status_mib(operator.pid(), "VmRSS");
    println!(
        "cache flood: {n} forged labelled Roles of {size_kib:.1} KiB in one namespace (written in {written:.1}s): \
         operator RSS {before:.1} MiB before, {after:.1} MiB after ({:+.1} MiB)",
        after - before
    );
    operator.stop().await;
    support::delete_namespace(&admin, &namespace).await;
}
