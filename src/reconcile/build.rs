//! Step 3, build: the children of a resolved TeamAccess as plain data. No client,
//! no I/O: the business rules live here and are unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};

use super::{default_set::default_rules, members::Bound, profile::Plan, resolve::Resolved};
use crate::api::{
    TeamAccess,
    labels::{
        CREATED_BY_ANNOTATION, DELETION_POLICY_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, RBAC_GROUP,
    },
};

/// Everything the apply step puts in place for one TeamAccess.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The TeamAccess's name and uid: children carry them, and only children
    /// carrying that uid are ever deleted.
    pub owner: String,
    pub owner_uid: Option<String>,
    /// The uids of the children status records as made by us: ours even when
    /// their owner reference or label was stripped.
    pub recorded: Vec<String>,
    /// The namespace as the operator would create it; one that exists and was
    /// not created by this TeamAccess is used as it is.
    pub namespace: Namespace,
    /// None when a ClusterRole is bound instead.
    pub role: Option<Role>,
    /// The name our Role has (or had, before a ClusterRole was bound).
    pub role_name: String,
    pub role_binding: RoleBinding,
    /// The ClusterRole the binding names, which must exist.
    pub cluster_role: Option<String>,
    /// A Role of ours may be left from before spec.clusterRole was set: remove it
    /// once the binding has moved away from it.
    pub remove_role: bool,
    /// Our bindings to a role the TeamAccess no longer names: removed only after
    /// the new binding exists, so access never lapses during a switch.
    pub stale_bindings: Vec<String>,
    /// The namespace profile: applied (its labels are in `namespace`, its
    /// guardrails written before the RoleBinding), or why not.
    pub profile: Plan,
    /// spec.bind Members with more people than one binding holds: the parts of
    /// the binding beyond `role_binding`, written before it (see `members_binding`).
    pub member_parts: Vec<RoleBinding>,
    /// spec.bind Members: the subjects the spec itself names (spec.users). The
    /// rest of the binding's subjects follow the directory, and a change of
    /// them is the directory's act, not the author's (`apply::in_place`).
    pub members_mode_users: Option<Vec<String>>,
}

pub fn build(resolved: &Resolved, profile: Plan, bound: &Bound) -> Desired {
    let ta = resolved.ta;
    let (role_binding, member_parts) = match bound {
        Bound::Group => (build_role_binding(ta, &resolved.group_object_id, &resolved.user_subjects), Vec::new()),
        Bound::Members(members) => members_binding(ta, &members.subjects, &resolved.user_subjects),
    };
    let role = build_role(ta);
    let binding = binding_name(ta);
    let stale_bindings = ta
        .status
        .as_ref()
        .and_then(|s| s.role_binding.clone())
        .filter(|previous| *previous != binding)
        .into_iter()
        .collect();
    Desired {
        role_name: ta.child_name(),
        stale_bindings,
        owner: ta.name_any(),
        owner_uid: ta.metadata.uid.clone(),
        recorded: ta.recorded_children(),
        namespace: build_namespace(ta, &profile),
        remove_role: role.is_none() && ta.status.as_ref().is_some_and(|s| s.role.is_some()),
        role,
        role_binding,
        member_parts,
        cluster_role: ta.spec.cluster_role.clone(),
        profile,
        members_mode_users: matches!(bound, Bound::Members(_)).then(|| resolved.user_subjects.clone()),
    }
}

/// No namespace profile: the namespace as it was made before profiles existed.
pub fn no_profile() -> Plan {
    Plan::Skip(Default::default())
}

/// The rules of the Role, or None when a ClusterRole is bound instead.
pub fn policy_rules(ta: &TeamAccess) -> Option<Vec<PolicyRule>> {
    let spec = &ta.spec;
    if spec.cluster_role.is_some() {
        return None;
    }
    if let Some(rules) = &spec.rules {
        return Some(
            rules
                .iter()
                .map(|r| PolicyRule {
                    api_groups: Some(r.api_groups.clone()),
                    resources: Some(r.resources.clone()),
                    verbs: r.verbs.clone(),
                    resource_names: (!r.resource_names.is_empty()).then(|| r.resource_names.clone()),
                    non_resource_urls: None,
                })
                .collect(),
        );
    }
    Some(default_rules(spec.verbs.as_deref().unwrap_or_default()))
}

