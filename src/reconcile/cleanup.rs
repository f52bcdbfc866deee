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
    azure_role, build,
    caches::{Caches, every_teamaccess},
    context::Context,
    error::Error,
    publish::{self, EventAction},
    status::{self, Note, Outcome},
    write::{Ours, Removal, delete_exactly, delete_owned},
};
use crate::api::{
    BindMode, DeletionPolicy, Reason, TeamAccess,
    labels::{self, CREATED_BY_ANNOTATION, FIELD_MANAGER, MANAGED_BY_LABEL},
};

/// What becomes of a TeamAccess's namespace when the TeamAccess goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Created by us, policy Delete (its creator's and this one's), and no other
    /// TeamAccess uses it.
    Delete,
    /// Created by us, no other user, but a policy says Retain: kept, and our
    /// marks removed, so that no later TeamAccess deletion can take it for ours.
    Unmark,
    /// Not ours, already going, or still used by another TeamAccess.
    Keep,
}

/// The deletionPolicy a cleanup may act on: Delete only when the spec says so,
/// the operator last applied a spec that said so (status, which only the
/// operator writes), and no owner reference is there to have the garbage
/// collector delete the object on someone else's behalf. Whatever was changed
/// after the operator last looked, while the object terminates say, can only
/// make it keep the namespace.
pub fn policy_in_force(ta: &TeamAccess) -> DeletionPolicy {
    let applied = ta.status.as_ref().and_then(|s| s.deletion_policy);
    let owned_by_another = ta.metadata.owner_references.as_ref().is_some_and(|refs| !refs.is_empty());
    if ta.spec.deletion_policy == DeletionPolicy::Delete && applied == Some(DeletionPolicy::Delete) && !owned_by_another
    {
        DeletionPolicy::Delete
    } else {
        DeletionPolicy::Retain
    }
}

/// `this`: the TeamAccess going. `policy`: its `policy_in_force`.
/// `still_used`: another live TeamAccess grants access in the namespace.
/// `uninstalling`: the TeamAccess CRD is being deleted, so every TeamAccess goes
/// at once; a team's namespace and its data must outlive an uninstall.
/// `protected`: the namespace is protected by the operator's policy (perhaps since
/// after we created it); a protected namespace is never deleted or changed.
/// A namespace another TeamAccess created is deleted only when its creator
/// recorded Delete on it as well: the creator decides a shared namespace's fate.
pub fn namespace_disposition(
    ns: Option<&Namespace>,
    this: &str,
    policy: DeletionPolicy,
    still_used: bool,
    uninstalling: bool,
    protected: bool,
) -> Disposition {
    let Some(ns) = ns else { return Disposition::Keep };
    let meta = &ns.metadata;
    if !labels::is_managed(meta) || meta.deletion_timestamp.is_some() || still_used || uninstalling || protected {
        return Disposition::Keep;
    }
    let creators = if labels::created_by(meta) == Some(this) { Some(policy) } else { creators_policy(meta) };
    match (policy, creators) {
        (DeletionPolicy::Delete, Some(DeletionPolicy::Delete)) => Disposition::Delete,
        _ => Disposition::Unmark,
    }
}

/// Whether the caches show a Role or RoleBinding of this TeamAccess, so a refused
/// object with nothing left to take back costs no request.
pub fn has_access(ta: &TeamAccess, caches: &Caches) -> bool {
    let namespace = &ta.spec.namespace;
    let recorded = ta.status.as_ref().and_then(|s| s.role_binding.clone());
    let made = ta.status.as_ref().is_some_and(|s| !s.children.is_empty());
    made || caches.role(namespace, &ta.child_name()).is_some()
        || caches.binding(namespace, &build::binding_name(ta)).is_some()
        || recorded.is_some_and(|name| caches.binding(namespace, &name).is_some())
}

/// What removing a TeamAccess's access did, child by child, for the Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub deleted: Vec<String>,
    /// Objects of our names that this TeamAccess did not make: left in place.
    pub not_ours: Vec<String>,
}

impl Removed {
    fn note(&mut self, kind: &str, name: &str, removal: Removal) {
        match removal {
            Removal::Deleted => self.deleted.push(format!("{kind} {name}")),
            Removal::NotOurs => self.not_ours.push(format!("{kind} {name}")),
            Removal::Absent => {}
        }
    }

