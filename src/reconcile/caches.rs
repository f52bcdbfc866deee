//! Watched caches of what the operator reads on every reconcile: its own Roles
//! and RoleBindings (by its label) and every Namespace (metadata only, so a
//! namespace that existed before is known too). "Is it already right?" is a
//! lookup here, not a request: an idle resync costs the API server nothing, and
//! a new TeamAccess costs its writes alone.
//!
//! Each reflector runs in a task of its own and is synced before the controller
//! starts, so the first reconciles after a restart already see every child. The
//! same watch events then trigger the owner's reconcile, after the cache has
//! taken them in: a reconcile never reads a cache older than its trigger.

use std::{fmt::Debug, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{ClusterRole, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{build::MANAGED_BY_SELECTOR, error::Error};

/// Objects per page of a watch's initial list: a restart lists thousands of
/// objects in a handful of requests rather than one per 500 (kube's default).
/// Lists are consistent reads (not "any" from the API server's cache): after the
/// API server came back to a compacted etcd, a cached list could name a revision
/// already compacted, and the watch from it would fail with 410 again and again.
pub const LIST_PAGE_SIZE: u32 = 10_000;

/// How long a ClusterRole found to exist is believed to: the check runs on every
/// reconcile that binds one, so it is remembered rather than read each time.
const CLUSTER_ROLE_MEMORY: Duration = Duration::from_secs(60);

/// The readers, shared by every reconcile.
#[derive(Clone)]
pub struct Caches {
    pub roles: Store<Role>,
    pub bindings: Store<RoleBinding>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ClusterRoles seen to exist lately (found ones only: a missing one is read
    /// again next time, so creating it is noticed at the next retry).
    cluster_roles: moka::future::Cache<String, ()>,
}

/// The writers, which the controller's `run` takes to start the reflectors.
pub struct Feeds {
    roles: Writer<Role>,
    bindings: Writer<RoleBinding>,
    namespaces: Writer<PartialObjectMeta<Namespace>>,
}

/// The watch events of the children, each after its cache took it in, and the
/// tasks that keep the caches.
pub struct Watches {
    pub roles: UnboundedReceiverStream<Result<Role, watcher::Error>>,
    pub bindings: UnboundedReceiverStream<Result<RoleBinding, watcher::Error>>,
    pub namespaces: UnboundedReceiverStream<Result<PartialObjectMeta<Namespace>, watcher::Error>>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Caches {
    pub fn new() -> (Self, Feeds) {
        let (roles, roles_feed) = reflector::store();
        let (bindings, bindings_feed) = reflector::store();
        let (namespaces, namespaces_feed) = reflector::store();
        let cluster_roles = moka::future::Cache::builder().time_to_live(CLUSTER_ROLE_MEMORY).build();
        (
            Self { roles, bindings, namespaces, cluster_roles },
            Feeds { roles: roles_feed, bindings: bindings_feed, namespaces: namespaces_feed },
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

/// Starts the reflectors and returns once every cache holds its first list.
pub async fn start(client: &Client, feeds: Feeds) -> Watches {
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR).page_size(LIST_PAGE_SIZE);
    let (roles, roles_task) = {
        let (api, config) = (Api::<Role>::all(client.clone()), children.clone());
        reflect("Role", move || watcher(api.clone(), config.clone()), feeds.roles)
    };
    let (bindings, bindings_task) = {
        let api = Api::<RoleBinding>::all(client.clone());
        reflect("RoleBinding", move || watcher(api.clone(), children.clone()), feeds.bindings)
    };
    let (namespaces, namespaces_task) = {
        let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        reflect("Namespace", move || watcher(api.clone(), config.clone()), feeds.namespaces)
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

/// One reflector in a task of its own: managed fields are dropped (never read
/// from the cache), the cache is updated, then the event is passed on. When the
/// API server says the watch's revision is gone (410), a new watcher lists
/// afresh: kube-runtime's watcher can otherwise keep retrying a watch from that
/// revision after the API server came back to a compacted etcd.
fn reflect<K, S>(
    kind: &'static str,
    make: impl Fn() -> S + Send + 'static,
    mut feed: Writer<K>,
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
                        let event = event.modify(|obj| obj.meta_mut().managed_fields = None);
                        feed.apply_watcher_event(&event);
                        let touched = match event {
                            watcher::Event::Apply(obj)
                            | watcher::Event::Delete(obj)
                            | watcher::Event::InitApply(obj) => Some(obj),
                            watcher::Event::Init | watcher::Event::InitDone => None,
                        };
                        if let Some(obj) = touched
                            && tx.send(Ok(obj)).is_err()
                        {
                            return;
                        }
                    }
                    // Reported here and kept from the controller: an error in a
                    // trigger stream makes it back off every trigger for a while.
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying");
                        let gone = match &e {
                            watcher::Error::WatchError(status) => status.code == 410,
                            watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
                            _ => false,
                        };
                        if gone {
                            break;
                        }
                    }
                }
            }
        }
    });
    (UnboundedReceiverStream::new(rx), task)
}
