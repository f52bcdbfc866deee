//! The read side of the watched caches the reconcile reads on every pass: its
//! own Roles and RoleBindings and every Namespace (metadata only, so a
//! namespace that existed before is known too). "Is it already right?" is a
//! lookup here, not a request: an idle resync costs the API server nothing, and
//! a new TeamAccess costs its writes alone. The watches that fill them, and
//! what of each object they keep, are `crate::controller::watches`.

use std::time::Duration;

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::api::{
    core::v1::{LimitRange, Namespace, ResourceQuota},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, Role, RoleBinding, Subject},
};
use kube::{
    Api, Client,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};

use super::error::Error;
use crate::api::TeamAccess;

/// How long a ClusterRole found to exist is believed to: the check runs on every
/// reconcile that binds one, so it is remembered rather than read each time.
const CLUSTER_ROLE_MEMORY: Duration = Duration::from_secs(60);

/// The readers, shared by every reconcile.
#[derive(Clone)]
pub struct Caches {
    /// The TeamAccess objects of this operator's --selector (the controller's own cache).
    pub teamaccesses: Store<TeamAccess>,
    pub roles: Store<Role>,
    pub bindings: Store<RoleBinding>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The guardrails of namespace profiles (only their reserved names, only
    /// while namespace profiles are configured).
    pub guardrails: GuardrailStores,
    /// What the API server makes of each guardrail spec the operator writes.
    pub spec_forms: std::sync::Arc<SpecForms>,
    /// ClusterRoles seen to exist lately (found ones only: a missing one is read
    /// again next time, so creating it is noticed at the next retry).
    cluster_roles: moka::future::Cache<String, ()>,
}

/// The writers, which `crate::controller` takes to start the reflectors: the
/// controller's own watch feeds the TeamAccess cache, the children's watches the rest.
pub struct Feeds {
    pub(crate) teamaccesses: Writer<TeamAccess>,
    pub(crate) children: ChildFeeds,
}

pub struct ChildFeeds {
    pub(crate) roles: Writer<Role>,
    pub(crate) bindings: Writer<RoleBinding>,
    pub(crate) namespaces: Writer<PartialObjectMeta<Namespace>>,
    pub(crate) quotas: Writer<ResourceQuota>,
    pub(crate) limit_ranges: Writer<LimitRange>,
    pub(crate) network_policies: Writer<NetworkPolicy>,
}

/// The readers of the guardrails' caches.
#[derive(Clone)]
pub struct GuardrailStores {
    pub quotas: Store<ResourceQuota>,
    pub limit_ranges: Store<LimitRange>,
    pub network_policies: Store<NetworkPolicy>,
}

impl GuardrailStores {
    pub fn quota(&self, namespace: &str, name: &str) -> Option<ResourceQuota> {
        self.quotas.get(&ObjectRef::new(name).within(namespace)).map(|o| (*o).clone())
    }

    pub fn limit_range(&self, namespace: &str, name: &str) -> Option<LimitRange> {
        self.limit_ranges.get(&ObjectRef::new(name).within(namespace)).map(|o| (*o).clone())
    }