    /// "removed RoleBinding x and Role x", and what was left alone.
    pub fn describe(&self) -> String {
        let mut text = if self.deleted.is_empty() {
            "no RoleBinding or Role was left to remove".to_string()
        } else {
            format!("removed {}", self.deleted.join(" and "))
        };
        if !self.not_ours.is_empty() {
            text.push_str(&format!("; left {} in place: this TeamAccess did not make it", self.not_ours.join(" and ")));
        }
        text
    }
}

/// Removes the RoleBinding, then the Role, of a TeamAccess: each only when it is
/// ours, by owner reference or by the uid status recorded when we made it (so a
/// team that stripped the reference from its binding cannot keep it). The
/// namespace is not touched.
pub async fn remove_access(ta: &TeamAccess, client: &Client) -> Result<Removed, Error> {
    let namespace = &ta.spec.namespace;
    let recorded = ta.recorded_children();
    let owner = ta.name_any();
    let ours = Ours { owner: &owner, uid: ta.metadata.uid.as_deref(), recorded: &recorded };
    // The binding the spec names, the one status last recorded (they differ
    // while a switch of role is under way), and every one recorded as made.
    let status = ta.status.clone().unwrap_or_default();
    let mut bindings = vec![build::binding_name(ta)];
    let mut roles = vec![ta.child_name()];
    let named = status.role_binding.iter().map(|n| ("RoleBinding", n.clone()));
    for (kind, name) in named.chain(status.children.iter().map(|c| (c.kind.as_str(), c.name.clone()))) {
        let list = if kind == "Role" { &mut roles } else { &mut bindings };
        if !list.contains(&name) {
            list.push(name);
        }
    }
    // The parts of a split Members binding (`build::members_binding`), for an
    // object that binds, or bound, its members.
    if ta.spec.bind == BindMode::Members || status.members.is_some() {
        let parts: Vec<String> = bindings
            .iter()
            .flat_map(|b| (1..build::MEMBER_PARTS).map(|k| build::part_name(b, &ta.child_name(), k)))
            .collect();
        bindings.extend(parts);
    }
    let mut removed = Removed::default();
    let api = Api::<RoleBinding>::namespaced(client.clone(), namespace);
    for name in &bindings {
        removed.note("RoleBinding", name, delete_owned(&api, name, ours).await?);
    }
    let api = Api::<Role>::namespaced(client.clone(), namespace);
    for name in &roles {
        removed.note("Role", name, delete_owned(&api, name, ours).await?);
    }
    Ok(removed)
}

pub async fn cleanup(ta: &TeamAccess, ctx: &Context) -> Result<(), Error> {
    let namespace = &ta.spec.namespace;
    let removed = remove_access(ta, &ctx.client).await?.describe();

    let api = Api::<Namespace>::all(ctx.client.clone());
    let live = api.get_opt(namespace).await.map_err(|e| Error::kube(format!("read namespace {namespace}"), e))?;
    // Listing the other TeamAccess objects is needed only for a namespace of ours.
    let ours = live.as_ref().is_some_and(|ns| labels::is_managed(&ns.metadata));
    let still_used = ours && used_by_another(ta, ctx).await?;
    let uninstalling = ours && crd_is_being_deleted(ctx).await?;
    if uninstalling {
        tracing::info!(teamaccess = %ta.name_any(), namespace, "the TeamAccess CRD is being deleted: the namespace and its contents are kept");
    }
    let protected = ctx.settings.policy.protected_namespaces.contains(namespace);
    let policy = policy_in_force(ta);
    let disposition = namespace_disposition(live.as_ref(), &ta.name_any(), policy, still_used, uninstalling, protected);
    let note = match disposition {
        Disposition::Delete => {
            // Every namespace deletion passes the brake on mass deletion first.
            if let Err(wait) = ctx.brake.try_acquire(namespace).await? {
                let (max, window) = (ctx.brake.max(), ctx.brake.window());
                let delayed = || Error::NamespaceDeletionDelayed { namespace: namespace.clone(), wait, max, window };
                report_delayed(ta, ctx, delayed()).await;
                return Err(delayed());
            }
            // With a uid precondition, so a namespace re-created meanwhile survives.
            delete_exactly(&api, namespace, live.as_ref().and_then(|ns| ns.uid())).await?;
            format!("{removed}; deleted namespace {namespace}")
        }
        Disposition::Unmark => {
            unmark_namespace(&api, namespace).await?;
            format!("{removed}; namespace {namespace} kept ({})", why_kept(ta, live.as_ref()))
        }
        Disposition::Keep if uninstalling => {
            format!("{removed}; namespace {namespace} kept because the TeamAccess CRD is being deleted")
        }
        Disposition::Keep => format!("{removed}; namespace {namespace} kept"),
    };
    // After the Kubernetes side, which ARM never holds up.
    azure_role::release_deleted(ta, ctx).await;
    let cleaned_up = Note { type_: EventType::Normal, reason: Reason::CleanedUp, message: note };
    publish::emit(ta, ctx, cleaned_up, EventAction::Delete).await;
    Ok(())
}

