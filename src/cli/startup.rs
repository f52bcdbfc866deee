//! Start-up of `run`, in one order with nothing to forget: logging, the metrics
//! every client counts in, the Kubernetes client, the directory and ARM on one
//! Azure identity, the controller's context, the HTTP server, then the
//! controller itself (as leader, or alone).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use azure_core::credentials::TokenCredential;
use tokio::sync::watch;

use crate::{
    azure::{
        AksClusterId, ClusterUserRole,
        arm::ArmClient,
        credential::{self, CredentialSettings},
    },
    directory::{
        Directory,
        graph::{GraphDirectory, GraphSettings},
        static_file::StaticDirectory,
    },
    profiles::NamespaceProfiles,
    reconcile::{Context, Identity, Policy, Settings, caches::Caches},
    server,
    telemetry::{self, Health, Telemetry, metrics::Metrics},
};

use super::{
    flags::{AccessReportArgs, DirectoryArgs, DirectoryKind, RunArgs},
    leader::{run_as_leader, stopped},
    shutdown::shutdown_signal,
};

/// The HTTP client and credential shared by Graph and ARM, from the flags and
/// environment: one CA setting, one identity, a token per audience.
fn azure_credential(args: &DirectoryArgs) -> anyhow::Result<(reqwest::Client, Arc<dyn TokenCredential>)> {
    let mut http = reqwest::Client::builder();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?;
        let ca =
            reqwest::Certificate::from_pem(&pem).with_context(|| format!("parsing --ca-file {}", path.display()))?;
        http = http.add_root_certificate(ca);
    }
    let http = http.build().context("building the HTTP client")?;
    let client_secret = match &args.client_secret_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --client-secret-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("AZURE_CLIENT_SECRET").ok().filter(|s| !s.is_empty()),
    };
    let settings = CredentialSettings {
        kind: args.credential,
        tenant_id: args.tenant_id.clone(),
        client_id: args.client_id.clone(),
        client_secret,
        federated_token_file: args.federated_token_file.clone(),
        authority_host: args.authority_host.clone().or_else(|| std::env::var("AZURE_AUTHORITY_HOST").ok()),
    };
    let (credential, description) =
        credential::build(&settings, args.cloud, http.clone()).context("building the credential")?;
    tracing::info!(credential = %description, "using an Azure identity");
    Ok((http, credential))
}

/// Builds the Graph directory on the shared credential.
fn graph_directory(
    args: &DirectoryArgs,
    (http, credential): (reqwest::Client, Arc<dyn TokenCredential>),
    metrics: Arc<Metrics>,
) -> Arc<dyn Directory> {
    let endpoint = args.graph_endpoint.clone().unwrap_or_else(|| args.cloud.graph_endpoint().to_string());
    tracing::info!(graph = %endpoint, "using the Microsoft Graph directory");
    let graph = GraphSettings { endpoint, cache_ttl: args.graph_cache_ttl, ..Default::default() };
    Arc::new(GraphDirectory::new(http, credential, graph, Some(metrics)))
}

/// The groups' Cluster User Role on the AKS cluster, through ARM on the shared credential.
fn cluster_user_role(
    args: &RunArgs,
    cluster: &AksClusterId,
    (http, credential): (reqwest::Client, Arc<dyn TokenCredential>),
    metrics: Arc<Metrics>,
) -> Arc<ClusterUserRole> {
    let endpoint = args.arm_endpoint.clone().unwrap_or_else(|| args.source.cloud.arm_endpoint().to_string());
    tracing::info!(arm = %endpoint, cluster = %cluster, "granting the groups the Azure Kubernetes Service Cluster User Role");
    let arm = ArmClient::new(http, credential, &endpoint, ARM_REQUEST_TIMEOUT, Some(metrics));
    Arc::new(ClusterUserRole::new(arm, cluster, args.resync))
}

