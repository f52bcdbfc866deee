//! What the operator refuses to grant, whoever wrote the TeamAccess: the
//! admin's guardrails (configuration, from the command line). Validate reads it;
//! it imports nothing of the reconcile.

use std::collections::BTreeSet;

/// Namespaces no TeamAccess may target unless the operator is configured otherwise.
pub const DEFAULT_PROTECTED_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "default"];

/// ClusterRoles a TeamAccess may bind unless the operator is configured otherwise.
pub const DEFAULT_ALLOWED_CLUSTER_ROLES: [&str; 3] = ["view", "edit", "admin"];

/// What the operator refuses to grant, whoever wrote the TeamAccess: the admin's
/// guardrails, behind the admission policy that checks the author.
#[derive(Clone, Debug)]
pub struct Policy {
    pub protected_namespaces: BTreeSet<String>,
    /// The ClusterRoles spec.clusterRole may name (`--allowed-cluster-roles`).
    pub allowed_cluster_roles: BTreeSet<String>,
    /// Rules that grant escalate, bind or impersonate, or name the RBAC API group
    /// or every group, are refused unless this is set (`--allow-escalating-rules`).
    pub allow_escalating_rules: bool,
    /// A displayName or mailNickname binds only a group no ordinary user could
    /// have made, spelled exactly (`--strict-group-names`).
    pub strict_group_names: bool,
}

impl Policy {
    /// The policy from `--protected-namespaces`, which add to the defaults; the
    /// operator's own namespace is always added, so a team can never be handed
    /// the operator's credentials. Entries are trimmed, empty ones dropped.
    /// The other guardrails keep their defaults.
    pub fn new(extra: impl IntoIterator<Item = String>, own_namespace: Option<&str>) -> Self {
        let protected_namespaces = DEFAULT_PROTECTED_NAMESPACES
            .into_iter()
            .map(String::from)
            .chain(extra.into_iter().map(|n| n.trim().to_string()))
            .chain(own_namespace.map(str::to_string))
            .filter(|n| !n.is_empty())
            .collect();
        Self {
            protected_namespaces,
            allowed_cluster_roles: DEFAULT_ALLOWED_CLUSTER_ROLES.into_iter().map(String::from).collect(),
            allow_escalating_rules: false,
            strict_group_names: false,
        }
    }

    /// Replaces the allowed ClusterRoles (`--allowed-cluster-roles`): entries are
    /// trimmed, empty ones dropped, so an empty list allows none.
    pub fn with_allowed_cluster_roles(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.allowed_cluster_roles =
            names.into_iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
        self
    }

    pub fn with_escalating_rules(mut self, allowed: bool) -> Self {
        self.allow_escalating_rules = allowed;
        self
    }

    pub fn with_strict_group_names(mut self, strict: bool) -> Self {
        self.strict_group_names = strict;
        self
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(Vec::<String>::new(), None)
    }
}