/// Why a namespace of ours nobody else uses is kept, for the Event.
fn why_kept(ta: &TeamAccess, ns: Option<&Namespace>) -> &'static str {
    let created_here = ns.is_some_and(|ns| labels::created_by(&ns.metadata) == Some(ta.name_any().as_str()));
    if ta.metadata.owner_references.as_ref().is_some_and(|refs| !refs.is_empty()) {
        "the TeamAccess has ownerReferences, so a garbage collection, not its remover, may have deleted it"
    } else if ta.spec.deletion_policy == DeletionPolicy::Retain {
        "deletionPolicy Retain"
    } else if ta.status.as_ref().and_then(|s| s.deletion_policy) != Some(DeletionPolicy::Delete) {
        "deletionPolicy Delete was never applied by the operator before the deletion began"
    } else if !created_here {
        "another TeamAccess created it, and its deletionPolicy was not Delete"
    } else {
        "deletionPolicy Retain"
    }
}

/// Says on the object that its namespace's deletion waits for the brake (the
/// status `status::compute` decides for it, and a Warning Event the first
/// time). A failure to say so is logged; the deletion waits either way.
async fn report_delayed(ta: &TeamAccess, ctx: &Context, delayed: Error) {
    ctx.report.metrics.namespace_deletions_delayed.inc();
    let outcome = Outcome::deletion_delayed(ta, delayed);
    let (status, notes) = status::compute(&outcome, &Time(jiff::Timestamp::now()));
    if let Err(e) = publish::write_status(ta, &status, ctx).await {
        tracing::warn!(teamaccess = %ta.name_any(), error = %e, "cannot report the delayed namespace deletion");
    }
    for note in notes {
        publish::emit(ta, ctx, note, EventAction::Delete).await;
    }
    tracing::warn!(teamaccess = %ta.name_any(), namespace = %ta.spec.namespace, "namespace deletion held back by the brake");
}

