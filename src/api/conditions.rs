//! kstatus-shaped conditions: `Ready` with the generation it describes, plus the
//! abnormal-true conditions `Reconciling` and `Stalled`, present only while true.
//! Flux health checks, Argo CD and `kubectl wait --for=condition=Ready` read these.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reason::Reason;

pub const READY: &str = "Ready";
pub const GROUP_RESOLVED: &str = "GroupResolved";
/// Whether the group holds the Azure Kubernetes Service Cluster User Role (only
/// when the operator manages it: --aks-cluster-resource-id).
pub const CLUSTER_USER_ROLE: &str = "ClusterUserRole";
/// Present (True) while a grant with spec.expiresAt is within its last
/// --expiry-warning, so a team is told before it is locked out.
pub const EXPIRING: &str = "Expiring";
/// Whether the namespace carries the namespace profile this TeamAccess asks for
/// (present when a profile is asked for, or configured as the default).
pub const NAMESPACE_PROFILE: &str = "NamespaceProfile";
/// spec.bind Members: whether the RoleBinding names the group's members as the
/// directory last gave them, and when that read was.
pub const MEMBERS_SYNCED: &str = "MembersSynced";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// A condition to set, before its transition time is worked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: bool,
    /// One of a closed set (condition and event reasons are never free text).
    pub reason: Reason,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Turns desired conditions into API conditions. `lastTransitionTime` moves only
/// when a condition's status flips, so an unchanged state writes identical status.
pub fn merge(
    previous: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.as_str().to_string(),
                // The API server caps condition messages at 32768 bytes.
                message: truncate(&d.message, 32 * 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_moves_when_it_flips() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-02T00:00:00Z");
        let first = merge(&[], &[DesiredCondition::new(READY, false, Reason::GroupNotFound, "m")], Some(1), &t0);
        let same = merge(&first, &[DesiredCondition::new(READY, false, Reason::AmbiguousGroup, "m2")], Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(same[0].reason, "AmbiguousGroup");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[DesiredCondition::new(READY, true, Reason::Reconciled, "ok")], Some(2), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(20_000);
        let c = merge(
            &[],
            &[DesiredCondition::new(READY, false, Reason::ApplyFailed, long)],
            None,
            &time("2026-01-01T00:00:00Z"),
        );
        assert!(c[0].message.len() <= 32 * 1024);
    }
}
