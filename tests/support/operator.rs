//! Runs the operator's controller inside a test, against the real control plane,
//! with its own static directory file. Each test's operator only sees the
//! TeamAccess objects carrying its own label, so tests can run side by side.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use teamaccess_operator::{
    api::{GroupSelector, TeamAccess, TeamAccessSpec},
    directory::{Directory, static_file::StaticDirectory},
    profiles::NamespaceProfiles,
    reconcile::{Context, Identity, Policy, Settings, caches::Caches},
    telemetry::{Telemetry, metrics::Metrics},
};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{admin_client, ensure_crd, unique, wait_for};

pub const TEST_LABEL: &str = "teamaccess.dev/test";

/// The seed's tenant, as in deploy/examples/seed/directory.yaml.
pub const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";
pub const OPSSRE: &str = "7c2e4b91-3d5a-4f60-8b1c-2e9d0a4f6b02";
pub const AKSDEV: &str = "aksdev@contoso.com";
pub const AKSSRE: &str = "akssre@contoso.com";
pub const SEED_DIRECTORY: &str = include_str!("../../deploy/examples/seed/directory.yaml");

pub struct TestOperator {
    pub client: Client,
    pub label: String,
    pub directory_file: PathBuf,
    directory: Arc<dyn Directory>,
    resync: Duration,
    /// Namespaces protected beyond the defaults, from the next `resume` on.
    pub protected: Vec<String>,
    /// The guardrails beyond protected namespaces, from the next `resume` on.
    pub allowed_cluster_roles: Option<Vec<String>>,
    pub allow_escalating_rules: bool,
    /// --strict-group-names, from the next `resume` on.
    pub strict_group_names: bool,
    /// The brake on namespace deletions (max per window), from the next `resume` on.
    pub namespace_deletions: (u32, Duration),
    /// --namespace-profiles (a file `write_profiles` wrote), from the next `resume` on.
    pub namespace_profiles: Option<PathBuf>,
    /// --membership-poll; set before `resume` (stop first when running).
    pub membership_poll: Duration,
    metrics: Arc<Metrics>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestOperator {
    /// Installs the CRD and starts an operator with a static directory of the given content.
    pub async fn start(directory_yaml: &str) -> Self {
        let label = unique("op");
        let dir = std::env::temp_dir().join(format!("teamaccess-test-{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        let directory_file = dir.join("directory.yaml");
        std::fs::write(&directory_file, directory_yaml).unwrap();
        let directory = StaticDirectory::load(&directory_file).await.expect("load the directory file");
        Self::start_with(label, directory_file, Arc::new(directory), Duration::from_secs(60)).await
    }

    /// Installs the CRD and starts an operator with any directory, such as Graph.
    pub async fn start_with_directory(directory: Arc<dyn Directory>, resync: Duration) -> Self {
        let label = unique("op");
        let directory_file = std::env::temp_dir().join(format!("teamaccess-test-{label}")).join("unused");
        Self::start_with(label, directory_file, directory, resync).await
    }

    async fn start_with(
        label: String,
        directory_file: PathBuf,
        directory: Arc<dyn Directory>,
        resync: Duration,
    ) -> Self {
        let client = admin_client().await;
        ensure_crd(&client).await;
        let mut op = Self {
            client,
            label,
            directory_file,
            directory,
            resync,
            protected: Vec::new(),
            allowed_cluster_roles: None,
            allow_escalating_rules: false,
            strict_group_names: false,
            namespace_deletions: (Settings::DEFAULT_MAX_NAMESPACE_DELETIONS, Duration::from_secs(60)),
            namespace_profiles: None,
            membership_poll: Settings::DEFAULT_MEMBERSHIP_POLL,
            metrics: Arc::default(),
            running: None,
        };
        op.resume().await;
        op
    }

    /// Starts (again) the controller; a no-op when it runs.
    pub async fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        let mut policy = Policy::new(self.protected.clone(), None)
            .with_escalating_rules(self.allow_escalating_rules)
            .with_strict_group_names(self.strict_group_names);
        if let Some(names) = &self.allowed_cluster_roles {
            policy = policy.with_allowed_cluster_roles(names.clone());
        }
        let settings = Settings {
            policy,
            resync: self.resync,
            expiry_warning: Settings::DEFAULT_EXPIRY_WARNING,
            concurrency: Settings::DEFAULT_CONCURRENCY,
            selector: Some(format!("{TEST_LABEL}={}", self.label)),
            max_namespace_deletions: self.namespace_deletions.0,
            namespace_deletion_window: self.namespace_deletions.1,
            // Its own window, kept across stop and resume like a restart's.
            deletion_brake_lease: ("default".into(), format!("brake-{}", self.label)),
            // deploy/admission-policy.yaml's, which ensure_crd installs.
            admission_policy_prefix: Some("teamaccess-operator".into()),
            namespace_profiles: match &self.namespace_profiles {
                Some(path) => Some(Arc::new(NamespaceProfiles::load(path).await.expect("load the profiles file"))),
                None => None,
            },
            membership_poll: self.membership_poll,
        };
        let identity = Identity { directory: self.directory.clone(), cluster_user_role: None, roster: Arc::default() };
        let telemetry = Telemetry { metrics: self.metrics.clone(), health: Arc::default() };
        let (caches, feeds) = Caches::new();
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            settings,
            identity,
            caches,
            telemetry,
            Some(self.label.clone()),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            teamaccess_operator::controller::run(ctx, feeds, async move {
                let _ = stopped.await;
            })
            .await
            .expect("controller runs");
        });
        self.running = Some((stop, task));
    }

