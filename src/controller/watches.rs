//! The watches that keep the reconcile's caches (`crate::reconcile::caches`):
//! one reflector per kind, in a task of its own, synced before the controller
//! starts, so the first reconciles after a restart already see every child.
//! The same watch events then trigger the owner's reconcile, after the cache
//! has taken them in: a reconcile never reads a cache older than its trigger.

use std::{fmt::Debug, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{LimitRange, Namespace, ResourceQuota},
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{
    api::labels::{
        MANAGED_BY_LABEL, MANAGED_BY_SELECTOR, OWNER_ANNOTATION, PROFILE_ANNOTATION, PROFILE_REVISION_ANNOTATION,
        teamaccess_controller,
    },
    profiles::render::is_guardrail_name,
    reconcile::caches::{Caches, ChildFeeds, cached_subjects},
};

/// Objects per page of a watch's initial list: a restart lists thousands of
/// objects in a handful of requests rather than one per 500 (kube's default).
/// Lists are consistent reads (not "any" from the API server's cache): after the
/// API server came back to a compacted etcd, a cached list could name a revision
/// already compacted, and the watch from it would fail with 410 again and again.
pub const LIST_PAGE_SIZE: u32 = 10_000;

/// The watch events of the children, each after its cache took it in, and the
/// tasks that keep the caches.
pub struct Watches {
    pub roles: UnboundedReceiverStream<Result<Role, watcher::Error>>,
    pub bindings: UnboundedReceiverStream<Result<RoleBinding, watcher::Error>>,
    pub namespaces: UnboundedReceiverStream<Result<PartialObjectMeta<Namespace>, watcher::Error>>,
    /// The namespace profiles' guardrails, watched only while profiles are configured.
    pub guardrails: Option<GuardrailWatches>,
    pub tasks: Vec<JoinHandle<()>>,
}

pub struct GuardrailWatches {
    pub quotas: UnboundedReceiverStream<Result<ResourceQuota, watcher::Error>>,
    pub limit_ranges: UnboundedReceiverStream<Result<LimitRange, watcher::Error>>,
    pub network_policies: UnboundedReceiverStream<Result<NetworkPolicy, watcher::Error>>,
}

/// Starts the reflectors (the guardrails' too, with `guardrails`) and returns
/// once every cache holds its first list.
pub async fn start(client: &Client, feeds: ChildFeeds, guardrails: bool) -> Watches {
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR).page_size(LIST_PAGE_SIZE);
    let (roles, roles_task) = {
        let (api, config) = (Api::<Role>::all(client.clone()), children.clone());
        reflect("Role", move || watcher(api.clone(), config.clone()), feeds.roles, strip_role, never_same)
    };
    let (bindings, bindings_task) = {
        let (api, config) = (Api::<RoleBinding>::all(client.clone()), children.clone());
        reflect("RoleBinding", move || watcher(api.clone(), config.clone()), feeds.bindings, strip_binding, never_same)
    };
    let (namespaces, namespaces_task) = {
        let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        reflect(
            "Namespace",
            move || watcher(api.clone(), config.clone()),
            feeds.namespaces,
            strip_namespace,
            never_same,
        )
    };
    let mut tasks = vec![roles_task, bindings_task, namespaces_task];
    let guardrails = guardrails.then(|| {
        let (quotas, quotas_task) = {
            let (api, config) = (Api::<ResourceQuota>::all(client.clone()), children.clone());
            reflect("ResourceQuota", move || watcher(api.clone(), config.clone()), feeds.quotas, strip_quota, same)
        };
        let (limit_ranges, limit_ranges_task) = {
            let (api, config) = (Api::<LimitRange>::all(client.clone()), children.clone());
            let make = move || watcher(api.clone(), config.clone());
            reflect("LimitRange", make, feeds.limit_ranges, strip_guardrail, same)
        };
        let (network_policies, network_policies_task) = {
            let (api, config) = (Api::<NetworkPolicy>::all(client.clone()), children.clone());
            let make = move || watcher(api.clone(), config.clone());
            reflect("NetworkPolicy", make, feeds.network_policies, strip_guardrail, same)
        };
        tasks.extend([quotas_task, limit_ranges_task, network_policies_task]);
        GuardrailWatches { quotas, limit_ranges, network_policies }
    });
    Watches { roles, bindings, namespaces, guardrails, tasks }
}

fn same<K: PartialEq>(a: &K, b: &K) -> bool {
    a == b
}

/// Roles, RoleBindings and Namespaces keep their resourceVersion: every event differs.
fn never_same<K>(_: &K, _: &K) -> bool {
    false
}

/// Waits until every cache has its first list, saying now and then what it waits for.
pub async fn wait_synced(caches: &Caches, guardrails: bool) {
    wait_for_list("Roles", &caches.roles).await;
    wait_for_list("RoleBindings", &caches.bindings).await;
    wait_for_list("Namespaces", &caches.namespaces).await;
    if guardrails {
        let stores = &caches.guardrails;
        wait_for_list("ResourceQuotas", &stores.quotas).await;
        wait_for_list("LimitRanges", &stores.limit_ranges).await;
        wait_for_list("NetworkPolicies", &stores.network_policies).await;
    }
}

