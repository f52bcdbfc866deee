//! The TeamAccess controller.
//!
//! A reconcile is a typed pipeline, one module per step, each step taking what
//! the previous one returned (docs/architecture.md tells why):
//!
//! validate → resolve → build → apply → azure_role → status
//!
//! Deletion goes through the finalizer to `cleanup`. The steps import from
//! `context` and `error` below them, never from this module.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        finalizer::{self, finalizer},
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;

use crate::api::{FINALIZER, Reason, TeamAccess, labels};

pub mod admission;
pub mod apply;
pub mod authorship;
pub mod azure_role;
pub mod brake;
pub mod build;
pub mod caches;
pub mod cleanup;
pub mod context;
pub mod default_set;
pub mod error;
pub mod policy;
pub mod requeue;
pub mod resolve;
pub mod status;
pub mod validate;
mod write;

pub use context::{Context, Settings};
pub use error::Error;
pub use policy::Policy;

/// How long the controller waits after a trigger before it reconciles, so the
/// watch events of the children a reconcile just wrote fold into one look (by
/// then the caches hold them all), well inside the drift-repair budget.
const DEBOUNCE: Duration = Duration::from_millis(250);

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
    let shutdown = shutdown.shared();
    let policies = ctx
        .settings
        .admission_policy_prefix
        .clone()
        .map(|prefix| tokio::spawn(admission::watch(ctx.clone(), prefix, admission::PERIOD)));
    let feeds = ctx.take_feeds().ok_or_else(|| anyhow::anyhow!("a controller already ran on this context"))?;
    let watches = caches::start(&client, feeds).await;
    let tasks = watches.tasks;
    tokio::select! {
        () = caches::wait_synced(&ctx.caches) => {}
        () = shutdown.clone() => {
            tasks.iter().for_each(JoinHandle::abort);
            return Ok(());
        }
    }

    let mut watched = watcher::Config::default().page_size(caches::LIST_PAGE_SIZE);
    if let Some(selector) = &ctx.settings.selector {
        watched = watched.labels(selector);
    }
    let (store, writer) = reflector::store();
    let prefetch = ctx.clone();
    // After the watch had to list again (the API server was away, or its history
    // compacted), every object is looked at again: the predicate below would let
    // none of the unchanged ones through, and some may be waiting out a long
    // backoff from failures while the API server was gone.
    let (relisted, relists) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut listed_before = false;
    // No backoff of its own: the controller backs off its trigger streams, as it
    // does for the watch it makes itself.
    let teamaccess_events = watcher(teamaccesses, watched)
        // Nothing reads a TeamAccess's managedFields, and they are the bulk of a
        // cached object (a field set per manager, status included).
        .modify(|ta| ta.metadata.managed_fields = None)
        .reflect(writer)
        .inspect_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                if listed_before {
                    let _ = relisted.send(());
                }
                listed_before = true;
            }
        })
        .applied_objects()
        // A reconcile for what can change the outcome: a new object, its spec or
        // deletion (both move the generation), its finalizers, its author stamp
        // (re-stamped without a spec change to be checked again). Not its own status.
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers).combine(authorship::stamps),
            Default::default(),
        )
        // Look the group up as soon as the object is seen: a burst of new objects
        // fills Graph $batch requests from the watch, ahead of the reconciles.
        .inspect_ok(move |ta| {
            if ta.metadata.deletion_timestamp.is_none() {
                prefetch.directory.prefetch_group(&ta.spec.group);
            }
        });
    let mut controller = Controller::for_stream(teamaccess_events, store)
        // Children map to their owner by its name alone. (kube's owns_stream would
        // give the cluster-scoped owner the child's namespace: a second reference
        // to the same TeamAccess, which the controller would reconcile alongside
        // the first, concurrently.)
        .watches_stream(watches.roles, |role| owner_of(&role))
        .watches_stream(watches.bindings, |binding| owner_of(&binding))
        // A namespace we created changed (deleted by hand, say): its creator looks again.
        .watches_stream(watches.namespaces, |ns| labels::created_by(&ns.metadata).map(ObjectRef::<TeamAccess>::new))
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency).debounce(DEBOUNCE));
    // Ready once the cache of TeamAccess objects has synced; the gauge follows it.
    let store = controller.store();
    let _ = ctx.teamaccesses.set(store.clone());
    let synced = Arc::new(AtomicBool::new(false));
    let (watched_ctx, synced_flag) = (ctx.clone(), synced.clone());
    let watchdog = tokio::spawn(async move {
        // The store wakes only its latest waiter (the controller's), so poll again
        // now and then rather than wait once.
        let cache_synced = loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!(objects = store.len(), "TeamAccess cache synced; ready");
                    synced_flag.store(true, Ordering::SeqCst);
                    watched_ctx.health.set_ready(true);
                    break true;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the TeamAccess cache was dropped before it synced");
                    break false;
                }
                Err(_) => {}
            }
        };
        let managed_gauge = async {
            loop {
                watched_ctx.metrics.managed.set(store.len() as i64);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        };
        if cache_synced {
            // The Azure role assignments are swept once the cache knows which
            // groups are wanted (never from a cache that did not sync: it would
            // want none).
            futures::join!(managed_gauge, azure_role::sweep_forever(watched_ctx.clone()));
        } else {
            managed_gauge.await;
        }
    });
    controller = controller.reconcile_all_on(tokio_stream::wrappers::UnboundedReceiverStream::new(relists));
    if let Some(changes) = ctx.directory.changes() {
        // A reloaded directory may resolve groups differently: look at every object again.
        controller = controller.reconcile_all_on(WatchStream::from_changes(changes).map(|_| ()));
    }
    // kube-runtime holds its runner until the cache is ready, and a shutdown that
    // ends the watch first leaves it waiting forever. Nothing reconciles before
    // the cache syncs, so such a shutdown has nothing to drain: stop at once.
    let stopped_before_sync = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if synced.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            tracing::info!("stopped before the TeamAccess cache synced");
        }
    };
    let drained =
        controller.graceful_shutdown_on(shutdown).run(reconcile, error_policy, ctx).for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(teamaccess = %obj.name, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(teamaccess = %obj.name, reason = %e.reason(), error = %e, "reconcile failed")
                }
                // A child's owner outside this operator's selector (sharding) or just deleted.
                Err(controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(teamaccess = %obj.name, "not in the cache")
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        });
    tokio::select! {
        () = drained => {}
        () = stopped_before_sync => {}
    }
    watchdog.abort();
    policies.iter().for_each(JoinHandle::abort);
    tasks.iter().for_each(JoinHandle::abort);
    Ok(())
}