    /// Stops the controller, as a pod shutdown would; one that does not drain
    /// within 20 s is aborted, so a restarted controller never runs beside it.
    pub async fn stop(&mut self) {
        if let Some((stop, mut task)) = self.running.take() {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(20), &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                panic!("the controller did not stop within 20 s of its shutdown signal");
            }
        }
    }

    /// Reconciles run so far (apply path), whatever their outcome, read from the
    /// operator's metrics exposition as Prometheus would read it.
    pub fn reconciles(&self) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("teamaccess_reconcile_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reconcile count in the metrics:\n{text}"))
    }

    pub fn write_directory(&self, yaml: &str) {
        std::fs::write(&self.directory_file, yaml).unwrap();
    }

    /// Writes the namespace profiles file beside the directory file (the
    /// running operator re-reads it) and returns its path, for
    /// `namespace_profiles`.
    pub fn write_profiles(&self, yaml: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("teamaccess-test-{}", self.label)).join("profiles.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn api(&self) -> Api<TeamAccess> {
        Api::all(self.client.clone())
    }

    /// A TeamAccess this operator reconciles.
    pub fn team(&self, name: &str, group: GroupSelector, namespace: &str) -> TeamAccess {
        let mut ta = TeamAccess::new(name, TeamAccessSpec::new(group, namespace));
        ta.metadata.labels = Some(BTreeMap::from([(TEST_LABEL.to_string(), self.label.clone())]));
        ta
    }

    pub async fn apply(&self, ta: &TeamAccess) {
        let mut obj = ta.clone();
        obj.metadata.managed_fields = None;
        obj.metadata.resource_version = None;
        obj.status = None;
        self.api()
            .patch(&ta.name_any(), &PatchParams::apply("e2e-test").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply TeamAccess {}: {e}", ta.name_any()));
    }

    pub async fn delete(&self, name: &str) {
        match self.api().delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => panic!("delete TeamAccess {name}: {e}"),
        }
    }

    /// Waits until the object is gone (its finalizer ran).
    pub async fn wait_deleted(&self, name: &str, timeout: Duration) {
        let api = self.api();
        wait_for(timeout, &format!("TeamAccess {name} to be deleted"), || async {
            match api.get_opt(name).await {
                Ok(None) => Ok(()),
                Ok(Some(ta)) => Err(format!("still present, finalizers {:?}", ta.finalizers())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Waits until condition `type_` has `status` (and `reason`, when given) for the
    /// object's current generation, and returns the object.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> TeamAccess {
        let api = self.api();
        wait_for(timeout, &format!("{name} to have {type_}={status} {reason:?}"), || async {
            let ta = api.get(name).await.map_err(|e| e.to_string())?;
            let conditions: Vec<Condition> = ta.status.clone().map(|s| s.conditions).unwrap_or_default();
            let matched = conditions.iter().any(|c| {
                c.type_ == type_
                    && c.status == status
                    && reason.is_none_or(|r| c.reason == r)
                    && c.observed_generation == ta.metadata.generation
            });
            if matched { Ok(ta) } else { Err(format!("{conditions:?}")) }
        })
        .await
    }

    pub async fn wait_ready(&self, name: &str) -> TeamAccess {
        self.wait_condition(name, "Ready", "True", None, Duration::from_secs(30)).await
    }
}

impl Drop for TestOperator {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        if let Some(dir) = self.directory_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn by_name(name: &str) -> GroupSelector {
    GroupSelector { display_name: Some(name.into()), ..Default::default() }
}
