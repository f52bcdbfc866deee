//! Step 4, apply: puts the desired children in place. Each write is decided by a
//! pure function of what is live (`namespace_action`, `role_action`,
//! `binding_action`), read from the watched caches, so an object that is already
//! right costs no request at all. The API server is read only to settle a create
//! that met an object the cache did not show yet (409), and to say what holds a
//! terminating namespace.

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    build::{Desired, MEMBER_PARTS, part_name},
    caches::{Caches, DIGEST_KIND, cached_subjects},
    error::Error,
    profile::{self, Plan, ProfileState},
    write::{Ours, delete_owned, server_side_apply},
};
use crate::api::{
    ChildRecord,
    labels::{self, FIELD_MANAGER, PROFILE_REVISION_ANNOTATION},
};

/// What is in place after a successful apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The Role we keep, or None when a ClusterRole is bound.
    pub role: Option<String>,
    pub role_binding: String,
    /// The Role and RoleBinding in place, with their uids: status records them,
    /// so they stay ours whatever is done to their labels and owner references.
    pub children: Vec<ChildRecord>,
    /// The namespace was created by this apply.
    pub namespace_created: bool,
    /// The namespace profile, as this apply left it.
    pub profile: ProfileState,
}

/// A failed apply, and whether it got as far as creating the namespace.
#[derive(Debug)]
pub struct ApplyFailed {
    pub error: Error,
    pub namespace_created: bool,
}

/// The namespace, then its profile's guardrails, then the Role and RoleBinding:
/// the team never sees its namespace without the guardrails.
pub async fn apply(desired: Desired, client: &Client, caches: &Caches) -> Result<Applied, ApplyFailed> {
    let before = caches.namespace(&desired.namespace.name_any()).map(|ns| ns.metadata);
    let namespace_created = match ensure_namespace(&desired, client, caches).await {
        Ok(created) => created,
        Err(error) => return Err(ApplyFailed { error, namespace_created: false }),
    };
    let profile = match keep_profile(&desired, before.as_ref(), namespace_created, client, caches).await {
        Ok(profile) => profile,
        Err(error) => return Err(ApplyFailed { error, namespace_created }),
    };
    match apply_rbac(&desired, client, caches).await {
        Ok(children) => Ok(Applied {
            role: desired.role.as_ref().and_then(|r| r.metadata.name.clone()),
            role_binding: desired.role_binding.name_any(),
            children,
            namespace_created,
            profile,
        }),
        Err(error) => Err(ApplyFailed { error, namespace_created }),
    }
}

/// Keeps the profile's guardrails in a namespace this TeamAccess created
/// (`before`: the namespace as cached before this apply). A namespace someone
/// else made in the instant between the plan and the create is used as it is.
async fn keep_profile(
    desired: &Desired,
    before: Option<&ObjectMeta>,
    namespace_created: bool,
    client: &Client,
    caches: &Caches,
) -> Result<ProfileState, Error> {
    let rendered = match &desired.profile {
        Plan::Skip(state) => return Ok(state.clone()),
        Plan::Apply(rendered) => rendered,
    };
    let name = desired.namespace.name_any();
    let made_before = before.is_some_and(|meta| labels::made_by(meta, &desired.owner));
    if !namespace_created && !made_before {
        let live = caches.namespace(&name).map(|ns| ns.metadata);
        return Ok(profile::not_ours(Some(rendered), live.as_ref()));
    }
    let namespace_revision = before
        .filter(|_| !namespace_created)
        .and_then(|meta| meta.annotations.as_ref()?.get(PROFILE_REVISION_ANNOTATION).cloned());
    let restored = profile::keep_guardrails(rendered, &name, namespace_revision.as_deref(), client, caches).await?;
    Ok(ProfileState::Applied { name: rendered.name.clone(), restored })
}

