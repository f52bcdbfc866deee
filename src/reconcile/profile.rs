//! The namespace profile of a TeamAccess: which one it gets (after validate,
//! before the directory: a profile the operator does not know costs no lookup),
//! and, during apply, its guardrails kept in the namespace the TeamAccess
//! created: written before the RoleBinding, so the team never sees its
//! namespace without them, and put back when deleted or changed. The decisions
//! are pure functions; `keep_guardrails` only carries them out.

use std::fmt::Debug;

use k8s_openapi::api::{
    core::v1::{LimitRange, ResourceQuota},
    networking::v1::NetworkPolicy,
};
use kube::{Api, Client, Resource, ResourceExt, api::DeleteParams};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    caches::{Caches, SpecForms},
    context::Settings,
    error::Error,
    write::server_side_apply,
};
use crate::{
    api::{
        TeamAccess,
        labels::{self, PROFILE_REVISION_ANNOTATION},
    },
    profiles::render::{self, EGRESS_POLICY_NAME, INGRESS_POLICY_NAME, LIMIT_RANGE_NAME, QUOTA_NAME, Rendered},
};

/// The profile `ta` gets, rendered for its namespace; None when it names none
/// and none is the default (or no profiles are configured).
pub fn choose(ta: &TeamAccess, settings: &Settings) -> Result<Option<Rendered>, Error> {
    let asked = ta.spec.namespace_profile.as_deref();
    let Some(profiles) = &settings.namespace_profiles else {
        return match asked {
            Some(name) => Err(Error::ProfileNotFound { name: name.into(), known: Vec::new() }),
            None => Ok(None),
        };
    };
    let file = profiles.current();
    match file.choose(asked) {
        Ok(chosen) => Ok(chosen.map(|c| render::render(&c, &ta.spec.namespace))),
        Err(missing) => Err(Error::ProfileNotFound { name: missing.name, known: missing.known }),
    }
}

/// The profile `ta` names when choosing it needs `use` on
/// namespaceprofiles/<name>: any but the configured default.
pub fn needing_use(ta: &TeamAccess, settings: &Settings) -> Option<String> {
    let asked = ta.spec.namespace_profile.as_deref()?;
    let default = settings.namespace_profiles.as_ref().and_then(|p| p.current().default.clone());
    (default.as_deref() != Some(asked)).then(|| asked.to_string())
}

/// The namespace's profile as the apply left it, for status.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ProfileState {
    /// No profile asked for and none in force.
    #[default]
    None,
    /// The namespace this TeamAccess created carries its profile; `restored`
    /// names the guardrails that had been deleted or changed and were put back.
    Applied { name: String, restored: Vec<String> },
    /// The namespace is not this TeamAccess's to set: it existed before
    /// (`creator` None) or another TeamAccess created it with `in_force`.
    NotOurs { wanted: Option<String>, creator: Option<String>, in_force: Option<String> },
    /// This TeamAccess created the namespace before namespace profiles were
    /// configured: the default is not applied to it unless spec.namespaceProfile asks.
    Predates { wanted: String },
}

impl ProfileState {
    /// The profile in force on the namespace.
    pub fn in_force(&self) -> Option<&str> {
        match self {
            ProfileState::None | ProfileState::Predates { .. } => None,
            ProfileState::Applied { name, .. } => Some(name),
            ProfileState::NotOurs { in_force, .. } => in_force.as_deref(),
        }
    }
}

/// Whether the chosen profile is applied to the namespace, decided from the
/// cached namespace before anything is built: only to a namespace this
/// TeamAccess creates or created. One it created before namespace profiles
/// were configured keeps going without one until its TeamAccess names a
/// profile: a chart upgrade that brings a default profile does not lower the
/// ceiling on the running namespaces of every team at once.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Apply(Box<Rendered>),
    Skip(ProfileState),
}