/// Metadata of a namespaced child: our label, the owner annotation and an owner
/// reference, so drift is seen through the owner and the garbage collector has a
/// last word should the finalizer ever be removed by hand.
fn child_meta(ta: &TeamAccess) -> ObjectMeta {
    ObjectMeta {
        name: Some(ta.child_name()),
        namespace: Some(ta.spec.namespace.clone()),
        labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())])),
        annotations: Some(BTreeMap::from([(OWNER_ANNOTATION.into(), ta.name_any())])),
        owner_references: ta.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

pub fn build_role(ta: &TeamAccess) -> Option<Role> {
    policy_rules(ta).map(|rules| Role { metadata: child_meta(ta), rules: Some(rules) })
}

/// The RoleBinding's name follows the role it binds: `teamaccess-<name>` for our
/// Role, `teamaccess-<name>-<clusterrole>` for a ClusterRole. roleRef is immutable,
/// so a switch makes a new binding, and the old one goes only once the new one
/// exists. Names over the API's 253 characters use a stable hash of the role.
pub fn binding_name(ta: &TeamAccess) -> String {
    match &ta.spec.cluster_role {
        None => ta.child_name(),
        Some(cluster_role) => {
            let readable = format!("{}-{cluster_role}", ta.child_name());
            if readable.len() <= 253 {
                readable
            } else {
                format!("{}-{:016x}", ta.child_name(), crate::hash::fnv1a(cluster_role))
            }
        }
    }
}

pub fn role_ref(ta: &TeamAccess) -> RoleRef {
    match &ta.spec.cluster_role {
        Some(name) => RoleRef { api_group: Some(RBAC_GROUP.into()), kind: "ClusterRole".into(), name: name.clone() },
        None => RoleRef { api_group: Some(RBAC_GROUP.into()), kind: "Role".into(), name: ta.child_name() },
    }
}

/// spec.bind Group: the group's objectId, then spec.users.
pub fn build_role_binding(ta: &TeamAccess, group_object_id: &str, user_subjects: &[String]) -> RoleBinding {
    let group = Subject {
        kind: "Group".into(),
        api_group: Some(RBAC_GROUP.into()),
        name: group_object_id.to_string(),
        namespace: None,
    };
    let subjects = std::iter::once(group).chain(user_subjects.iter().map(|name| user(name))).collect();
    let metadata = ObjectMeta { name: Some(binding_name(ta)), ..child_meta(ta) };
    RoleBinding { metadata, role_ref: role_ref(ta), subjects: Some(subjects) }
}

/// The most subjects a Members binding holds before it is split: about 400
/// KiB of JSON even at the longest userPrincipalNames (113 characters), well
/// under the 1.5 MiB the API server and etcd take for one object.
pub const SUBJECTS_PER_BINDING: usize = 2_500;
/// A split Members binding is this many RoleBindings: `teamaccess-<name>` and
/// its parts `-members-1` to `-members-4`. Five hold the most people one
/// TeamAccess binds (10,000, and 32 spec.users) at about 2,000 each.
pub const MEMBER_PARTS: usize = 5;

