//! Step 1, validate: policy checks the CRD schema cannot express, because they
//! depend on how the operator is configured rather than on the object alone. It
//! runs first, so an object the policy refuses never costs a directory call.

use std::collections::BTreeSet;

use super::error::Error;
use crate::api::TeamAccess;

/// Namespaces no TeamAccess may target unless the operator is configured otherwise.
pub const DEFAULT_PROTECTED_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "default"];

#[derive(Clone, Debug)]
pub struct Policy {
    pub protected_namespaces: BTreeSet<String>,
}

impl Policy {
    /// The policy from `--protected-namespaces`; the operator's own namespace is
    /// always added, so a team can never be handed the operator's credentials.
    pub fn new(protected: impl IntoIterator<Item = String>, own_namespace: Option<&str>) -> Self {
        let mut protected_namespaces: BTreeSet<String> = protected.into_iter().filter(|n| !n.is_empty()).collect();
        if let Some(ns) = own_namespace {
            protected_namespaces.insert(ns.to_string());
        }
        Self { protected_namespaces }
    }
}

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
    if policy.protected_namespaces.contains(&ta.spec.namespace) {
        return Err(Error::ProtectedNamespace { namespace: ta.spec.namespace.clone() });
    }
    Ok(Validated { ta })
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(DEFAULT_PROTECTED_NAMESPACES.map(String::from), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupSelector, Reason, TeamAccessSpec};

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

    #[test]
    fn the_operators_own_namespace_is_always_protected() {
        let policy = Policy::new(Vec::<String>::new(), Some("teamaccess-system"));
        assert!(validate(&targeting("teamaccess-system"), &policy).is_err());
        assert!(validate(&targeting("kube-system"), &policy).is_ok(), "the configured list replaces the defaults");
    }
}