pub fn plan(chosen: Option<Rendered>, ta: &TeamAccess, live: Option<&kube::api::ObjectMeta>) -> Plan {
    let Some(rendered) = chosen else {
        return Plan::Skip(match live {
            Some(meta) if !labels::made_by(meta, &ta.name_any()) => not_ours(None, Some(meta)),
            _ => ProfileState::None,
        });
    };
    match live {
        None => Plan::Apply(Box::new(rendered)),
        Some(meta) if !labels::made_by(meta, &ta.name_any()) => Plan::Skip(not_ours(Some(&rendered), Some(meta))),
        Some(meta) if labels::profile_of(meta).is_none() && ta.spec.namespace_profile.is_none() => {
            Plan::Skip(ProfileState::Predates { wanted: rendered.name })
        }
        Some(_) => Plan::Apply(Box::new(rendered)),
    }
}

/// What to do about one guardrail, given the cached one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardrailWrite {
    Skip,
    /// Missing or drifted: server-side applied (created, or put back).
    Apply,
    /// The profile no longer has it.
    Delete,
}

/// `live_spec` and `live_revision` are the cached object's spec (as JSON) and
/// its revision annotation; `rendered` the spec the profile wants and its
/// revision. The spec decides, whatever the annotations say: anyone who may
/// edit the object may also copy our annotation onto their own spec.
pub fn guardrail_action(
    kind: &str,
    live: Option<(&serde_json::Value, Option<&str>)>,
    rendered: Option<(&serde_json::Value, &str)>,
    forms: &SpecForms,
) -> GuardrailWrite {
    match (live, rendered) {
        (None, None) => GuardrailWrite::Skip,
        (Some(_), None) => GuardrailWrite::Delete,
        (None, Some(_)) => GuardrailWrite::Apply,
        (Some((live_spec, live_revision)), Some((spec, revision))) => {
            if live_revision == Some(revision) && forms.matches(kind, spec, live_spec) {
                GuardrailWrite::Skip
            } else {
                GuardrailWrite::Apply
            }
        }
    }
}

/// Whether writing a guardrail puts back what someone took away, rather than
/// creating it or bringing it to an edited profile: it carried (or, when gone,
/// the namespace carried) this very revision before.
pub fn is_restore(live_revision: Option<&str>, namespace_revision: Option<&str>, revision: &str) -> bool {
    match live_revision {
        Some(live) => live == revision,
        None => namespace_revision == Some(revision),
    }
}

/// Keeps the guardrails of `rendered` in `namespace`, which this TeamAccess
/// created. `namespace_revision` is the profile revision the namespace carried
/// before this reconcile (None when it was just created). Returns the
/// guardrails that were put back.
pub async fn keep_guardrails(
    rendered: &Rendered,
    namespace: &str,
    namespace_revision: Option<&str>,
    client: &Client,
    caches: &Caches,
) -> Result<Vec<String>, Error> {
    let stores = &caches.guardrails;
    let forms = &caches.spec_forms;
    let g = &rendered.guardrails;
    let context = Guard { client, namespace, namespace_revision, revision: &rendered.revision, forms };
    let mut restored = Vec::new();
    restored.extend(context.keep(QUOTA_NAME, stores.quota(namespace, QUOTA_NAME), g.quota.as_ref(), quota_spec).await?);
    restored.extend(
        context
            .keep(LIMIT_RANGE_NAME, stores.limit_range(namespace, LIMIT_RANGE_NAME), g.limits.as_ref(), limits_spec)
            .await?,
    );
    for (name, wanted) in [(INGRESS_POLICY_NAME, g.ingress.as_ref()), (EGRESS_POLICY_NAME, g.egress.as_ref())] {
        restored.extend(context.keep(name, stores.network_policy(namespace, name), wanted, policy_spec).await?);
    }
    Ok(restored)
}

fn quota_spec(q: &ResourceQuota) -> serde_json::Value {
    serde_json::to_value(&q.spec).unwrap_or_default()
}

fn limits_spec(l: &LimitRange) -> serde_json::Value {
    serde_json::to_value(&l.spec).unwrap_or_default()
}

fn policy_spec(p: &NetworkPolicy) -> serde_json::Value {
    serde_json::to_value(&p.spec).unwrap_or_default()
}

