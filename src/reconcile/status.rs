//! Step 5, status: what a reconcile found out becomes status and Events.
//!
//! `compute` is pure and the only place a status is decided: from the `Outcome`
//! of the pipeline (or of a cleanup held back by the brake) and the object's
//! previous status it works out the new status and one Event per transition.
//! `super::publish` then only writes them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

use super::{
    apply::{Applied, ApplyFailed},
    azure_role::AzureRole,
    error::Error,
    expiry::Expiry,
    members::{self, MembersReport},
    profile::ProfileState,
    resolve::{GroupReport, Resolved, Unresolved},
};
use crate::api::{
    BindMode, ClusterUserRoleStatus, Reason, ResolvedGroup, TeamAccess, TeamAccessStatus,
    conditions::{
        self, CLUSTER_USER_ROLE, DesiredCondition, EXPIRING, GROUP_RESOLVED, MEMBERS_SYNCED, NAMESPACE_PROFILE, READY,
        RECONCILING, STALLED,
    },
};

/// An Event to publish about the TeamAccess.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
}

/// How the group lookup went, as GroupResolved reports it.
#[derive(Clone, Debug, PartialEq)]
enum GroupState {
    /// The policy refused the object before any lookup.
    NotLookedUp {
        previous: Option<ResolvedGroup>,
    },
    Found(GroupReport),
    /// The lookup failed; the pin for the current selector, if any, is kept.
    Failed {
        kept: Option<ResolvedGroup>,
        reason: Reason,
        message: String,
    },
}

/// How far the pipeline got for one TeamAccess, and why it stopped.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub ta: &'a TeamAccess,
    group: GroupState,
    /// What is in place after a successful apply; None keeps what status said.
    applied: Option<Applied>,
    /// The Role and RoleBinding were taken away (the namespace became protected).
    access_removed: bool,
    namespace_created: bool,
    /// The group's Azure Cluster User Role.
    azure: AzureRole,
    /// What spec.expiresAt said when the reconcile began.
    expiry: Expiry,
    /// spec.bind Members: the members bound, or why none could be.
    members: MembersReport,
    error: Option<Error>,
}

impl<'a> Outcome<'a> {
    /// The policy refused the object: nothing was looked up or created, and any
    /// access it had was taken away (`removal`); a failed removal is reported
    /// instead, so it is tried again.
    pub fn refused(ta: &'a TeamAccess, error: Error, removal: Result<(), Error>) -> Self {
        match removal {
            Ok(()) => Self::stopped_before_lookup(ta, error, true),
            Err(failed) => Self::stopped_before_lookup(ta, failed, false),
        }
    }

    /// The spec's author could not be named, or may not grant it, and granting
    /// it would change something: nothing was written, and what was granted
    /// before stays as it is (the group pin included).
    pub fn held(ta: &'a TeamAccess, error: Error) -> Self {
        Self::stopped_before_lookup(ta, error, false)
    }

    /// Stopped before any write: status keeps the group it had, and says
    /// whether the access was taken away.
    fn stopped_before_lookup(ta: &'a TeamAccess, error: Error, access_removed: bool) -> Self {
        let previous = ta.status.as_ref().and_then(|s| s.group.clone());
        Self {
            ta,
            group: GroupState::NotLookedUp { previous },
            applied: None,
            access_removed,
            namespace_created: false,
            azure: AzureRole::NotReached,
            expiry: Expiry::Never,
            members: MembersReport::NotReached,
            error: Some(error),
        }
    }

    /// Cleanup removed the access, and the brake holds the namespace's deletion
    /// back: the group and the Azure role as they were, no children, and why
    /// the namespace is still there.
    pub fn deletion_delayed(ta: &'a TeamAccess, delayed: Error) -> Self {
        Self::stopped_before_lookup(ta, delayed, true)
    }

    /// The directory could not resolve the group or a user: nothing was written.
    pub fn unresolved(ta: &'a TeamAccess, unresolved: Unresolved) -> Self {
        let (group, error) = match unresolved {
            Unresolved::Group { kept, error } => {
                (GroupState::Failed { kept, reason: error.reason(), message: error.to_string() }, error)
            }
            Unresolved::Users { group, error } => (GroupState::Found(group), error),
        };
        Self {
            ta,
            group,
            applied: None,
            access_removed: false,
            namespace_created: false,
            azure: AzureRole::NotReached,
            expiry: Expiry::Never,
            members: MembersReport::NotReached,
            error: Some(error),
        }
    }

    /// The group resolved, but its members (spec.bind Members) cannot be bound
    /// yet: nothing was written.
    pub fn members_unavailable(resolved: Resolved<'a>, error: Error) -> Self {
        Self {
            members: MembersReport::Unavailable,
            ..Self::unresolved(resolved.ta, Unresolved::Users { group: resolved.group, error })
        }
    }