/// The TeamAccess controlling a child, by the child's controller reference.
fn owner_of<K: kube::Resource>(child: &K) -> Option<ObjectRef<TeamAccess>> {
    child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "TeamAccess" && r.api_version.starts_with("teamaccess.dev/"))
        .map(|r| ObjectRef::new(&r.name))
}

/// Errors that reach the controller: the reconcile could not even write status
/// or its finalizer.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReconcileError(#[from] Box<finalizer::Error<Error>>);

impl ReconcileError {
    pub fn reason(&self) -> Reason {
        match &*self.0 {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
            _ => Reason::FinalizerFailed,
        }
    }
}

async fn reconcile(ta: Arc<TeamAccess>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api = Api::<TeamAccess>::all(ctx.client.clone());
    // On first sight this pass only adds the finalizer; its watch event brings the
    // next one, while the group lookup started when the object was seen.
    let result = finalizer(&api, FINALIZER, ta, |event| async {
        match event {
            finalizer::Event::Apply(ta) => grant(&ta, &ctx).await,
            finalizer::Event::Cleanup(ta) => {
                cleanup::cleanup(&ta, &ctx).await?;
                ctx.forget(&ta.name_any());
                Ok(Action::await_change())
            }
        }
    })
    .await;
    match result {
        // A second look at an object already cleaned up and gone (its children's
        // deletions queued it again): nothing is left to do.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(status))) if status.is_not_found() => {
            Ok(Action::await_change())
        }
        result => result.map_err(|e| ReconcileError(Box::new(e))),
    }
}

fn error_policy(ta: Arc<TeamAccess>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    // Held back by the brake: come back when the window has room, not later.
    if let finalizer::Error::CleanupFailed(Error::NamespaceDeletionDelayed { wait, .. }) = &*error.0 {
        return Action::requeue(*wait + Duration::from_millis(fastrand::u64(100..1000)));
    }
    let name = ta.name_any();
    let delay = requeue::after_error(ctx.failures(&name), fastrand::f64());
    ctx.record_failure(&name);
    Action::requeue(delay)
}