/// What every guardrail write of one namespace shares.
struct Guard<'a> {
    client: &'a Client,
    namespace: &'a str,
    namespace_revision: Option<&'a str>,
    revision: &'a str,
    forms: &'a SpecForms,
}

impl Guard<'_> {
    /// Carries out `guardrail_action` for one guardrail; returns a description
    /// of it when it was put back.
    async fn keep<K>(
        &self,
        name: &str,
        live: Option<K>,
        wanted: Option<&K>,
        spec: fn(&K) -> serde_json::Value,
    ) -> Result<Option<String>, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let kind = K::kind(&()).to_string();
        let live_revision = live.as_ref().and_then(|l| l.annotations().get(PROFILE_REVISION_ANNOTATION).cloned());
        let live_spec = live.as_ref().map(spec);
        let wanted_spec = wanted.map(spec);
        let action = guardrail_action(
            &kind,
            live_spec.as_ref().map(|s| (s, live_revision.as_deref())),
            wanted_spec.as_ref().map(|s| (s, self.revision)),
            self.forms,
        );
        let api = Api::<K>::namespaced(self.client.clone(), self.namespace);
        let what = format!("{kind} {}/{name}", self.namespace);
        match (action, wanted, wanted_spec) {
            (GuardrailWrite::Skip, ..) => Ok(None),
            (GuardrailWrite::Delete, ..) => match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
                Err(e) => Err(Error::kube(format!("delete {what}"), e)),
            },
            (GuardrailWrite::Apply, Some(wanted), Some(rendered)) => {
                let written =
                    server_side_apply(&api, name, wanted).await.map_err(|e| Error::kube(format!("apply {what}"), e))?;
                self.forms.learn(&kind, &rendered, spec(&written));
                let restored = is_restore(live_revision.as_deref(), self.namespace_revision, self.revision);
                Ok(restored.then_some(what))
            }
            (GuardrailWrite::Apply, ..) => Ok(None),
        }
    }
}

