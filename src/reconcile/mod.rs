//! The reconcile of one TeamAccess: a typed pipeline, one module per step,
//! each step taking what the previous one returned (docs/architecture.md tells
//! why):
//!
//! expiry → validate → profile → resolve → build → authorship → apply → azure_role → status
//!
//! Deletion goes through the finalizer to `cleanup`. The steps import from
//! `context` and `error` below them, never from this module. What runs it
//! (watches, caches, the controller) is `crate::controller`.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{self, finalizer},
    },
};

use crate::api::{FINALIZER, Reason, TeamAccess};

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
pub mod expiry;
pub mod members;
pub mod memory;
pub mod policy;
pub mod profile;
pub mod publish;
pub mod requeue;
pub mod resolve;
pub mod status;
pub mod validate;
mod write;

pub use context::{Context, Identity, Report, Settings};
pub use error::Error;
pub use policy::Policy;

/// Errors that reach the controller: the reconcile could not even write status
/// or its finalizer.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReconcileError(#[from] Box<finalizer::Error<Error>>);

impl ReconcileError {
    pub fn reason(&self) -> Reason {
        match &*self.0 {
            // A request of the cleanup itself (a delete, a list) failed: said as
            // such, not as a failure to grant.
            finalizer::Error::CleanupFailed(Error::Kube { .. }) => Reason::CleanupFailed,
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
            _ => Reason::FinalizerFailed,
        }
    }
}

/// One reconcile of `ta`: its finalizer, then the pipeline or the cleanup.
pub async fn reconcile(ta: Arc<TeamAccess>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api = Api::<TeamAccess>::all(ctx.client.clone());
    // The admission policy adds the finalizer on create; without it (a cluster
    // before 1.36, the policy turned off) it is added here, and the grant goes
    // on in the same pass with the object the patch returned. kube-runtime's
    // helper below then finds it and only ever grants or cleans up.
    let has_finalizer = ta.finalizers().iter().any(|f| f == FINALIZER);
    let ta = if has_finalizer || ta.metadata.deletion_timestamp.is_some() {
        ta
    } else {
        let mut added = write::add_finalizer(&api, &ta)
            .await
            .map_err(|e| ReconcileError(Box::new(finalizer::Error::AddFinalizer(e))))?;
        added.metadata.managed_fields = None;
        Arc::new(added)
    };
    let result = finalizer(&api, FINALIZER, ta, |event| async {
        match event {
            finalizer::Event::Apply(ta) => grant(&ta, &ctx).await,
            finalizer::Event::Cleanup(ta) => {
                cleanup::cleanup(&ta, &ctx).await?;
                ctx.memory.forget(&ta.name_any());
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

/// When to look again at `ta` after a reconcile that could not finish.
pub fn error_policy(ta: Arc<TeamAccess>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    // Held back by the brake: come back when the window has room, not later.
    if let finalizer::Error::CleanupFailed(Error::NamespaceDeletionDelayed { wait, .. }) = &*error.0 {
        return Action::requeue(*wait + Duration::from_millis(fastrand::u64(100..1000)));
    }
    let name = ta.name_any();
    let delay = requeue::after_error(ctx.memory.failures(&name), fastrand::f64());
    ctx.memory.record_failure(&name);
    Action::requeue(delay)
}

/// The apply path: the pipeline, its outcome written to status and events, and
/// the next look decided from how it ended.
async fn grant(ta: &TeamAccess, ctx: &Context) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let now = jiff::Timestamp::now();
    let ta = &*ctx.memory.with_own_status(ta);
    let outcome = pipeline(ta, ctx, now).await;
    let (new_status, events) = status::compute(&outcome, &Time(now));
    publish::publish(ta, &new_status, events, ctx).await?;

    let error = outcome.error();
    let reason = error.map_or(Reason::Reconciled, Error::reason);
    ctx.report.metrics.reconciled(error.is_none(), reason, started.elapsed().as_secs_f64());
    let name = ta.name_any();
    let mut next = requeue::next_action(error, ctx.memory.failures(&name), ctx.settings.resync, fastrand::f64());
    // Whatever else happened, look again when the clock alone changes the
    // answer: a grant is revoked at its expiry, not at the next resync or backoff.
    if let Some(change) = outcome.expiry().next_change(now) {
        next.after = next.after.min(change);
    }
    if next.failed {
        ctx.memory.record_failure(&name);
    } else {
        ctx.memory.clear_failures(&name);
    }
    Ok(Action::requeue(next.after))
}

/// expiry, then the grant; the outcome carries the expiry in force at `now`.
async fn pipeline<'a>(ta: &'a TeamAccess, ctx: &Context, now: jiff::Timestamp) -> status::Outcome<'a> {
    let warning = ctx.settings.expiry_warning;
    let wanted = expiry::judge(ta.spec.expires_at.as_deref(), now, warning);
    if let Some(ended) = wanted.revocation(&ta.spec.namespace) {
        return expire(ta, ctx, ended, wanted).await;
    }
    // A later expiresAt than the one granted (status.expiresAt), or none, is
    // more access although every object is already in place: its author must
    // be able to grant the spec. Until then the expiry granted stays in force.
    let granted = ta.status.as_ref().and_then(|s| s.expires_at.as_deref());
    if expiry::extends(granted, ta.spec.expires_at.as_deref())
        && let Err(refused) = authorize(ta, ctx).await
    {
        let in_force = expiry::judge(granted, now, warning);
        return match in_force.revocation(&ta.spec.namespace) {
            Some(ended) => expire(ta, ctx, ended.with_renewal_refused(&refused), in_force).await,
            None => status::Outcome::held(ta, refused).with_expiry(in_force),
        };
    }
    grant_pipeline(ta, ctx).await.with_expiry(wanted)
}

/// The grant ended (`ended`): the access goes, the namespace and its data
/// stay, and so does the pin (a renewal binds the same group). The group's
/// Azure role goes too unless another live grant wants it.
async fn expire<'a>(ta: &'a TeamAccess, ctx: &Context, ended: Error, expiry: expiry::Expiry) -> status::Outcome<'a> {
    let outcome = take_back(ta, ctx, ended).await;
    let azure = azure_role::release_expired(ta, ctx).await;
    outcome.with_azure_role(azure).with_expiry(expiry)
}

