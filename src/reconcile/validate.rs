//! Step 1, validate: policy checks the CRD schema cannot express, because they
//! depend on how the operator is configured rather than on the object alone. It
//! runs first, so an object the policy refuses never costs a directory call.

use super::{context::Policy, error::Error};
use crate::api::TeamAccess;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{GroupSelector, Reason, TeamAccessSpec},
        reconcile::context::DEFAULT_PROTECTED_NAMESPACES,
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

    #[test]
    fn the_operators_own_namespace_is_always_protected_and_extra_ones_add_to_the_defaults() {
        let policy = Policy::new(vec![" prod ".to_string()], Some("teamaccess-system"));
        assert!(validate(&targeting("teamaccess-system"), &policy).is_err());
        assert!(validate(&targeting("prod"), &policy).is_err());
        assert!(validate(&targeting("kube-system"), &policy).is_err(), "the defaults stay");
        assert!(validate(&targeting("dev"), &policy).is_ok());
    }
}