async fn wait_for_list<K>(what: &str, store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await.is_err() {
        tracing::warn!(cache = what, "still waiting for the first list (may the operator list and watch them?)");
    }
}

/// What the cache keeps of a Role: see `strip_child`. The Role of a TeamAccess
/// has at most 16 rules (the CRD's bound); one with more is not one we made, and
/// is kept without its rules (it reads as drifted, or as someone else's).
fn strip_role(role: Role) -> Option<Role> {
    let mut role = strip_child(role)?;
    if role.rules.as_ref().is_some_and(|rules| rules.len() > MAX_ROLE_RULES || rules.iter().any(oversized)) {
        role.rules = Some(Vec::new());
    }
    Some(role)
}

/// What the cache keeps of a RoleBinding: see `strip_child`. A long list of
/// subjects (spec.bind Members) is kept as its digest (`cached_subjects`).
fn strip_binding(binding: RoleBinding) -> Option<RoleBinding> {
    let mut binding = strip_child(binding)?;
    binding.subjects = cached_subjects(binding.subjects.take());
    Some(binding)
}

fn strip_namespace(mut ns: PartialObjectMeta<Namespace>) -> Option<PartialObjectMeta<Namespace>> {
    ns.metadata.managed_fields = None;
    Some(ns)
}

/// What the cache keeps of a guardrail of a namespace profile: only one under
/// a name the operator reserves for them (so a namespace holds at most four,
/// however many labelled objects its team writes), with its spec, our label
/// and the profile's annotations. Its resourceVersion is dropped, so an event
/// that changed nothing the reconcile reads is not passed on.
fn strip_guardrail<K: Resource>(mut guardrail: K) -> Option<K> {
    let meta = guardrail.meta_mut();
    if !is_guardrail_name(meta.name.as_deref().unwrap_or_default()) {
        return None;
    }
    meta.managed_fields = None;
    meta.finalizers = None;
    meta.resource_version = None;
    meta.owner_references = None;
    if let Some(labels) = &mut meta.labels {
        labels.retain(|k, _| k == MANAGED_BY_LABEL);
    }
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k == PROFILE_ANNOTATION || k == PROFILE_REVISION_ANNOTATION);
    }
    Some(guardrail)
}

/// A ResourceQuota without its status: the quota controller rewrites it at
/// every pod the team makes, and the reconcile reads only the spec.
fn strip_quota(quota: ResourceQuota) -> Option<ResourceQuota> {
    let mut quota = strip_guardrail(quota)?;
    quota.status = None;
    Some(quota)
}

/// The bounds of what `build` makes, from the CRD's limits on spec.rules.
const MAX_ROLE_RULES: usize = 16;
const MAX_RULE_ITEMS: usize = 64;

fn oversized(rule: &k8s_openapi::api::rbac::v1::PolicyRule) -> bool {
    let long = |items: &Option<Vec<String>>| items.as_ref().is_some_and(|i| i.len() > MAX_RULE_ITEMS);
    long(&rule.api_groups) || long(&rule.resources) || long(&rule.resource_names) || rule.verbs.len() > MAX_RULE_ITEMS
}

/// A child is cached only when it is controlled by a TeamAccess and carries a
/// name made from it (`teamaccess-<name>`, `teamaccess-<name>-...`), and only
/// what the reconcile reads of it: our label and annotation, that controller
/// reference. Anyone who may write Roles in a namespace can put our label on as
/// many as they like; what they add is not held, and since names are unique per
/// namespace, a TeamAccess's own names bound how many such Roles are kept. One
/// left out (its reference stripped, say) is read from the API server when a
/// create of that name meets 409, so drift is still repaired.
fn strip_child<K: Resource>(mut child: K) -> Option<K> {
    let meta = child.meta_mut();
    let controller = teamaccess_controller(meta)?.clone();
    let name = meta.name.as_deref().unwrap_or_default();
    let prefix = format!("teamaccess-{}", controller.name);
    if name != prefix && !name.starts_with(&format!("{prefix}-")) {
        return None;
    }
    meta.owner_references = Some(vec![controller]);
    meta.managed_fields = None;
    meta.finalizers = None;
    let only = |map: &mut Option<std::collections::BTreeMap<String, String>>, key: &str| {
        if let Some(map) = map {
            map.retain(|k, _| k == key);
        }
    };
    only(&mut meta.labels, MANAGED_BY_LABEL);
    only(&mut meta.annotations, OWNER_ANNOTATION);
    Some(child)
}

