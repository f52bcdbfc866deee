//! The command line. Every `run` flag can also be set through a `TEAMACCESS_*`
//! environment variable, which is how the Helm chart passes values.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use azure_core::credentials::TokenCredential;

use crate::{
    azure::{
        AksClusterId, ClusterUserRole,
        arm::ArmClient,
        credential::{self, Cloud, CredentialKind, CredentialSettings},
    },
    directory::{
        Directory,
        graph::{GraphDirectory, GraphSettings},
        static_file::StaticDirectory,
    },
    reconcile::{self, Policy, Settings},
    server,
    telemetry::{self, Health, LogFormat, metrics::Metrics},
};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "teamaccess-operator",
    version,
    about = "Grants Microsoft Entra ID groups access to Kubernetes namespaces"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
    /// Print the TeamAccess CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectoryKind {
    /// Microsoft Graph (Entra ID).
    Graph,
    /// A YAML file of groups and users (--directory-file).
    Static,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where groups and users are looked up.
    #[arg(long, env = "TEAMACCESS_DIRECTORY", value_enum, default_value = "graph")]
    pub directory: DirectoryKind,

    /// The YAML file of the static directory; re-read when it changes.
    #[arg(long, env = "TEAMACCESS_DIRECTORY_FILE", required_if_eq("directory", "static"))]
    pub directory_file: Option<PathBuf>,

    /// How the operator authenticates to Entra ID; detected from the environment
    /// when unset (a federated token file means workload, a secret means secret,
    /// else managed identity).
    #[arg(long, env = "TEAMACCESS_CREDENTIAL", value_enum)]
    pub credential: Option<CredentialKind>,

    /// The Entra ID tenant (directory) id.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// The application (client) id; for managed identity, a user-assigned identity.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,

    /// A file holding the client secret (AZURE_CLIENT_SECRET is read too); a file
    /// keeps the secret out of the process list and lets a mounted Secret rotate.
    #[arg(long, env = "TEAMACCESS_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// The projected ServiceAccount token for Workload Identity.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// The national cloud: sets the Entra ID authority and the Graph endpoint.
    #[arg(long, env = "TEAMACCESS_CLOUD", value_enum, default_value = "public")]
    pub cloud: Cloud,

    /// The Graph root URL, overriding the cloud's (private endpoints, the emulator).
    #[arg(long, env = "TEAMACCESS_GRAPH_ENDPOINT")]
    pub graph_endpoint: Option<String>,

    /// The Entra ID authority host, overriding the cloud's (AZURE_AUTHORITY_HOST is read too).
    #[arg(long, env = "TEAMACCESS_AUTHORITY_HOST")]
    pub authority_host: Option<String>,

    /// An extra CA certificate (PEM) to trust for Entra ID, Graph and ARM.
    #[arg(long, env = "TEAMACCESS_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// The AKS cluster's resource ID
    /// (/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}).
    /// When set, each TeamAccess's group is given the Azure Kubernetes Service
    /// Cluster User Role on it (unless spec.clusterUserRole is false), so its
    /// members can fetch a kubeconfig. Unset: no Azure Resource Manager call at all.
    #[arg(long, env = "TEAMACCESS_AKS_CLUSTER_RESOURCE_ID")]
    pub aks_cluster_resource_id: Option<AksClusterId>,

    /// The Azure Resource Manager root URL, overriding the cloud's (the emulator).
    #[arg(long, env = "TEAMACCESS_ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,

    /// How long a resolved group or user is reused before Graph is asked again.
    #[arg(long, env = "TEAMACCESS_GRAPH_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub graph_cache_ttl: Duration,

    /// How often every TeamAccess is reconciled even when nothing changed (e.g. 30s, 10m, 1h).
    #[arg(long, env = "TEAMACCESS_RESYNC", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync: Duration,

    /// More namespaces no TeamAccess may target (comma-separated), added to the
    /// ones always protected: kube-system, kube-public, kube-node-lease, default
    /// and the operator's own.
    #[arg(long, env = "TEAMACCESS_PROTECTED_NAMESPACES", value_delimiter = ',')]
    pub protected_namespaces: Vec<String>,

    /// The ClusterRoles spec.clusterRole may name (comma-separated); any other is
    /// refused (Stalled, ClusterRoleNotAllowed). Empty: no ClusterRole may be bound.
    #[arg(long, env = "TEAMACCESS_ALLOWED_CLUSTER_ROLES", value_delimiter = ',', default_value = "view,edit,admin")]
    pub allowed_cluster_roles: Vec<String>,

    /// Admit spec.rules that grant escalate, bind or impersonate, or name the
    /// rbac.authorization.k8s.io API group or every group ("*"). Off: such a
    /// TeamAccess is refused (Stalled, RuleNotAllowed) and nothing is bound.
    #[arg(long, env = "TEAMACCESS_ALLOW_ESCALATING_RULES")]
    pub allow_escalating_rules: bool,

    /// Bind a spec.group.displayName or mailNickname only to a group that no
    /// ordinary user could have created (role-assignable, or synchronized from
    /// on-premises AD), spelled exactly as the directory has it; any other is
    /// refused (Stalled, GroupNameNotTrusted). objectId selectors are unaffected.
    #[arg(long, env = "TEAMACCESS_STRICT_GROUP_NAMES")]
    pub strict_group_names: bool,

    /// At most this many namespaces are deleted per --namespace-deletion-window;
    /// past that, deletions of TeamAccess objects wait (their access is removed at
    /// once). A brake on a bulk delete or GitOps prune; 0 lifts it.
    #[arg(long, env = "TEAMACCESS_MAX_NAMESPACE_DELETIONS", default_value_t = Settings::DEFAULT_MAX_NAMESPACE_DELETIONS)]
    pub max_namespace_deletions: u32,

    /// The window --max-namespace-deletions counts in.
    #[arg(long, env = "TEAMACCESS_NAMESPACE_DELETION_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub namespace_deletion_window: Duration,

    /// The Lease that keeps the brake's window of namespace deletions, so that a
    /// restart, a failover or a second shard cannot deletion-brake afresh: every
    /// operator naming the same Lease shares one allowance.
    #[arg(long, env = "TEAMACCESS_DELETION_BRAKE_LEASE", default_value = Settings::DEFAULT_DELETION_BRAKE_LEASE)]
    pub deletion_brake_lease: String,

    /// Namespace of --deletion-brake-lease; defaults to the operator's namespace
    /// (else "default"). Shards in different namespaces share one allowance when
    /// they name the same one.
    #[arg(long, env = "TEAMACCESS_DELETION_BRAKE_NAMESPACE")]
    pub deletion_brake_namespace: Option<String>,

    /// The admission policies to check for, by name prefix (<prefix>-authors,
    /// -removers, -integrity, -authorship: the chart's full name). Missing ones
    /// are logged and counted in teamaccess_admission_policies_missing; the
    /// stamps of <prefix>-authorship name the author of each grant, whose rights
    /// are checked before anything new is granted. Empty: no check, and every
    /// writer of a TeamAccess is trusted.
    #[arg(long, env = "TEAMACCESS_ADMISSION_POLICY_PREFIX", default_value = "teamaccess-operator")]
    pub admission_policy_prefix: String,

    /// The namespace the operator runs in (protected). Read from the service account
    /// when running in a pod.
    #[arg(long, env = "TEAMACCESS_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// How many TeamAccess objects are reconciled at once.
    #[arg(long, env = "TEAMACCESS_CONCURRENCY", default_value_t = Settings::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,

    /// Reconcile only TeamAccess objects matching this label selector, to run several
    /// operators side by side (sharding, canaries, tests).
    #[arg(long, env = "TEAMACCESS_SELECTOR")]
    pub selector: Option<String>,

    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "TEAMACCESS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,

    /// Elect a leader through a Lease so only one replica reconciles.
    #[arg(long, env = "TEAMACCESS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "TEAMACCESS_LEASE_NAME", default_value = "teamaccess-operator")]
    pub lease_name: String,

    /// Namespace of the Lease; defaults to the operator's namespace.
    #[arg(long, env = "TEAMACCESS_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader holds the Lease without renewing it (whole seconds).
    #[arg(long, env = "TEAMACCESS_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Log format.
    #[arg(long, env = "TEAMACCESS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The HTTP client and credential shared by Graph and ARM, from the flags and
