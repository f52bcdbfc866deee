//! Step 4, apply: puts the desired children in place. Each write is decided by a
//! pure function of what is live (`namespace_action`, `role_action`,
//! `binding_action`), so an object that is already right costs a read and no write.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        rbac::v1::{ClusterRole, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, ResourceExt};

use super::{
    build::{self, Desired},
    error::Error,
    write::{delete_owned, server_side_apply},
};

/// What is in place after a successful apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The Role we keep, or None when a ClusterRole is bound.
    pub role: Option<String>,
    pub role_binding: String,
    /// The namespace was created by this apply.
    pub namespace_created: bool,
}

/// A failed apply, and whether it got as far as creating the namespace.
#[derive(Debug)]
pub struct ApplyFailed {
    pub error: Error,
    pub namespace_created: bool,
}

pub async fn apply(desired: Desired, client: &Client) -> Result<Applied, ApplyFailed> {
    let namespace_created = match ensure_namespace(&desired, client).await {
        Ok(created) => created,
        Err(error) => return Err(ApplyFailed { error, namespace_created: false }),
    };
    match apply_rbac(&desired, client).await {
        Ok(()) => Ok(Applied {
            role: desired.role.as_ref().and_then(|r| r.metadata.name.clone()),
            role_binding: desired.role_binding.name_any(),
            namespace_created,
        }),
        Err(error) => Err(ApplyFailed { error, namespace_created }),
    }
}

/// What to do about the namespace, given the live one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceAction {
    Create,
    /// Ours, with metadata that drifted from namespaceMetadata.
    Update,
    /// Ours and up to date, or one that existed before: used as it is.
    Keep,
    /// Being deleted; the message names what holds it.
    Terminating {
        blockers: String,
    },
}

pub fn namespace_action(live: Option<&Namespace>, desired: &Namespace, owner: &str) -> NamespaceAction {
    match live {
        None => NamespaceAction::Create,
        Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
            NamespaceAction::Terminating { blockers: termination_blockers(ns) }
        }
        Some(ns) if build::is_managed(&ns.metadata) && build::created_by(&ns.metadata) == Some(owner) => {
            if carries(&ns.metadata, &desired.metadata) { NamespaceAction::Keep } else { NamespaceAction::Update }
        }
        Some(_) => NamespaceAction::Keep,
    }
}

/// Whether a Role or RoleBinding needs writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Skip,
    Apply,
    /// The binding names another role; roleRef is immutable, so it is deleted and
    /// made again.
    Replace,
}

pub fn role_action(live: Option<&Role>, desired: &Role) -> Write {
    match live {
        Some(have) if have.rules == desired.rules && carries(&have.metadata, &desired.metadata) => Write::Skip,
        _ => Write::Apply,
    }
}

pub fn binding_action(live: Option<&RoleBinding>, desired: &RoleBinding) -> Write {
    match live {
        None => Write::Apply,
        Some(have) if have.role_ref != desired.role_ref => Write::Replace,
        Some(have) if have.subjects == desired.subjects && carries(&have.metadata, &desired.metadata) => Write::Skip,
        Some(_) => Write::Apply,
    }
}

/// Creates the namespace when missing and keeps the metadata of one we created.
/// Returns whether it was created.
async fn ensure_namespace(desired: &Desired, client: &Client) -> Result<bool, Error> {
    let name = desired.namespace.name_any();
    let api = Api::<Namespace>::all(client.clone());
    let live = api.get_opt(&name).await.map_err(|e| Error::kube(format!("read namespace {name}"), e))?;
    match namespace_action(live.as_ref(), &desired.namespace, &desired.owner) {
        NamespaceAction::Keep => Ok(false),
        NamespaceAction::Terminating { blockers } => Err(Error::NamespaceTerminating { namespace: name, blockers }),
        NamespaceAction::Update => {
            server_side_apply(&api, &name, &desired.namespace)
                .await
                .map_err(|e| Error::kube(format!("apply namespace {name}"), e))?;
            Ok(false)
        }
        NamespaceAction::Create => {
            server_side_apply(&api, &name, &desired.namespace)
                .await
                .map_err(|e| Error::kube(format!("create namespace {name}"), e))?;
            Ok(true)
        }
    }
}

