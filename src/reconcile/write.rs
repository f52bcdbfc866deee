//! The writes the reconcile makes besides status: server-side apply under the
//! operator's field manager, a delete that only ever removes an object this
//! TeamAccess owns (by owner reference, or by the uid recorded when it was
//! made), and adding the cleanup finalizer when admission did not.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde::{Serialize, de::DeserializeOwned};

use super::error::Error;
use crate::api::{FINALIZER, TeamAccess, labels::FIELD_MANAGER};

/// Adds the cleanup finalizer to `ta` and returns the object as the API server
/// then holds it. The same JSON patch kube-runtime's `finalizer()` helper sends
/// (a `test` of the list as read, so a finalizer someone added meanwhile is
/// neither lost nor doubled; the conflict is retried), but this returns the
/// patched object, so the reconcile grants in the same pass rather than waiting
/// for the patch's watch event, as the helper does.
pub async fn add_finalizer(api: &Api<TeamAccess>, ta: &TeamAccess) -> Result<TeamAccess, kube::Error> {
    let patch: json_patch::Patch = serde_json::from_value(if ta.finalizers().is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ta.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    })
    .expect("a JSON patch of two operations");
    api.patch(&ta.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await
}

pub async fn server_side_apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await
}

/// Whose children a delete may remove: those carrying the owner reference of
/// the TeamAccess with `uid`, and those whose uid the operator recorded when it
/// made them (a child whose owner reference was stripped is still ours).
#[derive(Clone, Copy, Debug)]
pub struct Ours<'a> {
    pub owner: &'a str,
    pub uid: Option<&'a str>,
    pub recorded: &'a [String],
}

impl Ours<'_> {
    pub fn claims(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let by_reference = meta.owner_references.iter().flatten().any(|r| Some(r.uid.as_str()) == self.uid);
        by_reference || meta.uid.as_ref().is_some_and(|uid| self.recorded.contains(uid))
    }
}

/// What a delete of a child found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Deleted,
    /// Nothing of that name (or it went meanwhile).
    Absent,
    /// An object of that name that is not ours: left alone.
    NotOurs,
}

/// Deletes a namespaced child only when it is ours (`Ours::claims`), with a uid
/// precondition so an object re-created meanwhile survives.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, ours: Ours<'_>) -> Result<Removal, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let Some(obj) = api.get_opt(name).await.map_err(|e| Error::kube(format!("read {kind} {name}"), e))? else {
        return Ok(Removal::Absent);
    };
    if !ours.claims(obj.meta()) {
        tracing::info!(teamaccess = ours.owner, kind, name, "not deleting a child we do not own");
        return Ok(Removal::NotOurs);
    }
    delete_exactly(api, name, obj.uid()).await?;
    Ok(Removal::Deleted)
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
