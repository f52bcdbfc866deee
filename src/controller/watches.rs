//! The watches that keep the reconcile's caches (`crate::reconcile::caches`):
//! one reflector per kind, in a task of its own, synced before the controller
//! starts, so the first reconciles after a restart already see every child.
//! The same watch events then trigger the owner's reconcile, after the cache
//! has taken them in: a reconcile never reads a cache older than its trigger.

use std::{fmt::Debug, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{
    api::labels::{MANAGED_BY_LABEL, MANAGED_BY_SELECTOR, OWNER_ANNOTATION, teamaccess_controller},
    reconcile::caches::{Caches, ChildFeeds},
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
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the reflectors and returns once every cache holds its first list.
pub async fn start(client: &Client, feeds: ChildFeeds) -> Watches {
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR).page_size(LIST_PAGE_SIZE);
    let (roles, roles_task) = {
        let (api, config) = (Api::<Role>::all(client.clone()), children.clone());
        reflect("Role", move || watcher(api.clone(), config.clone()), feeds.roles, strip_role)
    };
    let (bindings, bindings_task) = {
        let api = Api::<RoleBinding>::all(client.clone());
        reflect("RoleBinding", move || watcher(api.clone(), children.clone()), feeds.bindings, strip_binding)
    };
    let (namespaces, namespaces_task) = {
        let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        reflect("Namespace", move || watcher(api.clone(), config.clone()), feeds.namespaces, strip_namespace)
    };
    Watches { roles, bindings, namespaces, tasks: vec![roles_task, bindings_task, namespaces_task] }
}

/// Waits until every cache has its first list, saying now and then what it waits for.
pub async fn wait_synced(caches: &Caches) {
    wait_for_list("Roles", &caches.roles).await;
    wait_for_list("RoleBindings", &caches.bindings).await;
    wait_for_list("Namespaces", &caches.namespaces).await;
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

/// What the cache keeps of a RoleBinding: see `strip_child`. Ours name the group
/// and spec.users (at most 32); more subjects are dropped the same way.
fn strip_binding(binding: RoleBinding) -> Option<RoleBinding> {
    let mut binding = strip_child(binding)?;
    if binding.subjects.as_ref().is_some_and(|s| s.len() > MAX_BINDING_SUBJECTS) {
        binding.subjects = Some(Vec::new());
    }
    Some(binding)
}

fn strip_namespace(mut ns: PartialObjectMeta<Namespace>) -> Option<PartialObjectMeta<Namespace>> {
    ns.metadata.managed_fields = None;
    Some(ns)
}

/// The bounds of what `build` makes, from the CRD's limits on spec.rules.
const MAX_ROLE_RULES: usize = 16;
const MAX_RULE_ITEMS: usize = 64;
const MAX_BINDING_SUBJECTS: usize = 33;

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
/// if deleted), the cache is updated, then the event is passed on. When the
/// API server says the watch's revision is gone (410), a new watcher lists
/// afresh: kube-runtime's watcher can otherwise keep retrying a watch from that
/// revision after the API server came back to a compacted etcd.
fn reflect<K, S>(
    kind: &'static str,
    make: impl Fn() -> S + Send + 'static,
    mut feed: Writer<K>,
    strip: fn(K) -> Option<K>,
) -> (UnboundedReceiverStream<Result<K, watcher::Error>>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let events = make().default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let passed = match step(event, strip) {
                            Step::Store(event) => {
                                feed.apply_watcher_event(&event);
                                touched(event)
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
