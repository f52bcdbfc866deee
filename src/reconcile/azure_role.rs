//! Step 4b, the Azure half of the recipe: the group's "Azure Kubernetes Service
//! Cluster User Role" on the AKS cluster, when the operator runs with
//! --aks-cluster-resource-id.
//!
//! It runs after `apply` and never blocks it: whatever ARM answers, the
//! Kubernetes access is in place and stays. The role is per group, so what this
//! step decides for one TeamAccess depends on the others of the same group:
//! an assignment the operator made goes only when no TeamAccess wants the group
//! (`wanted_group`), and the periodic `sweep` catches what a failed or missed
//! release left behind.

use std::{collections::HashSet, sync::Arc, time::Duration};

use kube::ResourceExt;

use super::{caches::every_teamaccess, context::Context, error::Error, expiry};
use crate::{
    api::TeamAccess,
    azure::{Assignment, ClusterUserRole, arm::ArmError},
};

/// The sweep runs at most this often, whatever the resync.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// What the Azure step found for one TeamAccess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureRole {
    /// The pipeline stopped before this step: status keeps what it said.
    NotReached,
    /// Not configured, or this TeamAccess opted out (spec.clusterUserRole: false).
    NotManaged,
    /// The group holds the role, or why it does not.
    Checked(Result<Assignment, ArmError>),
}

/// Makes sure the group `group` (the pinned objectId) holds the role for `ta`,
/// after releasing the group `ta` held it for before, if it moved or opted out.
pub async fn grant(ta: &TeamAccess, group: &str, ctx: &Context) -> AzureRole {
    let Some(role) = &ctx.identity.cluster_user_role else { return AzureRole::NotManaged };
    let name = ta.name_any();
    let status = ta.status.as_ref();
    let held_before = status.and_then(|s| s.cluster_user_role.as_ref()).is_some();
    let group_before = status.and_then(|s| s.group.as_ref()).map(|g| g.object_id.as_str());
    if let Some(old) = group_before.filter(|_| held_before)
        && (!old.eq_ignore_ascii_case(group) || !ta.spec.wants_cluster_user_role())
    {
        release(ctx, role, old, &name).await;
    }
    if !ta.spec.wants_cluster_user_role() {
        return AzureRole::NotManaged;
    }
    AzureRole::Checked(role.ensure(group, &name).await)
}

/// The finalizer's part: `ta` is going, so its group may no longer need the
/// role. Failures are logged and left to the sweep: Azure never holds up the
/// deletion of Kubernetes objects.
pub async fn release_deleted(ta: &TeamAccess, ctx: &Context) {
    let Some(role) = &ctx.identity.cluster_user_role else { return };
    let group = ta
        .status
        .as_ref()
        .and_then(|s| s.group.as_ref())
        .map(|g| g.object_id.clone())
        .or_else(|| ta.spec.group.object_id.clone());
    if let Some(group) = group {
        release(ctx, role, &group, &ta.name_any()).await;
    }
}

/// `ta` expired: its group may no longer need the role. Asked once, while
/// status still says the role is held for it; a failure is logged and left to
/// the sweep, which counts no expired grant as wanting a group.
pub async fn release_expired(ta: &TeamAccess, ctx: &Context) -> AzureRole {
    let held = ta.status.as_ref().is_some_and(|s| s.cluster_user_role.is_some());
    if held {
        release_deleted(ta, ctx).await;
    }
    AzureRole::NotManaged
}

async fn release(ctx: &Context, role: &ClusterUserRole, group: &str, by: &str) {
    let still_wanted = match wanted_groups(ctx).await {
        Ok(wanted) => wanted.iter().any(|w| w.by != by && w.group.eq_ignore_ascii_case(group)),
        Err(e) => {
            tracing::warn!(%group, error = %e, "cannot tell whether another TeamAccess wants the group; its Cluster User Role stays for now");
            return;
        }
    };
    if let Err(e) = role.release(group, by, still_wanted).await {
        tracing::warn!(%group, error = %e, "cannot remove the group's Cluster User Role assignment; the sweep tries again");
    }
}