/// environment: one CA setting, one identity, a token per audience.
fn azure_credential(args: &RunArgs) -> anyhow::Result<(reqwest::Client, Arc<dyn TokenCredential>)> {
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
    args: &RunArgs,
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
    let endpoint = args.arm_endpoint.clone().unwrap_or_else(|| args.cloud.arm_endpoint().to_string());
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
    let metrics = Metrics::shared();
    let config = kube::Config::infer()
        .await
        .context("cannot build a Kubernetes client from the kubeconfig or the in-cluster configuration")?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("cannot build a Kubernetes client")?
        .with_layer(&telemetry::kube_requests::layer(metrics.clone()))
        .build();
    let version = client.apiserver_version().await.context("cannot reach the Kubernetes API server")?;
    tracing::info!(version = %version.git_version, platform = %version.platform, "connected to the Kubernetes API server");

    // Built only when Graph or ARM needs it: the static directory alone needs no identity.
    let needs_azure = args.directory == DirectoryKind::Graph || args.aks_cluster_resource_id.is_some();
    let azure = if needs_azure { Some(azure_credential(&args)?) } else { None };
    let directory: Arc<dyn Directory> = match (args.directory, &azure) {
        (DirectoryKind::Graph, Some(azure)) => graph_directory(&args, azure.clone(), metrics.clone()),
        _ => {
            let path = args.directory_file.as_deref().context("--directory static needs --directory-file")?;
            Arc::new(StaticDirectory::load(path).await?)
        }
    };
    let cluster_user_role = match (&args.aks_cluster_resource_id, azure) {
        (Some(cluster), Some(azure)) => Some(cluster_user_role(&args, cluster, azure, metrics.clone())),
        _ => None,
    };

    let own_namespace = args
        .operator_namespace
        .clone()
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok().map(|s| s.trim().to_string()));
    let settings = Settings {
        policy: Policy::new(args.protected_namespaces.clone(), own_namespace.as_deref())
            .with_allowed_cluster_roles(args.allowed_cluster_roles.clone())
            .with_escalating_rules(args.allow_escalating_rules)
            .with_strict_group_names(args.strict_group_names),
        resync: args.resync,
        concurrency: args.concurrency,
        selector: args.selector.clone(),
        max_namespace_deletions: args.max_namespace_deletions,
        namespace_deletion_window: args.namespace_deletion_window,
        deletion_brake_lease: (
            args.deletion_brake_namespace.clone().or_else(|| own_namespace.clone()).unwrap_or_else(|| "default".into()),
            args.deletion_brake_lease.clone(),
        ),
        admission_policy_prefix: Some(args.admission_policy_prefix.clone()).filter(|p| !p.is_empty()),
    };
    tracing::info!(
        directory = ?args.directory,
        resync = %humantime::format_duration(settings.resync),
        protected = ?settings.policy.protected_namespaces,
        allowed_cluster_roles = ?settings.policy.allowed_cluster_roles,
        allow_escalating_rules = settings.policy.allow_escalating_rules,
        strict_group_names = settings.policy.strict_group_names,
        "starting the TeamAccess controller"
    );
    let instance = std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok());
    let health = Arc::new(Health::default());
    let mut ctx = reconcile::Context::new(client.clone(), directory, settings, instance.clone())
        .with_telemetry(metrics.clone(), health.clone());
    if let Some(role) = cluster_user_role {
        ctx = ctx.with_cluster_user_role(role);
    }
    let ctx = Arc::new(ctx);

    // One stop signal for everything: SIGTERM or Ctrl-C turns /readyz unready at once.
    let (stop, stopping) = watch::channel(false);
    {
        let health = health.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            health.set_ready(false);
            let _ = stop.send(true);
        });
    }
    // The server outlives the stop signal by a moment, so probes see /readyz go unready.
    let server_stop = {
        let stopping = stopping.clone();
        async move {
            stopped(stopping).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let (addr, server) = server::serve(args.metrics_addr, metrics.clone(), health.clone(), server_stop)
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
        run_as_leader(ctx, &args, namespace, identity, stopping).await?;
    } else {
        metrics.leader.set(1);
        reconcile::run(ctx, stopped(stopping)).await?;
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes once `stopping` turns true.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

async fn lease_manager(
    ctx: &reconcile::Context,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
) -> anyhow::Result<kube_lease_manager::LeaseManager> {
    let duration = args.lease_duration.as_secs().max(2);
    LeaseManagerBuilder::new(ctx.client.clone(), &args.lease_name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 5).max(1))
        // One field manager per identity, as the lease manager requires: its lock
        // is a server-side apply without force, so two replicas under one manager
        // name could both take a free Lease (two leaders until the next renewal).
        .with_field_manager(format!("{}-lease-{identity}", crate::api::labels::FIELD_MANAGER))
        .build()
        .await
        .context("setting up leader election")
}

/// Completes when the Lease goes from held to free (its holder released it).
/// Watch errors are retried by the watcher's backoff; the Lease's state when the
/// watch starts does not count, so a free Lease nobody takes does not spin.
async fn lease_released(client: kube::Client, namespace: &str, name: &str) {
    use futures::StreamExt as _;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let leases = kube::Api::<Lease>::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(leases, config).default_backoff().applied_objects());
    let mut held = false;
    while let Some(event) = events.next().await {
        let Ok(lease) = event else { continue };
        let holder = lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty());
        match holder {
            Some(_) => held = true,
            None if held => return,
            None => {}
        }
    }
    std::future::pending().await
}