/// The Role (or the ClusterRole check), the RoleBinding, then the removal of a
/// Role the binding no longer names, in that order so access never points at a
/// missing Role in between.
async fn apply_rbac(desired: &Desired, client: &Client) -> Result<(), Error> {
    let namespace = desired.namespace.name_any();
    let roles = Api::<Role>::namespaced(client.clone(), &namespace);
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &namespace);
    let owner_uid = desired.owner_uid.as_deref();

    if let Some(role) = &desired.role {
        let name = role.name_any();
        let live = roles.get_opt(&name).await.map_err(|e| Error::kube(format!("read Role {namespace}/{name}"), e))?;
        if role_action(live.as_ref(), role) != Write::Skip {
            server_side_apply(&roles, &name, role)
                .await
                .map_err(|e| Error::kube(format!("apply Role {namespace}/{name}"), e))?;
        }
    }
    if let Some(cluster_role) = &desired.cluster_role {
        let exists = Api::<ClusterRole>::all(client.clone())
            .get_opt(cluster_role)
            .await
            .map_err(|e| Error::kube(format!("read ClusterRole {cluster_role}"), e))?;
        if exists.is_none() {
            return Err(Error::ClusterRoleNotFound { name: cluster_role.clone() });
        }
    }

    let binding = &desired.role_binding;
    let name = binding.name_any();
    let live =
        bindings.get_opt(&name).await.map_err(|e| Error::kube(format!("read RoleBinding {namespace}/{name}"), e))?;
    let action = binding_action(live.as_ref(), binding);
    if action == Write::Replace {
        delete_owned(&bindings, &name, &desired.owner, owner_uid).await?;
    }
    if action != Write::Skip {
        server_side_apply(&bindings, &name, binding)
            .await
            .map_err(|e| Error::kube(format!("apply RoleBinding {namespace}/{name}"), e))?;
    }

    if desired.remove_role {
        // The Role and the RoleBinding of a TeamAccess share their name.
        delete_owned(&roles, &name, &desired.owner, owner_uid).await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{NamespaceCondition, NamespaceStatus},
            rbac::v1::{PolicyRule, RoleRef, Subject},
        },
        apimachinery::pkg::apis::meta::v1::Time,
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

    #[test]
    fn a_missing_namespace_is_created() {
        let desired = build::build_namespace(&team());
        assert_eq!(namespace_action(None, &desired, "appdev-dev"), NamespaceAction::Create);
    }

    #[test]
    fn our_namespace_is_kept_while_it_matches_and_updated_when_it_drifts() {
        let desired = build::build_namespace(&team());
        assert_eq!(namespace_action(Some(&desired), &desired, "appdev-dev"), NamespaceAction::Keep);
        let with_extra = with_label(desired.clone(), "added-by", "someone");
        assert_eq!(namespace_action(Some(&with_extra), &desired, "appdev-dev"), NamespaceAction::Keep);
        let mut wants_more = desired.clone();
        wants_more.metadata.labels.get_or_insert_default().insert("team".into(), "appdev".into());
        assert_eq!(namespace_action(Some(&desired), &wants_more, "appdev-dev"), NamespaceAction::Update);
    }

    #[test]
    fn a_namespace_we_did_not_create_is_used_as_it_is() {
        let desired = build::build_namespace(&team());
        let foreign =
            Namespace { metadata: ObjectMeta { name: Some("dev".into()), ..Default::default() }, ..Default::default() };
        assert_eq!(namespace_action(Some(&foreign), &desired, "appdev-dev"), NamespaceAction::Keep);
        // Created by another TeamAccess: that one keeps its metadata, not us.
        assert_eq!(namespace_action(Some(&desired), &desired, "another-team"), NamespaceAction::Keep);
    }

    #[test]
    fn a_terminating_namespace_names_what_holds_it() {
        let desired = build::build_namespace(&team());
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
        let NamespaceAction::Terminating { blockers } = namespace_action(Some(&live), &desired, "appdev-dev") else {
            panic!("expected Terminating");
        };
        assert!(blockers.contains("example.com/hold"), "{blockers}");
    }

    #[test]
    fn a_role_is_written_only_when_missing_or_different() {
        let desired = build::build_role(&team()).unwrap();
        assert_eq!(role_action(None, &desired), Write::Apply);
        assert_eq!(role_action(Some(&desired), &desired), Write::Skip);
        let mut widened = desired.clone();
        widened.rules.get_or_insert_default().push(PolicyRule {
            verbs: vec!["*".into()],
            resources: Some(vec!["secrets".into()]),
            ..Default::default()
        });
        assert_eq!(role_action(Some(&widened), &desired), Write::Apply, "hand-added rules are removed");
        let mut unowned = desired.clone();
        unowned.metadata.owner_references = None;
        assert_eq!(role_action(Some(&unowned), &desired), Write::Apply);
    }

    #[test]
    fn a_binding_is_replaced_when_its_role_changes_and_applied_when_its_subjects_drift() {
        let ta = team();
        let desired = build::build_role_binding(&ta, "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01", &[]);
        assert_eq!(binding_action(None, &desired), Write::Apply);
        assert_eq!(binding_action(Some(&desired), &desired), Write::Skip);
        let mut other_role = desired.clone();
        other_role.role_ref = RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "edit".into(),
        };
        assert_eq!(binding_action(Some(&other_role), &desired), Write::Replace);
        let mut extra = desired.clone();
        extra.subjects.get_or_insert_default().push(Subject {
            kind: "User".into(),
            name: "intruder".into(),
            ..Default::default()
        });
        assert_eq!(binding_action(Some(&extra), &desired), Write::Apply);
    }
}