/// Takes back the access of `ta` (never its namespace), when there is any,
/// and reports `why` (or the failed removal, so it is tried again).
async fn take_back<'a>(ta: &'a TeamAccess, ctx: &Context, why: Error) -> status::Outcome<'a> {
    let removal = if cleanup::has_access(ta, &ctx.caches) {
        cleanup::remove_access(ta, &ctx.client).await.map(|_| ())
    } else {
        Ok(())
    };
    status::Outcome::refused(ta, why, removal)
}

/// validate → profile → resolve → build → authorship (when something new would be
/// granted) → apply → Azure role; each step stops the pipeline with what it
/// knows, and the outcome says how far it got.
async fn grant_pipeline<'a>(ta: &'a TeamAccess, ctx: &Context) -> status::Outcome<'a> {
    let validated = match validate::validate(ta, &ctx.settings.policy) {
        Ok(validated) => validated,
        // A namespace protected, or a grant refused, after access was granted:
        // take the access back (never the namespace).
        Err(error) => return take_back(ta, ctx, error).await,
    };
    // A profile the operator does not know grants nothing new and costs no
    // lookup; what was granted before is kept.
    let chosen = match profile::choose(ta, &ctx.settings) {
        Ok(chosen) => chosen,
        Err(error) => return status::Outcome::held(ta, error),
    };
    let live_namespace = ctx.caches.namespace(&ta.spec.namespace).map(|ns| ns.metadata);
    let plan = profile::plan(chosen, ta, live_namespace.as_ref());
    let resolved = match resolve::resolve(
        validated,
        ctx.identity.directory.as_ref(),
        ctx.settings.policy.strict_group_names,
    )
    .await
    {
        Ok(resolved) => resolved,
        // bind: Members names people, who would keep access through a kept
        // binding after their group is gone: the access goes with the group.
        Err(resolve::Unresolved::Group { error, .. }) if members::group_is_gone(ta, &error) => {
            return take_back(ta, ctx, error).await;
        }
        Err(unresolved) => return status::Outcome::unresolved(ta, unresolved),
    };
    let bound = match members::bind(ta, &resolved.group_object_id, &ctx.identity.roster) {
        Ok(bound) => bound,
        // Nothing new is bound until the members are known; what is bound stays.
        Err(error) => return status::Outcome::members_unavailable(resolved, error),
    };
    let desired = build::build(&resolved, plan, &bound);
    // A spec is served only as far as its author could grant it by hand. What
    // is already in place grants nothing new, so a restart or a resync asks
    // nothing; the Azure role is asked for whenever it is wanted, since status
    // alone cannot show ARM holds it.
    let in_place = apply::in_place(&desired, &ctx.caches);
    let azure_wanted = ctx.identity.cluster_user_role.is_some() && ta.spec.wants_cluster_user_role();
    if (!in_place || azure_wanted)
        && let Err(error) = authorize(ta, ctx).await
    {
        if !in_place {
            return status::Outcome::held(ta, error);
        }
        // The Kubernetes access is in place (nothing to write); no Azure role for it.
        let applied = apply::apply(desired, &ctx.client, &ctx.caches).await;
        return status::Outcome::resolved(resolved, applied).with_members(bound.report());
    }
    let applied = apply::apply(desired, &ctx.client, &ctx.caches).await;
    let azure = azure_role::grant(ta, &resolved.group_object_id, ctx).await;
    status::Outcome::resolved(resolved, applied).with_azure_role(azure).with_members(bound.report())
}

/// The authorship step, when the operator runs with its admission policies.
async fn authorize(ta: &TeamAccess, ctx: &Context) -> Result<(), Error> {
    let Some(prefix) = &ctx.settings.admission_policy_prefix else { return Ok(()) };
    let live = ctx.caches.namespace(&ta.spec.namespace);
    let profile = profile::needing_use(ta, &ctx.settings);
    let needs =
        authorship::requirements(ta, live.as_ref(), ctx.identity.cluster_user_role.is_some(), profile.as_deref());
    authorship::verify(ta, prefix, &needs, &ctx.client, &ctx.memory.verified).await
}