/// The profile state of a namespace this TeamAccess did not create, from the
/// cached namespace: who created it and with which profile.
pub fn not_ours(wanted: Option<&Rendered>, live: Option<&kube::api::ObjectMeta>) -> ProfileState {
    ProfileState::NotOurs {
        wanted: wanted.map(|r| r.name.clone()),
        creator: live.and_then(labels::creator).map(String::from),
        // Like the creator, the profile annotation counts only beside our label.
        in_force: live.filter(|meta| labels::is_managed(meta)).and_then(labels::profile_of).map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chosen() -> Option<Rendered> {
        let file = crate::profiles::ProfilesFile::parse("default: standard\nprofiles: {standard: {}}\n").unwrap();
        file.choose(None).unwrap().map(|c| render::render(&c, "dev"))
    }

    fn namespace(creator: &str, profile: Option<&str>) -> kube::api::ObjectMeta {
        let mut annotations =
            std::collections::BTreeMap::from([(labels::CREATED_BY_ANNOTATION.to_string(), creator.to_string())]);
        if let Some(profile) = profile {
            annotations.insert(labels::PROFILE_ANNOTATION.into(), profile.into());
        }
        kube::api::ObjectMeta {
            labels: Some([(labels::MANAGED_BY_LABEL.to_string(), labels::MANAGED_BY.to_string())].into()),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    #[test]
    fn a_profile_is_applied_only_to_a_namespace_this_teamaccess_creates_or_created_with_one() {
        use crate::api::{GroupSelector, TeamAccessSpec};
        let mut ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev"));
        assert!(matches!(plan(chosen(), &ta, None), Plan::Apply(_)), "created now");
        assert!(matches!(plan(chosen(), &ta, Some(&namespace("web", Some("standard")))), Plan::Apply(_)));
        assert_eq!(
            plan(chosen(), &ta, Some(&namespace("web", None))),
            Plan::Skip(ProfileState::Predates { wanted: "standard".into() }),
            "made before profiles: the default is not applied on its own"
        );
        assert!(matches!(plan(chosen(), &ta, Some(&namespace("other", Some("open")))), Plan::Skip(_)));
        assert_eq!(
            plan(None, &ta, Some(&namespace("other", Some("open")))),
            Plan::Skip(ProfileState::NotOurs {
                wanted: None,
                creator: Some("other".into()),
                in_force: Some("open".into())
            })
        );
        assert_eq!(plan(None, &ta, Some(&namespace("web", None))), Plan::Skip(ProfileState::None));
        ta.spec.namespace_profile = Some("standard".into());
        assert!(matches!(plan(chosen(), &ta, Some(&namespace("web", None))), Plan::Apply(_)), "named: applied");
    }

    #[test]
    fn a_guardrail_is_written_when_missing_or_drifted_and_removed_when_the_profile_drops_it() {
        let forms = SpecForms::default();
        let spec = json!({"hard": {"pods": "10"}});
        let want = Some((&spec, "r1"));
        assert_eq!(guardrail_action("ResourceQuota", None, want, &forms), GuardrailWrite::Apply);
        assert_eq!(guardrail_action("ResourceQuota", Some((&spec, Some("r1"))), want, &forms), GuardrailWrite::Skip);
        let loosened = json!({"hard": {"pods": "1000"}});
        assert_eq!(
            guardrail_action("ResourceQuota", Some((&loosened, Some("r1"))), want, &forms),
            GuardrailWrite::Apply,
            "our annotation on another spec is not ours"
        );
        assert_eq!(
            guardrail_action("ResourceQuota", Some((&spec, Some("r0"))), want, &forms),
            GuardrailWrite::Apply,
            "an edited profile"
        );
        assert_eq!(guardrail_action("ResourceQuota", Some((&spec, Some("r1"))), None, &forms), GuardrailWrite::Delete);
        assert_eq!(guardrail_action("ResourceQuota", None, None, &forms), GuardrailWrite::Skip);
    }

    #[test]
    fn the_servers_form_of_a_spec_we_wrote_counts_as_in_place_and_only_for_that_spec() {
        let forms = SpecForms::default();
        let rendered = json!({"hard": {"cpu": "1000m"}});
        let server = json!({"hard": {"cpu": "1"}});
        let live = Some((&server, Some("r1")));
        assert_eq!(guardrail_action("ResourceQuota", live, Some((&rendered, "r1")), &forms), GuardrailWrite::Apply);
        forms.learn("ResourceQuota", &rendered, server.clone());
        assert_eq!(guardrail_action("ResourceQuota", live, Some((&rendered, "r1")), &forms), GuardrailWrite::Skip);
        assert_eq!(
            guardrail_action("LimitRange", live, Some((&rendered, "r1")), &forms),
            GuardrailWrite::Apply,
            "learned per kind"
        );
    }

    #[test]
    fn a_restore_puts_back_the_revision_that_was_there() {
        assert!(is_restore(Some("r1"), None, "r1"), "changed in place");
        assert!(is_restore(None, Some("r1"), "r1"), "deleted from a namespace that had this revision");
        assert!(!is_restore(None, None, "r1"), "first written");
        assert!(!is_restore(Some("r0"), Some("r0"), "r1"), "the profile was edited");
    }

    #[test]
    fn a_namespace_not_ours_reports_its_creator_and_profile_only_when_an_operator_made_it() {
        let meta = |managed: bool| kube::api::ObjectMeta {
            labels: managed.then(|| {
                [(labels::MANAGED_BY_LABEL.to_string(), labels::MANAGED_BY.to_string())].into_iter().collect()
            }),
            annotations: Some(
                [
                    (labels::CREATED_BY_ANNOTATION.to_string(), "first".to_string()),
                    (labels::PROFILE_ANNOTATION.to_string(), "open".to_string()),
                ]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        };
        assert_eq!(
            not_ours(None, Some(&meta(true))),
            ProfileState::NotOurs { wanted: None, creator: Some("first".into()), in_force: Some("open".into()) }
        );
        assert_eq!(
            not_ours(None, Some(&meta(false))),
            ProfileState::NotOurs { wanted: None, creator: None, in_force: None },
            "annotations alone on a namespace someone else made prove nothing"
        );
    }
}