/// spec.bind Members: the group's members, then the spec.users not among them;
/// never the group. Up to `SUBJECTS_PER_BINDING` people are one RoleBinding.
/// More are spread over `MEMBER_PARTS` bindings by a hash of each name, so a
/// person stays in the same binding while others come and go: writing the
/// parts before the main binding (and deleting them after it) never leaves a
/// member in no binding during a change (`apply`).
pub fn members_binding(
    ta: &TeamAccess,
    members: &[String],
    user_subjects: &[String],
) -> (RoleBinding, Vec<RoleBinding>) {
    let extra = user_subjects.iter().filter(|u| members.binary_search(u).is_err());
    let everyone: Vec<&String> = members.iter().chain(extra).collect();
    let binding = |name: String, names: &[&String]| RoleBinding {
        metadata: ObjectMeta { name: Some(name), ..child_meta(ta) },
        role_ref: role_ref(ta),
        subjects: Some(names.iter().map(|n| user(n)).collect()),
    };
    let main = binding_name(ta);
    if everyone.len() <= SUBJECTS_PER_BINDING {
        return (binding(main, &everyone), Vec::new());
    }
    let mut buckets: Vec<Vec<&String>> = vec![Vec::new(); MEMBER_PARTS];
    for name in everyone {
        buckets[(crate::hash::fnv1a(name) % MEMBER_PARTS as u64) as usize].push(name);
    }
    let parts = (1..MEMBER_PARTS).map(|k| binding(part_name(&main, &ta.child_name(), k), &buckets[k])).collect();
    (binding(main, &buckets[0]), parts)
}

/// The name of part `k` of the Members binding named `binding`: a name that
/// `strip_child` caches and `owner_of` maps back to the TeamAccess, within the
/// API's 253 characters.
pub fn part_name(binding: &str, child: &str, k: usize) -> String {
    let readable = format!("{binding}-members-{k}");
    if readable.len() <= 253 { readable } else { format!("{child}-{:016x}-members-{k}", crate::hash::fnv1a(binding)) }
}

fn user(name: &str) -> Subject {
    Subject { kind: "User".into(), api_group: Some(RBAC_GROUP.into()), name: name.to_string(), namespace: None }
}

