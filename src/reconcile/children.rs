//! Puts the built children in place with server-side apply, and removes them on
//! deletion. Only objects that carry our owner reference are ever deleted.

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::Namespace,
        rbac::v1::{ClusterRole, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Context, Error, FIELD_MANAGER, build, status::Report};
use crate::{
    api::{DeletionPolicy, TeamAccess},
    directory::DirectoryGroup,
};

/// Server-side applies the namespace (when ours), the Role and the RoleBinding.
pub async fn apply(
    ta: &TeamAccess,
    ctx: &Context,
    group: &DirectoryGroup,
    user_subjects: &[String],
    report: &mut Report,
) -> Result<(), Error> {
    ensure_namespace(ta, ctx, report).await?;
    let namespace = &ta.spec.namespace;
    let name = ta.child_name();
    let roles = Api::<Role>::namespaced(ctx.client.clone(), namespace);
    let bindings = Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace);

    if let Some(role) = build::build_role(ta) {
        apply_if_changed(&roles, &name, &role, |have| {
            have.rules == role.rules && carries(&have.metadata, &role.metadata)
        })
        .await
        .map_err(|e| Error::kube(format!("apply Role {namespace}/{name}"), e))?;
        report.role = Some(name.clone());
    } else if let Some(cluster_role) = &ta.spec.cluster_role {
        let exists = Api::<ClusterRole>::all(ctx.client.clone())
            .get_opt(cluster_role)
            .await
            .map_err(|e| Error::kube(format!("read ClusterRole {cluster_role}"), e))?;
        if exists.is_none() {
            return Err(Error::ClusterRoleNotFound { name: cluster_role.clone() });
        }
    }

    let binding = build::build_role_binding(ta, group, user_subjects);
    let unchanged = |have: &RoleBinding| {
        have.role_ref == binding.role_ref
            && have.subjects == binding.subjects
            && carries(&have.metadata, &binding.metadata)
    };
    match apply_if_changed(&bindings, &name, &binding, unchanged).await {
        Ok(()) => {}
        // roleRef is immutable: switching between Role and ClusterRole needs a new binding.
        Err(kube::Error::Api(s)) if s.is_invalid() && s.message.contains("roleRef") => {
            delete_owned(&bindings, &name, ta).await?;
            server_side_apply(&bindings, &name, &binding)
                .await
                .map_err(|e| Error::kube(format!("apply RoleBinding {namespace}/{name}"), e))?;
        }
        Err(e) => return Err(Error::kube(format!("apply RoleBinding {namespace}/{name}"), e)),
    }
    report.role_binding = Some(name.clone());

    // A Role left from before spec.clusterRole was set goes only after the binding
    // moved away from it, so access never points at a missing Role in between.
    if ta.spec.cluster_role.is_some() && report.role.take().is_some() {
        delete_owned(&roles, &name, ta).await?;
    }
    Ok(())
}

/// Creates the namespace when missing and keeps the metadata of one we created.
/// A namespace that existed before is used as it is.
async fn ensure_namespace(ta: &TeamAccess, ctx: &Context, report: &mut Report) -> Result<(), Error> {
    let namespace = &ta.spec.namespace;
    let api = Api::<Namespace>::all(ctx.client.clone());
    let existing = api.get_opt(namespace).await.map_err(|e| Error::kube(format!("read namespace {namespace}"), e))?;
    match existing {
        Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
            Err(Error::NamespaceTerminating { namespace: namespace.clone(), blockers: termination_blockers(&ns) })
        }
        Some(ns)
            if build::is_managed(&ns.metadata) && build::created_by(&ns.metadata) == Some(ta.name_any().as_str()) =>
        {
            let desired = build::build_namespace(ta);
            if !carries(&ns.metadata, &desired.metadata) {
                server_side_apply(&api, namespace, &desired)
                    .await
                    .map_err(|e| Error::kube(format!("apply namespace {namespace}"), e))?;
            }
            Ok(())
        }
        Some(_) => Ok(()),
        None => {
            server_side_apply(&api, namespace, &build::build_namespace(ta))
                .await
                .map_err(|e| Error::kube(format!("create namespace {namespace}"), e))?;
            report.events.push((EventType::Normal, "NamespaceCreated", format!("created namespace {namespace}")));
            Ok(())
        }
    }
}

