//! Publishing what `super::status::compute` decided: the status write (only
//! when it changed, so an idle resync writes nothing) and the Events.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::Event,
};

use super::{context::Context, error::Error, status::Note};
use crate::api::{TeamAccess, TeamAccessStatus, labels::FIELD_MANAGER};

/// What the operator was doing when it published an Event (the Event's `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Granting: the apply path.
    Reconcile,
    /// Cleaning up after the TeamAccess was deleted.
    Delete,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Reconcile => "Reconcile",
            EventAction::Delete => "Delete",
        }
    }
}

/// Writes status when it changed (and remembers it, until the cache has it), then
/// publishes the Events.
pub async fn publish(ta: &TeamAccess, status: &TeamAccessStatus, notes: Vec<Note>, ctx: &Context) -> Result<(), Error> {
    if write_status(ta, status, ctx).await? {
        ctx.memory.wrote_status(ta, status);
    }
    for note in notes {
        emit(ta, ctx, note, EventAction::Reconcile).await;
    }
    Ok(())
}

/// Server-side applies `status` when it differs from what the object shows, so
/// an unchanged state writes nothing. Returns whether it wrote.
pub async fn write_status(ta: &TeamAccess, status: &TeamAccessStatus, ctx: &Context) -> Result<bool, Error> {
    if ta.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api = Api::<TeamAccess>::all(ctx.client.clone());
    let apply = |status: &TeamAccessStatus| {
        let patch = serde_json::json!({
            "apiVersion": TeamAccess::api_version(&()),
            "kind": TeamAccess::kind(&()),
            "status": status,
        });
        let api = api.clone();
        let name = ta.name_any();
        async move { api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await }
    };
    match apply(status).await {
        Ok(_) => Ok(true),
        // A CRD older than this operator (mid-upgrade, before the chart's CRD
        // arrives) lacks the newest status fields, and server-side apply refuses
        // them. Written without them, each reads as absent, which errs on the safe
        // side: no recorded deletionPolicy keeps the namespace, no recorded child
        // leaves ownership to the owner references.
        Err(kube::Error::Api(s)) if s.message.contains("field not declared in schema") => {
            tracing::warn!(teamaccess = %ta.name_any(), "the TeamAccess CRD is older than the operator: status written without its newest fields; upgrade the CRD");
            let older = TeamAccessStatus { children: Vec::new(), deletion_policy: None, ..status.clone() };
            apply(&older).await.map(|_| true).map_err(|e| Error::kube("update TeamAccess status", e))
        }
        Err(e) => Err(Error::kube("update TeamAccess status", e)),
    }
}

/// Publishes one Event about the TeamAccess; a failure is logged, never fatal.
pub async fn emit(ta: &TeamAccess, ctx: &Context, note: Note, action: EventAction) {
    let event = Event {
        type_: note.type_,
        reason: note.reason.to_string(),
        note: Some(note.message),
        action: action.as_str().into(),
        secondary: None,
    };
    if let Err(e) = ctx.report.recorder.publish(&event, &ta.object_ref(&())).await {
        tracing::warn!(teamaccess = %ta.name_any(), error = %e, "cannot publish event");
    }
}
