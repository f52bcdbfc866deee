//! The flags of `run`, each with its `TEAMACCESS_*` (or `AZURE_*`) variable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    azure::{
        AksClusterId,
        credential::{Cloud, CredentialKind},
    },
    reconcile::Settings,
    telemetry::LogFormat,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectoryKind {
    /// Microsoft Graph (Entra ID).
    Graph,
    /// A YAML file of groups and users (--directory-file).
    Static,
}

/// The directory settings `run` and `access-report` share.
#[derive(Args, Debug, Clone)]
pub struct DirectoryArgs {
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

    /// How long a resolved group or user is reused before Graph is asked again.
    #[arg(long, env = "TEAMACCESS_GRAPH_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub graph_cache_ttl: Duration,
}

#[derive(Args, Debug)]
pub struct AccessReportArgs {
    #[command(flatten)]
    pub source: DirectoryArgs,

    /// Only the TeamAccess objects of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,

    /// The output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: crate::access_report::Format,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where groups and users are looked up, and as whom.
    #[command(flatten)]
    pub source: DirectoryArgs,

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

    /// How often every TeamAccess is reconciled even when nothing changed (e.g. 30s, 10m, 1h).
    #[arg(long, env = "TEAMACCESS_RESYNC", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync: Duration,

    /// How often the members of groups bound with spec.bind Members are read
    /// again (Graph's delta query: about one request per 50 groups when nothing
    /// changed). A removal from the group is revoked within about this long.
    #[arg(long, env = "TEAMACCESS_MEMBERSHIP_POLL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub membership_poll: Duration,

    /// How long before its spec.expiresAt a grant says it is about to end: the
    /// Expiring condition, one Warning Event, teamaccess_grants_expiring. 0 turns
    /// the warning off.
    #[arg(long, env = "TEAMACCESS_EXPIRY_WARNING", default_value = "24h", value_parser = humantime::parse_duration)]
    pub expiry_warning: Duration,

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

    /// A YAML file of namespace profiles (Pod Security level, ResourceQuota,
    /// LimitRange, network policy presets, labels and annotations) that the
    /// namespaces the operator creates arrive with; re-read when it changes.
    /// Unset: namespaces are created bare, and a TeamAccess naming a profile is
    /// held (ProfileNotFound).
    #[arg(long, env = "TEAMACCESS_NAMESPACE_PROFILES")]
    pub namespace_profiles: Option<PathBuf>,

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
