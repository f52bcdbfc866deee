//! The names the operator marks its objects with, and reads them back by: labels,
//! annotations, the field manager of its writes. Every step may import these;
//! they import nothing of the reconcile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The one field manager every server-side apply of the operator uses.
pub const FIELD_MANAGER: &str = "teamaccess-operator";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "teamaccess-operator";
/// Label selector for everything the operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=teamaccess-operator";
/// Names the TeamAccess a child belongs to (names can exceed a label value's 63 characters).
pub const OWNER_ANNOTATION: &str = "teamaccess.dev/owner";
/// On a namespace: the TeamAccess that created it. Its absence on a namespace without
/// our label means the namespace existed before and is never deleted by us.
pub const CREATED_BY_ANNOTATION: &str = "teamaccess.dev/created-by";
/// On a namespace we created: its creator's deletionPolicy. A shared namespace's
/// fate is its creator's to decide, also when another TeamAccess is the last to go.
pub const DELETION_POLICY_ANNOTATION: &str = "teamaccess.dev/deletion-policy";

/// On a namespace a TeamAccess created with a namespace profile, and on the
/// guardrails the profile put in it: the profile's name, and its revision (a
/// hash of its content, so an edited profile is applied again).
pub const PROFILE_ANNOTATION: &str = "teamaccess.dev/namespace-profile";
pub const PROFILE_REVISION_ANNOTATION: &str = "teamaccess.dev/namespace-profile-revision";

/// The API group of Roles, RoleBindings and ClusterRoles.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Whether a namespace was created by this operator.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY)
}

/// The TeamAccess that created a managed namespace.
pub fn created_by(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref().and_then(|a| a.get(CREATED_BY_ANNOTATION)).map(String::as_str)
}

/// The TeamAccess that created a namespace the operator manages: its
/// `created-by` annotation counts only beside our label.
pub fn creator(meta: &ObjectMeta) -> Option<&str> {
    if is_managed(meta) { created_by(meta) } else { None }
}

/// Whether TeamAccess `owner` created the namespace `meta` describes.
pub fn made_by(meta: &ObjectMeta, owner: &str) -> bool {
    creator(meta) == Some(owner)
}

/// The namespace profile a namespace was created with, if any.
pub fn profile_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref().and_then(|a| a.get(PROFILE_ANNOTATION)).map(String::as_str)
}

/// The controller reference of a child to the TeamAccess that made it, if it
/// carries one.
pub fn teamaccess_controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "TeamAccess" && r.api_version.starts_with("teamaccess.dev/"))
}