/// The apply path: the pipeline, its outcome written to status and events, and
/// the next look decided from how it ended.
async fn grant(ta: &TeamAccess, ctx: &Context) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ta = &*ctx.with_own_status(ta);
    let outcome = pipeline(ta, ctx).await;
    let (new_status, events) = status::compute(&outcome, &Time(jiff::Timestamp::now()));
    status::publish(ta, &new_status, events, ctx).await?;

    let error = outcome.error();
    let reason = error.map_or(Reason::Reconciled, Error::reason);
    ctx.metrics.reconciled(error.is_none(), reason, started.elapsed().as_secs_f64());
    let name = ta.name_any();
    let next = requeue::next_action(error, ctx.failures(&name), ctx.settings.resync, fastrand::f64());
    if next.failed {
        ctx.record_failure(&name);
    } else {
        ctx.clear_failures(&name);
    }
    Ok(Action::requeue(next.after))
}

/// validate → resolve → build → authorship (when something new would be
/// granted) → apply → Azure role; each step stops the pipeline with what it
/// knows, and the outcome says how far it got.
async fn pipeline<'a>(ta: &'a TeamAccess, ctx: &Context) -> status::Outcome<'a> {
    let validated = match validate::validate(ta, &ctx.settings.policy) {
        Ok(validated) => validated,
        // A namespace protected, or a grant refused, after access was granted:
        // take the access back (never the namespace), when there is any.
        Err(error) => {
            let removal = if cleanup::has_access(ta, &ctx.caches) {
                cleanup::remove_access(ta, &ctx.client).await.map(|_| ())
            } else {
                Ok(())
            };
            return status::Outcome::refused(ta, error, removal);
        }
    };
    let resolved =
        match resolve::resolve(validated, ctx.directory.as_ref(), ctx.settings.policy.strict_group_names).await {
            Ok(resolved) => resolved,
            Err(unresolved) => return status::Outcome::unresolved(ta, unresolved),
        };
    let desired = build::build(&resolved);
    // A spec is served only as far as its author could grant it by hand. What
    // is already in place grants nothing new, so a restart or a resync asks
    // nothing; the Azure role is asked for whenever it is wanted, since status
    // alone cannot show ARM holds it.
    let in_place = apply::in_place(&desired, &ctx.caches);
    let azure_wanted = ctx.cluster_user_role.is_some() && ta.spec.wants_cluster_user_role();
    if (!in_place || azure_wanted)
        && let Err(error) = authorize(ta, ctx).await
    {
        if !in_place {
            return status::Outcome::held(ta, error);
        }
        // The Kubernetes access is in place (nothing to write); no Azure role for it.
        let applied = apply::apply(desired, &ctx.client, &ctx.caches).await;
        return status::Outcome::resolved(resolved, applied);
    }
    let applied = apply::apply(desired, &ctx.client, &ctx.caches).await;
    let azure = azure_role::grant(ta, &resolved.group_object_id, ctx).await;
    status::Outcome::resolved(resolved, applied).with_azure_role(azure)
}

/// The authorship step, when the operator runs with its admission policies.
async fn authorize(ta: &TeamAccess, ctx: &Context) -> Result<(), Error> {
    let Some(prefix) = &ctx.settings.admission_policy_prefix else { return Ok(()) };
    let live = ctx.caches.namespace(&ta.spec.namespace);
    let needs = authorship::requirements(ta, live.as_ref(), ctx.cluster_user_role.is_some());
    authorship::verify(ta, prefix, &needs, &ctx.client, &ctx.verified).await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::Role;
    use kube::Resource;

    use super::*;
    use crate::api::{GroupSelector, TeamAccessSpec};

    #[test]
    fn a_child_maps_to_its_cluster_scoped_owner_by_name_alone() {
        let mut ta = TeamAccess::new("appdev-dev", TeamAccessSpec::new(GroupSelector::by_object_id("x"), "dev"));
        ta.metadata.uid = Some("uid".into());
        let mut role = Role::default();
        role.metadata.namespace = Some("dev".into());
        role.metadata.owner_references = ta.controller_owner_ref(&()).map(|r| vec![r]);
        let owner = owner_of(&role).expect("the controller reference");
        assert_eq!(
            owner,
            ObjectRef::<TeamAccess>::new("appdev-dev"),
            "no namespace: the same reference the watch gives"
        );
        assert_eq!(owner.namespace, None);
        role.metadata.owner_references = None;
        assert!(owner_of(&role).is_none());
    }
}