/// Whether another TeamAccess, not itself being deleted, grants access in the
/// same namespace. Every TeamAccess counts, also those of other operators' shards.
async fn used_by_another(ta: &TeamAccess, ctx: &Context) -> Result<bool, Error> {
    Ok(every_teamaccess(&ctx.client).await?.iter().any(|other| {
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

/// The deletionPolicy the creator of a managed namespace recorded on it; None
/// when it recorded none (made by an older operator) or it is not a policy.
pub fn creators_policy(meta: &kube::api::ObjectMeta) -> Option<DeletionPolicy> {
    match meta.annotations.as_ref().and_then(|a| a.get(labels::DELETION_POLICY_ANNOTATION)).map(String::as_str) {
        Some("Delete") => Some(DeletionPolicy::Delete),
        Some("Retain") => Some(DeletionPolicy::Retain),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::api::{GroupSelector, TeamAccessSpec};

    fn ours() -> Namespace {
        build::build_namespace(
            &TeamAccess::new(
                "t",
                TeamAccessSpec::new(GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"), "dev"),
            ),
            &build::no_profile(),
        )
    }

    #[test]
    fn our_unused_namespace_goes_with_policy_delete() {
        assert_eq!(
            namespace_disposition(Some(&ours()), "t", DeletionPolicy::Delete, false, false, false),
            Disposition::Delete
        );
    }

    #[test]
    fn our_unused_namespace_is_kept_and_unmarked_with_policy_retain() {
        assert_eq!(
            namespace_disposition(Some(&ours()), "t", DeletionPolicy::Retain, false, false, false),
            Disposition::Unmark
        );
    }

    #[test]
    fn a_namespace_another_teamaccess_uses_is_kept_marked() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), "t", policy, true, false, false), Disposition::Keep);
        }
    }

    #[test]
    fn a_namespace_that_existed_before_is_never_touched() {
        let theirs =
            Namespace { metadata: ObjectMeta { name: Some("dev".into()), ..Default::default() }, ..Default::default() };
        assert_eq!(
            namespace_disposition(Some(&theirs), "t", DeletionPolicy::Delete, false, false, false),
            Disposition::Keep
        );
        assert_eq!(
            namespace_disposition(Some(&theirs), "t", DeletionPolicy::Retain, false, false, false),
            Disposition::Keep
        );
    }

    #[test]
    fn a_namespace_already_gone_or_going_needs_nothing() {
        assert_eq!(namespace_disposition(None, "t", DeletionPolicy::Delete, false, false, false), Disposition::Keep);
        let mut going = ours();
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(
            namespace_disposition(Some(&going), "t", DeletionPolicy::Delete, false, false, false),
            Disposition::Keep
        );
    }

    #[test]
    fn an_uninstall_deletes_no_namespace() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), "t", policy, false, true, false), Disposition::Keep);
        }
    }

    #[test]
    fn a_protected_namespace_is_never_deleted_even_if_we_made_it() {
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            assert_eq!(namespace_disposition(Some(&ours()), "t", policy, false, false, true), Disposition::Keep);
        }
    }

    fn created_by(creator: &str, policy: DeletionPolicy) -> Namespace {
        let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"), "dev");
        spec.deletion_policy = policy;
        build::build_namespace(&TeamAccess::new(creator, spec), &build::no_profile())
    }

    #[test]
    fn a_shared_namespace_goes_only_when_its_creator_recorded_delete() {
        let (delete, retain) = (DeletionPolicy::Delete, DeletionPolicy::Retain);
        let creator_deletes = created_by("creator", delete);
        assert_eq!(
            namespace_disposition(Some(&creator_deletes), "t", delete, false, false, false),
            Disposition::Delete
        );
        assert_eq!(
            namespace_disposition(Some(&creator_deletes), "t", retain, false, false, false),
            Disposition::Unmark
        );
        let creator_retains = created_by("creator", retain);
        assert_eq!(
            namespace_disposition(Some(&creator_retains), "t", delete, false, false, false),
            Disposition::Unmark,
            "the last TeamAccess to go does not decide a namespace another one created"
        );
        let mut unrecorded = created_by("creator", delete);
        unrecorded.metadata.annotations.as_mut().unwrap().remove(labels::DELETION_POLICY_ANNOTATION);
        assert_eq!(namespace_disposition(Some(&unrecorded), "t", delete, false, false, false), Disposition::Unmark);
        // Its creator's own policy is the one in force, whatever the annotation says.
        assert_eq!(
            namespace_disposition(Some(&creator_retains), "creator", delete, false, false, false),
            Disposition::Delete
        );
    }

    fn deleting(spec_policy: DeletionPolicy, applied: Option<DeletionPolicy>) -> TeamAccess {
        let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"), "dev");
        spec.deletion_policy = spec_policy;
        let mut ta = TeamAccess::new("t", spec);
        ta.status = Some(crate::api::TeamAccessStatus { deletion_policy: applied, ..Default::default() });
        ta
    }

    #[test]
    fn only_a_delete_the_operator_applied_and_the_spec_still_says_is_in_force() {
        use DeletionPolicy::{Delete, Retain};
        assert_eq!(policy_in_force(&deleting(Delete, Some(Delete))), Delete);
        assert_eq!(policy_in_force(&deleting(Delete, Some(Retain))), Retain, "changed to Delete while terminating");
        assert_eq!(policy_in_force(&deleting(Retain, Some(Delete))), Retain);
        assert_eq!(policy_in_force(&deleting(Delete, None)), Retain, "never applied");
        let mut owned = deleting(Delete, Some(Delete));
        owned.metadata.owner_references = Some(vec![Default::default()]);
        assert_eq!(policy_in_force(&owned), Retain, "a garbage collection is not a remover");
    }

    #[test]
    fn the_cleanup_event_says_what_was_removed_and_what_was_left() {
        let mut removed = Removed::default();
        assert_eq!(removed.describe(), "no RoleBinding or Role was left to remove");
        removed.note("RoleBinding", "teamaccess-t", Removal::Deleted);
        removed.note("Role", "teamaccess-t", Removal::NotOurs);
        removed.note("Role", "teamaccess-u", Removal::Absent);
        assert_eq!(
            removed.describe(),
            "removed RoleBinding teamaccess-t; left Role teamaccess-t in place: this TeamAccess did not make it"
        );
    }
}