/// What keeps a terminating namespace, from the namespace controller's conditions.
fn termination_blockers(ns: &Namespace) -> String {
    let blockers: Vec<String> = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| {
            c.status == "True"
                && matches!(c.type_.as_str(), "NamespaceFinalizersRemaining" | "NamespaceContentRemaining")
        })
        .filter_map(|c| c.message.clone())
        .collect();
    if blockers.is_empty() { String::new() } else { format!(" ({})", blockers.join("; ")) }
}

/// Whether `have` already carries every label, annotation and owner reference of
/// `want`. Keys others added are left alone, as server-side apply would.
fn carries(have: &ObjectMeta, want: &ObjectMeta) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let owners = want.owner_references.iter().flatten().all(|w| have.owner_references.iter().flatten().any(|h| h == w));
    contains(&have.labels, &want.labels) && contains(&have.annotations, &want.annotations) && owners
}

/// Server-side applies `desired` unless the live object already matches: an idle
/// resync then reads instead of writing.
async fn apply_if_changed<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    unchanged: impl Fn(&K) -> bool,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    if api.get_opt(name).await?.is_some_and(|have| unchanged(&have)) {
        return Ok(());
    }
    server_side_apply(api, name, desired).await.map(|_| ())
}

async fn server_side_apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await
}

/// Deletes a namespaced child only when it carries this TeamAccess's owner
/// reference, with a uid precondition so an object re-created meanwhile survives.
async fn delete_owned<K>(api: &Api<K>, name: &str, ta: &TeamAccess) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let Some(obj) = api.get_opt(name).await.map_err(|e| Error::kube(format!("read {kind} {name}"), e))? else {
        return Ok(());
    };
    let owned = obj.owner_references().iter().any(|r| Some(&r.uid) == ta.metadata.uid.as_ref());
    if !owned {
        tracing::info!(teamaccess = %ta.name_any(), kind, name, "not deleting a child we do not own");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: obj.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(e) => Err(Error::kube(format!("delete {kind} {name}"), e)),
    }
}

/// The cleanup path behind the finalizer. It needs no directory, so an unreachable
/// directory never blocks deletion, and treats children already gone as done.
pub async fn cleanup(ta: &TeamAccess, ctx: &Context) -> Result<Action, Error> {
    let namespace = &ta.spec.namespace;
    let name = ta.child_name();
    delete_owned(&Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace), &name, ta).await?;
    delete_owned(&Api::<Role>::namespaced(ctx.client.clone(), namespace), &name, ta).await?;
    let note = match delete_namespace_if_ours(ta, ctx).await? {
        true => format!("removed RoleBinding and Role {name} and namespace {namespace}"),
        false => format!("removed RoleBinding and Role {name}; namespace {namespace} kept"),
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "CleanedUp".into(),
        note: Some(note),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ta.object_ref(&())).await {
        tracing::warn!(teamaccess = %ta.name_any(), error = %e, "cannot publish event");
    }
    Ok(Action::await_change())
}

/// Deletes the namespace when this operator created it, the policy is Delete, and
/// no other TeamAccess (not itself being deleted) still grants access in it.
async fn delete_namespace_if_ours(ta: &TeamAccess, ctx: &Context) -> Result<bool, Error> {
    if ta.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(false);
    }
    let namespace = &ta.spec.namespace;
    let api = Api::<Namespace>::all(ctx.client.clone());
    let Some(ns) = api.get_opt(namespace).await.map_err(|e| Error::kube(format!("read namespace {namespace}"), e))?
    else {
        return Ok(false);
    };
    if !build::is_managed(&ns.metadata) || ns.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let others = Api::<TeamAccess>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list TeamAccess objects", e))?;
    let still_used = others.items.iter().any(|other| {
        other.spec.namespace == *namespace
            && other.metadata.uid != ta.metadata.uid
            && other.metadata.deletion_timestamp.is_none()
    });
    if still_used {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: ns.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(namespace, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(false),
        Err(e) => Err(Error::kube(format!("delete namespace {namespace}"), e)),
    }
}