    /// The group resolved and the children were applied, or applying failed.
    /// Users the directory does not know leave the object not Ready, while the
    /// rest of the access is in place.
    pub fn resolved(resolved: Resolved<'a>, applied: Result<Applied, ApplyFailed>) -> Self {
        let missing_users = (!resolved.missing_users.is_empty()).then(|| {
            Error::from(crate::directory::DirectoryError::UserNotFound { user: resolved.missing_users.join(", ") })
        });
        let (applied, namespace_created, error) = match applied {
            Ok(applied) => {
                let created = applied.namespace_created;
                let conflict = profile_conflict(&resolved.ta.spec.namespace, &applied.profile);
                (Some(applied), created, missing_users.or(conflict))
            }
            Err(failed) => (None, failed.namespace_created, Some(failed.error)),
        };
        Self {
            ta: resolved.ta,
            group: GroupState::Found(resolved.group),
            applied,
            access_removed: false,
            namespace_created,
            azure: AzureRole::NotReached,
            expiry: Expiry::Never,
            members: MembersReport::NotReached,
            error,
        }
    }

    /// What the members step found (spec.bind Members), for status.
    pub fn with_members(mut self, members: MembersReport) -> Self {
        self.members = members;
        self
    }

    /// What the Azure step found. A failure there leaves the object not Ready
    /// unless something else already does (the Kubernetes access is in place).
    pub fn with_azure_role(mut self, azure: AzureRole) -> Self {
        if let (None, AzureRole::Checked(Err(e))) = (&self.error, &azure) {
            self.error = Some(Error::Arm(e.clone()));
        }
        self.azure = azure;
        self
    }

    /// What spec.expiresAt said, for status (the time, the Expiring condition).
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// What spec.expiresAt said when the reconcile began.
    pub fn expiry(&self) -> &Expiry {
        &self.expiry
    }

    /// Why the reconcile did not end Ready, if it did not.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }
}

/// A profile other than the one in force asked for in a namespace another
/// TeamAccess created: the access is in place, the profile is not.
fn profile_conflict(namespace: &str, state: &ProfileState) -> Option<Error> {
    match state {
        ProfileState::NotOurs { wanted: Some(wanted), creator: Some(creator), in_force: Some(in_force) }
            if wanted != in_force =>
        {
            Some(Error::ProfileConflict {
                namespace: namespace.into(),
                creator: creator.clone(),
                in_force: in_force.clone(),
                wanted: wanted.clone(),
            })
        }
        _ => None,
    }
}

/// The status to write and the Events to publish for `outcome`.
pub fn compute(outcome: &Outcome, now: &Time) -> (TeamAccessStatus, Vec<Note>) {
    let ta = outcome.ta;
    let previous = ta.status.clone().unwrap_or_default();
    let desired = desired_conditions(outcome);
    let group = match &outcome.group {
        GroupState::NotLookedUp { previous } => previous.clone(),
        GroupState::Found(report) => Some(report.pin.clone()),
        GroupState::Failed { kept, .. } => kept.clone(),
    };
    let (role, role_binding, children) = match &outcome.applied {
        Some(applied) => (applied.role.clone(), Some(applied.role_binding.clone()), applied.children.clone()),
        None if outcome.access_removed => (None, None, Vec::new()),
        None => (previous.role.clone(), previous.role_binding.clone(), previous.children.clone()),
    };
    let cluster_user_role = match &outcome.azure {
        AzureRole::Checked(Ok(assignment)) => Some(ClusterUserRoleStatus {
            assignment_id: assignment.id.clone(),
            created_by_operator: assignment.by_operator,
        }),
        AzureRole::NotManaged => None,
        AzureRole::Checked(Err(_)) | AzureRole::NotReached => previous.cluster_user_role.clone(),
    };
    let generation = ta.metadata.generation;
    let mut conditions = conditions::merge(&previous.conditions, &desired, generation, now);
    // Not looked at this time: the condition says what it said.
    if outcome.azure == AzureRole::NotReached
        && let Some(kept) = conditions::find(&previous.conditions, CLUSTER_USER_ROLE)
    {
        conditions.push(kept.clone());
    }
    if outcome.applied.is_none()
        && let Some(kept) = conditions::find(&previous.conditions, NAMESPACE_PROFILE)
    {
        conditions.push(kept.clone());
    }
    let namespace_profile = match &outcome.applied {
        Some(applied) => applied.profile.in_force().map(String::from),
        None => previous.namespace_profile.clone(),
    };
    if ta.spec.bind == BindMode::Members
        && outcome.members == MembersReport::NotReached
        && let Some(kept) = conditions::find(&previous.conditions, MEMBERS_SYNCED)
    {
        conditions.push(kept.clone());
    }
    let members = match (&outcome.members, ta.spec.bind) {
        (_, BindMode::Group) => None,
        (MembersReport::Bound(m), _) => Some(members::status_of(m)),
        _ => previous.members.clone(),
    };
    let status = TeamAccessStatus {
        observed_generation: generation,
        group,
        namespace: Some(ta.spec.namespace.clone()),
        role,
        role_binding,
        cluster_user_role,
        children,
        // What a later cleanup may act on: the spec as a live reconcile saw it.
        // Once deletion began it stays as recorded: a deletionPolicy patched into
        // a terminating object never counts.
        deletion_policy: if ta.metadata.deletion_timestamp.is_some() {
            previous.deletion_policy
        } else {
            Some(ta.spec.deletion_policy)
        },
        expires_at: outcome.expiry.at().map(|at| at.to_string()),
        namespace_profile,
        members,
        conditions,
    };

    let notes = events(outcome, &previous.conditions, &desired);
    (status, notes)
}