/// Whether `desired` is in place as the caches see it: applying it would write
/// nothing (no namespace made or relabelled, no Role or RoleBinding made or
/// changed, none removed). A spec whose author the operator cannot vouch for is
/// still served when this holds, since serving it grants nothing new.
///
/// A namespace profile counts by its name alone: choosing another profile is the
/// author's act and is checked, while bringing a namespace to an edited profile
/// (the admin's act) or putting a guardrail back grants nothing, and must not
/// wait for an author who can no longer be verified.
pub fn in_place(desired: &Desired, caches: &Caches) -> bool {
    let namespace = desired.namespace.name_any();
    let live = caches.namespace(&namespace);
    let authored = authored_part(&desired.namespace, &desired.profile);
    let namespace_kept =
        namespace_action(live.as_ref().map(|ns| &ns.metadata), &authored, &desired.owner) == NamespaceAction::Keep;
    let role_kept = desired.role.as_ref().is_none_or(|role| {
        role_action(caches.role(&namespace, &role.name_any()).as_ref(), role, &desired.recorded) == Write::Skip
    });
    let binding = &desired.role_binding;
    let live_binding = caches.binding(&namespace, &binding.name_any());
    let binding_kept = match binding_action(live_binding.as_ref(), binding, &desired.recorded) {
        Write::Skip => true,
        // spec.bind Members: the members follow the directory, which is not the
        // author's act. What the author decides is in place once the binding
        // names no group (a switch from Group is checked) and every spec.users.
        Write::Apply => desired
            .members_mode_users
            .as_ref()
            .is_some_and(|users| live_binding.as_ref().is_some_and(|live| authored_subjects_in_place(live, users))),
        _ => false,
    };
    let nothing_to_remove = desired.stale_bindings.iter().all(|stale| caches.binding(&namespace, stale).is_none())
        && !(desired.remove_role && caches.role(&namespace, &desired.role_name).is_some());
    live.is_some() && namespace_kept && role_kept && binding_kept && nothing_to_remove
}

/// Whether a live Members binding already carries what the author decided:
/// no Group subject, and each of spec.users.
fn authored_subjects_in_place(live: &RoleBinding, users: &[String]) -> bool {
    let subjects = live.subjects.as_deref().unwrap_or_default();
    // A digested list cannot be read: asking the author costs reviews, never access.
    if subjects.iter().any(|s| s.kind == DIGEST_KIND) {
        return false;
    }
    let named = |name: &String| subjects.iter().any(|s| s.kind == "User" && s.name == *name);
    subjects.iter().all(|s| s.kind != "Group") && users.iter().all(named)
}

/// The namespace as its TeamAccess's author decides it: without what the
/// profile's content adds (its labels, annotations and revision), keeping only
/// the profile's name.
fn authored_part(namespace: &Namespace, profile: &Plan) -> Namespace {
    let mut authored = namespace.clone();
    if let Plan::Apply(rendered) = profile {
        let meta = &mut authored.metadata;
        if let Some(labels) = &mut meta.labels {
            labels.retain(|k, _| !rendered.labels.contains_key(k));
        }
        if let Some(annotations) = &mut meta.annotations {
            annotations.retain(|k, _| k == labels::PROFILE_ANNOTATION || !rendered.annotations.contains_key(k));
        }
    }
    authored
}

/// What to do about the namespace, given the live one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceAction {
    Create,
    /// Ours, with metadata that drifted from namespaceMetadata.
    Update,
    /// Ours and up to date, or one that existed before: used as it is.
    Keep,
    /// Being deleted.
    Terminating,
}

/// `live`: the namespace's metadata, as the cache has it.
pub fn namespace_action(live: Option<&ObjectMeta>, desired: &Namespace, owner: &str) -> NamespaceAction {
    match live {
        None => NamespaceAction::Create,
        Some(meta) if meta.deletion_timestamp.is_some() => NamespaceAction::Terminating,
        Some(meta) if labels::made_by(meta, owner) => {
            if carries(meta, &desired.metadata) {
                NamespaceAction::Keep
            } else {
                NamespaceAction::Update
            }
        }
        Some(_) => NamespaceAction::Keep,
    }
}

/// What to do about a Role or RoleBinding, given the live one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Missing: created with a create call, so one made by someone else in the
    /// same instant is refused (409) rather than taken over.
    Create,
    Skip,
    /// Ours, and drifted: server-side applied back.
    Apply,
    /// Our binding names another role; roleRef is immutable, so it is deleted and
    /// made again.
    Replace,
    /// Not ours (no controller reference to this TeamAccess, and not one we
    /// recorded making): never modified or deleted. Holds who manages it, for
    /// the message.
    Conflict {
        managers: String,
    },
}

/// `recorded`: the uids of the children status says we made.
pub fn role_action(live: Option<&Role>, desired: &Role, recorded: &[String]) -> Write {
    match live {
        None => Write::Create,
        Some(have) if !ours(&have.metadata, &desired.metadata, recorded) => {
            Write::Conflict { managers: managers(&have.metadata) }
        }
        Some(have) if have.rules == desired.rules && carries(&have.metadata, &desired.metadata) => Write::Skip,
        Some(_) => Write::Apply,
    }
}