/// One reflector in a task of its own: each object is stripped to what the
/// reconcile reads (`strip` says None for one not kept: it leaves the cache as
/// if deleted), the cache is updated, then the event is passed on, unless
/// `same` says the object is what the cache held already. When the
/// API server says the watch's revision is gone (410), a new watcher lists
/// afresh: kube-runtime's watcher can otherwise keep retrying a watch from that
/// revision after the API server came back to a compacted etcd.
fn reflect<K, S>(
    kind: &'static str,
    make: impl Fn() -> S + Send + 'static,
    mut feed: Writer<K>,
    strip: fn(K) -> Option<K>,
    same: fn(&K, &K) -> bool,
) -> (UnboundedReceiverStream<Result<K, watcher::Error>>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let cached = feed.as_reader();
    let task = tokio::spawn(async move {
        loop {
            let events = make().default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let passed = match step(event, strip) {
                            Step::Store(event) => {
                                let unchanged = match &event {
                                    watcher::Event::Apply(obj) => {
                                        cached.get(&ObjectRef::from_obj(obj)).is_some_and(|before| same(&before, obj))
                                    }
                                    _ => false,
                                };
                                feed.apply_watcher_event(&event);
                                if unchanged { None } else { touched(event) }
                            }
                            Step::PassOn(obj) => Some(obj),
                        };
                        if let Some(obj) = passed
                            && tx.send(Ok(obj)).is_err()
                        {
                            return;
                        }
                    }
                    // Reported here and kept from the controller: an error in a
                    // trigger stream makes it back off every trigger for a while.
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying");
                        if is_gone(&e) {
                            break;
                        }
                    }
                }
            }
        }
    });
    (UnboundedReceiverStream::new(rx), task)
}

/// What becomes of one watch event: stored in the cache (as stripped) and its
/// object passed on, or an object not stored passed on as itself.
enum Step<K> {
    Store(watcher::Event<K>),
    PassOn(K),
}

fn step<K: Clone>(event: watcher::Event<K>, strip: fn(K) -> Option<K>) -> Step<K> {
    match event {
        watcher::Event::Apply(obj) => match strip(obj.clone()) {
            Some(kept) => Step::Store(watcher::Event::Apply(kept)),
            // No longer one to keep: it leaves the cache as if deleted.
            None => Step::Store(watcher::Event::Delete(obj)),
        },
        watcher::Event::InitApply(obj) => match strip(obj.clone()) {
            Some(kept) => Step::Store(watcher::Event::InitApply(kept)),
            // Not stored; passed on as itself for its owner's reconcile.
            None => Step::PassOn(obj),
        },
        other => Step::Store(other),
    }
}

/// The object an event is about, if any.
fn touched<K>(event: watcher::Event<K>) -> Option<K> {
    match event {
        watcher::Event::Apply(obj) | watcher::Event::Delete(obj) | watcher::Event::InitApply(obj) => Some(obj),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// The API server no longer has the watch's revision (410 Gone).
fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    use serde_json::json;

    use super::*;

    fn role(name: &str, owner: Option<&str>, rules: usize) -> Role {
        let owners = owner.map(|o| {
            json!([{"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
                                           "name": o, "uid": "u", "controller": true}])
        });
        let mut role: Role = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "team",
                         "labels": {MANAGED_BY_LABEL: "teamaccess-operator", "padding": "x".repeat(1000)},
                         "annotations": {OWNER_ANNOTATION: owner.unwrap_or("someone"), "note": "y".repeat(1000)},
                         "ownerReferences": owners, "finalizers": ["a/b"]}
        }))
        .unwrap();
        role.rules = Some(
            (0..rules)
                .map(|_| PolicyRule {
                    verbs: vec!["get".into()],
                    resources: Some(vec!["pods".into()]),
                    ..Default::default()
                })
                .collect(),
        );
        role
    }

    #[test]
    fn a_child_is_kept_only_with_a_teamaccess_controller_and_a_name_made_from_it() {
        assert!(strip_role(role("teamaccess-web", None, 1)).is_none(), "no owner: someone's own labelled Role");
        assert!(strip_role(role("anything", Some("web"), 1)).is_none(), "a name we never make");
        assert!(strip_role(role("teamaccess-webshop", Some("web"), 1)).is_none(), "another TeamAccess's name");
        assert!(strip_role(role("teamaccess-web", Some("web"), 1)).is_some());
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "teamaccess-web-admin", "namespace": "team",
                         "ownerReferences": [{"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
                                              "name": "web", "uid": "u", "controller": true}]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"}
        }))
        .unwrap();
        assert!(strip_binding(binding).is_some(), "the binding of a ClusterRole");
    }

    #[test]
    fn a_kept_child_holds_only_what_the_reconcile_reads() {
        let kept = strip_role(role("teamaccess-web", Some("web"), 2)).unwrap();
        let meta = &kept.metadata;
        assert_eq!(meta.labels.as_ref().unwrap().keys().collect::<Vec<_>>(), [MANAGED_BY_LABEL]);
        assert_eq!(meta.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(), [OWNER_ANNOTATION]);
        assert!(meta.finalizers.is_none());
        assert_eq!(kept.rules.as_ref().unwrap().len(), 2, "rules within the CRD's bounds are kept");
        let flooded = strip_role(role("teamaccess-web", Some("web"), MAX_ROLE_RULES + 1)).unwrap();
        assert_eq!(flooded.rules, Some(vec![]), "more rules than a TeamAccess can ask for are not held");
    }
}