/// How long one ARM request may take.
const ARM_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    // Made first: the Kubernetes client and the directory count their requests in it.
    let telemetry = Telemetry::default();
    let client = kubernetes_client(&telemetry.metrics).await?;
    let identity = directory_and_arm(&args, &telemetry.metrics).await?;
    let own_namespace = args
        .operator_namespace
        .clone()
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok().map(|s| s.trim().to_string()));
    let namespace_profiles = match &args.namespace_profiles {
        Some(path) => Some(Arc::new(NamespaceProfiles::load(path).await?)),
        None => None,
    };
    let settings = settings(&args, own_namespace.as_deref(), namespace_profiles);
    let instance = std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok());
    let (caches, feeds) = Caches::new();
    let ctx = Arc::new(Context::new(client, settings, identity, caches, telemetry.clone(), instance.clone()));

    let stopping = stop_on_signal(telemetry.health.clone());
    // The server outlives the stop signal by a moment, so probes see /readyz go unready.
    let server_stop = {
        let stopping = stopping.clone();
        async move {
            stopped(stopping).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let (addr, server) = server::serve(args.metrics_addr, telemetry.metrics.clone(), telemetry.health, server_stop)
        .await
        .with_context(|| format!("cannot serve metrics and health on {}", args.metrics_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");

    if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or(own_namespace)
            .context("--leader-election needs --lease-namespace (or TEAMACCESS_OPERATOR_NAMESPACE)")?;
        let identity =
            format!("{}-{:08x}", instance.unwrap_or_else(|| "teamaccess-operator".into()), fastrand::u32(..));
        run_as_leader(ctx, feeds, &args, namespace, identity, stopping).await?;
    } else {
        telemetry.metrics.leader.set(1);
        crate::controller::run(ctx, feeds, stopped(stopping)).await?;
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// The Kubernetes client from the kubeconfig or the in-cluster configuration,
/// counting its requests in `metrics`, once the API server answers.
pub async fn kubernetes_client(metrics: &Arc<Metrics>) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("cannot build a Kubernetes client from the kubeconfig or the in-cluster configuration")?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("cannot build a Kubernetes client")?
        .with_layer(&telemetry::kube_requests::layer(metrics.clone()))
        .build();
    let version = client.apiserver_version().await.context("cannot reach the Kubernetes API server")?;
    tracing::info!(version = %version.git_version, platform = %version.platform, "connected to the Kubernetes API server");
    Ok(client)
}

/// The directory, and the groups' Cluster User Role when a cluster is given,
/// on one Azure identity, built only when Graph or ARM needs it (the static
/// directory alone needs none).
async fn directory_and_arm(args: &RunArgs, metrics: &Arc<Metrics>) -> anyhow::Result<Identity> {
    let needs_azure = args.source.directory == DirectoryKind::Graph || args.aks_cluster_resource_id.is_some();
    let azure = if needs_azure { Some(azure_credential(&args.source)?) } else { None };
    let directory = directory_on(&args.source, azure.clone(), metrics).await?;
    let cluster_user_role = match (&args.aks_cluster_resource_id, azure) {
        (Some(cluster), Some(azure)) => Some(cluster_user_role(args, cluster, azure, metrics.clone())),
        _ => None,
    };
    Ok(Identity { directory, cluster_user_role, roster: Default::default() })
}

/// The directory the flags name: Graph on `azure` (the credential), or the file.
async fn directory_on(
    args: &DirectoryArgs,
    azure: Option<(reqwest::Client, Arc<dyn TokenCredential>)>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Directory>> {
    Ok(match (args.directory, azure) {
        (DirectoryKind::Graph, Some(azure)) => graph_directory(args, azure, metrics.clone()),
        _ => {
            let path = args.directory_file.as_deref().context("--directory static needs --directory-file")?;
            Arc::new(StaticDirectory::load(path).await?)
        }
    })
}

/// `access-report`: the TeamAccess objects (read with the caller's kubeconfig)
/// joined with the directory, printed; what is left out is said on stderr.
pub async fn access_report(args: AccessReportArgs) -> anyhow::Result<()> {
    let metrics = Arc::default();
    let client = kubernetes_client(&metrics).await?;
    let azure =
        if args.source.directory == DirectoryKind::Graph { Some(azure_credential(&args.source)?) } else { None };
    let directory = directory_on(&args.source, azure, &metrics).await?;
    let teamaccesses = kube::Api::<crate::api::TeamAccess>::all(client)
        .list(&Default::default())
        .await
        .context("cannot list TeamAccess objects")?
        .items;
    let (rows, skipped) = crate::access_report::collect(&teamaccesses, args.namespace.as_deref(), directory.as_ref())
        .await
        .context("reading the directory")?;
    for s in &skipped {
        eprintln!("skipped TeamAccess {}: {}", s.teamaccess, s.why);
    }
    print!("{}", crate::access_report::render(&rows, args.output));
    Ok(())
}

/// The controller's settings from the flags, logged as it starts.
fn settings(
    args: &RunArgs,
    own_namespace: Option<&str>,
    namespace_profiles: Option<Arc<NamespaceProfiles>>,
) -> Settings {
    let settings = Settings {
        policy: Policy::new(args.protected_namespaces.clone(), own_namespace)
            .with_allowed_cluster_roles(args.allowed_cluster_roles.clone())
            .with_escalating_rules(args.allow_escalating_rules)
            .with_strict_group_names(args.strict_group_names),
        resync: args.resync,
        expiry_warning: args.expiry_warning,
        concurrency: args.concurrency,
        selector: args.selector.clone(),
        max_namespace_deletions: args.max_namespace_deletions,
        namespace_deletion_window: args.namespace_deletion_window,
        deletion_brake_lease: (
            args.deletion_brake_namespace
                .clone()
                .or_else(|| own_namespace.map(String::from))
                .unwrap_or_else(|| "default".into()),
            args.deletion_brake_lease.clone(),
        ),
        admission_policy_prefix: Some(args.admission_policy_prefix.clone()).filter(|p| !p.is_empty()),
        namespace_profiles,
        membership_poll: args.membership_poll,
    };
    tracing::info!(
        directory = ?args.source.directory,
        resync = %humantime::format_duration(settings.resync),
        membership_poll = %humantime::format_duration(settings.membership_poll),
        expiry_warning = %humantime::format_duration(settings.expiry_warning),
        protected = ?settings.policy.protected_namespaces,
        allowed_cluster_roles = ?settings.policy.allowed_cluster_roles,
        allow_escalating_rules = settings.policy.allow_escalating_rules,
        strict_group_names = settings.policy.strict_group_names,
        "starting the TeamAccess controller"
    );
    settings
}

/// One stop signal for everything: SIGTERM or Ctrl-C turns /readyz unready at
/// once and the returned receiver true.
fn stop_on_signal(health: Arc<Health>) -> watch::Receiver<bool> {
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        health.set_ready(false);
        let _ = stop.send(true);
    });
    stopping
}
