//! The `TeamAccess` custom resource (`teamaccess.dev/v1alpha1`).
//!
//! Validation that CEL can express lives here as `x-kubernetes-validations`, so the
//! API server rejects a bad object at `kubectl apply` time with a message saying
//! what to fix. Every string and list is bounded, which keeps the CEL cost estimate
//! inside the API server's budget.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub mod conditions;
pub mod labels;
pub mod reason;

pub use reason::Reason;

/// API group of the TeamAccess resource.
pub const GROUP: &str = "teamaccess.dev";
/// Finalizer that guarantees cleanup of the children before the object goes.
pub const FINALIZER: &str = "teamaccess.dev/cleanup";

/// GUID of the form Entra ID uses for object IDs.
const GUID_RULE: &str = "self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')";

/// An RFC 3339 date-time with seconds and a zone (Z or an offset): the shape the
/// operator parses. A form without a zone would name an instant that depends on
/// whose clock reads it. (A day that does not exist, such as February 30, gets
/// through the pattern; the operator grants nothing for it and says so.)
const RFC3339_RULE: &str =
    "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$')";

/// Grants an Entra ID group (and optionally some users) access to one namespace.
///
/// The controller resolves the group's objectId through the directory, then keeps a
/// Namespace, a Role and a RoleBinding in place for it, and removes them when the
/// TeamAccess is deleted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "teamaccess.dev",
    version = "v1alpha1",
    kind = "TeamAccess",
    plural = "teamaccesses",
    shortname = "ta",
    status = "TeamAccessStatus",
    doc = "TeamAccess grants a Microsoft Entra ID group access to one namespace through a Role and a RoleBinding that the operator keeps in place.",
    printcolumn(name = "Group", type_ = "string", json_path = ".status.group.displayName", description = "Display name of the resolved Entra ID group"),
    printcolumn(name = "ObjectID", type_ = "string", json_path = ".status.group.objectId", description = "objectId of the Entra ID group the RoleBinding names"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    // A string, not a date: kubectl prints a date in the future as <invalid>.
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt", description = "When the access ends (spec.expiresAt); empty: it does not"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Profile", type_ = "string", json_path = ".status.namespaceProfile", priority = 1, description = "The namespace profile in force on the namespace (-o wide)"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members.total", priority = 1, description = "spec.bind Members: the people the RoleBinding names, from the directory (-o wide)"),
    validation = Rule::new("size(self.metadata.name) <= 200").message("metadata.name must be at most 200 characters: the Role and RoleBinding are named teamaccess-<name>")
)]
#[x_kube(
    validation = Rule::new("[has(self.verbs), has(self.rules), has(self.clusterRole)].filter(x, x).size() == 1")
        .message("set exactly one of spec.verbs, spec.rules or spec.clusterRole")
)]
#[serde(rename_all = "camelCase")]
pub struct TeamAccessSpec {
    /// The Entra ID group to grant access to. Set exactly one of objectId, displayName
    /// or mailNickname; objectId is the most precise, since display names are not unique.
    pub group: GroupSelector,

    /// The namespace the group gets access to. Created when it does not exist; a
    /// namespace that existed before is used but never deleted. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.namespace is immutable: create a new TeamAccess for another namespace and delete this one"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.namespace must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,

    /// Verbs granted on the default resource set: the namespaced core resources a
    /// workload uses (pods and their subresources, services, configmaps, secrets,
    /// serviceaccounts, persistentvolumeclaims, events, ...), all resources of apps
    /// and extensions, and batch jobs and cronjobs. The Namespace object itself,
    /// its ResourceQuotas, LimitRanges and Endpoints are not in the set (they are
    /// readable). Use "*" for all verbs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(v, v in ['*', 'get', 'list', 'watch', 'create', 'update', 'patch', 'delete', 'deletecollection'])").message("spec.verbs may hold only get, list, watch, create, update, patch, delete, deletecollection or *"))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.verbs must not be empty: list at least one verb, or use spec.rules or spec.clusterRole"))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w == v))").message("spec.verbs must not repeat a verb"))]
    #[schemars(length(max = 9), inner(length(max = 16)))]
    pub verbs: Option<Vec<String>>,

    /// Full policy rules for the Role, replacing the default resource set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.rules must not be empty: give at least one rule"))]
    #[schemars(length(max = 16))]
    pub rules: Option<Vec<AccessRule>>,

