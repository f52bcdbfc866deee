//! What every step of a reconcile may use: the client, the settings, the
//! directory and Azure, the caches, the deletion brake, the per-object memory
//! and the reporting (Events, metrics, readiness). Built once, from parts made
//! before it; it makes no API calls itself. It sits at the bottom of the
//! reconcile's imports: steps take what they need from here, never from `mod.rs`.

use std::{sync::Arc, time::Duration};

use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};

use super::{brake::DeletionBrake, caches::Caches, memory::Memory, policy::Policy};
use crate::{
    api::labels::FIELD_MANAGER,
    azure::ClusterUserRole,
    directory::{Directory, members::Roster},
    profiles::NamespaceProfiles,
    telemetry::{Health, Telemetry, metrics::Metrics},
};

/// Settings of the controller that come from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// How often every TeamAccess is reconciled even when nothing changed.
    pub resync: Duration,
    /// How long before its spec.expiresAt a grant reports Expiring.
    pub expiry_warning: Duration,
    /// How many TeamAccess objects are reconciled at once.
    pub concurrency: u16,
    /// Only TeamAccess objects matching this label selector are reconciled.
    pub selector: Option<String>,
    /// At most this many namespaces deleted per `namespace_deletion_window`; 0: no limit.
    pub max_namespace_deletions: u32,
    pub namespace_deletion_window: Duration,
    /// The Lease (namespace, name) that keeps the brake's window: one allowance
    /// for every replica and shard that names it, kept across restarts.
    pub deletion_brake_lease: (String, String),
    /// The admission policies to look for (`<prefix>-authors`, ...), reported
    /// when missing, and whose authorship stamps name each grant's author; None
    /// looks for none and trusts every writer.
    pub admission_policy_prefix: Option<String>,
    /// The namespace profiles (`--namespace-profiles`), re-read while the
    /// operator runs; None: namespaces are created without a profile.
    pub namespace_profiles: Option<Arc<NamespaceProfiles>>,
    /// How often the members of spec.bind Members groups are read again.
    pub membership_poll: Duration,
}

impl Settings {
    /// The default of `--concurrency`.
    pub const DEFAULT_CONCURRENCY: u16 = 64;
    /// The default of `--expiry-warning`.
    pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);
    /// The default of `--max-namespace-deletions` (per `--namespace-deletion-window`, 1 minute).
    pub const DEFAULT_MAX_NAMESPACE_DELETIONS: u32 = 5;
    /// The default of `--membership-poll`.
    pub const DEFAULT_MEMBERSHIP_POLL: Duration = Duration::from_secs(10);
    /// The default of `--deletion-brake-lease`.
    pub const DEFAULT_DELETION_BRAKE_LEASE: &str = "teamaccess-namespace-deletions";
}

/// Shared by every reconcile, built once the caches exist (the controller
/// fills them from the feeds `Caches::new` gave alongside).
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub identity: Identity,
    /// Watched caches of the TeamAccess objects, their children and namespaces,
    /// read instead of the API server.
    pub caches: Caches,
    /// The brake on mass namespace deletion, shared by every cleanup.
    pub brake: DeletionBrake,
    /// What is remembered per TeamAccess between reconciles.
    pub memory: Memory,
    pub report: Report,
}

/// Where groups are looked up, and what they hold in Azure.
pub struct Identity {
    /// Microsoft Graph, or a directory file.
    pub directory: Arc<dyn Directory>,
    /// The groups' Azure Cluster User Role, when --aks-cluster-resource-id is set.
    pub cluster_user_role: Option<Arc<ClusterUserRole>>,
    /// The members of the groups bound with spec.bind Members, as the
    /// membership poller last read them.
    pub roster: Arc<Roster>,
}

/// What the controller tells the outside: Events on the objects, the metrics
/// /metrics serves and the readiness /readyz answers.
pub struct Report {
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Context {
    /// `telemetry` is the process's: the same metrics and health its server serves.
    pub fn new(
        client: Client,
        settings: Settings,
        identity: Identity,
        caches: Caches,
        telemetry: Telemetry,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance };
        let (brake_namespace, brake_lease) = &settings.deletion_brake_lease;
        let brake = DeletionBrake::new(
            client.clone(),
            brake_namespace,
            brake_lease,
            settings.max_namespace_deletions,
            settings.namespace_deletion_window,
        );
        let report = Report {
            recorder: Recorder::new(client.clone(), reporter),
            metrics: telemetry.metrics,
            health: telemetry.health,
        };
        Self { client, settings, identity, caches, brake, memory: Memory::default(), report }
    }
}
