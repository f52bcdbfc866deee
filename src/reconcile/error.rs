//! Reconcile failures. Each variant has a `reason()` from the closed `Reason`
//! set: the condition reason, the Warning event reason and the metric label.

use std::time::Duration;

use crate::{api::Reason, azure::arm::ArmError, directory::DirectoryError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Directory(#[from] DirectoryError),

    /// The group's Azure role assignment; the Kubernetes access is in place.
    #[error("the namespace access is in place, but the group's Azure Kubernetes Service Cluster User Role is not: {0}")]
    Arm(#[from] ArmError),

    #[error(
        "{selector} now resolves to group {resolved}, but this TeamAccess is pinned to group {pinned}; a group deleted and re-created under the same name is a different group, so nothing new is bound. To bind the new group, set spec.group.objectId to {resolved}"
    )]
    GroupChanged { selector: String, pinned: String, resolved: String },

    #[error(
        "group {pinned} (pinned from {selector}) is no longer in the directory; the existing binding is kept but grants nobody new. Delete this TeamAccess or point spec.group at an existing group"
    )]
    GroupMissing { selector: String, pinned: String },

    #[error(
        "{selector} matched group {object_id} ({display_name}), which {why}; with --strict-group-names a name binds only a group no ordinary user could have created (role-assignable, or synchronized from on-premises), spelled exactly, so nothing new is bound. Set spec.group.objectId to the group you mean"
    )]
    GroupNameNotTrusted { selector: String, object_id: String, display_name: String, why: String },

    #[error(
        "namespace {namespace} is protected by the operator's policy (--protected-namespaces); nothing was created. Choose another spec.namespace"
    )]
    ProtectedNamespace { namespace: String },

    #[error(
        "spec.clusterRole {name} is not one the operator may bind (--allowed-cluster-roles: {allowed}); nothing is bound. Choose one of those, or ask the cluster admin to allow {name}"
    )]
    ClusterRoleNotAllowed { name: String, allowed: String },

    #[error(
        "spec.rules[{index}] ({rule}) {why}; the operator refuses such rules unless it runs with --allow-escalating-rules, and nothing is bound. Remove that rule, or bind a ClusterRole the admin allows instead"
    )]
    RuleNotAllowed { index: usize, rule: String, why: String },

    #[error(
        "namespace {namespace} is being deleted{}; access is granted once it is gone and re-created",
        held_by(blockers)
    )]
    NamespaceTerminating {
        namespace: String,
        /// What the namespace controller says holds it (remaining finalizers, content).
        blockers: Vec<String>,
    },

    #[error(
        "{kind} {namespace}/{name} already exists and was not made by this TeamAccess (managed by {managers}); it is left as it is and nothing is bound. Remove or rename that {kind}, or give this TeamAccess another name"
    )]
    ChildConflict { kind: String, namespace: String, name: String, managers: String },

    #[error(
        "the access is removed, but namespace {namespace} is not deleted yet: at most {max} namespaces are deleted per {} (--max-namespace-deletions) and that many went just now. It goes in about {}s; to keep it, set spec.deletionPolicy to Retain on this TeamAccess now",
        humantime::format_duration(*window),
        wait.as_secs().max(1)
    )]
    NamespaceDeletionDelayed { namespace: String, wait: std::time::Duration, max: u32, window: std::time::Duration },

    #[error(
        "generation {generation} of this TeamAccess carries no author stamp of the authorship policy in force ({why}), so the operator cannot tell who wrote it; nothing new is granted and what was granted before is kept. Once {policy} is installed, have someone who may grant this spec re-apply it, or stamp it as theirs: kubectl annotate teamaccess {name} --overwrite {stamp_key}=me"
    )]
    AuthorUnverified {
        name: String,
        generation: i64,
        why: String,
        policy: String,
        stamp_key: String,
        /// The policy itself is not in force: looked at again until it is.
        policy_missing: bool,
    },

    #[error(
        "{author}, who wrote this spec, may not grant it themselves: {missing}. Nothing new is granted and what was granted before is kept. Give {author} that permission, or have someone who holds it re-apply the spec"
    )]
    AuthorNotAllowed { author: String, missing: String },

    #[error(
        "this grant expired at {at}: its RoleBinding and Role are removed, and namespace {namespace} and everything in it are kept. {}",
        renewal_refused.as_ref().map_or_else(
            || "To renew it, move spec.expiresAt later or remove it".to_string(),
            |why| format!("The later spec.expiresAt is not granted: {why}")
        )
    )]
    Expired {
        at: String,
        namespace: String,
        /// Why a renewal in the spec (a later expiresAt, or none) was not granted.
        renewal_refused: Option<String>,
    },

    #[error(
        "spec.expiresAt {value:?} is not an RFC 3339 date-time with a zone, such as 2026-12-04T18:00:00Z; nothing is granted until it is. Fix or remove spec.expiresAt"
    )]
    InvalidExpiry { value: String },

    #[error(
        "spec.namespaceProfile {name} is not a profile the operator is configured with ({}); nothing new is granted and what was granted before is kept. Choose one of those, or ask the cluster admin to add {name} to the namespace profiles",
        if known.is_empty() { "it has none: --namespace-profiles is not set".to_string() } else { format!("it has {}", known.join(", ")) }
    )]
    ProfileNotFound { name: String, known: Vec<String> },

    #[error(
        "the access is in place, but namespace {namespace} was created by TeamAccess {creator} with namespace profile {in_force}, not {wanted}; a namespace has one profile, its creator's. Set spec.namespaceProfile to {in_force}, or ask the owner of {creator} to change theirs"
    )]
    ProfileConflict { namespace: String, creator: String, in_force: String, wanted: String },

    #[error(
        "the members of group {group} have not been read from the directory yet{}; nothing new is bound and what was bound before is kept",
        failure.as_ref().map_or_else(String::new, |f| format!(" (the last read failed: {f})"))
    )]
    MembersPending { group: String, failure: Option<DirectoryError> },

    #[error(
        "group {group} has {count} transitive members, more than the {max} one TeamAccess binds with spec.bind Members; nothing new is bound and what was bound before is kept. Bind a smaller group, or use spec.bind Group"
    )]
    TooManyMembers { group: String, count: usize, max: usize },

    #[error("ClusterRole {name} does not exist; create it or choose another spec.clusterRole")]
    ClusterRoleNotFound { name: String },

    #[error("the operator is not allowed to {action}: {message}. Check the operator's ClusterRole")]
    Forbidden { action: String, message: String },

    #[error("failed to {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// " (what holds it; ...)", or nothing when nothing is known.