    /// Bind an existing ClusterRole (such as edit or view) inside the namespace
    /// instead of creating a Role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('/') && !self.contains('%') && self != '.' && self != '..'").message("spec.clusterRole must be a ClusterRole name (no '/', '%', '.' or '..')"))]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_role: Option<String>,

    /// Extra users bound alongside the group. Users of the cluster's own tenant are
    /// bound by userPrincipalName; guests and users of other tenants by objectId.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub users: Vec<UserRef>,

    /// Labels and annotations put on a namespace this operator creates. A namespace
    /// that existed before is left untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_metadata: Option<NamespaceMetadata>,

    /// What happens to a namespace this operator created when the TeamAccess is
    /// deleted: Delete removes it once no other TeamAccess uses it, Retain keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Whether the group is given the Azure role "Azure Kubernetes Service Cluster
    /// User Role" on the AKS cluster, which its members need to fetch a kubeconfig
    /// (`az aks get-credentials`). Only when the operator runs with
    /// --aks-cluster-resource-id; default true. Set false when the group gets that
    /// role some other way. The assignment is per group: it stays while any
    /// TeamAccess of the group wants it, and one the operator did not make is never
    /// removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_user_role: Option<bool>,

    /// When the access ends: an RFC 3339 date-time with a zone, such as
    /// 2026-12-04T18:00:00Z or 2026-12-04T19:00:00+01:00. From that instant the
    /// RoleBinding and Role are removed and the group's Cluster User Role is
    /// released unless another TeamAccess of the group still wants it; the
    /// namespace and everything in it stay (expiry is not deletion). Ready turns
    /// False with reason Expired. During the last --expiry-warning (default 24h)
    /// the Expiring condition and one Warning Event say so. To renew, move it
    /// later or remove it: the access is granted again, checked like any spec
    /// change. A time already past grants nothing. The operator's clock decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RFC3339_RULE).message("spec.expiresAt must be an RFC 3339 date-time with seconds and a zone, such as 2026-12-04T18:00:00Z or 2026-12-04T19:00:00+01:00"))]
    // No `format: date-time`: the API server's accepts forms without a zone, and
    // CEL would then see a timestamp and could no longer require one.
    #[schemars(length(max = 40))]
    pub expires_at: Option<String>,

    /// The namespace profile a namespace this operator creates arrives with: its
    /// Pod Security level, ResourceQuota, LimitRange, NetworkPolicies, labels and
    /// annotations, as the admin configured the profile (the operator's
    /// --namespace-profiles, the chart's namespaceProfiles). Unset: the default
    /// profile, if one is configured. Naming any other profile needs `use` on
    /// namespaceprofiles/<name> in API group teamaccess.dev. The team cannot
    /// undo it: the operator restores what is deleted or changed. A namespace
    /// that existed before is never changed (status.namespaceProfile stays
    /// empty and the NamespaceProfile condition says so); in a namespace another
    /// TeamAccess created, that one's profile is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.namespaceProfile must be a profile name: lower-case letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 63))]
    pub namespace_profile: Option<String>,

    /// Whom the RoleBinding names. `Group` (the default) names the group's
    /// objectId: the API server learns a person's groups from the groups claim
    /// of their Entra ID token, so a person removed from the group keeps access
    /// until that token expires (up to about 90 minutes), a PIM for Groups
    /// activation waits as long, and a token of someone in over 200 groups
    /// carries no groups claim at all. `Members` names the group's transitive
    /// members one by one (users of the tenant by userPrincipalName, guests and
    /// service principals by objectId, nested groups expanded), follows the
    /// directory every --membership-poll (10s by default), and needs no groups
    /// claim: a removal is revoked within seconds. The operator's identity needs
    /// GroupMember.Read.All and User.ReadBasic.All.
    #[serde(default, skip_serializing_if = "BindMode::is_group")]
    pub bind: BindMode,
}

/// spec.bind: whom the RoleBinding names.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BindMode {
    /// The group's objectId; membership comes from the token's groups claim.
    #[default]
    Group,
    /// The group's transitive members, read from the directory.
    Members,
}

impl BindMode {
    pub fn is_group(&self) -> bool {
        *self == BindMode::Group
    }
}

