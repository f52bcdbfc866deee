//! Every reason the operator ever reports, in one closed set.
//!
//! A reason is part of the API: it is the `reason` of a condition, the reason of
//! an Event, and the `reason` label of the reconcile metric. Users write alerts,
//! Argo CD health checks and scripts against these names, so they are spelled
//! here once and nowhere else.

use strum::{EnumIter, IntoStaticStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, EnumIter)]
pub enum Reason {
    // Healthy outcomes.
    /// Ready: the namespace, Role and RoleBinding are in place.
    Reconciled,
    /// GroupResolved: the group was found in the directory.
    Resolved,

    // The group and users, from the directory.
    /// The group exists but is not security-enabled, so tokens do not carry it.
    GroupNotSecurityEnabled,
    GroupNotFound,
    /// A display name or mail nickname matched more than one group.
    AmbiguousGroup,
    UserNotFound,
    /// The pinned group is gone and the selector now names another group.
    GroupObjectIdChanged,
    /// The pinned group is gone and nothing else matches.
    GroupMissing,
    /// --strict-group-names: the name matched a group an ordinary user could
    /// have created, or only without regard to case.
    GroupNameNotTrusted,
    GraphPermissionDenied,
    GraphAuthenticationFailed,
    GraphRequestRejected,
    GraphThrottled,
    GraphUnavailable,

    // The policy and the cluster.
    ProtectedNamespace,
    /// spec.clusterRole names a ClusterRole outside --allowed-cluster-roles.
    ClusterRoleNotAllowed,
    /// A rule grants escalate, bind or impersonate, or names the RBAC or every API
    /// group, and --allow-escalating-rules is off.
    RuleNotAllowed,
    NamespaceTerminating,
    /// A Role or RoleBinding with our name exists and is not ours: never taken over.
    ChildConflict,
    /// The brake on mass deletion holds this namespace's deletion back for now.
    NamespaceDeletionDelayed,
    ClusterRoleNotFound,
    /// Nobody the operator can name wrote this spec (no stamp of the authorship
    /// policy in force): nothing new is granted, what was granted is kept.
    AuthorUnverified,
    /// The spec's author may not grant it themselves (SubjectAccessReview).
    AuthorNotAllowed,
    /// The operator's own ServiceAccount lacks a permission.
    Forbidden,
    /// Any other failed request to the API server.
    ApplyFailed,
    /// A request of the cleanup after deletion (removing the access, the
    /// namespace) failed; retried.
    CleanupFailed,
    /// The finalizer itself could not be added or removed.
    FinalizerFailed,

    // Time-bound access (spec.expiresAt).
    /// The grant's spec.expiresAt has passed: the access is removed, the namespace kept.
    Expired,
    /// spec.expiresAt cannot be read as an instant: nothing is granted.
    InvalidExpiry,
    /// Expiring: the grant ends within --expiry-warning.
    ExpiresSoon,

    // The Azure Kubernetes Service Cluster User Role (condition ClusterUserRole).
    /// The group holds the role through the assignment this operator made.
    Assigned,
    /// The group holds the role through an assignment someone else made.
    AssignedByOther,
    /// The operator's Azure identity may not create role assignments on the cluster.
    AuthorizationFailed,
    /// ARM does not know the group yet (directory replication); retried.
    PrincipalNotFound,
    ArmThrottled,
    ArmUnavailable,
    ArmAuthenticationFailed,
    ArmRequestRejected,

    // Namespace profiles (condition NamespaceProfile).
    /// The namespace this TeamAccess created carries its profile.
    ProfileApplied,
    /// The namespace existed before (or is another TeamAccess's): its profile,
    /// if any, is not this TeamAccess's to set, and nothing was changed.
    ProfileNotApplied,
    /// The namespace's creator applied another profile than the one this TeamAccess asks for.
    ProfileConflict,
    /// spec.namespaceProfile names a profile the operator is not configured with.
    ProfileNotFound,
    /// A guardrail of the profile was deleted or changed in the namespace, and
    /// the operator put it back (an Event).
    ProfileRestored,

    // spec.bind Members (condition MembersSynced).
    /// The group's transitive members were read and the RoleBinding names them.
    MembersSynced,
    /// The group's members have not been read yet: nothing is bound for them,
    /// what was bound before is kept.
    MembersPending,
    /// The last read of the members failed: the members last read stay bound
    /// (the reason of the failure is in the message).
    MembersStale,
    /// The group has more transitive members than one TeamAccess binds.
    TooManyMembers,

    // Events that report an action rather than a state.
    GroupRenamed,
    NamespaceCreated,
    CleanedUp,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Lets a test assert the published spelling: `assert_eq!(err.reason(), "GroupNotFound")`.
impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strum::IntoEnumIterator;

    use super::*;

    #[test]
    fn reasons_are_unique_upper_camel_case_names() {
        let names: Vec<&str> = Reason::iter().map(Reason::as_str).collect();
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len(), "{names:?}");
        // The API server requires condition reasons to match this pattern.
        for name in names {
            assert!(name.chars().next().unwrap().is_ascii_uppercase(), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        }
    }

    #[test]
    fn a_reason_is_spelled_as_its_variant() {
        assert_eq!(Reason::GroupObjectIdChanged.as_str(), "GroupObjectIdChanged");
        assert_eq!(Reason::Reconciled.to_string(), "Reconciled");
    }
}