/// The namespace as we create it: our label, the creator, the user's metadata
/// and the profile's. The profile's keys override namespaceMetadata's (a team
/// lead cannot lower the Pod Security level through it), and our own are set
/// last so neither can disown the namespace.
pub fn build_namespace(ta: &TeamAccess, profile: &Plan) -> Namespace {
    let extra = ta.spec.namespace_metadata.clone().unwrap_or_default();
    let mut labels = extra.labels;
    let mut annotations = extra.annotations;
    if let Plan::Apply(rendered) = profile {
        labels.extend(rendered.labels.clone());
        annotations.extend(rendered.annotations.clone());
    }
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    annotations.insert(CREATED_BY_ANNOTATION.into(), ta.name_any());
    annotations.insert(DELETION_POLICY_ANNOTATION.into(), ta.spec.deletion_policy.as_str().into());
    Namespace {
        metadata: ObjectMeta {
            name: Some(ta.spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels::{created_by, is_managed};
    use crate::{
        api::{AccessRule, GroupSelector, NamespaceMetadata, ResolvedGroup, TeamAccessSpec, TeamAccessStatus},
        reconcile::resolve::GroupReport,
    };

    fn team(name: &str, namespace: &str) -> TeamAccess {
        let mut ta = TeamAccess::new(
            name,
            TeamAccessSpec::new(GroupSelector { display_name: Some("appdev".into()), ..Default::default() }, namespace),
        );
        ta.metadata.uid = Some("0000-uid".into());
        ta
    }

    const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

    fn resolved(ta: &TeamAccess) -> Resolved<'_> {
        Resolved {
            ta,
            group: GroupReport {
                pin: ResolvedGroup { object_id: APPDEV.into(), ..Default::default() },
                security_enabled: true,
                renamed_from: None,
            },
            group_object_id: APPDEV.into(),
            user_subjects: vec![],
            missing_users: vec![],
        }
    }

    #[test]
    fn verbs_build_the_default_set_in_a_role_named_after_the_teamaccess() {
        let role = build_role(&team("appdev-dev", "dev")).unwrap();
        let rules = role.rules.unwrap();
        assert_eq!(rules, default_rules(&["*".to_string()]));
        assert_eq!(rules[1].api_groups.as_deref().unwrap(), ["extensions", "apps"]);
        assert_eq!(rules[1].resources.as_deref().unwrap(), ["*"]);
        assert_eq!(rules[2].api_groups.as_deref().unwrap(), ["batch"]);
        assert_eq!(rules[2].resources.as_deref().unwrap(), ["jobs", "cronjobs"]);
        assert_eq!(role.metadata.name.as_deref(), Some("teamaccess-appdev-dev"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("dev"));
    }

    #[test]
    fn rules_replace_the_default_resource_set() {
        let mut ta = team("view-pods", "dev");
        ta.spec.verbs = None;
        ta.spec.rules = Some(vec![AccessRule {
            api_groups: vec!["".into()],
            resources: vec!["pods".into()],
            verbs: vec!["get".into(), "list".into()],
            resource_names: vec![],
        }]);
        let rules = build_role(&ta).unwrap().rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources.as_deref().unwrap(), ["pods"]);
        assert_eq!(rules[0].resource_names, None);
    }

    #[test]
    fn a_cluster_role_means_no_role_and_a_binding_to_the_cluster_role() {
        let mut ta = team("editors", "dev");
        ta.spec.verbs = None;
        ta.spec.cluster_role = Some("edit".into());
        assert!(build_role(&ta).is_none());
        let rb = build_role_binding(&ta, APPDEV, &[]);
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, "edit");
    }

    #[test]
    fn the_binding_names_the_group_by_object_id_and_is_owned_by_the_teamaccess() {
        let ta = team("appdev-dev", "dev");
        let rb = build_role_binding(&ta, APPDEV, &["aksdev@contoso.com".into()]);
        let subjects = rb.subjects.unwrap();
        assert_eq!(subjects[0].kind, "Group");
        assert_eq!(subjects[0].name, "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01");
        assert_eq!(subjects[1].kind, "User");
        assert_eq!(subjects[1].name, "aksdev@contoso.com");
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(rb.role_ref.name, "teamaccess-appdev-dev");
        let owner = &rb.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("TeamAccess", "0000-uid"));
        assert_eq!(owner.controller, Some(true));
        assert_eq!(rb.metadata.labels.unwrap()[MANAGED_BY_LABEL], MANAGED_BY);
    }

    #[test]
    fn namespace_metadata_cannot_remove_our_marks() {
        let mut ta = team("appdev-dev", "dev");
        ta.spec.namespace_metadata = Some(NamespaceMetadata {
            labels: BTreeMap::from([
                ("team".into(), "appdev".into()),
                (MANAGED_BY_LABEL.into(), "someone-else".into()),
            ]),
            annotations: BTreeMap::new(),
        });
        let ns = build_namespace(&ta, &no_profile());
        assert!(is_managed(&ns.metadata));
        assert_eq!(created_by(&ns.metadata), Some("appdev-dev"));
        assert_eq!(ns.metadata.labels.unwrap()["team"], "appdev");
    }

    #[test]
    fn a_role_left_from_before_a_cluster_role_is_removed_and_only_then() {
        let mut ta = team("editors", "dev");
        let desired = build(&resolved(&ta), no_profile(), &Bound::Group);
        assert!(desired.role.is_some() && !desired.remove_role);

        ta.spec.verbs = None;
        ta.spec.cluster_role = Some("edit".into());
        let desired = build(&resolved(&ta), no_profile(), &Bound::Group);
        assert_eq!((desired.role.is_none(), desired.remove_role), (true, false), "no Role was ever made");
        assert_eq!(desired.cluster_role.as_deref(), Some("edit"));

        ta.status = Some(TeamAccessStatus { role: Some("teamaccess-editors".into()), ..Default::default() });
        assert!(build(&resolved(&ta), no_profile(), &Bound::Group).remove_role, "status says our Role is still there");
    }

    #[test]
    fn the_desired_children_carry_the_owner_and_the_resolved_subjects() {
        let ta = team("appdev-dev", "dev");
        let mut r = resolved(&ta);
        r.user_subjects = vec!["aksdev@contoso.com".into()];
        let desired = build(&r, no_profile(), &Bound::Group);
        assert_eq!((desired.owner.as_str(), desired.owner_uid.as_deref()), ("appdev-dev", Some("0000-uid")));
        let names: Vec<&str> = desired.role_binding.subjects.iter().flatten().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [APPDEV, "aksdev@contoso.com"]);
        assert_eq!(desired.namespace.metadata.name.as_deref(), Some("dev"));
    }

    #[test]
    fn the_binding_is_named_after_the_role_it_binds() {
        let mut ta = team("appdev-dev", "dev");
        assert_eq!(binding_name(&ta), "teamaccess-appdev-dev");
        ta.spec.verbs = None;
        ta.spec.cluster_role = Some("edit".into());
        assert_eq!(binding_name(&ta), "teamaccess-appdev-dev-edit");
        assert_eq!(build_role_binding(&ta, APPDEV, &[]).metadata.name.as_deref(), Some("teamaccess-appdev-dev-edit"));
        ta.spec.cluster_role = Some("x".repeat(253));
        let long = binding_name(&ta);
        assert!(long.len() <= 253 && long.starts_with("teamaccess-appdev-dev-"), "{long}");
        assert_eq!(long, binding_name(&ta), "stable");
    }

    #[test]
    fn a_switch_of_role_marks_the_previous_binding_stale() {
        let mut ta = team("appdev-dev", "dev");
        ta.status = Some(TeamAccessStatus { role_binding: Some("teamaccess-appdev-dev".into()), ..Default::default() });
        assert!(build(&resolved(&ta), no_profile(), &Bound::Group).stale_bindings.is_empty(), "unchanged");
        ta.spec.verbs = None;
        ta.spec.cluster_role = Some("edit".into());
        let desired = build(&resolved(&ta), no_profile(), &Bound::Group);
        assert_eq!(desired.stale_bindings, ["teamaccess-appdev-dev"]);
        assert_eq!(desired.role_binding.metadata.name.as_deref(), Some("teamaccess-appdev-dev-edit"));
    }

    #[test]
    fn a_members_binding_splits_past_its_size_and_keeps_each_person_in_one_place() {
        let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id(APPDEV), "dev");
        spec.bind = crate::api::BindMode::Members;
        let ta = TeamAccess::new("appdev-dev", spec);
        let people = |n: usize| -> Vec<String> {
            let mut p: Vec<String> = (0..n).map(|i| format!("user{i}@contoso.com")).collect();
            p.sort();
            p
        };
        let names =
            |rb: &RoleBinding| -> Vec<String> { rb.subjects.iter().flatten().map(|s| s.name.clone()).collect() };

        let (main, parts) = members_binding(&ta, &people(SUBJECTS_PER_BINDING - 1), &["ops@contoso.com".into()]);
        assert!(parts.is_empty(), "up to the size (spec.users included), one binding");
        assert_eq!(main.subjects.as_ref().unwrap().len(), SUBJECTS_PER_BINDING);
        assert_eq!(members_binding(&ta, &people(SUBJECTS_PER_BINDING + 1), &[]).1.len(), MEMBER_PARTS - 1);
        assert!(main.subjects.iter().flatten().all(|s| s.kind == "User"), "never the group");

        let (main, parts) = members_binding(&ta, &people(10_000), &[]);
        assert_eq!(parts.len(), MEMBER_PARTS - 1);
        assert_eq!(parts[0].metadata.name.as_deref(), Some("teamaccess-appdev-dev-members-1"));
        let sizes: Vec<usize> = std::iter::once(&main).chain(&parts).map(|rb| names(rb).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000, "everyone, once: {sizes:?}");
        assert!(sizes.iter().all(|n| *n <= SUBJECTS_PER_BINDING), "{sizes:?}");
        // Someone joining moves nobody else to another binding.
        let mut more = people(10_000);
        more.push("zed@contoso.com".into());
        let (main2, parts2) = members_binding(&ta, &more, &[]);
        let moved = std::iter::once((&main, &main2))
            .chain(parts.iter().zip(&parts2))
            .map(|(a, b)| names(a).iter().filter(|n| !names(b).contains(n)).count())
            .sum::<usize>();
        assert_eq!(moved, 0);
        // Parts follow the binding's name, within the API's limit.
        assert_eq!(part_name("teamaccess-x-edit", "teamaccess-x", 2), "teamaccess-x-edit-members-2");
        let long = format!("teamaccess-x-{}", "r".repeat(240));
        assert!(part_name(&long, "teamaccess-x", 4).len() <= 253);
    }
}
