//! Step 1, validate: policy checks the CRD schema cannot express, because they
//! depend on how the operator is configured rather than on the object alone. It
//! runs first, so an object the policy refuses never costs a directory call.

use super::{error::Error, policy::Policy};
use crate::api::{AccessRule, TeamAccess, labels::RBAC_GROUP};

/// A TeamAccess the policy admits; only `validate` makes one, so a later step
/// that takes it cannot run on an object the policy refused.
#[derive(Clone, Copy, Debug)]
pub struct Validated<'a> {
    ta: &'a TeamAccess,
}

impl<'a> Validated<'a> {
    pub fn ta(&self) -> &'a TeamAccess {
        self.ta
    }
}

pub fn validate<'a>(ta: &'a TeamAccess, policy: &Policy) -> Result<Validated<'a>, Error> {
    let spec = &ta.spec;
    if policy.protected_namespaces.contains(&spec.namespace) {
        return Err(Error::ProtectedNamespace { namespace: spec.namespace.clone() });
    }
    if let Some(name) = &spec.cluster_role
        && !policy.allowed_cluster_roles.contains(name)
    {
        let allowed = policy.allowed_cluster_roles.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        let allowed = if allowed.is_empty() { "none".to_string() } else { allowed };
        return Err(Error::ClusterRoleNotAllowed { name: name.clone(), allowed });
    }
    if !policy.allow_escalating_rules {
        for (index, rule) in spec.rules.iter().flatten().enumerate() {
            if let Some(why) = escalating(rule) {
                return Err(Error::RuleNotAllowed { index, rule: describe(rule), why });
            }
        }
    }
    Ok(Validated { ta })
}

/// Resources whose objects can be impersonated: a rule granting `impersonate`
/// (or every verb) on them lets the team act as those identities.
const IMPERSONABLE: [(&str, &str); 5] = [
    ("", "serviceaccounts"),
    ("", "users"),
    ("", "groups"),
    ("authentication.k8s.io", "userextras"),
    ("authentication.k8s.io", "uids"),
];

/// Why a rule would let the team widen access beyond the namespace's objects:
/// its own (RBAC objects, escalate, bind) or someone else's (impersonate). Judged
/// by meaning, not spelling: `*` verbs hold escalate, bind and impersonate, and
/// `*` resources hold serviceaccounts, users and groups.
fn escalating(rule: &AccessRule) -> Option<String> {
    if rule.api_groups.iter().any(|g| g == "*") {
        return Some("names every API group (*), the RBAC group included".into());
    }
    if rule.api_groups.iter().any(|g| g == RBAC_GROUP) {
        return Some(format!(
            "names the {RBAC_GROUP} API group: the team could change Roles and RoleBindings, its own access included"
        ));
    }
    if let Some(verb) = rule.verbs.iter().find(|v| matches!(v.as_str(), "escalate" | "bind" | "impersonate")) {
        return Some(if verb == "impersonate" {
            "grants impersonate: the team could act as other users and service accounts".into()
        } else {
            format!("grants {verb}: the team could hand out permissions it does not hold")
        });
    }
    if !rule.verbs.iter().any(|v| v == "*") {
        return None;
    }
    let impersonable = IMPERSONABLE.iter().find(|(group, resource)| {
        rule.api_groups.iter().any(|g| g == group) && rule.resources.iter().any(|r| r == "*" || r == resource)
    })?;
    let (group, resource) = impersonable;
    let named = if rule.resources.iter().any(|r| r == resource) {
        format!("verbs * on {resource}")
    } else {
        let group = if group.is_empty() { "the core group".to_string() } else { format!("API group {group}") };
        format!("verbs * on every resource of {group}, {resource} included,")
    };
    Some(format!(
        "grants {named} which includes impersonate: the team could act as other users and service accounts. \
         List the verbs it needs instead of *"
    ))
}