pub fn binding_action(live: Option<&RoleBinding>, desired: &RoleBinding, recorded: &[String]) -> Write {
    match live {
        None => Write::Create,
        Some(have) if !ours(&have.metadata, &desired.metadata, recorded) => {
            Write::Conflict { managers: managers(&have.metadata) }
        }
        Some(have) if have.role_ref != desired.role_ref => Write::Replace,
        // Compared in the cache's form: a long list by its digest.
        Some(have)
            if cached_subjects(have.subjects.clone()) == cached_subjects(desired.subjects.clone())
                && carries(&have.metadata, &desired.metadata) =>
        {
            Write::Skip
        }
        Some(_) => Write::Apply,
    }
}

/// Whether `have` is ours: controlled by the same owner (uid) as `want` says
/// ours are, or made by us (its uid recorded), whatever its references say now.
/// A recorded child whose owner reference was stripped is applied back.
fn ours(have: &ObjectMeta, want: &ObjectMeta, recorded: &[String]) -> bool {
    let controller = |m: &ObjectMeta| {
        m.owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| r.uid.clone())
    };
    let controlled_alike = controller(want).is_some() && controller(have) == controller(want);
    controlled_alike || have.uid.as_ref().is_some_and(|uid| recorded.contains(uid))
}

/// Who manages an object, for a message: its controller and its field managers.
fn managers(meta: &ObjectMeta) -> String {
    let mut names: Vec<String> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .map(|r| format!("{} {}", r.kind, r.name))
        .collect();
    for entry in meta.managed_fields.iter().flatten() {
        if let Some(manager) = &entry.manager
            && !names.contains(manager)
        {
            names.push(manager.clone());
        }
    }
    if names.is_empty() { "someone else".into() } else { names.join(", ") }
}

/// Creates the namespace when missing and keeps the metadata of one we created.
/// Returns whether it was created.
async fn ensure_namespace(desired: &Desired, client: &Client, caches: &Caches) -> Result<bool, Error> {
    let name = desired.namespace.name_any();
    let api = Api::<Namespace>::all(client.clone());
    let live = caches.namespace(&name);
    match namespace_action(live.as_ref().map(|ns| &ns.metadata), &desired.namespace, &desired.owner) {
        NamespaceAction::Keep => Ok(false),
        NamespaceAction::Terminating => {
            // The cache holds metadata only: read the conditions that say what holds it.
            let blockers = match api.get_opt(&name).await {
                Ok(Some(ns)) => termination_blockers(&ns),
                _ => Vec::new(),
            };
            Err(Error::NamespaceTerminating { namespace: name, blockers })
        }
        NamespaceAction::Update => {
            server_side_apply(&api, &name, &desired.namespace)
                .await
                .map_err(|e| Error::kube(format!("apply namespace {name}"), e))?;
            Ok(false)
        }
        NamespaceAction::Create => match api.create(&create_params(), &desired.namespace).await {
            Ok(_) => Ok(true),
            // Made by someone else since we looked: it existed before us, so it is
            // used as it is and never ours.
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
            Err(e) => Err(Error::kube(format!("create namespace {name}"), e)),
        },
    }
}

