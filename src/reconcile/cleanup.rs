//! The cleanup path behind the finalizer: removes the RoleBinding and Role of a
//! deleted TeamAccess, then decides what becomes of its namespace.
//!
//! It needs no directory, so an unreachable directory never blocks deletion, and
//! it treats children already gone as done. Only objects carrying this
//! TeamAccess's owner reference are deleted; a namespace only when this operator
//! created it (`namespace_disposition` decides).

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        rbac::v1::{Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};

use super::{
    azure_role,
    build::{self, CREATED_BY_ANNOTATION, MANAGED_BY_LABEL},
    caches::Caches,
    context::{Context, FIELD_MANAGER},
    error::Error,
    status::{self, Note},
    write::{delete_exactly, delete_owned},
};
use crate::api::{
    DeletionPolicy, Reason, TeamAccess, TeamAccessStatus,
    conditions::{self, DesiredCondition, READY, RECONCILING},
};

/// What becomes of a TeamAccess's namespace when the TeamAccess goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Created by us, policy Delete, and no other TeamAccess uses it.
    Delete,
    /// Created by us, policy Retain, no other user: kept, and our marks removed,
    /// so that no later TeamAccess deletion can take it for ours.
    Unmark,
    /// Not ours, already going, or still used by another TeamAccess.
    Keep,
}

/// `still_used`: another live TeamAccess grants access in the namespace.
/// `uninstalling`: the TeamAccess CRD is being deleted, so every TeamAccess goes
/// at once; a team's namespace and its data must outlive an uninstall.
/// `protected`: the namespace is protected by the operator's policy (perhaps since
/// after we created it); a protected namespace is never deleted or changed.
pub fn namespace_disposition(
    ns: Option<&Namespace>,
    policy: DeletionPolicy,
    still_used: bool,
    uninstalling: bool,
    protected: bool,
) -> Disposition {
    match ns {
        Some(ns)
            if build::is_managed(&ns.metadata)
                && ns.metadata.deletion_timestamp.is_none()
                && !still_used
                && !uninstalling
                && !protected =>
        {
            match policy {
                DeletionPolicy::Delete => Disposition::Delete,
                DeletionPolicy::Retain => Disposition::Unmark,
            }
        }
        _ => Disposition::Keep,
    }
}

/// Whether the caches show a Role or RoleBinding of this TeamAccess, so a refused
/// object with nothing left to take back costs no request.
pub fn has_access(ta: &TeamAccess, caches: &Caches) -> bool {
    let namespace = &ta.spec.namespace;
    let recorded = ta.status.as_ref().and_then(|s| s.role_binding.clone());
    caches.role(namespace, &ta.child_name()).is_some()
        || caches.binding(namespace, &build::binding_name(ta)).is_some()
        || recorded.is_some_and(|name| caches.binding(namespace, &name).is_some())
}

/// Removes the RoleBinding, then the Role, of a TeamAccess: each only when it
/// carries this TeamAccess's owner reference. The namespace is not touched.
pub async fn remove_access(ta: &TeamAccess, client: &Client) -> Result<(), Error> {
    let namespace = &ta.spec.namespace;
    let (owner, owner_uid) = (ta.name_any(), ta.metadata.uid.as_deref());
    // The binding the spec names, and the one status last recorded (they differ
    // while a switch of role is under way).
    let mut bindings = vec![build::binding_name(ta)];
    if let Some(recorded) = ta.status.as_ref().and_then(|s| s.role_binding.clone())
        && !bindings.contains(&recorded)
    {
        bindings.push(recorded);
    }
    let api = Api::<RoleBinding>::namespaced(client.clone(), namespace);
    for name in &bindings {
        delete_owned(&api, name, &owner, owner_uid).await?;
    }
    delete_owned(&Api::<Role>::namespaced(client.clone(), namespace), &ta.child_name(), &owner, owner_uid).await
}

pub async fn cleanup(ta: &TeamAccess, ctx: &Context) -> Result<(), Error> {
    let namespace = &ta.spec.namespace;
    let name = ta.child_name();
    remove_access(ta, &ctx.client).await?;

    let api = Api::<Namespace>::all(ctx.client.clone());
    let live = api.get_opt(namespace).await.map_err(|e| Error::kube(format!("read namespace {namespace}"), e))?;
    // Listing the other TeamAccess objects is needed only for a namespace of ours.
    let ours = live.as_ref().is_some_and(|ns| build::is_managed(&ns.metadata));
    let still_used = ours && used_by_another(ta, ctx).await?;
    let uninstalling = ours && crd_is_being_deleted(ctx).await?;
    if uninstalling {
        tracing::info!(teamaccess = %ta.name_any(), namespace, "the TeamAccess CRD is being deleted: the namespace and its contents are kept");
    }
    let protected = ctx.settings.policy.protected_namespaces.contains(namespace);
    let note = match namespace_disposition(live.as_ref(), ta.spec.deletion_policy, still_used, uninstalling, protected)
    {
        Disposition::Delete => {
            // Every namespace deletion passes the brake on mass deletion first.
            let acquired = {
                let mut brake = ctx.brake.lock().unwrap_or_else(|e| e.into_inner());
                brake
                    .try_acquire(namespace, std::time::Instant::now())
                    .map_err(|wait| (wait, brake.max(), brake.window()))
            };
            if let Err((wait, max, window)) = acquired {
                let delayed = Error::NamespaceDeletionDelayed { namespace: namespace.clone(), wait, max, window };
                report_delayed(ta, ctx, &delayed).await;
                return Err(delayed);
            }
            // With a uid precondition, so a namespace re-created meanwhile survives.
            delete_exactly(&api, namespace, live.as_ref().and_then(|ns| ns.uid())).await?;
            format!("removed RoleBinding and Role {name} and namespace {namespace}")
        }
        Disposition::Unmark => {
            unmark_namespace(&api, namespace).await?;
            format!("removed RoleBinding and Role {name}; namespace {namespace} kept (deletionPolicy Retain)")
        }
        Disposition::Keep if uninstalling => format!(
            "removed RoleBinding and Role {name}; namespace {namespace} kept because the TeamAccess CRD is being deleted"
        ),
        Disposition::Keep => format!("removed RoleBinding and Role {name}; namespace {namespace} kept"),
    };
    // After the Kubernetes side, which ARM never holds up.
    azure_role::release_deleted(ta, ctx).await;
    let cleaned_up = Note { type_: EventType::Normal, reason: Reason::CleanedUp, message: note };
    status::emit(ta, ctx, cleaned_up, "Delete").await;
    Ok(())
}