fn held_by(blockers: &[String]) -> String {
    if blockers.is_empty() { String::new() } else { format!(" ({})", blockers.join("; ")) }
}

impl Error {
    pub fn reason(&self) -> Reason {
        match self {
            Error::Directory(e) => e.reason(),
            Error::Arm(e) => e.reason(),
            Error::GroupChanged { .. } => Reason::GroupObjectIdChanged,
            Error::GroupMissing { .. } => Reason::GroupMissing,
            Error::GroupNameNotTrusted { .. } => Reason::GroupNameNotTrusted,
            Error::ProtectedNamespace { .. } => Reason::ProtectedNamespace,
            Error::ClusterRoleNotAllowed { .. } => Reason::ClusterRoleNotAllowed,
            Error::RuleNotAllowed { .. } => Reason::RuleNotAllowed,
            Error::NamespaceTerminating { .. } => Reason::NamespaceTerminating,
            Error::ClusterRoleNotFound { .. } => Reason::ClusterRoleNotFound,
            Error::MembersPending { .. } => Reason::MembersPending,
            Error::TooManyMembers { .. } => Reason::TooManyMembers,
            Error::ProfileNotFound { .. } => Reason::ProfileNotFound,
            Error::ProfileConflict { .. } => Reason::ProfileConflict,
            Error::Expired { .. } => Reason::Expired,
            Error::InvalidExpiry { .. } => Reason::InvalidExpiry,
            Error::ChildConflict { .. } => Reason::ChildConflict,
            Error::NamespaceDeletionDelayed { .. } => Reason::NamespaceDeletionDelayed,
            Error::AuthorUnverified { .. } => Reason::AuthorUnverified,
            Error::AuthorNotAllowed { .. } => Reason::AuthorNotAllowed,
            Error::Forbidden { .. } => Reason::Forbidden,
            Error::Kube { .. } => Reason::ApplyFailed,
        }
    }

    /// Transient failures are retried with backoff and reported as Reconciling;
    /// the rest need the user to act and are reported as Stalled.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Directory(e) => e.is_transient(),
            Error::Arm(e) => e.is_transient(),
            Error::NamespaceTerminating { .. }
            | Error::NamespaceDeletionDelayed { .. }
            | Error::Kube { .. }
            | Error::MembersPending { .. } => true,
            Error::AuthorUnverified { policy_missing, .. } => *policy_missing,
            _ => false,
        }
    }

    /// When the remote service (Graph or ARM) asked to be called again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Directory(e) => e.retry_after(),
            Error::Arm(e) => e.retry_after(),
            _ => None,
        }
    }

    /// An expiry whose renewal in the spec was refused for `why`.
    pub fn with_renewal_refused(self, why: &Error) -> Self {
        match self {
            Error::Expired { at, namespace, .. } => {
                Error::Expired { at, namespace, renewal_refused: Some(why.to_string()) }
            }
            other => other,
        }
    }

    /// Wraps a Kubernetes API error, singling out 403 so a missing permission of
    /// the operator reads as such instead of as a generic failure.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        let action = action.into();
        match &source {
            kube::Error::Api(status) if status.is_forbidden() => {
                Error::Forbidden { action, message: status.message.clone() }
            }
            _ => Error::Kube { action, source },
        }
    }
}