/// The Role (or the ClusterRole check), the RoleBinding, then the removal of the
/// bindings and the Role the TeamAccess no longer names, in that order so access
/// never lapses and never points at a missing Role in between.
async fn apply_rbac(desired: &Desired, client: &Client, caches: &Caches) -> Result<Vec<ChildRecord>, Error> {
    let namespace = desired.namespace.name_any();
    let roles = Api::<Role>::namespaced(client.clone(), &namespace);
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &namespace);
    let recorded = &desired.recorded;
    let ours = Ours { owner: &desired.owner, uid: desired.owner_uid.as_deref(), recorded };
    let mut children = Vec::with_capacity(2);

    if let Some(role) = &desired.role {
        let (_, uid) =
            write_child(&roles, caches.role(&namespace, &role.name_any()), role, recorded, role_action).await?;
        children.extend(record::<Role>(role.name_any(), uid));
    }
    if let Some(cluster_role) = &desired.cluster_role
        && !caches.cluster_role_exists(client, cluster_role).await?
    {
        return Err(Error::ClusterRoleNotFound { name: cluster_role.clone() });
    }
    // A split Members binding: its parts before the main binding, so a person
    // is bound by a part before the main binding stops naming them (or the group).
    for part in &desired.member_parts {
        put_binding(&bindings, caches, &namespace, part, ours).await?;
    }
    let binding = &desired.role_binding;
    let name = binding.name_any();
    let uid = put_binding(&bindings, caches, &namespace, binding, ours).await?;
    children.extend(record::<RoleBinding>(name.clone(), uid));

    // Make before break: the old binding goes only now that the new one exists.
    // The caches say whether there is anything to remove; the delete itself reads
    // the object first, so only ours is ever deleted. Parts no longer needed (the
    // group shrank, or is bound as a Group again) go after the main binding too.
    let child = desired.role_name.as_str();
    let surplus = (desired.member_parts.len() + 1..MEMBER_PARTS).map(|k| part_name(&name, child, k));
    let stale_parts =
        desired.stale_bindings.iter().flat_map(|stale| (1..MEMBER_PARTS).map(|k| part_name(stale, child, k)));
    for stale in desired.stale_bindings.iter().cloned().chain(surplus).chain(stale_parts) {
        if caches.binding(&namespace, &stale).is_some() {
            delete_owned(&bindings, &stale, ours).await?;
        }
    }
    if desired.remove_role && caches.role(&namespace, &desired.role_name).is_some() {
        delete_owned(&roles, &desired.role_name, ours).await?;
    }
    Ok(children)
}

/// Creates or updates a RoleBinding of ours as `binding_action` decides; one
/// whose roleRef must change is deleted and made again. Returns its uid.
async fn put_binding(
    bindings: &Api<RoleBinding>,
    caches: &Caches,
    namespace: &str,
    binding: &RoleBinding,
    ours: Ours<'_>,
) -> Result<Option<String>, Error> {
    let name = binding.name_any();
    let cached = caches.binding(namespace, &name);
    let (action, uid) = write_child(bindings, cached, binding, ours.recorded, binding_action).await?;
    if action != Write::Replace {
        return Ok(uid);
    }
    delete_owned(bindings, &name, ours).await?;
    Ok(create(bindings, binding).await?.uid())
}

/// The record of a child we keep, when the API server gave it a uid.
fn record<K: Resource<DynamicType = ()>>(name: String, uid: Option<String>) -> Option<ChildRecord> {
    uid.map(|uid| ChildRecord { kind: K::kind(&()).to_string(), name, uid })
}

/// Does what `decide` says about a Role or RoleBinding, given the cached one:
/// create, apply, or refuse a conflict. A create that meets 409 reads the object
/// from the API server and decides again (it was made in between, or it is one
/// without our label, which the cache never holds). Returns `Replace` for the
/// caller, and the uid of the object in place.
async fn write_child<K>(
    api: &Api<K>,
    cached: Option<K>,
    desired: &K,
    recorded: &[String],
    decide: fn(Option<&K>, &K, &[String]) -> Write,
) -> Result<(Write, Option<String>), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let (kind, namespace, name) =
        (K::kind(&()).to_string(), desired.namespace().unwrap_or_default(), desired.name_any());
    let mut action = decide(cached.as_ref(), desired, recorded);
    let mut live = cached;
    if action == Write::Create {
        match create(api, desired).await {
            Ok(created) => return Ok((Write::Create, created.uid())),
            Err(Error::Kube { source: kube::Error::Api(s), .. }) if s.is_already_exists() => {
                live =
                    api.get_opt(&name).await.map_err(|e| Error::kube(format!("read {kind} {namespace}/{name}"), e))?;
                action = decide(live.as_ref(), desired, recorded);
            }
            Err(e) => return Err(e),
        }
    }
    let uid = live.as_ref().and_then(|l| l.uid());
    match action {
        Write::Conflict { managers } => Err(Error::ChildConflict { kind, namespace, name, managers }),
        Write::Apply => {
            let applied = server_side_apply(api, &name, desired)
                .await
                .map_err(|e| Error::kube(format!("apply {kind} {namespace}/{name}"), e))?;
            Ok((Write::Apply, applied.uid()))
        }
        // A second create after 409 would only meet 409 again; the next reconcile decides.
        Write::Create => Err(Error::kube(
            format!("create {kind} {namespace}/{name}"),
            kube::Error::Api(Box::new(kube::core::Status::failure("created and deleted again meanwhile", "Conflict"))),
        )),
        other => Ok((other, uid)),
    }
}

