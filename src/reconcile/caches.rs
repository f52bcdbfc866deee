//! The read side of the watched caches the reconcile reads on every pass: its
//! own Roles and RoleBindings and every Namespace (metadata only, so a
//! namespace that existed before is known too). "Is it already right?" is a
//! lookup here, not a request: an idle resync costs the API server nothing, and
//! a new TeamAccess costs its writes alone. The watches that fill them, and
//! what of each object they keep, are `crate::controller::watches`.

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{ClusterRole, Role, RoleBinding},
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
}

impl Caches {
    pub fn new() -> (Self, Feeds) {
        let (teamaccesses, teamaccesses_feed) = reflector::store();
        let (roles, roles_feed) = reflector::store();
        let (bindings, bindings_feed) = reflector::store();
        let (namespaces, namespaces_feed) = reflector::store();
        let cluster_roles = moka::future::Cache::builder().time_to_live(CLUSTER_ROLE_MEMORY).build();
        (
            Self { teamaccesses, roles, bindings, namespaces, cluster_roles },
            Feeds {
                teamaccesses: teamaccesses_feed,
                children: ChildFeeds { roles: roles_feed, bindings: bindings_feed, namespaces: namespaces_feed },
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