/// Selects one Entra ID group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[x_kube(
    validation = Rule::new("[has(self.objectId), has(self.displayName), has(self.mailNickname)].filter(x, x).size() == 1")
        .message("spec.group must set exactly one of objectId, displayName or mailNickname")
)]
#[serde(rename_all = "camelCase")]
pub struct GroupSelector {
    /// The group's objectId (a GUID), as `az ad group show --group <name> --query id` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(GUID_RULE).message("spec.group.objectId must be a GUID such as 5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"))]
    #[schemars(length(max = 36))]
    pub object_id: Option<String>,

    /// The group's display name. Must match exactly one group in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.trim() == self && self != ''").message("spec.group.displayName must not be empty or start or end with white space"))]
    #[schemars(length(min = 1, max = 256))]
    pub display_name: Option<String>,

    /// The group's mail nickname (the alias before the @ of its address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r#"self.matches('^[^@()\\[\\]";:<>,\\s\\\\]+$')"#).message(r#"spec.group.mailNickname must not contain @ ( ) [ ] \ " ; : < > , or white space"#))]
    #[schemars(length(min = 1, max = 64))]
    pub mail_nickname: Option<String>,
}

/// One policy rule of the Role, as in rbac.authorization.k8s.io/v1 PolicyRule
/// (without nonResourceURLs, which a namespaced Role cannot grant).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// API groups of the resources; "" is the core group, "*" all groups.
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub api_groups: Vec<String>,
    /// Resources the rule applies to, such as pods or deployments/scale; "*" for all.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    pub resources: Vec<String>,
    /// Verbs allowed on those resources; "*" for all.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 32)))]
    #[x_kube(validation = Rule::new("self.all(v, v.matches('^([a-z]+|[*])$'))").message("each of spec.rules[].verbs must be a lower-case verb such as get or create, or *"))]
    pub verbs: Vec<String>,
    /// Restricts the rule to objects with these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resource_names: Vec<String>,
}

/// An extra user to bind: exactly one of userPrincipalName or objectId.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.userPrincipalName) != has(self.objectId)")
        .message("each of spec.users must set exactly one of userPrincipalName or objectId")
)]
#[serde(rename_all = "camelCase")]
pub struct UserRef {
    /// The user's sign-in name (user@domain) in the cluster's own tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r#"self.matches('^[^@\\s]+@[^@\\s]+$')"#).message("spec.users[].userPrincipalName must look like user@domain"))]
    #[schemars(length(max = 113))]
    pub user_principal_name: Option<String>,
    /// The user's objectId (a GUID): use it for guests and users of other tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(GUID_RULE).message("spec.users[].objectId must be a GUID"))]
    #[schemars(length(max = 36))]
    pub object_id: Option<String>,
}

/// Labels and annotations for a namespace the operator creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NamespaceMetadata {
    /// Labels to set on the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub labels: BTreeMap<String, String>,
    /// Annotations to set on the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub annotations: BTreeMap<String, String>,
}

/// What happens to a namespace the operator created when its TeamAccess goes.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Delete the namespace once no other TeamAccess uses it.
    #[default]
    Delete,
    /// Keep the namespace.
    Retain,
}

/// Observed state of a TeamAccess.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TeamAccessStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The group the RoleBinding names, pinned at first resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<ResolvedGroup>,
    /// The namespace access is granted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the Role the operator keeps (absent when a ClusterRole is bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Name of the RoleBinding the operator keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_binding: Option<String>,
    /// The group's Azure Kubernetes Service Cluster User Role assignment on the
    /// AKS cluster (with --aks-cluster-resource-id, unless spec.clusterUserRole is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_user_role: Option<ClusterUserRoleStatus>,
    /// The Role and RoleBinding this operator made for the TeamAccess, by uid.
    /// A child is ours because we made it, not because of the labels or owner
    /// references it carries now (whoever may edit it may strip those): cleanup
    /// removes exactly these. Only the operator writes status (the integrity
    /// admission policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub children: Vec<ChildRecord>,
    /// The deletionPolicy in force when the operator last applied the spec. On
    /// deletion the namespace is deleted only when this and spec.deletionPolicy
    /// both say Delete, so a change made while the object is terminating (or one
    /// not yet applied) can never turn a Retain into a deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// When the access ends (spec.expiresAt as the operator read it, in UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The namespace profile in force on the namespace: the one this TeamAccess
    /// applied to the namespace it created, or the one its creator applied.
    /// Empty for a namespace that existed before (never changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_profile: Option<String>,
    /// spec.bind Members: whom the RoleBinding names, as last read from the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<MembersStatus>,
    /// Ready, GroupResolved, ClusterUserRole, Expiring, NamespaceProfile, and
    /// kstatus' Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A namespaced object the operator created for a TeamAccess.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChildRecord {
    /// Role or RoleBinding.
    pub kind: String,
    pub name: String,
    /// The uid the API server gave it when the operator created it.
    pub uid: String,
}