/// The Events of `outcome`: one per transition, a rename of the group, and the
/// namespace's creation (folded into a first Ready's).
fn events(outcome: &Outcome, previous: &[Condition], desired: &[DesiredCondition]) -> Vec<Note> {
    let mut notes = transition_events(previous, desired);
    if let GroupState::Found(GroupReport { pin, renamed_from: Some(old), .. }) = &outcome.group {
        notes.push(Note {
            type_: EventType::Normal,
            reason: Reason::GroupRenamed,
            message: format!(
                "group {} was renamed from {old} to {}; the binding is unchanged",
                pin.object_id,
                pin.display_name.as_deref().unwrap_or("?")
            ),
        });
    }
    if let Some(Applied { profile: ProfileState::Applied { name, restored }, .. }) = &outcome.applied {
        notes.extend(restored.iter().map(|what| Note {
            type_: EventType::Warning,
            reason: Reason::ProfileRestored,
            message: format!(
                "{what} of namespace profile {name} had been deleted or changed in namespace {}; it is put back as the profile says",
                outcome.ta.spec.namespace
            ),
        }));
    }
    if outcome.namespace_created {
        // One Event per transition: a first Ready says the namespace was made too.
        let created = format!("created namespace {}", outcome.ta.spec.namespace);
        match notes.iter_mut().find(|n| n.reason == Reason::Reconciled) {
            Some(ready) => ready.message = format!("{}; {created}", ready.message),
            None => notes.push(Note { type_: EventType::Normal, reason: Reason::NamespaceCreated, message: created }),
        }
    }
    notes
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

/// Ready, then GroupResolved and ClusterUserRole when there is something to say,
/// then Reconciling or Stalled while the reconcile did not end Ready.
fn desired_conditions(outcome: &Outcome) -> Vec<DesiredCondition> {
    let mut desired = vec![ready_condition(outcome)];
    desired.extend(group_condition(outcome));
    desired.extend(cluster_user_role_condition(&outcome.azure));
    desired.extend(expiring_condition(&outcome.expiry));
    desired.extend(members_condition(outcome));
    if let Some(applied) = &outcome.applied {
        desired.extend(profile_condition(&outcome.ta.spec.namespace, &applied.profile));
    }
    if let Some(e) = &outcome.error {
        let kind = if e.is_transient() { RECONCILING } else { STALLED };
        desired.push(DesiredCondition::new(kind, true, e.reason(), e.to_string()));
    }
    desired
}

/// MembersSynced, for spec.bind Members once the members step ran: True with
/// the people bound, False while none could be read or the last read failed
/// (the members read before stay bound, and the message says since when).
fn members_condition(outcome: &Outcome) -> Option<DesiredCondition> {
    match &outcome.members {
        MembersReport::NotBound | MembersReport::NotReached => None,
        MembersReport::Bound(m) => Some(match &m.stale {
            None => DesiredCondition::new(
                MEMBERS_SYNCED,
                true,
                Reason::MembersSynced,
                format!(
                    "the RoleBinding names the group's {} member(s) as the directory gave them at {}",
                    m.subjects.len(),
                    m.synced_at
                ),
            ),
            Some(stale) => DesiredCondition::new(
                MEMBERS_SYNCED,
                false,
                Reason::MembersStale,
                format!(
                    "reading the group's members failed ({}: {}); the {} member(s) read at {} stay bound until a read succeeds",
                    stale.error.reason(),
                    stale.error,
                    m.subjects.len(),
                    stale.last_good
                ),
            ),
        }),
        MembersReport::Unavailable => {
            outcome.error.as_ref().map(|e| DesiredCondition::new(MEMBERS_SYNCED, false, e.reason(), e.to_string()))
        }
    }
}

fn ready_condition(outcome: &Outcome) -> DesiredCondition {
    let ta = outcome.ta;
    match (&outcome.error, &outcome.group) {
        (None, GroupState::Found(report)) => DesiredCondition::new(
            READY,
            true,
            Reason::Reconciled,
            format!(
                "group {} ({}) has {} in namespace {}{}{}",
                report.pin.display_name.as_deref().unwrap_or("?"),
                report.pin.object_id,
                describe_access(ta),
                ta.spec.namespace,
                if matches!(outcome.azure, AzureRole::Checked(Ok(_))) {
                    " and the Azure Kubernetes Service Cluster User Role on the cluster"
                } else {
                    ""
                },
                outcome.expiry.at().map(|at| format!(" until {at}")).unwrap_or_default()
            ),
        ),
        (Some(e), _) => DesiredCondition::new(READY, false, e.reason(), e.to_string()),
        // Not reachable: only a resolved group ends without an error.
        (None, _) => DesiredCondition::new(READY, false, Reason::ApplyFailed, "the group was not resolved"),
    }
}

fn group_condition(outcome: &Outcome) -> Option<DesiredCondition> {
    Some(match &outcome.group {
        GroupState::Found(report) if !report.security_enabled => DesiredCondition::new(
            GROUP_RESOLVED,
            true,
            Reason::GroupNotSecurityEnabled,
            format!(
                "group {} is not security-enabled: its members' tokens do not carry it in the groups claim, so the binding lets nobody in. Make it a security group",
                report.pin.object_id
            ),
        ),
        GroupState::Found(report) => DesiredCondition::new(
            GROUP_RESOLVED,
            true,
            Reason::Resolved,
            format!("{} resolved to group {}", outcome.ta.spec.group.describe(), report.pin.object_id),
        ),
        GroupState::Failed { reason, message, .. } => {
            DesiredCondition::new(GROUP_RESOLVED, false, *reason, message.clone())
        }
        GroupState::NotLookedUp { .. } => return None,
    })
}

fn cluster_user_role_condition(azure: &AzureRole) -> Option<DesiredCondition> {
    Some(match azure {
        AzureRole::Checked(Ok(assignment)) if assignment.by_operator => DesiredCondition::new(
            CLUSTER_USER_ROLE,
            true,
            Reason::Assigned,
            format!("the group holds the Azure Kubernetes Service Cluster User Role through {}", assignment.id),
        ),
        AzureRole::Checked(Ok(assignment)) => DesiredCondition::new(
            CLUSTER_USER_ROLE,
            true,
            Reason::AssignedByOther,
            format!(
                "the group holds the Azure Kubernetes Service Cluster User Role through {}, which this operator did not make and never removes",
                assignment.id
            ),
        ),
        AzureRole::Checked(Err(e)) => DesiredCondition::new(CLUSTER_USER_ROLE, false, e.reason(), e.to_string()),
        AzureRole::NotManaged | AzureRole::NotReached => return None,
    })
}

/// NamespaceProfile, when a profile is asked for or in force.
fn profile_condition(namespace: &str, state: &ProfileState) -> Option<DesiredCondition> {
    if let Some(conflict) = profile_conflict(namespace, state) {
        return Some(DesiredCondition::new(NAMESPACE_PROFILE, false, Reason::ProfileConflict, conflict.to_string()));
    }
    let (status, reason, message) = match state {
        ProfileState::None => return None,
        ProfileState::Applied { name, .. } => {
            (true, Reason::ProfileApplied, format!("namespace {namespace} carries namespace profile {name}"))
        }
        ProfileState::Predates { wanted } => (
            false,
            Reason::ProfileNotApplied,
            format!(
                "namespace {namespace} was created by this TeamAccess before namespace profiles were configured, so the default profile {wanted} is not applied to it on its own; set spec.namespaceProfile to apply one"
            ),
        ),
        // The profile asked for (or none) is the one in force: a conflict returned above.
        ProfileState::NotOurs { creator: Some(creator), in_force: Some(in_force), .. } => (
            true,
            Reason::ProfileApplied,
            format!(
                "namespace {namespace} carries namespace profile {in_force}, applied by TeamAccess {creator}, which created it"
            ),
        ),
        ProfileState::NotOurs { wanted: None, .. } => return None,
        ProfileState::NotOurs { wanted: Some(wanted), creator, .. } => (
            false,
            Reason::ProfileNotApplied,
            match creator {
                Some(creator) => format!(
                    "namespace {namespace} was created by TeamAccess {creator} without a namespace profile; a namespace has its creator's profile, so {wanted} is not applied"
                ),
                None => format!(
                    "namespace {namespace} existed before this TeamAccess, so namespace profile {wanted} is not applied: the operator never changes a namespace it did not create"
                ),
            },
        ),
    };
    Some(DesiredCondition::new(NAMESPACE_PROFILE, status, reason, message))
}

/// Expiring, while the grant is within its last --expiry-warning. The message
/// names the instant, not the time left, so status stays the same between
/// reconciles and the Warning Event goes out once, on entering the window.
fn expiring_condition(expiry: &Expiry) -> Option<DesiredCondition> {
    let Expiry::Until { at, warning: true, .. } = expiry else { return None };
    Some(DesiredCondition::new(
        EXPIRING,
        true,
        Reason::ExpiresSoon,
        format!(
            "this grant ends at {at} (spec.expiresAt): its RoleBinding and Role are removed then. To keep the access, move spec.expiresAt later or remove it"
        ),
    ))
}

/// One Event per Ready, GroupResolved, ClusterUserRole, Expiring or NamespaceProfile condition
/// whose status or reason changed; a failure that Ready already reports is not
/// repeated, and a plain successful resolution or assignment is not news
/// (Ready's says it).
fn transition_events(previous: &[Condition], desired: &[DesiredCondition]) -> Vec<Note> {
    let ready_reason = desired.iter().find(|d| d.type_ == READY).map(|d| d.reason);
    desired
        .iter()
        .filter(|d| [READY, GROUP_RESOLVED, CLUSTER_USER_ROLE, EXPIRING, NAMESPACE_PROFILE].contains(&d.type_))
        .filter(|d| {
            let status = if d.status { "True" } else { "False" };
            conditions::find(previous, d.type_)
                .is_none_or(|p| p.status != status || p.reason != Reason::as_str(d.reason))
        })
        .filter(|d| d.type_ == READY || Some(d.reason) != ready_reason)
        .filter(|d| {
            d.type_ == READY || !d.status || matches!(d.reason, Reason::GroupNotSecurityEnabled | Reason::ExpiresSoon)
        })
        .map(|d| {
            let healthy = d.status && matches!(d.reason, Reason::Reconciled | Reason::Resolved);
            let type_ = if healthy { EventType::Normal } else { EventType::Warning };
            Note { type_, reason: d.reason, message: d.message.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ChildRecord, GroupSelector, TeamAccessSpec},
        directory::DirectoryError,
    };

    const APPDEV: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

    fn seed_team() -> TeamAccess {
        let mut ta = TeamAccess::new(
            "appdev-dev",
            TeamAccessSpec::new(GroupSelector { display_name: Some("appdev".into()), ..Default::default() }, "dev"),
        );
        ta.metadata.generation = Some(1);
        ta
    }

    fn report(security_enabled: bool) -> GroupReport {
        GroupReport {
            pin: ResolvedGroup {
                object_id: APPDEV.into(),
                display_name: Some("appdev".into()),
                selector: Some("displayName=appdev".into()),
                resolved_at: None,
            },
            security_enabled,
            renamed_from: None,
        }
    }

    fn resolved(ta: &TeamAccess, group: GroupReport) -> Resolved<'_> {
        Resolved { ta, group, group_object_id: APPDEV.into(), user_subjects: vec![], missing_users: vec![] }
    }

    fn applied() -> Applied {
        Applied {
            role: Some("teamaccess-appdev-dev".into()),
            role_binding: "teamaccess-appdev-dev".into(),
            children: vec![ChildRecord {
                kind: "RoleBinding".into(),
                name: "teamaccess-appdev-dev".into(),
                uid: "binding-uid".into(),
            }],
            namespace_created: true,
            profile: ProfileState::None,
        }
    }

    fn now() -> Time {
        Time("2026-11-28T00:00:00Z".parse().unwrap())
    }

    fn condition<'a>(status: &'a TeamAccessStatus, type_: &str) -> Option<&'a Condition> {
        conditions::find(&status.conditions, type_)
    }

    #[test]
    fn success_is_ready_with_a_message_naming_group_and_namespace() {
        let ta = seed_team();
        let (status, notes) = compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(applied())), &now());
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Reconciled"));
        assert!(ready.message.contains("appdev (5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01)"), "{}", ready.message);
        assert!(ready.message.contains("namespace dev"));
        assert_eq!(condition(&status, GROUP_RESOLVED).unwrap().status, "True");
        assert_eq!(status.conditions.len(), 2, "no Reconciling or Stalled when healthy");
        assert_eq!(status.role_binding.as_deref(), Some("teamaccess-appdev-dev"));
        assert_eq!(status.group.as_ref().unwrap().object_id, APPDEV);
        let reasons: Vec<Reason> = notes.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [Reason::Reconciled], "one Event for the first Ready");
        assert!(notes[0].message.ends_with("; created namespace dev"), "{}", notes[0].message);
    }

    #[test]
    fn a_deletion_held_by_the_brake_says_so_once_and_keeps_the_recorded_deletion_policy() {
        let mut ta = seed_team();
        let (granted, _) = compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(applied())), &now());
        ta.status = Some(granted);
        // Patched while terminating (attack 3): must not become what was applied.
        ta.spec.deletion_policy = crate::api::DeletionPolicy::Retain;
        ta.metadata.deletion_timestamp = Some(now());
        let delayed = || Error::NamespaceDeletionDelayed {
            namespace: "dev".into(),
            wait: std::time::Duration::from_secs(30),
            max: 5,
            window: std::time::Duration::from_secs(60),
        };
        let (status, notes) = compute(&Outcome::deletion_delayed(&ta, delayed()), &now());
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NamespaceDeletionDelayed"));
        assert_eq!(condition(&status, RECONCILING).unwrap().reason, "NamespaceDeletionDelayed");
        assert!(condition(&status, STALLED).is_none(), "it goes by itself once the window has room");
        assert_eq!((status.role.clone(), status.role_binding.clone()), (None, None), "the access is removed");
        assert!(status.children.is_empty());
        assert_eq!(status.group.as_ref().unwrap().object_id, APPDEV, "the pin stays for the Azure release");
        assert_eq!(status.deletion_policy, Some(crate::api::DeletionPolicy::Delete), "as recorded before deletion");
        assert_eq!(notes.len(), 1, "one Warning the first time");
        assert_eq!((notes[0].type_, notes[0].reason), (EventType::Warning, Reason::NamespaceDeletionDelayed));
        ta.status = Some(status);
        let (_, again) = compute(&Outcome::deletion_delayed(&ta, delayed()), &now());
        assert!(again.is_empty(), "no Event while it keeps waiting");
    }

    #[test]
    fn a_transient_failure_is_reconciling_and_a_user_fixable_one_is_stalled() {
        let ta = seed_team();
        let throttled = Error::from(DirectoryError::Throttled { retry_after: None });
        let (status, _) =
            compute(&Outcome::unresolved(&ta, Unresolved::Group { kept: None, error: throttled }), &now());
        assert_eq!(condition(&status, RECONCILING).unwrap().reason, "GraphThrottled");
        assert!(condition(&status, STALLED).is_none());

        let protected = Error::ProtectedNamespace { namespace: "kube-system".into() };
        let (status, _) = compute(&Outcome::refused(&ta, protected, Ok(())), &now());
        assert_eq!(condition(&status, STALLED).unwrap().reason, "ProtectedNamespace");
        assert_eq!(condition(&status, READY).unwrap().status, "False");
        assert!(condition(&status, GROUP_RESOLVED).is_none(), "the group was never looked up");
    }

    #[test]
    fn a_failed_lookup_keeps_the_pin_and_the_children_status_had() {
        let mut ta = seed_team();
        ta.status = Some(TeamAccessStatus {
            group: Some(report(true).pin),
            role: Some("r".into()),
            role_binding: Some("rb".into()),
            ..Default::default()
        });
        let error = Error::from(DirectoryError::Unavailable { message: "down".into() });
        let outcome = Outcome::unresolved(
            &ta,
            Unresolved::Group { kept: crate::reconcile::resolve::pin_for(&ta).cloned(), error },
        );
        let (status, _) = compute(&outcome, &now());
        assert_eq!(status.group.as_ref().unwrap().object_id, APPDEV);
        assert_eq!((status.role.as_deref(), status.role_binding.as_deref()), (Some("r"), Some("rb")));
        assert_eq!(condition(&status, GROUP_RESOLVED).unwrap().reason, "GraphUnavailable");
    }

    #[test]
    fn unknown_users_leave_the_object_not_ready_while_the_group_is_bound() {
        let ta = seed_team();
        let mut r = resolved(&ta, report(true));
        r.missing_users = vec!["ghost@contoso.com".into()];
        let (status, _) = compute(&Outcome::resolved(r, Ok(applied())), &now());
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "UserNotFound"));
        assert!(ready.message.contains("ghost@contoso.com"));
        assert_eq!(status.role_binding.as_deref(), Some("teamaccess-appdev-dev"), "the rest is in place");
    }

    #[test]
    fn a_failed_apply_reports_its_reason_and_keeps_the_namespace_event() {
        let ta = seed_team();
        let failed = ApplyFailed { error: Error::ClusterRoleNotFound { name: "nope".into() }, namespace_created: true };
        let (status, notes) = compute(&Outcome::resolved(resolved(&ta, report(true)), Err(failed)), &now());
        assert_eq!(condition(&status, STALLED).unwrap().reason, "ClusterRoleNotFound");
        assert_eq!(condition(&status, GROUP_RESOLVED).unwrap().status, "True");
        assert!(notes.iter().any(|n| n.reason == Reason::NamespaceCreated));
    }

    fn with_profile(profile: ProfileState) -> Applied {
        Applied { profile, ..applied() }
    }

    #[test]
    fn a_profile_applied_is_in_status_and_a_restored_guardrail_is_a_warning() {
        let ta = seed_team();
        let restored = ProfileState::Applied {
            name: "standard".into(),
            restored: vec!["NetworkPolicy dev/teamaccess-profile-ingress".into()],
        };
        let (status, notes) =
            compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(restored))), &now());
        assert_eq!(status.namespace_profile.as_deref(), Some("standard"));
        assert_eq!(condition(&status, NAMESPACE_PROFILE).unwrap().reason, "ProfileApplied");
        assert_eq!(condition(&status, READY).unwrap().status, "True");
        let note = notes.iter().find(|n| n.reason == Reason::ProfileRestored).unwrap();
        assert_eq!(note.type_, EventType::Warning);
        assert!(note.message.contains("NetworkPolicy dev/teamaccess-profile-ingress"), "{}", note.message);
    }

    #[test]
    fn a_namespace_not_ours_says_why_its_profile_is_not_applied_and_a_conflict_is_not_ready() {
        let ta = seed_team();
        let existed = ProfileState::NotOurs { wanted: Some("standard".into()), creator: None, in_force: None };
        let (status, _) = compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(existed))), &now());
        let c = condition(&status, NAMESPACE_PROFILE).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ProfileNotApplied"));
        assert!(c.message.contains("existed before"), "{}", c.message);
        assert_eq!(condition(&status, READY).unwrap().status, "True", "the access is granted");
        assert_eq!(status.namespace_profile, None);

        let shared = |wanted: Option<&str>| ProfileState::NotOurs {
            wanted: wanted.map(String::from),
            creator: Some("first".into()),
            in_force: Some("open".into()),
        };
        let (status, _) =
            compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(shared(Some("open"))))), &now());
        assert_eq!(condition(&status, NAMESPACE_PROFILE).unwrap().reason, "ProfileApplied", "the same profile");
        assert_eq!(status.namespace_profile.as_deref(), Some("open"));

        let outcome = Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(shared(Some("standard")))));
        let (status, _) = compute(&outcome, &now());
        assert_eq!(condition(&status, NAMESPACE_PROFILE).unwrap().reason, "ProfileConflict");
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ProfileConflict"));
        assert_eq!(condition(&status, STALLED).unwrap().reason, "ProfileConflict");
        assert_eq!(status.role_binding.as_deref(), Some("teamaccess-appdev-dev"), "the access is in place");

        let (status, _) =
            compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(ProfileState::None))), &now());
        assert!(condition(&status, NAMESPACE_PROFILE).is_none(), "no profile asked, none in force");
    }

    #[test]
    fn a_namespace_made_before_profiles_keeps_going_without_the_default() {
        let ta = seed_team();
        let predates = ProfileState::Predates { wanted: "standard".into() };
        let (status, _) = compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(with_profile(predates))), &now());
        let c = condition(&status, NAMESPACE_PROFILE).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ProfileNotApplied"));
        assert!(c.message.contains("set spec.namespaceProfile"), "{}", c.message);
    }

    #[test]
    fn a_group_that_is_not_security_enabled_is_resolved_with_a_warning() {
        let ta = seed_team();
        let (status, notes) = compute(&Outcome::resolved(resolved(&ta, report(false)), Ok(applied())), &now());
        assert_eq!(condition(&status, GROUP_RESOLVED).unwrap().reason, "GroupNotSecurityEnabled");
        assert!(notes.iter().any(|n| n.type_ == EventType::Warning && n.reason == Reason::GroupNotSecurityEnabled));
    }

    #[test]
    fn a_rename_is_announced() {
        let ta = seed_team();
        let mut renamed = report(true);
        renamed.renamed_from = Some("old-appdev".into());
        let (_, notes) = compute(&Outcome::resolved(resolved(&ta, renamed), Ok(applied())), &now());
        let note = notes.iter().find(|n| n.reason == Reason::GroupRenamed).unwrap();
        assert!(note.message.contains("from old-appdev to appdev"), "{}", note.message);
    }

    #[test]
    fn events_fire_on_transitions_only() {
        let mut ta = seed_team();
        let err = Error::from(DirectoryError::GroupNotFound { selector: "displayName=appdev".into() });
        let (status, first) = compute(&Outcome::unresolved(&ta, Unresolved::Group { kept: None, error: err }), &now());
        assert_eq!(first.len(), 1, "GroupResolved repeats Ready's reason: one event, {first:?}");
        assert_eq!((first[0].type_, first[0].reason), (EventType::Warning, Reason::GroupNotFound));

        ta.status = Some(status.clone());
        let err = Error::from(DirectoryError::GroupNotFound { selector: "displayName=appdev".into() });
        let (again, notes) = compute(&Outcome::unresolved(&ta, Unresolved::Group { kept: None, error: err }), &now());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(again, status, "the same failure writes identical status");
    }

    #[test]
    fn access_taken_back_from_a_newly_protected_namespace_leaves_status_without_children() {
        let mut ta = seed_team();
        ta.status =
            Some(TeamAccessStatus { role: Some("r".into()), role_binding: Some("rb".into()), ..Default::default() });
        let protected = || Error::ProtectedNamespace { namespace: "dev".into() };
        let (status, _) = compute(&Outcome::refused(&ta, protected(), Ok(())), &now());
        assert_eq!((status.role.as_deref(), status.role_binding.as_deref()), (None, None));
        assert_eq!(condition(&status, STALLED).unwrap().reason, "ProtectedNamespace");
        // A removal that failed is what the object reports, and status keeps the children.
        let failed = Err(Error::Forbidden { action: "delete RoleBinding dev/rb".into(), message: "no".into() });
        let (status, _) = compute(&Outcome::refused(&ta, protected(), failed), &now());
        assert_eq!(status.role_binding.as_deref(), Some("rb"));
        assert_eq!(condition(&status, READY).unwrap().reason, "Forbidden");
    }

    #[test]
    fn a_grant_entering_its_warning_window_warns_once_and_stays_ready() {
        let mut ta = seed_team();
        let at: jiff::Timestamp = "2026-11-28T18:00:00Z".parse().unwrap();
        let expiring = || Expiry::Until { at, warn_from: "2026-11-27T18:00:00Z".parse().unwrap(), warning: true };
        fn granted(ta: &TeamAccess, expiry: Expiry) -> Outcome<'_> {
            Outcome::resolved(resolved(ta, report(true)), Ok(applied())).with_expiry(expiry)
        }
        let (status, notes) = compute(&granted(&ta, expiring()), &now());
        assert_eq!(condition(&status, READY).unwrap().status, "True");
        assert!(condition(&status, READY).unwrap().message.ends_with(" until 2026-11-28T18:00:00Z"));
        let warning = condition(&status, EXPIRING).expect("the Expiring condition");
        assert_eq!((warning.status.as_str(), warning.reason.as_str()), ("True", "ExpiresSoon"));
        assert_eq!(status.expires_at.as_deref(), Some("2026-11-28T18:00:00Z"));
        let warnings: Vec<_> = notes.iter().filter(|n| n.reason == Reason::ExpiresSoon).collect();
        assert_eq!(warnings.len(), 1, "{notes:?}");
        assert_eq!(warnings[0].type_, EventType::Warning);

        ta.status = Some(status.clone());
        let (again, notes) = compute(&granted(&ta, expiring()), &now());
        assert!(!notes.iter().any(|n| n.reason == Reason::ExpiresSoon), "no second Warning in the window: {notes:?}");
        assert_eq!(again, status, "the same state writes identical status");
    }

    #[test]
    fn an_expired_grant_is_stalled_without_children_and_keeps_its_pin() {
        let mut ta = seed_team();
        let (granted, _) = compute(&Outcome::resolved(resolved(&ta, report(true)), Ok(applied())), &now());
        ta.status = Some(granted);
        let expiry = Expiry::Expired { at: "2026-11-27T18:00:00Z".parse().unwrap() };
        let error = expiry.revocation("dev").unwrap();
        let (status, notes) = compute(&Outcome::refused(&ta, error, Ok(())).with_expiry(expiry), &now());
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Expired"));
        assert_eq!(condition(&status, STALLED).unwrap().reason, "Expired", "renewal needs the user");
        assert!(condition(&status, EXPIRING).is_none(), "Ready says it now");
        assert_eq!((status.role.clone(), status.role_binding.clone()), (None, None));
        assert!(status.children.is_empty());
        assert_eq!(status.group.as_ref().unwrap().object_id, APPDEV, "renewal binds the same group");
        assert_eq!(status.expires_at.as_deref(), Some("2026-11-27T18:00:00Z"));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].type_, notes[0].reason), (EventType::Warning, Reason::Expired));
    }

    fn members(stale: Option<DirectoryError>) -> crate::directory::members::Membership {
        let at = |secs| jiff::Timestamp::from_second(secs).unwrap();
        crate::directory::members::Membership {
            subjects: vec!["ann@contoso.com".into(), "0b9c".into()],
            users: 1,
            guests: 1,
            service_principals: 0,
            nested_groups: 2,
            synced_at: at(100),
            stale: stale.map(|error| crate::directory::members::Stale { error, last_good: at(90) }),
        }
    }

    fn members_team() -> TeamAccess {
        let mut ta = seed_team();
        ta.spec.bind = crate::api::BindMode::Members;
        ta
    }

    #[test]
    fn bound_members_are_counted_and_synced() {
        let ta = members_team();
        let outcome = Outcome::resolved(resolved(&ta, report(true)), Ok(applied()))
            .with_members(MembersReport::Bound(members(None)));
        let (status, _) = compute(&outcome, &now());
        let synced = condition(&status, MEMBERS_SYNCED).unwrap();
        assert_eq!((synced.status.as_str(), synced.reason.as_str()), ("True", "MembersSynced"));
        assert!(
            synced.message.contains("2 member(s)") && synced.message.contains("1970-01-01T00:01:40Z"),
            "{}",
            synced.message
        );
        let counts = status.members.clone().unwrap();
        assert_eq!((counts.total, counts.users, counts.guests, counts.nested_groups), (2, 1, 1, 2));
        assert_eq!(counts.synced_at.as_deref(), Some("1970-01-01T00:01:40Z"));
        assert_eq!(condition(&status, READY).unwrap().status, "True");
    }

    #[test]
    fn a_failed_read_is_said_with_the_last_good_read_and_ready_stays() {
        let ta = members_team();
        let outcome = Outcome::resolved(resolved(&ta, report(true)), Ok(applied()))
            .with_members(MembersReport::Bound(members(Some(DirectoryError::Throttled { retry_after: None }))));
        let (status, _) = compute(&outcome, &now());
        let synced = condition(&status, MEMBERS_SYNCED).unwrap();
        assert_eq!((synced.status.as_str(), synced.reason.as_str()), ("False", "MembersStale"));
        assert!(
            synced.message.contains("GraphThrottled") && synced.message.contains("1970-01-01T00:01:30Z"),
            "{}",
            synced.message
        );
        assert_eq!(condition(&status, READY).unwrap().status, "True", "the access in place is what was granted");
    }

    #[test]
    fn members_not_read_yet_hold_the_object_and_keep_what_status_said() {
        let mut ta = members_team();
        let (before, _) = compute(
            &Outcome::resolved(resolved(&ta, report(true)), Ok(applied()))
                .with_members(MembersReport::Bound(members(None))),
            &now(),
        );
        ta.status = Some(before.clone());
        let pending = Error::MembersPending { group: APPDEV.into(), failure: None };
        let (status, _) = compute(&Outcome::members_unavailable(resolved(&ta, report(true)), pending), &now());
        let synced = condition(&status, MEMBERS_SYNCED).unwrap();
        assert_eq!((synced.status.as_str(), synced.reason.as_str()), ("False", "MembersPending"));
        assert_eq!(condition(&status, RECONCILING).unwrap().reason, "MembersPending");
        assert_eq!(status.members, before.members, "the counts of what is bound stay");
        assert_eq!(status.role_binding, before.role_binding);
        // A reconcile that stopped before the members step says what was said.
        let outage = Error::Directory(DirectoryError::Unavailable { message: "503".into() });
        let stopped = Outcome::unresolved(&ta, Unresolved::Group { kept: Some(report(true).pin), error: outage });
        let (status, _) = compute(&stopped, &now());
        assert_eq!(condition(&status, MEMBERS_SYNCED), condition(&before, MEMBERS_SYNCED));
        assert_eq!(status.members, before.members);
    }

    #[test]
    fn group_mode_shows_no_members() {
        let mut ta = members_team();
        let (before, _) = compute(
            &Outcome::resolved(resolved(&ta, report(true)), Ok(applied()))
                .with_members(MembersReport::Bound(members(None))),
            &now(),
        );
        ta.status = Some(before);
        ta.spec.bind = crate::api::BindMode::Group;
        let (status, _) = compute(
            &Outcome::resolved(resolved(&ta, report(true)), Ok(applied())).with_members(MembersReport::NotBound),
            &now(),
        );
        assert!(status.members.is_none());
        assert!(condition(&status, MEMBERS_SYNCED).is_none());
    }
}
