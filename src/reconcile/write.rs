//! The two writes the apply and cleanup steps make: server-side apply under the
//! operator's field manager, and a delete that only ever removes an object that
//! carries this TeamAccess's owner reference.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{context::FIELD_MANAGER, error::Error};

pub async fn server_side_apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await
}

/// Deletes a namespaced child only when it carries the owner reference of the
/// TeamAccess with `owner_uid`, with a uid precondition so an object re-created
/// meanwhile survives. An object already gone is fine.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, owner: &str, owner_uid: Option<&str>) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let Some(obj) = api.get_opt(name).await.map_err(|e| Error::kube(format!("read {kind} {name}"), e))? else {
        return Ok(());
    };
    let owned = obj.owner_references().iter().any(|r| Some(r.uid.as_str()) == owner_uid);
    if !owned {
        tracing::info!(teamaccess = owner, kind, name, "not deleting a child we do not own");
        return Ok(());
    }
    delete_exactly(api, name, obj.uid()).await
}

/// Deletes the object named `name` only while it has `uid` (a precondition), so
/// one deleted and re-created meanwhile survives. Gone already, or re-created
/// (409), is done.
pub async fn delete_exactly<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let params =
        DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..Default::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(e) => Err(Error::kube(format!("delete {} {name}", K::kind(&K::DynamicType::default())), e)),
    }
}