/// The group a TeamAccess wants the role for at `now`: its pinned group, or
/// the objectId its spec names before one is pinned. None when it is being
/// deleted, opted out, or grants nothing at `now` (expired).
pub fn wanted_group(ta: &TeamAccess, now: jiff::Timestamp) -> Option<String> {
    let ended = expiry::judge(ta.spec.expires_at.as_deref(), now, Duration::ZERO).revocation("").is_some();
    if ta.metadata.deletion_timestamp.is_some() || !ta.spec.wants_cluster_user_role() || ended {
        return None;
    }
    ta.status
        .as_ref()
        .and_then(|s| s.group.as_ref())
        .map(|g| g.object_id.clone())
        .or_else(|| ta.spec.group.object_id.clone())
        .map(|g| g.to_ascii_lowercase())
}

/// A TeamAccess that wants its group to hold the role.
struct Wanted {
    by: String,
    /// The group's objectId, lower case.
    group: String,
}

/// Every TeamAccess that wants a group to hold the role: from the controller's
/// cache, or, when this operator reconciles only a shard (--selector), from a
/// list of all of them, since another shard's TeamAccess may want the same group.
async fn wanted_groups(ctx: &Context) -> Result<Vec<Wanted>, Error> {
    let now = jiff::Timestamp::now();
    let wanted = |tas: &mut dyn Iterator<Item = &TeamAccess>| {
        tas.filter_map(|ta| wanted_group(ta, now).map(|group| Wanted { by: ta.name_any(), group })).collect::<Vec<_>>()
    };
    // The cache has synced by now: reconciles run, and the sweep starts, only
    // after it did (crate::controller).
    if ctx.settings.selector.is_none() {
        return Ok(wanted(&mut ctx.caches.teamaccesses.state().iter().map(|ta| ta.as_ref())));
    }
    Ok(wanted(&mut every_teamaccess(&ctx.client).await?.iter()))
}

/// Every resync: lists the assignments at the cluster (the list every
/// TeamAccess then reads) and deletes those the operator made for groups no
/// TeamAccess wants. Runs until the controller stops.
pub async fn sweep_forever(ctx: Arc<Context>) {
    let Some(role) = ctx.identity.cluster_user_role.clone() else { return };
    let every = ctx.settings.resync.max(MIN_SWEEP_INTERVAL);
    loop {
        match wanted_groups(&ctx).await {
            Ok(wanted) => {
                let groups: HashSet<String> = wanted.into_iter().map(|w| w.group).collect();
                match role.sweep(&groups).await {
                    Ok(0) => tracing::debug!("Cluster User Role assignments checked"),
                    Ok(n) => tracing::info!(removed = n, "removed Cluster User Role assignments no TeamAccess wants"),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep the Cluster User Role assignments"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sweep the Cluster User Role assignments"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupSelector, ResolvedGroup, TeamAccessSpec, TeamAccessStatus};

    #[test]
    fn the_wanted_group_is_the_pin_or_the_objectid_and_none_when_going_or_opted_out() {
        let now = jiff::Timestamp::now();
        let wanted_group = |ta: &TeamAccess| wanted_group(ta, now);
        let mut ta = TeamAccess::new("t", TeamAccessSpec::new(GroupSelector::by_object_id("AAAA-1"), "dev"));
        assert_eq!(wanted_group(&ta).as_deref(), Some("aaaa-1"), "before a pin: the objectId named");
        ta.status = Some(TeamAccessStatus {
            group: Some(ResolvedGroup { object_id: "bbbb-2".into(), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(wanted_group(&ta).as_deref(), Some("bbbb-2"), "the pin wins");
        ta.spec.expires_at = Some((now + jiff::SignedDuration::from_secs(60)).to_string());
        assert_eq!(wanted_group(&ta).as_deref(), Some("bbbb-2"), "until it expires");
        ta.spec.expires_at = Some(now.to_string());
        assert_eq!(wanted_group(&ta), None, "expired");
        ta.spec.expires_at = Some("no time".into());
        assert_eq!(wanted_group(&ta), None, "not an instant: grants nothing");
        ta.spec.expires_at = None;
        ta.spec.cluster_user_role = Some(false);
        assert_eq!(wanted_group(&ta), None, "opted out");
        ta.spec.cluster_user_role = Some(true);
        ta.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert_eq!(wanted_group(&ta), None, "being deleted");
        let by_name = TeamAccess::new(
            "n",
            TeamAccessSpec::new(GroupSelector { display_name: Some("appdev".into()), ..Default::default() }, "dev"),
        );
        assert_eq!(wanted_group(&by_name), None, "a name not resolved yet names no group");
    }
}
