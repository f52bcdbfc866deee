//! Step 1b, authorship: the operator grants a spec only when it can name its
//! author and that author could have granted the same by hand.
//!
//! The validating admission policies check authors at write time, but a spec
//! written while they were absent (between an uninstall and a reinstall, say)
//! would be honoured later without this step. The chart's MutatingAdmissionPolicy
//! `<prefix>-authorship` stamps every spec write with `request.userInfo` and its
//! own uid (the epoch); no client can write that uid before the policy exists.
//! So a spec is attributed only when its stamp carries the epoch of the policy in
//! force, and then its author's rights are asked of the API server with
//! SubjectAccessReviews, as Kubernetes would ask them of the author creating the
//! namespace, Role and RoleBinding directly. A spec that is not attributed, or
//! whose author may not grant it, grants nothing new: the pipeline stops before
//! any write, and what was granted for an earlier spec is kept.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::Namespace,
};
use kube::{Api, Client, ResourceExt, api::PostParams, core::PartialObjectMeta};

use super::{apply, build, error::Error};
use crate::api::{
    TeamAccess,
    labels::{self, RBAC_GROUP},
};

/// The fields of a stamp, each an annotation `<prefix>.author.teamaccess.dev/<field>`.
const FIELDS: [&str; 4] = ["user", "uid", "groups", "epoch"];

/// A binding created this long after its policy was re-created on its own: the
/// policy stayed (same uid, same epoch) while it was unbound, so stamps of that
/// epoch may have been written by anyone.
const BINDING_LAG_SECONDS: i64 = 60;

pub fn stamp_key(prefix: &str, field: &str) -> String {
    format!("{prefix}.author.teamaccess.dev/{field}")
}

pub fn policy_name(prefix: &str) -> String {
    format!("{prefix}-authorship")
}

/// A predicate of the controller's watch: the hash of every author stamp on the
/// object (any release's, as the predicate does not know the prefix).
pub fn stamps(ta: &TeamAccess) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ta.annotations().iter().filter(|(k, _)| k.contains(".author.teamaccess.dev/")).for_each(|kv| kv.hash(&mut hasher));
    Some(hasher.finish())
}

/// Who the authorship policy says wrote the spec, and under which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub epoch: String,
}

impl Stamp {
    /// The stamp of the policy `prefix` on `ta`; None when any field is missing.
    pub fn read(ta: &TeamAccess, prefix: &str) -> Option<Self> {
        let annotations = ta.metadata.annotations.as_ref()?;
        let field = |f: &str| annotations.get(&stamp_key(prefix, f)).cloned();
        let [user, uid, groups, epoch] = FIELDS.map(field);
        let groups = groups?;
        Some(Self {
            user: user.filter(|u| !u.is_empty())?,
            uid: uid?,
            groups: groups.split('\n').filter(|g| !g.is_empty()).map(String::from).collect(),
            epoch: epoch.filter(|e| !e.is_empty())?,
        })
    }
}

/// One permission as a SubjectAccessReview asks it (and `kubectl auth can-i` spells it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permission {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub namespace: String,
}

impl Permission {
    fn new(verb: &str, group: &str, resource: &str, namespace: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: String::new(),
            namespace: namespace.into(),
        }
    }

    fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    fn cluster_wide(mut self) -> Self {
        self.namespace.clear();
        self
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.verb == "*" { "use every verb on" } else { &self.verb };
        let group = if self.group.is_empty() { String::new() } else { format!(".{}", self.group) };
        let sub = if self.subresource.is_empty() { String::new() } else { format!("/{}", self.subresource) };
        write!(f, "{verb} {}{group}{sub}", self.resource)?;
        if !self.name.is_empty() {
            write!(f, " named {}", self.name)?;
        }
        if !self.namespace.is_empty() {
            write!(f, " in namespace {}", self.namespace)?;
        }
        Ok(())
    }
}

/// What granting a spec needs: every requirement met, each by one of its
/// alternatives held whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub any_of: Vec<Vec<Permission>>,
}

impl Requirement {
    fn one(permission: Permission) -> Self {
        Self { any_of: vec![vec![permission]] }
    }
}

