//! Reports the outcome of a reconcile: status (written only when it changed, so an
//! idle resync writes nothing) and an event on every transition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};

use super::{Context, Error, FIELD_MANAGER};
use crate::api::{
    ResolvedGroup, TeamAccess, TeamAccessStatus,
    conditions::{self, DesiredCondition, GROUP_RESOLVED, READY, RECONCILING, STALLED},
};

/// What a reconcile found out, beyond success or failure.
#[derive(Debug, Default)]
pub struct Report {
    /// The group status should show: newly resolved, or the pinned one on failure.
    pub group: Option<ResolvedGroup>,
    /// Outcome of the group lookup as (reason, message); None when not attempted.
    pub group_outcome: Option<Result<(), (&'static str, String)>>,
    /// The resolved group is not security-enabled, so tokens do not carry it.
    pub security_disabled: bool,
    pub role: Option<String>,
    pub role_binding: Option<String>,
    /// Events beyond the condition transitions, such as a renamed group.
    pub events: Vec<(EventType, &'static str, String)>,
}

impl Report {
    /// Starts from what status says now, so a failed step keeps what was in place.
    pub fn for_object(ta: &TeamAccess) -> Self {
        let status = ta.status.clone().unwrap_or_default();
        Self { group: status.group, role: status.role, role_binding: status.role_binding, ..Default::default() }
    }
}

/// A short description of the access granted, for the Ready message.
fn describe_access(ta: &TeamAccess) -> String {
    match (&ta.spec.cluster_role, &ta.spec.rules, &ta.spec.verbs) {
        (Some(cr), _, _) => format!("ClusterRole {cr}"),
        (_, Some(rules), _) => format!("{} custom rule(s)", rules.len()),
        (_, _, Some(verbs)) => format!("verbs [{}]", verbs.join(", ")),
        _ => "no access".into(),
    }
}

pub fn desired_conditions(ta: &TeamAccess, report: &Report, outcome: &Result<(), Error>) -> Vec<DesiredCondition> {
    let mut desired = Vec::with_capacity(3);
    desired.push(match outcome {
        Ok(()) => {
            let group = report.group.as_ref();
            DesiredCondition::new(
                READY,
                true,
                "Reconciled",
                format!(
                    "group {} ({}) has {} in namespace {}",
                    group.and_then(|g| g.display_name.as_deref()).unwrap_or("?"),
                    group.map(|g| g.object_id.as_str()).unwrap_or("?"),
                    describe_access(ta),
                    ta.spec.namespace
                ),
            )
        }
        Err(e) => DesiredCondition::new(READY, false, e.reason(), e.to_string()),
    });
    match &report.group_outcome {
        Some(Ok(())) => {
            let group = report.group.as_ref();
            let id = group.map(|g| g.object_id.as_str()).unwrap_or("?");
            desired.push(if report.security_disabled {
                DesiredCondition::new(
                    GROUP_RESOLVED,
                    true,
                    "GroupNotSecurityEnabled",
                    format!(
                        "group {id} is not security-enabled: its members' tokens do not carry it in the groups claim, so the binding lets nobody in. Make it a security group"
                    ),
                )
            } else {
                DesiredCondition::new(
                    GROUP_RESOLVED,
                    true,
                    "Resolved",
                    format!("{} resolved to group {id}", ta.spec.group.describe()),
                )
            });
        }
        Some(Err((reason, message))) => {
            desired.push(DesiredCondition::new(GROUP_RESOLVED, false, reason, message.clone()))
        }
        None => {}
    }
    if let Err(e) = outcome {
        let kind = if e.is_transient() { RECONCILING } else { STALLED };
        desired.push(DesiredCondition::new(kind, true, e.reason(), e.to_string()));
    }
    desired
}

/// Writes status when it changed and publishes an event for each transition.
pub async fn publish(
    ta: &TeamAccess,
    ctx: &Context,
    report: &Report,
    outcome: &Result<(), Error>,
) -> Result<(), Error> {
    let previous = ta.status.clone().unwrap_or_default();
    let generation = ta.metadata.generation;
    let desired = desired_conditions(ta, report, outcome);
    let now = Time(jiff::Timestamp::now());
    let status = TeamAccessStatus {
        observed_generation: generation,
        group: report.group.clone(),
        namespace: Some(ta.spec.namespace.clone()),
        role: report.role.clone(),
        role_binding: report.role_binding.clone(),
        conditions: conditions::merge(&previous.conditions, &desired, generation, &now),
    };

    if status != previous {
        let api = Api::<TeamAccess>::all(ctx.client.clone());
        let patch = serde_json::json!({
            "apiVersion": TeamAccess::api_version(&()),
            "kind": TeamAccess::kind(&()),
            "status": status,
        });
        api.patch_status(&ta.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::kube("update TeamAccess status", e))?;
    }

    let mut events = transition_events(&previous.conditions, &desired);
    events.extend(report.events.iter().cloned());
    for (type_, reason, note) in events {
        let event =
            Event { type_, reason: reason.to_string(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = ctx.recorder.publish(&event, &ta.object_ref(&())).await {
            tracing::warn!(teamaccess = %ta.name_any(), error = %e, "cannot publish event");
        }
    }
    Ok(())
}

/// One event per Ready or GroupResolved condition whose status or reason changed;
/// a GroupResolved failure that Ready already reports is not repeated.
fn transition_events(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    desired: &[DesiredCondition],
) -> Vec<(EventType, &'static str, String)> {
    let ready_reason = desired.iter().find(|d| d.type_ == READY).map(|d| d.reason);
    desired
        .iter()
        .filter(|d| d.type_ == READY || d.type_ == GROUP_RESOLVED)
        .filter(|d| {
            let status = if d.status { "True" } else { "False" };
            conditions::find(previous, d.type_).is_none_or(|p| p.status != status || p.reason != d.reason)
        })
        .filter(|d| d.type_ == READY || Some(d.reason) != ready_reason)
        .filter(|d| !(d.type_ == GROUP_RESOLVED && d.status && d.reason == "Resolved"))
        .map(|d| {
            let healthy = d.status && (d.reason == "Reconciled" || d.reason == "Resolved");
            let type_ = if healthy { EventType::Normal } else { EventType::Warning };
            (type_, d.reason, d.message.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{GroupSelector, TeamAccessSpec},
        directory::DirectoryError,
    };

    fn seed_team() -> TeamAccess {
        TeamAccess::new(
            "appdev-dev",
            TeamAccessSpec::new(GroupSelector { display_name: Some("appdev".into()), ..Default::default() }, "dev"),
        )
    }

    fn resolved_report() -> Report {
        Report {
            group: Some(ResolvedGroup {
                object_id: "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01".into(),
                display_name: Some("appdev".into()),
                selector: Some("displayName=appdev".into()),
                resolved_at: None,
            }),
            group_outcome: Some(Ok(())),
            ..Default::default()
        }
    }

    #[test]
    fn success_is_ready_with_a_message_naming_group_and_namespace() {
        let conds = desired_conditions(&seed_team(), &resolved_report(), &Ok(()));
        assert_eq!(conds.len(), 2);
        assert_eq!((conds[0].type_, conds[0].status, conds[0].reason), (READY, true, "Reconciled"));
        assert!(conds[0].message.contains("appdev (5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01)"));
        assert!(conds[0].message.contains("namespace dev"));
        assert_eq!((conds[1].type_, conds[1].status), (GROUP_RESOLVED, true));
    }

    #[test]
    fn a_transient_failure_is_reconciling_and_a_user_fixable_one_is_stalled() {
        let throttled: Result<(), Error> = Err(DirectoryError::Throttled { retry_after: None }.into());
        let conds = desired_conditions(&seed_team(), &Report::default(), &throttled);
        assert!(conds.iter().any(|c| c.type_ == RECONCILING && c.status && c.reason == "GraphThrottled"));
        assert!(!conds.iter().any(|c| c.type_ == STALLED));

        let protected: Result<(), Error> = Err(Error::ProtectedNamespace { namespace: "kube-system".into() });
        let conds = desired_conditions(&seed_team(), &Report::default(), &protected);
        assert!(conds.iter().any(|c| c.type_ == STALLED && c.reason == "ProtectedNamespace"));
        assert!(conds.iter().any(|c| c.type_ == READY && !c.status));
        assert!(!conds.iter().any(|c| c.type_ == GROUP_RESOLVED), "the group was never looked up");
    }

    #[test]
    fn a_group_that_is_not_security_enabled_is_resolved_with_a_warning() {
        let mut report = resolved_report();
        report.security_disabled = true;
        let conds = desired_conditions(&seed_team(), &report, &Ok(()));
        let events = transition_events(&[], &conds);
        assert!(events.iter().any(|(t, r, _)| *t == EventType::Warning && *r == "GroupNotSecurityEnabled"));
    }

    #[test]
    fn events_fire_on_transitions_only() {
        let now = Time(jiff::Timestamp::now());
        let err: Result<(), Error> =
            Err(DirectoryError::GroupNotFound { selector: "displayName=appdev".into() }.into());
        let report = Report { group_outcome: Some(Err(("GroupNotFound", "m".into()))), ..Default::default() };
        let desired = desired_conditions(&seed_team(), &report, &err);
        let first = transition_events(&[], &desired);
        assert_eq!(first.len(), 1, "GroupResolved repeats Ready's reason: one event, {first:?}");
        assert_eq!((first[0].0, first[0].1), (EventType::Warning, "GroupNotFound"));
        let written = conditions::merge(&[], &desired, Some(1), &now);
        assert!(transition_events(&written, &desired).is_empty());
    }
}