/// A rule as a user wrote it, for messages: `apiGroups=[""] resources=[pods] verbs=[get]`.
fn describe(rule: &AccessRule) -> String {
    let list = |items: &[String]| {
        items.iter().map(|i| if i.is_empty() { "\"\"".to_string() } else { i.clone() }).collect::<Vec<_>>().join(",")
    };
    format!(
        "apiGroups=[{}] resources=[{}] verbs=[{}]",
        list(&rule.api_groups),
        list(&rule.resources),
        list(&rule.verbs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{GroupSelector, Reason, TeamAccessSpec},
        reconcile::policy::DEFAULT_PROTECTED_NAMESPACES,
    };

    fn targeting(namespace: &str) -> TeamAccess {
        TeamAccess::new(
            "t",
            TeamAccessSpec {
                verbs: Some(vec!["get".into()]),
                ..TeamAccessSpec::new(GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"), namespace)
            },
        )
    }

    #[test]
    fn system_namespaces_are_refused_by_default() {
        let policy = Policy::default();
        for ns in DEFAULT_PROTECTED_NAMESPACES {
            let err = validate(&targeting(ns), &policy).unwrap_err();
            assert_eq!(err.reason(), Reason::ProtectedNamespace);
            assert!(err.to_string().contains(ns));
        }
        assert!(validate(&targeting("dev"), &policy).is_ok());
    }

    fn with_rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> TeamAccess {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut ta = targeting("dev");
        ta.spec.verbs = None;
        ta.spec.rules = Some(vec![
            AccessRule {
                api_groups: strings(&[""]),
                resources: strings(&["pods"]),
                verbs: strings(&["get"]),
                resource_names: vec![],
            },
            AccessRule {
                api_groups: strings(groups),
                resources: strings(resources),
                verbs: strings(verbs),
                resource_names: vec![],
            },
        ]);
        ta
    }

    #[test]
    fn only_allowed_cluster_roles_are_bound() {
        let mut ta = targeting("dev");
        ta.spec.verbs = None;
        for (name, ok) in [("view", true), ("edit", true), ("admin", true), ("cluster-admin", false)] {
            ta.spec.cluster_role = Some(name.into());
            let result = validate(&ta, &Policy::default());
            assert_eq!(result.is_ok(), ok, "{name}");
            if let Err(e) = result {
                assert_eq!(e.reason(), Reason::ClusterRoleNotAllowed);
                let message = e.to_string();
                assert!(
                    message.contains("cluster-admin")
                        && message.contains("(--allowed-cluster-roles: admin, edit, view)"),
                    "{message}"
                );
            }
        }
        let policy = Policy::default().with_allowed_cluster_roles([" cluster-admin ".to_string(), String::new()]);
        assert!(validate(&ta, &policy).is_ok());
        ta.spec.cluster_role = Some("view".into());
        let err = validate(&ta, &policy).unwrap_err();
        assert!(err.to_string().contains("(--allowed-cluster-roles: cluster-admin)"), "{err}");
        let err = validate(&ta, &Policy::default().with_allowed_cluster_roles([])).unwrap_err();
        assert!(err.to_string().contains("--allowed-cluster-roles: none"), "{err}");
    }

    #[test]
    fn rules_that_could_widen_access_are_refused_unless_allowed() {
        let cases = [
            (with_rule(&["rbac.authorization.k8s.io"], &["*"], &["*"]), "rbac.authorization.k8s.io API group"),
            (with_rule(&["*"], &["pods"], &["get"]), "every API group"),
            (with_rule(&[""], &["serviceaccounts"], &["impersonate"]), "grants impersonate"),
            (with_rule(&["example.com"], &["widgets"], &["get", "escalate"]), "grants escalate"),
            (with_rule(&["example.com"], &["widgets"], &["bind"]), "grants bind"),
        ];
        for (ta, why) in &cases {
            let err = validate(ta, &Policy::default()).unwrap_err();
            assert_eq!(err.reason(), Reason::RuleNotAllowed);
            let message = err.to_string();
            assert!(message.starts_with("spec.rules[1] (apiGroups=["), "the message names the rule: {message}");
            assert!(message.contains(why) && message.contains("--allow-escalating-rules"), "{message}");
            assert!(validate(ta, &Policy::default().with_escalating_rules(true)).is_ok());
        }
        // By meaning: "*" holds impersonate, and "*" resources hold serviceaccounts.
        for (ta, why) in [
            (with_rule(&[""], &["serviceaccounts"], &["*"]), "verbs * on serviceaccounts which includes impersonate"),
            (with_rule(&[""], &["*"], &["*"]), "every resource of the core group, serviceaccounts included"),
            (with_rule(&["authentication.k8s.io"], &["*"], &["*"]), "API group authentication.k8s.io, userextras"),
            (with_rule(&["", "apps"], &["users"], &["*"]), "verbs * on users"),
        ] {
            let err = validate(&ta, &Policy::default()).unwrap_err();
            assert_eq!(err.reason(), Reason::RuleNotAllowed);
            assert!(err.to_string().contains(why), "{err}");
            assert!(validate(&ta, &Policy::default().with_escalating_rules(true)).is_ok());
        }
        assert!(validate(&with_rule(&["apps"], &["*"], &["*"]), &Policy::default()).is_ok(), "no identities in apps");
        assert!(validate(&with_rule(&[""], &["serviceaccounts"], &["get"]), &Policy::default()).is_ok());
        let ordinary = with_rule(&["", "apps"], &["pods", "deployments/scale"], &["*"]);
        assert!(validate(&ordinary, &Policy::default()).is_ok(), "* verbs on workload resources are fine");
        let everything = with_rule(&["*"], &["*"], &["*"]);
        let err = validate(&everything, &Policy::default()).unwrap_err();
        assert!(err.to_string().contains(r#"apiGroups=[*] resources=[*] verbs=[*]"#), "{err}");
        let rbac_read = with_rule(&["", "rbac.authorization.k8s.io"], &["roles"], &["get"]);
        let err = validate(&rbac_read, &Policy::default()).unwrap_err();
        assert!(err.to_string().contains(r#"apiGroups=["",rbac.authorization.k8s.io]"#), "{err}");
    }

    #[test]
    fn the_operators_own_namespace_is_always_protected_and_extra_ones_add_to_the_defaults() {
        let policy = Policy::new(vec![" prod ".to_string()], Some("teamaccess-system"));
        assert!(validate(&targeting("teamaccess-system"), &policy).is_err());
        assert!(validate(&targeting("prod"), &policy).is_err());
        assert!(validate(&targeting("kube-system"), &policy).is_err(), "the defaults stay");
        assert!(validate(&targeting("dev"), &policy).is_ok());
    }
}