/// The rights Kubernetes would ask of the author making by hand what the
/// operator makes for `ta`: the RoleBinding (create, and bind on the role it
/// names, or every permission of that role), the Role (escalate, or every
/// permission), the namespace when it is created or relabelled, the Azure
/// Cluster User Role when the operator assigns it, and `use` on the namespace
/// profile it names when that is not the default (`profile`).
pub fn requirements(
    ta: &TeamAccess,
    live_namespace: Option<&PartialObjectMeta<Namespace>>,
    assigns_cluster_user_role: bool,
    profile: Option<&str>,
) -> Vec<Requirement> {
    let ns = ta.spec.namespace.as_str();
    let rbac = RBAC_GROUP;
    let mut needs = vec![Requirement::one(Permission::new("create", rbac, "rolebindings", ns))];
    if let Some(cluster_role) = &ta.spec.cluster_role {
        needs.push(Requirement::one(Permission::new("bind", rbac, "clusterroles", ns).named(cluster_role)));
    }
    if let Some(rules) = build::policy_rules(ta) {
        // Every permission of the Role: apiGroups x resources x verbs (x resourceNames).
        let mut each = Vec::new();
        for rule in &rules {
            let names = rule.resource_names.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| vec![String::new()]);
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        each.extend(names.iter().map(|name| Permission::new(verb, group, resource, ns).named(name)));
                    }
                }
            }
        }
        let escalate_and_bind = vec![
            Permission::new("escalate", rbac, "roles", ns),
            Permission::new("bind", rbac, "roles", ns).named(&ta.child_name()),
        ];
        needs.push(Requirement { any_of: vec![escalate_and_bind, each] });
    }
    match live_namespace {
        None => needs.push(Requirement::one(Permission::new("create", "", "namespaces", ns).named(ns).cluster_wide())),
        Some(live) if relabels(ta, live) => {
            needs.push(Requirement::one(Permission::new("patch", "", "namespaces", ns).named(ns)))
        }
        Some(_) => {}
    }
    if assigns_cluster_user_role && ta.spec.wants_cluster_user_role() {
        needs
            .push(Requirement::one(Permission::new("assign", "teamaccess.dev", "clusteruserroles", "").cluster_wide()));
    }
    if let Some(profile) = profile {
        needs.push(Requirement::one(
            Permission::new("use", "teamaccess.dev", "namespaceprofiles", "").named(profile).cluster_wide(),
        ));
    }
    needs
}

/// Whether the operator would change the labels or annotations of the live
/// namespace to spec.namespaceMetadata's (it does so only for a namespace this
/// TeamAccess created): the same as patching it by hand.
fn relabels(ta: &TeamAccess, live: &PartialObjectMeta<Namespace>) -> bool {
    let owner = ta.name_any();
    if !labels::made_by(&live.metadata, &owner) {
        return false;
    }
    let extra = ta.spec.namespace_metadata.clone().unwrap_or_default();
    let wanted = kube::api::ObjectMeta {
        labels: Some(extra.labels),
        annotations: Some(extra.annotations),
        ..Default::default()
    };
    !apply::carries(&live.metadata, &wanted)
}

/// Why the epoch of the policy in force is not known.
#[derive(Debug)]
pub enum NoEpoch {
    Missing,
    Unbound,
    RecreatedBinding,
    Unreadable(kube::Error),
}

impl std::fmt::Display for NoEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoEpoch::Missing => f.write_str("the authorship policy is not installed"),
            NoEpoch::Unbound => f.write_str("the authorship policy has no binding that uses it"),
            NoEpoch::RecreatedBinding => f.write_str(
                "the authorship policy's binding was re-created long after the policy, so its stamps may have been written while it was unbound; delete and re-create the policy",
            ),
            NoEpoch::Unreadable(e) => write!(f, "the authorship policy cannot be read: {e}"),
        }
    }
}

/// The uid of the authorship policy of `prefix`, when it and its binding are in
/// force and were made together.
pub async fn current_epoch(client: &Client, prefix: &str) -> Result<String, NoEpoch> {
    let name = policy_name(prefix);
    let policy =
        Api::<MutatingAdmissionPolicy>::all(client.clone()).get_opt(&name).await.map_err(NoEpoch::Unreadable)?;
    let binding =
        Api::<MutatingAdmissionPolicyBinding>::all(client.clone()).get_opt(&name).await.map_err(NoEpoch::Unreadable)?;
    let policy = policy.ok_or(NoEpoch::Missing)?;
    let binding = binding.ok_or(NoEpoch::Unbound)?;
    let spec = binding.spec.as_ref();
    let uses_it = spec.and_then(|s| s.policy_name.as_deref()) == Some(name.as_str())
        && spec.and_then(|s| s.param_ref.as_ref()).and_then(|p| p.name.as_deref()) == Some(name.as_str());
    if !uses_it {
        return Err(NoEpoch::Unbound);
    }
    let created = |m: &kube::api::ObjectMeta| m.creation_timestamp.as_ref().map(|t| t.0.as_second());
    if let (Some(p), Some(b)) = (created(&policy.metadata), created(&binding.metadata))
        && b - p > BINDING_LAG_SECONDS
    {
        return Err(NoEpoch::RecreatedBinding);
    }
    policy.uid().ok_or(NoEpoch::Missing)
}