    pub fn network_policy(&self, namespace: &str, name: &str) -> Option<NetworkPolicy> {
        self.network_policies.get(&ObjectRef::new(name).within(namespace)).map(|o| (*o).clone())
    }
}

/// A RoleBinding's subjects as the cache holds them: up to this many as they
/// are (a Group-mode binding: the group and at most 32 spec.users), a longer
/// list (a Members-mode binding) as one digest of the whole list. The cache's
/// size stays bounded however many people are bound, or whatever a writer of
/// bindings puts into a binding under one of our names, and drift still shows:
/// a list that differs in any subject has another digest.
pub const MAX_CACHED_SUBJECTS: usize = 33;

/// The kind of the one subject standing for a digested list: no RBAC subject
/// has it, so it never equals a real one.
pub const DIGEST_KIND: &str = "teamaccess.dev/SubjectsDigest";

/// `subjects` in the form the cache holds (see `MAX_CACHED_SUBJECTS`).
pub fn cached_subjects(subjects: Option<Vec<Subject>>) -> Option<Vec<Subject>> {
    match subjects {
        Some(list) if list.len() > MAX_CACHED_SUBJECTS => {
            let text: String = list
                .iter()
                .map(|s| {
                    format!(
                        "{}\u{1f}{}\u{1f}{}\u{1f}{}\n",
                        s.kind,
                        s.api_group.as_deref().unwrap_or_default(),
                        s.name,
                        s.namespace.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            let digest = format!("{}:{:016x}", list.len(), crate::hash::fnv1a(&text));
            Some(vec![Subject { kind: DIGEST_KIND.into(), name: digest, api_group: None, namespace: None }])
        }
        other => other,
    }
}

/// The API server writes a spec back in its own form (a quantity of 1000m
/// reads 1, a missing field gets its default), so a guardrail read from the
/// cache may differ from what `render` makes while meaning the same. Each
/// spec the operator wrote is remembered with the form the server returned,
/// keyed by kind and the rendered spec: one write per profile and kind after a
/// restart teaches it, however many namespaces share the profile, and a live
/// spec is in place when it equals either form. What anyone else writes is
/// compared, never trusted: a team cannot make its own spec pass for ours.
#[derive(Default)]
pub struct SpecForms {
    forms: Mutex<HashMap<(String, String), serde_json::Value>>,
}

/// More distinct rendered specs than any real set of profiles has: the memory
/// starts over rather than grow without bound.
const MAX_SPEC_FORMS: usize = 1024;

impl SpecForms {
    /// Whether `live` is what writing `rendered` would leave.
    pub fn matches(&self, kind: &str, rendered: &serde_json::Value, live: &serde_json::Value) -> bool {
        if rendered == live {
            return true;
        }
        let forms = self.forms.lock().unwrap_or_else(|e| e.into_inner());
        forms.get(&(kind.to_string(), rendered.to_string())).is_some_and(|server| server == live)
    }

    /// Remembers what the API server made of `rendered`.
    pub fn learn(&self, kind: &str, rendered: &serde_json::Value, server: serde_json::Value) {
        let mut forms = self.forms.lock().unwrap_or_else(|e| e.into_inner());
        if forms.len() >= MAX_SPEC_FORMS {
            forms.clear();
        }
        forms.insert((kind.to_string(), rendered.to_string()), server);
    }
}

impl Caches {
    pub fn new() -> (Self, Feeds) {
        let (teamaccesses, teamaccesses_feed) = reflector::store();
        let (roles, roles_feed) = reflector::store();
        let (bindings, bindings_feed) = reflector::store();
        let (namespaces, namespaces_feed) = reflector::store();
        let (quotas, quotas_feed) = reflector::store();
        let (limit_ranges, limit_ranges_feed) = reflector::store();
        let (network_policies, network_policies_feed) = reflector::store();
        let cluster_roles = moka::future::Cache::builder().time_to_live(CLUSTER_ROLE_MEMORY).build();
        (
            Self {
                teamaccesses,
                roles,
                bindings,
                namespaces,
                guardrails: GuardrailStores { quotas, limit_ranges, network_policies },
                spec_forms: Default::default(),
                cluster_roles,
            },
            Feeds {
                teamaccesses: teamaccesses_feed,
                children: ChildFeeds {
                    roles: roles_feed,
                    bindings: bindings_feed,
                    namespaces: namespaces_feed,
                    quotas: quotas_feed,
                    limit_ranges: limit_ranges_feed,
                    network_policies: network_policies_feed,
                },
            },
        )
    }

    pub fn role(&self, namespace: &str, name: &str) -> Option<Role> {
        self.roles.get(&ObjectRef::new(name).within(namespace)).map(|r| (*r).clone())
    }

    pub fn binding(&self, namespace: &str, name: &str) -> Option<RoleBinding> {
        self.bindings.get(&ObjectRef::new(name).within(namespace)).map(|r| (*r).clone())
    }

    pub fn namespace(&self, name: &str) -> Option<PartialObjectMeta<Namespace>> {
        self.namespaces.get(&ObjectRef::new(name)).map(|n| (*n).clone())
    }

    /// Whether a ClusterRole exists: remembered for a minute once found, and read
    /// once for all the reconciles that ask at the same moment.
    pub async fn cluster_role_exists(&self, client: &Client, name: &str) -> Result<bool, Error> {
        let read = async {
            match Api::<ClusterRole>::all(client.clone()).get_metadata_opt(name).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(None),
                Err(e) => Err(Some(e)),
            }
        };
        match self.cluster_roles.try_get_with_by_ref(name, read).await {
            Ok(()) => Ok(true),
            // Not found is not remembered: creating it is noticed at the next look.
            Err(failed) => {
                let action = format!("read ClusterRole {name}");
                match failed.as_ref() {
                    None => Ok(false),
                    // Shared by every caller, so rebuilt for this one.
                    Some(kube::Error::Api(status)) => Err(Error::kube(action, kube::Error::Api(status.clone()))),
                    Some(other) => {
                        let status = kube::core::Status::failure(&other.to_string(), "ServiceUnavailable");
                        Err(Error::kube(action, kube::Error::Api(Box::new(status))))
                    }
                }
            }
        }
    }
}

/// Every TeamAccess in the cluster, also those of other operators' shards
/// (--selector), read fresh from the API server: the cache holds this shard's only.
pub async fn every_teamaccess(client: &Client) -> Result<Vec<TeamAccess>, Error> {
    Api::<TeamAccess>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|e| Error::kube("list TeamAccess objects", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<Subject> {
        (0..n)
            .map(|i| Subject {
                kind: "User".into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: format!("u{i}@contoso.com"),
                namespace: None,
            })
            .collect()
    }

    #[test]
    fn short_lists_are_kept_and_long_ones_digested_so_any_change_shows() {
        let short = users(MAX_CACHED_SUBJECTS);
        assert_eq!(cached_subjects(Some(short.clone())), Some(short));
        let long = users(500);
        let digest = cached_subjects(Some(long.clone())).unwrap();
        assert_eq!(digest.len(), 1);
        assert_eq!(digest[0].kind, DIGEST_KIND);
        assert!(digest[0].name.starts_with("500:"), "{}", digest[0].name);
        assert_eq!(cached_subjects(Some(long.clone())), Some(digest.clone()), "stable");
        let mut renamed = long.clone();
        renamed[250].name = "intruder@contoso.com".into();
        assert_ne!(cached_subjects(Some(renamed)), Some(digest.clone()));
        let mut as_group = long;
        as_group[0].kind = "Group".into();
        assert_ne!(cached_subjects(Some(as_group)), Some(digest));
        assert_eq!(cached_subjects(None), None);
    }
}