impl TeamAccessStatus {
    /// Whether the operator recorded the object with `uid` as one it made.
    pub fn made(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|uid| self.children.iter().any(|c| c.uid == uid))
    }
}

impl TeamAccess {
    /// The uids of the children the operator recorded as its own.
    pub fn recorded_children(&self) -> Vec<String> {
        self.status.iter().flat_map(|s| s.children.iter().map(|c| c.uid.clone())).collect()
    }
}

/// The Azure role assignment that lets the group's members fetch a kubeconfig.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUserRoleStatus {
    /// The role assignment's Azure resource ID.
    pub assignment_id: String,
    /// True when this operator made it (and removes it when no TeamAccess of the
    /// group wants it); false when someone else did (never removed).
    pub created_by_operator: bool,
}

/// The people a `Members` binding names, counted by kind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MembersStatus {
    /// Everyone the RoleBinding names for the group (spec.users not counted).
    pub total: u32,
    /// Users of the tenant, bound by userPrincipalName.
    pub users: u32,
    /// Guests (B2B), bound by objectId.
    pub guests: u32,
    /// Service principals, bound by objectId.
    pub service_principals: u32,
    /// Groups nested in the group, whose members are counted above.
    pub nested_groups: u32,
    /// When the directory was read and gave this membership (RFC 3339). It moves
    /// when the membership changes or a failed read recovers, not at every
    /// quiet poll, so following the directory writes nothing while it is quiet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<String>,
}

impl DeletionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "Delete",
            Self::Retain => "Retain",
        }
    }
}

impl TeamAccessSpec {
    /// Whether this TeamAccess wants its group to hold the Cluster User Role.
    pub fn wants_cluster_user_role(&self) -> bool {
        self.cluster_user_role != Some(false)
    }
}

/// A group as resolved through the directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedGroup {
    /// The group's objectId: the subject name of the RoleBinding.
    pub object_id: String,
    /// The group's display name when last resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The spec.group selector this objectId was resolved from. Changing spec.group
    /// is the deliberate act that lets the operator pin another group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// When the group was last resolved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
}

impl GroupSelector {
    /// The selector naming a group by objectId.
    pub fn by_object_id(object_id: &str) -> Self {
        Self { object_id: Some(object_id.to_string()), ..Default::default() }
    }

    /// A short, stable description such as `displayName=appdev`, for status and messages.
    pub fn describe(&self) -> String {
        match (&self.object_id, &self.display_name, &self.mail_nickname) {
            (Some(id), _, _) => format!("objectId={id}"),
            (_, Some(name), _) => format!("displayName={name}"),
            (_, _, Some(nick)) => format!("mailNickname={nick}"),
            _ => "none".to_string(),
        }
    }
}

impl TeamAccessSpec {
    /// A spec granting `group` every verb on the default resource set in `namespace`,
    /// as the seed does; change the other fields from there.
    pub fn new(group: GroupSelector, namespace: impl Into<String>) -> Self {
        Self {
            group,
            namespace: namespace.into(),
            verbs: Some(vec!["*".into()]),
            rules: None,
            cluster_role: None,
            users: Vec::new(),
            namespace_metadata: None,
            deletion_policy: DeletionPolicy::Delete,
            cluster_user_role: None,
            expires_at: None,
            namespace_profile: None,
            bind: BindMode::Group,
        }
    }
}

impl TeamAccess {
    /// Name shared by the Role and the RoleBinding of this TeamAccess.
    pub fn child_name(&self) -> String {
        format!("teamaccess-{}", kube::ResourceExt::name_any(self))
    }
}