async fn create<K>(api: &Api<K>, desired: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let (kind, namespace, name) =
        (K::kind(&()).to_string(), desired.namespace().unwrap_or_default(), desired.name_any());
    api.create(&create_params(), desired).await.map_err(|e| Error::kube(format!("create {kind} {namespace}/{name}"), e))
}

fn create_params() -> PostParams {
    PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) }
}

/// What keeps a terminating namespace, from the namespace controller's conditions.
fn termination_blockers(ns: &Namespace) -> Vec<String> {
    ns.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| {
            c.status == "True"
                && matches!(c.type_.as_str(), "NamespaceFinalizersRemaining" | "NamespaceContentRemaining")
        })
        .filter_map(|c| c.message.clone())
        .collect()
}

/// Whether `have` already carries every label, annotation and owner reference of
/// `want`. Keys others added are left alone, as server-side apply would.
pub(super) fn carries(have: &ObjectMeta, want: &ObjectMeta) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let owners = want.owner_references.iter().flatten().all(|w| have.owner_references.iter().flatten().any(|h| h == w));
    contains(&have.labels, &want.labels) && contains(&have.annotations, &want.annotations) && owners
}

#[cfg(test)]
mod tests {
    use crate::reconcile::build;
    use k8s_openapi::{
        api::{
            core::v1::{NamespaceCondition, NamespaceStatus},
            rbac::v1::{PolicyRule, RoleRef, Subject},
        },
        apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time},
    };

    use super::*;
    use crate::api::{GroupSelector, TeamAccess, TeamAccessSpec};

    fn team() -> TeamAccess {
        let mut ta = TeamAccess::new(
            "appdev-dev",
            TeamAccessSpec::new(GroupSelector { display_name: Some("appdev".into()), ..Default::default() }, "dev"),
        );
        ta.metadata.uid = Some("0000-uid".into());
        ta
    }

    fn with_label(mut ns: Namespace, key: &str, value: &str) -> Namespace {
        ns.metadata.labels.get_or_insert_default().insert(key.into(), value.into());
        ns
    }

    /// The namespace `team()` creates with profile `name` of `profile_yaml`.
    fn profiled(name: &str, profile_yaml: &str) -> (Namespace, Plan) {
        let file = crate::profiles::ProfilesFile::parse(&format!("profiles:\n  {name}: {profile_yaml}\n")).unwrap();
        let rendered = crate::profiles::render::render(&file.choose(Some(name)).unwrap().unwrap(), "dev");
        let plan = Plan::Apply(Box::new(rendered));
        (build::build_namespace(&team(), &plan), plan)
    }

    #[test]
    fn an_edited_profile_is_no_new_grant_but_another_profile_is() {
        let (live, _) = profiled("standard", "{podSecurity: {enforce: restricted}}");
        let (edited, edited_plan) = profiled("standard", "{podSecurity: {enforce: baseline}, labels: {tier: a}}");
        let authored = authored_part(&edited, &edited_plan);
        assert_eq!(namespace_action(Some(&live.metadata), &edited, "appdev-dev"), NamespaceAction::Update);
        assert_eq!(namespace_action(Some(&live.metadata), &authored, "appdev-dev"), NamespaceAction::Keep);
        let (other, other_plan) = profiled("open", "{podSecurity: {enforce: restricted}}");
        let authored = authored_part(&other, &other_plan);
        assert_eq!(namespace_action(Some(&live.metadata), &authored, "appdev-dev"), NamespaceAction::Update);
    }

    #[test]
    fn a_missing_namespace_is_created() {
        let desired = build::build_namespace(&team(), &build::no_profile());
        assert_eq!(namespace_action(None, &desired, "appdev-dev"), NamespaceAction::Create);
    }

    #[test]
    fn our_namespace_is_kept_while_it_matches_and_updated_when_it_drifts() {
        let desired = build::build_namespace(&team(), &build::no_profile());
        assert_eq!(namespace_action(Some(&desired.metadata), &desired, "appdev-dev"), NamespaceAction::Keep);
        let with_extra = with_label(desired.clone(), "added-by", "someone");
        assert_eq!(namespace_action(Some(&with_extra.metadata), &desired, "appdev-dev"), NamespaceAction::Keep);
        let mut wants_more = desired.clone();
        wants_more.metadata.labels.get_or_insert_default().insert("team".into(), "appdev".into());
        assert_eq!(namespace_action(Some(&desired.metadata), &wants_more, "appdev-dev"), NamespaceAction::Update);
    }

    #[test]
    fn a_namespace_we_did_not_create_is_used_as_it_is() {
        let desired = build::build_namespace(&team(), &build::no_profile());
        let foreign = ObjectMeta { name: Some("dev".into()), ..Default::default() };
        assert_eq!(namespace_action(Some(&foreign), &desired, "appdev-dev"), NamespaceAction::Keep);
        // Created by another TeamAccess: that one keeps its metadata, not us.
        assert_eq!(namespace_action(Some(&desired.metadata), &desired, "another-team"), NamespaceAction::Keep);
    }

    #[test]
    fn a_terminating_namespace_names_what_holds_it() {
        let desired = build::build_namespace(&team(), &build::no_profile());
        let mut live = desired.clone();
        live.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        live.status = Some(NamespaceStatus {
            conditions: Some(vec![NamespaceCondition {
                type_: "NamespaceFinalizersRemaining".into(),
                status: "True".into(),
                message: Some("Some content has finalizers: example.com/hold".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(namespace_action(Some(&live.metadata), &desired, "appdev-dev"), NamespaceAction::Terminating);
        let blockers = termination_blockers(&live);
        assert_eq!(blockers, ["Some content has finalizers: example.com/hold"]);
        let error = Error::NamespaceTerminating { namespace: "dev".into(), blockers };
        assert_eq!(
            error.to_string(),
            "namespace dev is being deleted (Some content has finalizers: example.com/hold); access is granted once it is gone and re-created"
        );
    }

    #[test]
    fn a_role_is_written_only_when_missing_or_different() {
        let desired = build::build_role(&team()).unwrap();
        assert_eq!(role_action(None, &desired, &[]), Write::Create);
        assert_eq!(role_action(Some(&desired), &desired, &[]), Write::Skip);
        let mut widened = desired.clone();
        widened.rules.get_or_insert_default().push(PolicyRule {
            verbs: vec!["*".into()],
            resources: Some(vec!["secrets".into()]),
            ..Default::default()
        });
        assert_eq!(role_action(Some(&widened), &desired, &[]), Write::Apply, "hand-added rules are removed");
        let mut labels_gone = desired.clone();
        labels_gone.metadata.labels = None;
        assert_eq!(role_action(Some(&labels_gone), &desired, &[]), Write::Apply, "our own, drifted");
    }

    #[test]
    fn a_child_that_is_not_ours_is_never_taken_over() {
        let desired = build::build_role(&team()).unwrap();
        let mut theirs = desired.clone();
        theirs.metadata.owner_references = None;
        theirs.metadata.managed_fields =
            Some(vec![ManagedFieldsEntry { manager: Some("ops-tool".into()), ..Default::default() }]);
        assert_eq!(role_action(Some(&theirs), &desired, &[]), Write::Conflict { managers: "ops-tool".into() });

        // Controlled by another TeamAccess of the same name (deleted and re-created: a new uid).
        let mut other_uid = desired.clone();
        other_uid.metadata.owner_references.as_mut().unwrap()[0].uid = "another-uid".into();
        let Write::Conflict { managers } = role_action(Some(&other_uid), &desired, &[]) else {
            panic!("expected Conflict")
        };
        assert!(managers.contains("TeamAccess appdev-dev"), "{managers}");

        let binding = build::build_role_binding(&team(), "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01", &[]);
        let mut foreign = binding.clone();
        foreign.metadata.owner_references = None;
        assert!(matches!(binding_action(Some(&foreign), &binding, &[]), Write::Conflict { .. }));
        assert_eq!(binding_action(None, &binding, &[]), Write::Create);
    }

    #[test]
    fn a_binding_is_replaced_when_its_role_changes_and_applied_when_its_subjects_drift() {
        let ta = team();
        let desired = build::build_role_binding(&ta, "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01", &[]);
        assert_eq!(binding_action(None, &desired, &[]), Write::Create);
        assert_eq!(binding_action(Some(&desired), &desired, &[]), Write::Skip);
        let mut other_role = desired.clone();
        other_role.role_ref = RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "edit".into(),
        };
        assert_eq!(binding_action(Some(&other_role), &desired, &[]), Write::Replace);
        let mut extra = desired.clone();
        extra.subjects.get_or_insert_default().push(Subject {
            kind: "User".into(),
            name: "intruder".into(),
            ..Default::default()
        });
        assert_eq!(binding_action(Some(&extra), &desired, &[]), Write::Apply);
    }
}