/// Says on the object that its namespace's deletion waits for the brake: status
/// (Ready=False, Reconciling=True, no children left) and a Warning event the first
/// time. A failure to say so is logged; the deletion waits either way.
async fn report_delayed(ta: &TeamAccess, ctx: &Context, delayed: &Error) {
    ctx.metrics.namespace_deletions_delayed.inc();
    let previous = ta.status.clone().unwrap_or_default();
    let first_time =
        conditions::find(&previous.conditions, READY).is_none_or(|c| c.reason != delayed.reason().as_str());
    let desired = [
        DesiredCondition::new(READY, false, delayed.reason(), delayed.to_string()),
        DesiredCondition::new(RECONCILING, true, delayed.reason(), delayed.to_string()),
    ];
    let status = TeamAccessStatus {
        role: None,
        role_binding: None,
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            ta.metadata.generation,
            &Time(jiff::Timestamp::now()),
        ),
        ..previous
    };
    if let Err(e) = status::write_status(ta, &status, ctx).await {
        tracing::warn!(teamaccess = %ta.name_any(), error = %e, "cannot report the delayed namespace deletion");
    }
    if first_time {
        let warning = Note { type_: EventType::Warning, reason: delayed.reason(), message: delayed.to_string() };
        status::emit(ta, ctx, warning, "Delete").await;
    }
    tracing::warn!(teamaccess = %ta.name_any(), namespace = %ta.spec.namespace, "namespace deletion held back by the brake");
}

/// Whether another TeamAccess, not itself being deleted, grants access in the
/// same namespace. Every TeamAccess counts, also those of other operators' shards.
async fn used_by_another(ta: &TeamAccess, ctx: &Context) -> Result<bool, Error> {
    Ok(ctx.every_teamaccess().await?.iter().any(|other| {
        other.spec.namespace == ta.spec.namespace
            && other.metadata.uid != ta.metadata.uid
            && other.metadata.deletion_timestamp.is_none()
    }))
}

/// Whether the TeamAccess CRD itself is being deleted (an uninstall, or a
/// mistaken `kubectl delete crd`): then every TeamAccess is deleted with it.
async fn crd_is_being_deleted(ctx: &Context) -> Result<bool, Error> {
    let name = TeamAccess::crd_name();
    let crd = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read CustomResourceDefinition {name}"), e))?;
    Ok(crd.is_none_or(|crd| crd.metadata.deletion_timestamp.is_some()))
}

/// Removes the label and annotation that make a namespace ours; the user's own
/// labels and annotations from namespaceMetadata stay.
async fn unmark_namespace(api: &Api<Namespace>, namespace: &str) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {
        "labels": {MANAGED_BY_LABEL: null},
        "annotations": {CREATED_BY_ANNOTATION: null},
    }});
    match api
        .patch(
            namespace,
            &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(Error::kube(format!("unmark namespace {namespace}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::api::{GroupSelector, TeamAccessSpec};

    fn ours() -> Namespace {
        build::build_namespace(&TeamAccess::new(
            "t",
            TeamAccessSpec::new(GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"), "dev"),
        ))
    }

    #[test]
    fn our_unused_namespace_goes_with_policy_delete() {
        assert_eq!(
            namespace_disposition(Some(&ours()), DeletionPolicy::Delete, false, false, false),
            Disposition::Delete
        );
    }

    #[test]
    fn our_unused_namespace_is_kept_and_unmarked_with_policy_retain() {
        assert_eq!(
            namespace_disposition(Some(&ours()), DeletionPolicy::Retain, false, false, false),
            Disposition::Unmark
        );
    }

    #[test]
    fn a_namespace_another_teamaccess_uses_is_kept_marked() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), policy, true, false, false), Disposition::Keep);
        }
    }

    #[test]
    fn a_namespace_that_existed_before_is_never_touched() {
        let theirs =
            Namespace { metadata: ObjectMeta { name: Some("dev".into()), ..Default::default() }, ..Default::default() };
        assert_eq!(
            namespace_disposition(Some(&theirs), DeletionPolicy::Delete, false, false, false),
            Disposition::Keep
        );
        assert_eq!(
            namespace_disposition(Some(&theirs), DeletionPolicy::Retain, false, false, false),
            Disposition::Keep
        );
    }

    #[test]
    fn a_namespace_already_gone_or_going_needs_nothing() {
        assert_eq!(namespace_disposition(None, DeletionPolicy::Delete, false, false, false), Disposition::Keep);
        let mut going = ours();
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(namespace_disposition(Some(&going), DeletionPolicy::Delete, false, false, false), Disposition::Keep);
    }

    #[test]
    fn an_uninstall_deletes_no_namespace() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), policy, false, true, false), Disposition::Keep);
        }
    }

    #[test]
    fn a_protected_namespace_is_never_deleted_even_if_we_made_it() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), policy, false, false, true), Disposition::Keep);
        }
    }
}
