//! The controller that runs the reconcile: the TeamAccess watch and its
//! triggers, the children's caches, readiness, the Azure sweep and the
//! admission-policy check, and shutdown. `crate::reconcile` holds what one
//! reconcile does; this module only decides when it runs.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::{
    Api,
    api::ListParams,
    runtime::{
        Controller, Predicate, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;

use crate::{
    api::{TeamAccess, labels},
    reconcile::{Context, admission, authorship, azure_role, caches::Feeds, error_policy, expiry, reconcile},
};

mod membership;
mod watches;

/// How long the controller waits after a trigger before it reconciles, so the
/// watch events of the children a reconcile just wrote fold into one look (by
/// then the caches hold them all). Every new object waits this long too, so it
/// is the floor of apply → Ready: the events of a reconcile's writes arrive
/// within a few milliseconds of each write, so 100 ms folds them (250 ms cost a
/// new object 150 ms more for nothing, `make bench`'s latency rows).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the controller until `shutdown` completes, filling the caches of `ctx`
/// through `feeds` (the writers `Caches::new` returned with them).
pub async fn run(
    ctx: Arc<Context>,
    feeds: Feeds,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    require_crd(&ctx).await?;
    let shutdown = shutdown.shared();
    let policies = ctx
        .settings
        .admission_policy_prefix
        .clone()
        .map(|prefix| tokio::spawn(admission::watch(ctx.clone(), prefix, admission::PERIOD)));
    let profiles = ctx.settings.namespace_profiles.clone();
    let watches = watches::start(&ctx.client, feeds.children, profiles.is_some()).await;
    let tasks = watches.tasks;
    tokio::select! {
        () = watches::wait_synced(&ctx.caches, profiles.is_some()) => {}
        () = shutdown.clone() => {
            tasks.iter().for_each(JoinHandle::abort);
            return Ok(());
        }
    }

    let (relisted, relists) = tokio::sync::mpsc::unbounded_channel::<()>();
    let events = teamaccess_events(&ctx, feeds.teamaccesses, relisted);
    let mut controller = Controller::for_stream(events, ctx.caches.teamaccesses.clone())
        // Children map to their owner by its name alone. (kube's owns_stream would
        // give the cluster-scoped owner the child's namespace: a second reference
        // to the same TeamAccess, which the controller would reconcile alongside
        // the first, concurrently.)
        .watches_stream(watches.roles, |role| owner_of(&role))
        .watches_stream(watches.bindings, |binding| owner_of(&binding))
        // A namespace we created changed (deleted by hand, say): its creator looks again.
        .watches_stream(watches.namespaces, |ns| labels::created_by(&ns.metadata).map(ObjectRef::<TeamAccess>::new))
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency).debounce(DEBOUNCE))
        .reconcile_all_on(tokio_stream::wrappers::UnboundedReceiverStream::new(relists));
    if let Some(changes) = ctx.identity.directory.changes() {
        // A reloaded directory may resolve groups differently: look at every object again.
        controller = controller.reconcile_all_on(WatchStream::from_changes(changes).map(|_| ()));
    }
    if let Some(guardrails) = watches.guardrails {
        // A guardrail changed or went: the namespace's creator puts it back.
        let creator = |namespaces: &reflector::Store<_>| {
            let namespaces = namespaces.clone();
            move |namespace: Option<String>| creator_of(&namespaces, namespace.as_deref())
        };
        let quotas = creator(&ctx.caches.namespaces);
        let limits = creator(&ctx.caches.namespaces);
        let policies = creator(&ctx.caches.namespaces);
        controller = controller
            .watches_stream(guardrails.quotas, move |q| quotas(q.metadata.namespace.clone()))
            .watches_stream(guardrails.limit_ranges, move |l| limits(l.metadata.namespace.clone()))
            .watches_stream(guardrails.network_policies, move |p| policies(p.metadata.namespace.clone()));
    }
    // spec.bind Members: a group whose membership changed has its objects looked at again.
    let mut poller = None;
    if let Some(source) = ctx.identity.directory.member_source() {
        let (task, changed) = membership::start(ctx.clone(), source, ctx.settings.membership_poll);
        controller = controller.reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(changed));
        poller = Some(task);
    }
    if let Some(profiles) = &profiles {
        // An edited profile changes what every namespace of it should carry.
        controller = controller.reconcile_all_on(WatchStream::from_changes(profiles.changes()).map(|_| ()));
    }
    let synced = Arc::new(AtomicBool::new(false));
    let watchdog = tokio::spawn(watch_readiness(ctx.clone(), synced.clone()));
    tokio::select! {
        () = drive(controller, ctx, shutdown.clone()) => {}
        () = stopped_before_sync(shutdown, synced) => {}
    }
    watchdog.abort();
    poller.iter().for_each(JoinHandle::abort);
    policies.iter().for_each(JoinHandle::abort);
    tasks.iter().for_each(JoinHandle::abort);
    Ok(())
}