/// Which spec a verdict is about: the object (its uid, as a name can be reused),
/// its generation and the stamp on it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SpecOf {
    uid: String,
    generation: i64,
    stamp: Stamp,
}

/// The permissions each author was found to hold, per TeamAccess: a spec is
/// checked once, and forgotten with its object.
#[derive(Debug, Default)]
pub struct Verified {
    held: Mutex<BTreeMap<String, (SpecOf, HashSet<Permission>)>>,
}

impl Verified {
    fn holds(&self, name: &str, spec: &SpecOf, permission: &Permission) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(name).is_some_and(|(s, set)| s == spec && set.contains(permission))
    }

    fn record(&self, name: &str, spec: &SpecOf, permission: Permission) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held.entry(name.to_string()).or_insert_with(|| (spec.clone(), HashSet::new()));
        if entry.0 != *spec {
            *entry = (spec.clone(), HashSet::new());
        }
        entry.1.insert(permission);
    }

    /// Whether this spec was attributed before (an entry is made only then).
    fn knows(&self, name: &str, spec: &SpecOf) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(name).is_some_and(|(s, _)| s == spec)
    }

    pub fn forget(&self, name: &str) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// Asks the API server whether `stamp`'s author holds `permission`.
async fn allowed(client: &Client, stamp: &Stamp, permission: &Permission) -> Result<bool, Error> {
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(stamp.user.clone()),
            uid: optional(&stamp.uid),
            groups: Some(stamp.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.clone()),
                group: Some(permission.group.clone()),
                resource: Some(permission.resource.clone()),
                subresource: optional(&permission.subresource),
                name: optional(&permission.name),
                namespace: optional(&permission.namespace),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Error::kube("create a subjectaccessreview for the author of a TeamAccess", e))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Whether the author of `ta`'s spec may grant it: Ok when attributed and