/// Waits for the Lease, reconciles while holding it, and releases it on shutdown.
/// Losing the Lease ends the process with an error, so a restart rejoins cleanly.
async fn run_as_leader(
    ctx: Arc<reconcile::Context>,
    args: &RunArgs,
    namespace: String,
    identity: String,
    stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut leading, mut lease) = lease_manager(&ctx, args, &namespace, &identity).await?.watch().await;
    // A standby is ready: it can take over at any moment.
    ctx.health.set_ready(true);
    tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), %identity, "waiting for the leader Lease");
    let mut stop = stopping.clone();
    let became_leader = loop {
        tokio::select! {
            _ = leading.wait_for(|l| *l) => break true,
            _ = stop.wait_for(|s| *s) => break false,
            // The lease manager looks again only when the holder's lease would
            // expire; a leader that released it on SIGTERM (a rollout) would leave
            // the operator without one for up to --lease-duration. Seeing the
            // release, start over: a fresh manager takes a free Lease at once.
            () = lease_released(ctx.client.clone(), &namespace, &args.lease_name) => {}
        }
        drop(leading);
        let _ = lease.await;
        (leading, lease) = lease_manager(&ctx, args, &namespace, &identity).await?.watch().await;
    };
    if !became_leader {
        drop(leading);
        let _ = lease.await;
        return Ok(());
    }
    tracing::info!(%identity, "became the leader");
    ctx.metrics.leader.set(1);
    let lost = {
        let mut leading = leading.clone();
        async move {
            let _ = leading.wait_for(|l| !*l).await;
        }
    };
    let stopped_or_lost = {
        let stopped = stopped(stopping.clone());
        async move {
            tokio::select! {
                _ = stopped => {},
                _ = lost => tracing::warn!("lost the leader Lease"),
            }
        }
    };
    reconcile::run(ctx.clone(), stopped_or_lost).await?;
    ctx.metrics.leader.set(0);
    let lost_it = !*leading.borrow() && !*stopping.borrow();
    // Closing the channel makes the manager release the Lease for the next leader.
    drop(leading);
    match lease.await {
        Ok(Ok(_)) => tracing::info!("released the leader Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader Lease"),
        Err(e) => tracing::warn!(error = %e, "the lease task failed"),
    }
    if lost_it {
        anyhow::bail!("lost the leader Lease; exiting so a restart rejoins the election");
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::policy::DEFAULT_PROTECTED_NAMESPACES;

    #[test]
    fn protected_namespaces_add_to_the_defaults_and_are_trimmed() {
        let cli = Cli::try_parse_from(["teamaccess-operator", "run", "--directory", "static", "--directory-file", "x"])
            .unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert!(args.protected_namespaces.is_empty());
        assert_eq!(args.resync, Duration::from_secs(600));
        let policy = Policy::new(args.protected_namespaces.clone(), None);
        assert!(DEFAULT_PROTECTED_NAMESPACES.iter().all(|ns| policy.protected_namespaces.contains(*ns)));

        let cli =
            Cli::try_parse_from(["teamaccess-operator", "run", "--protected-namespaces", " prod , ,billing"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        let policy = Policy::new(args.protected_namespaces.clone(), Some("teamaccess-system"));
        for ns in DEFAULT_PROTECTED_NAMESPACES.into_iter().chain(["prod", "billing", "teamaccess-system"]) {
            assert!(policy.protected_namespaces.contains(ns), "{ns} in {:?}", policy.protected_namespaces);
        }
        assert_eq!(
            policy.protected_namespaces.len(),
            7,
            "no empty or untrimmed entry: {:?}",
            policy.protected_namespaces
        );
    }

    #[test]
    fn cluster_roles_default_to_view_edit_admin_and_an_empty_list_allows_none() {
        let parse = |extra: &[&str]| {
            let argv = ["teamaccess-operator", "run"].iter().chain(extra).copied().collect::<Vec<_>>();
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("expected run") };
            Policy::default()
                .with_allowed_cluster_roles(args.allowed_cluster_roles.clone())
                .with_escalating_rules(args.allow_escalating_rules)
        };
        let policy = parse(&[]);
        assert_eq!(policy.allowed_cluster_roles.iter().collect::<Vec<_>>(), ["admin", "edit", "view"]);
        assert!(!policy.allow_escalating_rules);
        let policy = parse(&["--allowed-cluster-roles", "view, team-lead", "--allow-escalating-rules"]);
        assert_eq!(policy.allowed_cluster_roles.iter().collect::<Vec<_>>(), ["team-lead", "view"]);
        assert!(policy.allow_escalating_rules);
        assert!(parse(&["--allowed-cluster-roles="]).allowed_cluster_roles.is_empty());
    }

    #[test]
    fn a_malformed_cluster_id_fails_at_startup_saying_what_to_fix() {
        let err = Cli::try_parse_from(["teamaccess-operator", "run", "--aks-cluster-resource-id", "my-cluster"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--aks-cluster-resource-id"), "{err}");
        assert!(err.contains("is not an AKS cluster resource ID"), "{err}");
        let id = "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks";
        let cli = Cli::try_parse_from(["teamaccess-operator", "run", "--aks-cluster-resource-id", id]).unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert_eq!(args.aks_cluster_resource_id.unwrap().scope(), id);
    }

    #[test]
    fn the_static_directory_needs_a_file() {
        let err = Cli::try_parse_from(["teamaccess-operator", "run", "--directory", "static"]).unwrap_err();
        assert!(err.to_string().contains("--directory-file"), "{err}");
    }
}
