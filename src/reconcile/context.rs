//! What every step of a reconcile may use: the client, the directory, the event
//! recorder, the settings and telemetry. It sits at the bottom of the reconcile's
//! imports: steps take what they need from here and never from `mod.rs`.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
    },
};

use super::{
    authorship::Verified,
    brake::DeletionBrake,
    caches::{Caches, Feeds},
    error::Error,
    policy::Policy,
};
use crate::{
    api::{TeamAccess, TeamAccessStatus, labels::FIELD_MANAGER},
    azure::ClusterUserRole,
    directory::Directory,
    telemetry::{Health, metrics::Metrics},
};

/// Settings of the controller that come from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// How often every TeamAccess is reconciled even when nothing changed.
    pub resync: Duration,
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
}

impl Settings {
    /// The default of `--concurrency`.
    pub const DEFAULT_CONCURRENCY: u16 = 64;
    /// The default of `--max-namespace-deletions` (per `--namespace-deletion-window`, 1 minute).
    pub const DEFAULT_MAX_NAMESPACE_DELETIONS: u32 = 5;
    /// The default of `--deletion-brake-lease`.
    pub const DEFAULT_DELETION_BRAKE_LEASE: &str = "teamaccess-namespace-deletions";
}

pub struct Context {
    pub client: Client,
    pub directory: Arc<dyn Directory>,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Turned ready once the controller's cache has synced.
    pub health: Arc<Health>,
    /// The brake on mass namespace deletion, shared by every cleanup.
    pub brake: DeletionBrake,
    /// Watched caches of the children and namespaces, read instead of the API server.
    pub caches: Caches,
    /// The Azure Cluster User Role of the groups, when --aks-cluster-resource-id is set.
    pub cluster_user_role: Option<Arc<ClusterUserRole>>,
    /// The controller's cache of TeamAccess objects, once it runs.
    pub teamaccesses: OnceLock<Store<TeamAccess>>,
    /// Their writers, until the controller starts the reflectors.
    feeds: Mutex<Option<Feeds>>,
    /// Consecutive failures per TeamAccess, for the backoff of its next try.
    failures: Mutex<HashMap<String, u32>>,
    /// The status last written per TeamAccess, until the cache has seen it.
    written: Mutex<HashMap<String, Written>>,
    /// What the authors of the specs were found to hold (SubjectAccessReviews).
    pub verified: Verified,
}

/// A status this operator wrote, and the resourceVersion the object had before.
struct Written {
    before: Option<String>,
    status: TeamAccessStatus,
}

impl Context {
    pub fn new(client: Client, directory: Arc<dyn Directory>, settings: Settings, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance };
        let (brake_namespace, brake_lease) = &settings.deletion_brake_lease;
        let brake = DeletionBrake::new(
            client.clone(),
            brake_namespace,
            brake_lease,
            settings.max_namespace_deletions,
            settings.namespace_deletion_window,
        );
        let (caches, feeds) = Caches::new();
        Self {
            caches,
            cluster_user_role: None,
            teamaccesses: OnceLock::new(),
            feeds: Mutex::new(Some(feeds)),
            brake,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            directory,
            settings,
            metrics: Metrics::shared(),
            health: Arc::default(),
            failures: Mutex::default(),
            written: Mutex::default(),
            verified: Verified::default(),
        }
    }

    /// Shares the process's metrics and health with the controller.
    pub fn with_telemetry(mut self, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        self.metrics = metrics;
        self.health = health;
        self
    }

    /// Manages the groups' Azure Kubernetes Service Cluster User Role.
    pub fn with_cluster_user_role(mut self, role: Arc<ClusterUserRole>) -> Self {
        self.cluster_user_role = Some(role);
        self
    }

    /// The caches' writers: taken once, by the controller that runs on this context.
    pub fn take_feeds(&self) -> Option<Feeds> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The object as this reconcile should see it: when the cache still holds the
    /// version from before our last status write (its watch event has not arrived
    /// yet), with the status we wrote, so the write and its Events are not repeated.
    pub fn with_own_status<'a>(&self, ta: &'a TeamAccess) -> Cow<'a, TeamAccess> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let name = ta.name_any();
        match written.get(&name) {
            Some(w) if w.before == ta.metadata.resource_version => {
                let mut newer = ta.clone();
                newer.status = Some(w.status.clone());
                Cow::Owned(newer)
            }
            Some(_) => {
                // The cache moved on: it holds our write, or a later change.
                written.remove(&name);
                Cow::Borrowed(ta)
            }
            None => Cow::Borrowed(ta),
        }
    }

    /// Remembers the status just written for `ta` (as the cache held it before).
    pub fn wrote_status(&self, ta: &TeamAccess, status: &TeamAccessStatus) {
        let entry = Written { before: ta.metadata.resource_version.clone(), status: status.clone() };
        self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(ta.name_any(), entry);
    }

    /// Forgets what was remembered about `name`: it is gone.
    pub fn forget(&self, name: &str) {
        self.clear_failures(name);
        self.written.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.verified.forget(name);
    }

    /// Every TeamAccess in the cluster, also those of other operators' shards
    /// (--selector), read fresh from the API server.
    pub async fn every_teamaccess(&self) -> Result<Vec<TeamAccess>, Error> {
        Api::<TeamAccess>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|e| Error::kube("list TeamAccess objects", e))
    }

    /// Consecutive failures of `name` so far.
    pub fn failures(&self, name: &str) -> u32 {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
    }

    /// Counts one more consecutive failure of `name`.
    pub fn record_failure(&self, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(name.to_string()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Forgets the failures of `name`: it succeeded, waits for the user, or is gone.
    pub fn clear_failures(&self, name: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}
