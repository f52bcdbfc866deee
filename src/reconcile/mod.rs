//! The TeamAccess controller.
//!
//! Each reconcile reads top to bottom as the pipeline of DESIGN.md:
//! validate → resolve → build → apply → status. Validation (pure policy) runs
//! before resolution so an object the policy refuses never costs a directory call.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Recorder, Reporter},
        finalizer::{self, finalizer},
        watcher,
    },
};
use tokio_stream::wrappers::WatchStream;

use crate::{
    api::{FINALIZER, TeamAccess},
    directory::Directory,
    telemetry::{Health, metrics::Metrics},
};

pub mod build;
mod children;
pub mod error;
mod resolve;
pub mod status;
pub mod validate;

pub use error::Error;
pub use validate::Policy;

/// The longest wait before a TeamAccess looks again at a directory that was down.
const MAX_DIRECTORY_RETRY: Duration = Duration::from_secs(20);

/// The one field manager every server-side apply of the operator uses.
pub const FIELD_MANAGER: &str = "teamaccess-operator";

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
}

impl Default for Settings {
    fn default() -> Self {
        Self { policy: Policy::default(), resync: Duration::from_secs(600), concurrency: 64, selector: None }
    }
}

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub directory: Arc<dyn Directory>,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Turned ready once the controller's cache has synced.
    pub health: Arc<Health>,
    /// Consecutive failures per TeamAccess, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, directory: Arc<dyn Directory>, settings: Settings, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            directory,
            settings,
            metrics: Metrics::shared(),
            health: Arc::default(),
            failures: Mutex::default(),
        }
    }

    /// Shares the process's metrics and health with the controller.
    pub fn with_telemetry(mut self, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        self.metrics = metrics;
        self.health = health;
        self
    }

    /// The delay before the next try after a transient failure: 1 s doubling up to
    /// 5 min, with jitter so objects failing together do not retry together.
    fn backoff(&self, name: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(name.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
        base.mul_f64(0.8 + fastrand::f64() * 0.4)
    }

    fn reset_backoff(&self, name: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let teamaccesses = Api::<TeamAccess>::all(client.clone());
    // Fail with a clear message rather than a watch error loop when the CRD is missing.
    if let Err(e) = teamaccesses.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list TeamAccess objects ({e}); is the CRD installed? (`teamaccess-operator crd | kubectl apply -f -`)"
        );
    }
    let children = watcher::Config::default().labels(build::MANAGED_BY_SELECTOR);
    let mut watched = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.settings.selector {
        watched = watched.labels(selector);
    }
    let mut controller = Controller::new(teamaccesses, watched)
        .owns(Api::<Role>::all(client.clone()), children.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), children)
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency));
    // Ready once the cache of TeamAccess objects has synced; the gauge follows it.
    let store = controller.store();
    let (metrics, health) = (ctx.metrics.clone(), ctx.health.clone());
    let watchdog = tokio::spawn(async move {
        // The store wakes only its latest waiter (the controller's), so poll again
        // now and then rather than wait once.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!(objects = store.len(), "TeamAccess cache synced; ready");
                    health.set_ready(true);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the TeamAccess cache was dropped before it synced");
                    break;
                }
                Err(_) => {}
            }
        }
        loop {
            metrics.managed.set(store.len() as i64);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    if let Some(changes) = ctx.directory.changes() {
        // A reloaded directory may resolve groups differently: look at every object again.
        controller = controller.reconcile_all_on(WatchStream::from_changes(changes).map(|_| ()));
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(teamaccess = %obj.name, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(teamaccess = %obj.name, reason = e.reason(), error = %e, "reconcile failed")
                }
                // A child's owner outside this operator's selector (sharding) or just deleted.
                Err(controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(teamaccess = %obj.name, "not in the cache")
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        })
        .await;
    watchdog.abort();
    Ok(())
}

/// Errors that reach the controller: the reconcile could not even write status.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReconcileError(#[from] Box<finalizer::Error<Error>>);

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        match &*self.0 {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
            _ => "FinalizerFailed",
        }
    }
}

async fn reconcile(ta: Arc<TeamAccess>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api = Api::<TeamAccess>::all(ctx.client.clone());
    if ta.metadata.deletion_timestamp.is_none() && !ta.finalizers().iter().any(|f| f == FINALIZER) {
        // First sight: this pass only adds the finalizer, the next one resolves.
        // Warming the directory now lets a burst of new objects share lookups.
        ctx.directory.prefetch_group(&ta.spec.group);
    }
    finalizer(&api, FINALIZER, ta, |event| async {
        match event {
            finalizer::Event::Apply(ta) => grant(&ta, &ctx).await,
            finalizer::Event::Cleanup(ta) => {
                let action = children::cleanup(&ta, &ctx).await?;
                ctx.reset_backoff(&ta.name_any());
                Ok(action)
            }
        }
    })
    .await
    .map_err(|e| ReconcileError(Box::new(e)))
}

fn error_policy(ta: Arc<TeamAccess>, _error: &ReconcileError, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(&ta.name_any()))
}

/// The apply path: work out and put in place the access the object declares, then
/// report the outcome in status and events.
async fn grant(ta: &TeamAccess, ctx: &Context) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let mut report = status::Report::for_object(ta);
    let outcome = grant_access(ta, ctx, &mut report).await;
    status::publish(ta, ctx, &report, &outcome).await?;
    let reason = outcome.as_ref().err().map_or("Reconciled", Error::reason);
    ctx.metrics.reconciled(outcome.is_ok(), reason, started.elapsed().as_secs_f64());

    let name = ta.name_any();
    Ok(match &outcome {
        Ok(()) => {
            ctx.reset_backoff(&name);
            Action::requeue(ctx.settings.resync)
        }
        // Graph said when to come back: do so (with jitter), rather than backing off
        // further, so objects recover soon after a throttling storm ends.
        Err(Error::Directory(e)) if e.retry_after().is_some() => {
            let wait = e.retry_after().unwrap_or_default().max(Duration::from_secs(1));
            Action::requeue(wait.mul_f64(1.0 + fastrand::f64() * 0.5))
        }
        // A directory outage ends on its own: look again at least every 20 s (the
        // Graph client holds requests back meanwhile, so this adds no load).
        Err(Error::Directory(e)) if e.is_transient() => Action::requeue(ctx.backoff(&name).min(MAX_DIRECTORY_RETRY)),
        Err(e) if e.is_transient() => Action::requeue(ctx.backoff(&name)),
        // Needs the user to act; any change to the object or the directory triggers a
        // reconcile, and the periodic look catches a fix made elsewhere.
        Err(_) => {
            ctx.reset_backoff(&name);
            Action::requeue(ctx.settings.resync.min(Duration::from_secs(300)))
        }
    })
}

async fn grant_access(ta: &TeamAccess, ctx: &Context, report: &mut status::Report) -> Result<(), Error> {
    ctx.settings.policy.check(ta)?;
    let group = resolve::group(ta, ctx, report).await?;
    let users = resolve::users(ta, ctx).await?;
    children::apply(ta, ctx, &group, &users.subjects, report).await?;
    users.into_result()
}