/// Fails with a clear message rather than a watch error loop when the CRD is missing.
async fn require_crd(ctx: &Context) -> anyhow::Result<()> {
    let teamaccesses = Api::<TeamAccess>::all(ctx.client.clone());
    if let Err(e) = teamaccesses.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list TeamAccess objects ({e}); is the CRD installed? (`teamaccess-operator crd | kubectl apply -f -`)"
        );
    }
    Ok(())
}

/// The TeamAccess watch (of this operator's `--selector`), cached in `writer`,
/// as the objects whose change can change the outcome. After the watch had to
/// list again (the API server was away, or its history compacted) `relisted`
/// says so, and every object is looked at again: the predicate would let none
/// of the unchanged ones through, and some may be waiting out a long backoff
/// from failures while the API server was gone.
fn teamaccess_events(
    ctx: &Arc<Context>,
    writer: reflector::store::Writer<TeamAccess>,
    relisted: tokio::sync::mpsc::UnboundedSender<()>,
) -> impl futures::Stream<Item = Result<TeamAccess, watcher::Error>> + Send + 'static {
    let mut watched = watcher::Config::default().page_size(watches::LIST_PAGE_SIZE);
    if let Some(selector) = &ctx.settings.selector {
        watched = watched.labels(selector);
    }
    let prefetch = ctx.clone();
    let mut listed_before = false;
    // No backoff of its own: the controller backs off its trigger streams, as it
    // does for the watch it makes itself.
    watcher(Api::<TeamAccess>::all(ctx.client.clone()), watched)
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
                prefetch.identity.directory.prefetch_group(&ta.spec.group);
            }
        })
}

/// Ready once the cache of TeamAccess objects has synced (`synced` then
/// turns true); then the gauges of managed, expiring and expired grants follow it, and the Azure role
/// assignments are swept.
async fn watch_readiness(ctx: Arc<Context>, synced: Arc<AtomicBool>) {
    let store = &ctx.caches.teamaccesses;
    // The store wakes only its latest waiter (the controller's), so poll again
    // now and then rather than wait once.
    let cache_synced = loop {
        match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
            Ok(Ok(())) => {
                tracing::info!(objects = store.len(), "TeamAccess cache synced; ready");
                synced.store(true, Ordering::SeqCst);
                ctx.report.health.set_ready(true);
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
            let metrics = &ctx.report.metrics;
            metrics.managed.set(store.len() as i64);
            let grants = store.state();
            let tally =
                expiry::tally(grants.iter().map(|ta| ta.as_ref()), jiff::Timestamp::now(), ctx.settings.expiry_warning);
            metrics.grants_expiring.set(tally.expiring as i64);
            metrics.grants_expired.set(tally.expired as i64);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    if cache_synced {
        // Never from a cache that did not sync: it would want no group.
        futures::join!(managed_gauge, azure_role::sweep_forever(ctx.clone()));
    } else {
        managed_gauge.await;
    }
}

/// Runs the reconciles until `shutdown`, then lets the running ones finish.
async fn drive(
    controller: Controller<TeamAccess>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
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
        })
        .await
}

/// Completes on `shutdown` only while the TeamAccess cache has not synced.
/// kube-runtime holds its runner until the cache is ready, and a shutdown that
/// ends the watch first leaves it waiting forever. Nothing reconciles before
/// the cache syncs, so such a shutdown has nothing to drain: stop at once.
async fn stopped_before_sync(shutdown: impl Future<Output = ()>, synced: Arc<AtomicBool>) {
    shutdown.await;
    if synced.load(Ordering::SeqCst) {
        futures::future::pending::<()>().await;
    }
    tracing::info!("stopped before the TeamAccess cache synced");
}

/// The TeamAccess that created `namespace`, which keeps its profile's guardrails.
fn creator_of(
    namespaces: &reflector::Store<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    namespace: Option<&str>,
) -> Option<ObjectRef<TeamAccess>> {
    let ns = namespaces.get(&ObjectRef::new(namespace?))?;
    labels::creator(&ns.metadata).map(ObjectRef::new)
}

/// The TeamAccess controlling a child, by the child's controller reference.
fn owner_of<K: kube::Resource>(child: &K) -> Option<ObjectRef<TeamAccess>> {
    labels::teamaccess_controller(child.meta()).map(|r| ObjectRef::new(&r.name))
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