/// allowed; AuthorUnverified or AuthorNotAllowed otherwise.
pub async fn verify(
    ta: &TeamAccess,
    prefix: &str,
    needs: &[Requirement],
    client: &Client,
    verified: &Verified,
) -> Result<(), Error> {
    let name = ta.name_any();
    let generation = ta.metadata.generation.unwrap_or_default();
    let unverified = |why: String, policy_missing: bool| Error::AuthorUnverified {
        name: name.clone(),
        generation,
        why,
        policy: policy_name(prefix),
        stamp_key: stamp_key(prefix, "user"),
        policy_missing,
    };
    let Some(stamp) = Stamp::read(ta, prefix) else {
        let why = "no stamp: written before the policy was installed, or while it was absent";
        return Err(unverified(why.into(), false));
    };
    let spec = SpecOf { uid: ta.uid().unwrap_or_default(), generation, stamp };
    let stamp = &spec.stamp;
    if !verified.knows(&name, &spec) {
        let epoch = current_epoch(client, prefix).await.map_err(|e| unverified(e.to_string(), true))?;
        if stamp.epoch != epoch {
            let why =
                "the stamp is of an earlier authorship policy: the spec may have been written while it was absent";
            return Err(unverified(why.into(), false));
        }
    }
    for need in needs {
        let mut first_missing = None;
        let mut met = false;
        for alternative in &need.any_of {
            let mut all = true;
            for permission in alternative {
                if verified.holds(&name, &spec, permission) {
                    continue;
                }
                if allowed(client, stamp, permission).await? {
                    verified.record(&name, &spec, permission.clone());
                } else {
                    first_missing.get_or_insert_with(|| permission.clone());
                    all = false;
                    break;
                }
            }
            if all {
                met = true;
                break;
            }
        }
        if !met {
            let missing = first_missing.map_or_else(String::new, |p| format!("they cannot {p}"));
            return Err(Error::AuthorNotAllowed { author: stamp.user.clone(), missing });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupSelector, TeamAccessSpec};

    fn stamped(fields: &[(&str, &str)]) -> TeamAccess {
        let mut ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "web"));
        ta.metadata.annotations =
            Some(fields.iter().map(|(f, v)| (stamp_key("rel", f), v.to_string())).collect::<BTreeMap<_, _>>());
        ta
    }

    #[test]
    fn a_stamp_needs_every_field_and_splits_groups_on_newlines() {
        let ta = stamped(&[("user", "alice"), ("uid", ""), ("groups", "devs\nsystem:authenticated"), ("epoch", "e1")]);
        let stamp = Stamp::read(&ta, "rel").expect("a stamp");
        assert_eq!(stamp.user, "alice");
        assert_eq!(stamp.groups, ["devs", "system:authenticated"]);
        assert_eq!(stamp.epoch, "e1");
        assert!(Stamp::read(&ta, "other").is_none(), "another release's stamp is not ours");
        let no_epoch = stamped(&[("user", "alice"), ("uid", ""), ("groups", "")]);
        assert!(Stamp::read(&no_epoch, "rel").is_none());
        let no_user = stamped(&[("user", ""), ("uid", ""), ("groups", ""), ("epoch", "e1")]);
        assert!(Stamp::read(&no_user, "rel").is_none());
    }

    #[test]
    fn a_role_is_granted_with_escalate_and_bind_or_every_permission_it_holds() {
        let mut ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "web"));
        ta.spec.verbs = None;
        ta.spec.rules = Some(vec![
            serde_json::from_value(serde_json::json!({
                "apiGroups": ["", "apps"], "resources": ["pods/log", "deployments"], "verbs": ["get", "list"]
            }))
            .unwrap(),
        ]);
        let needs = requirements(&ta, None, false, None);
        assert_eq!(
            needs[0],
            Requirement::one(Permission::new("create", "rbac.authorization.k8s.io", "rolebindings", "web"))
        );
        let role = &needs[1];
        assert_eq!(role.any_of[0].len(), 2, "escalate and bind, together");
        assert_eq!(role.any_of[0][1].name, "teamaccess-web");
        assert_eq!(role.any_of[1].len(), 8, "2 groups x 2 resources x 2 verbs");
        assert!(role.any_of[1].iter().any(|p| p.resource == "pods" && p.subresource == "log" && p.verb == "list"));
        let ns = &needs[2].any_of[0][0];
        assert_eq!((ns.verb.as_str(), ns.name.as_str(), ns.namespace.as_str()), ("create", "web", ""));
        assert_eq!(needs.len(), 3, "no Azure role asked when the operator assigns none");
    }

    #[test]
    fn a_cluster_role_needs_bind_on_it_and_an_existing_namespace_nothing() {
        let mut ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "web"));
        ta.spec.verbs = None;
        ta.spec.cluster_role = Some("admin".into());
        let live = PartialObjectMeta::<Namespace> { metadata: kube::api::ObjectMeta::default(), ..Default::default() };
        let needs = requirements(&ta, Some(&live), true, None);
        assert_eq!(
            needs[1].any_of[0][0].to_string(),
            "bind clusterroles.rbac.authorization.k8s.io named admin in namespace web"
        );
        assert_eq!(needs[2].any_of[0][0].to_string(), "assign clusteruserroles.teamaccess.dev");
        assert_eq!(needs.len(), 3);
    }

    #[test]
    fn a_profile_other_than_the_default_needs_use_on_it() {
        let ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "web"));
        let needs = requirements(&ta, None, false, Some("open"));
        assert_eq!(needs.last().unwrap().any_of[0][0].to_string(), "use namespaceprofiles.teamaccess.dev named open");
        assert_eq!(needs.len(), requirements(&ta, None, false, None).len() + 1);
    }

    #[test]
    fn a_spec_is_remembered_per_generation_and_stamp() {
        let verified = Verified::default();
        let stamp = Stamp { user: "a".into(), uid: String::new(), groups: vec![], epoch: "e".into() };
        let spec = SpecOf { uid: "u".into(), generation: 1, stamp: stamp.clone() };
        let p = Permission::new("get", "", "pods", "web");
        verified.record("web", &spec, p.clone());
        assert!(verified.holds("web", &spec, &p));
        let next = SpecOf { generation: 2, ..spec.clone() };
        assert!(!verified.holds("web", &next, &p), "a new generation is checked again");
        let other = SpecOf { stamp: Stamp { user: "b".into(), ..stamp }, ..spec.clone() };
        assert!(!verified.knows("web", &other), "so is a new author");
        let recreated = SpecOf { uid: "u2".into(), ..spec.clone() };
        assert!(!verified.knows("web", &recreated), "and an object re-created under the same name");
        verified.forget("web");
        assert!(!verified.knows("web", &spec));
    }
}
