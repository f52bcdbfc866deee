//! Step 2, resolve: the group and users of a TeamAccess through the directory,
//! holding to the objectId pinned in status.
//!
//! The first objectId found is pinned; afterwards the pinned group is verified by
//! objectId, so a rename is followed while a group deleted and re-created under
//! the same name is never bound silently. The decisions are the pure functions
//! `pin_for`, `judge_lost_pin` and `repin`; `resolve` only carries out lookups.

use super::{error::Error, validate::Validated};
use crate::{
    api::{GroupSelector, ResolvedGroup, TeamAccess, UserRef},
    directory::{Directory, DirectoryError, DirectoryGroup, DirectoryUser},
};

/// The group as status will show it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupReport {
    pub pin: ResolvedGroup,
    /// Only security-enabled groups appear in a token's groups claim.
    pub security_enabled: bool,
    /// The display name before a rename seen in this reconcile.
    pub renamed_from: Option<String>,
}

/// A TeamAccess whose group (and users) the directory knows.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub ta: &'a TeamAccess,
    pub group: GroupReport,
    /// The objectId the RoleBinding names.
    pub group_object_id: String,
    /// Subject names of the users the directory knows.
    pub user_subjects: Vec<String>,
    /// Users the directory does not know: not bound, reported.
    pub missing_users: Vec<String>,
}

/// Why a TeamAccess could not be resolved. Bindings stay as they are.
#[derive(Debug)]
pub enum Unresolved {
    /// The group lookup failed; the previous pin stays in status.
    Group { kept: Option<ResolvedGroup>, error: Error },
    /// The group resolved, but a user lookup failed other than by "not found".
    Users { group: GroupReport, error: Error },
}

/// `strict_names`: --strict-group-names (`trust_name`).
pub async fn resolve<'a>(
    validated: Validated<'a>,
    directory: &dyn Directory,
    strict_names: bool,
) -> Result<Resolved<'a>, Unresolved> {
    let ta = validated.ta();
    let pin = pin_for(ta);
    let found = match find_group(ta, pin, directory).await {
        Ok(found) if strict_names => match trust_name(&ta.spec.group, &found) {
            Ok(()) => found,
            Err(error) => return Err(Unresolved::Group { kept: pin.cloned(), error }),
        },
        Ok(found) => found,
        Err(error) => return Err(Unresolved::Group { kept: pin.cloned(), error }),
    };
    let group = repin(pin, &found, &ta.spec.group.describe(), jiff::Timestamp::now());
    let mut user_subjects = Vec::new();
    let mut missing_users = Vec::new();
    for user in &ta.spec.users {
        match directory.resolve_user(user).await {
            Ok(found) => user_subjects.push(user_subject_name(user, &found)),
            Err(DirectoryError::UserNotFound { user }) => missing_users.push(user),
            Err(e) => return Err(Unresolved::Users { group, error: e.into() }),
        }
    }
    Ok(Resolved { ta, group, group_object_id: found.object_id, user_subjects, missing_users })
}

/// Whether a group found by name may be bound under --strict-group-names: it is
/// security-enabled, no ordinary user could have created it (users may create
/// security groups, so anyone could make one named like a privileged team,
/// before or after the TeamAccess), and its name is the selector's exactly
/// (Graph's `eq` ignores case). Checked at every lookup, pinned or not, since
/// onPremisesSyncEnabled can change. objectId selectors need no trust in names.
pub fn trust_name(selector: &GroupSelector, found: &DirectoryGroup) -> Result<(), Error> {
    let exact = match (&selector.object_id, &selector.display_name, &selector.mail_nickname) {
        (Some(_), _, _) => return Ok(()),
        (None, Some(name), _) => *name == found.display_name,
        (None, None, Some(nick)) => found.mail_nickname.as_deref() == Some(nick.as_str()),
        (None, None, None) => false,
    };
    let why = if !found.security_enabled {
        "is not security-enabled"
    } else if found.could_be_squatted() {
        "any user could have created (neither isAssignableToRole nor onPremisesSyncEnabled)"
    } else if !exact {
        "is spelled differently (the directory matches names without regard to case)"
    } else {
        return Ok(());
    };
    Err(Error::GroupNameNotTrusted {
        selector: selector.describe(),
        object_id: found.object_id.clone(),
        display_name: found.display_name.clone(),
        why: why.into(),
    })
}

/// Looks the group up by selector the first time, by the pinned objectId after.
async fn find_group(
    ta: &TeamAccess,
    pin: Option<&ResolvedGroup>,
    directory: &dyn Directory,
) -> Result<DirectoryGroup, Error> {
    let Some(pin) = pin else {
        return Ok(directory.resolve_group(&ta.spec.group).await?);
    };
    match directory.resolve_group(&GroupSelector::by_object_id(&pin.object_id)).await {
        Err(DirectoryError::GroupNotFound { .. }) => {
            // The pinned group is gone: say whether the selector now names another.
            let now = directory.resolve_group(&ta.spec.group).await;
            Err(judge_lost_pin(&ta.spec.group.describe(), pin, now))
        }
        other => Ok(other?),
    }
}

/// The pin that holds for the object's current selector. A pin made for another
/// selector does not: changing spec.group is the deliberate act that lets
/// another group be bound.
pub fn pin_for(ta: &TeamAccess) -> Option<&ResolvedGroup> {
    let selector = ta.spec.group.describe();
    ta.status.as_ref()?.group.as_ref().filter(|g| g.selector.as_deref() == Some(selector.as_str()))
}

/// The error for a pinned group that is no longer in the directory, given what
/// the selector resolves to now.
pub fn judge_lost_pin(selector: &str, pin: &ResolvedGroup, now: Result<DirectoryGroup, DirectoryError>) -> Error {
    let missing = || Error::GroupMissing { selector: selector.to_string(), pinned: pin.object_id.clone() };
    match now {
        Ok(other) if other.object_id != pin.object_id => Error::GroupChanged {
            selector: selector.to_string(),
            pinned: pin.object_id.clone(),
            resolved: other.object_id,
        },
        Ok(_) | Err(DirectoryError::GroupNotFound { .. } | DirectoryError::AmbiguousGroup { .. }) => missing(),
        Err(e) => e.into(),
    }
}

/// The pin after a successful lookup: `resolvedAt` moves only when something
/// changed, so an idle resync writes identical status; a new display name is
/// reported as a rename.
pub fn repin(pin: Option<&ResolvedGroup>, found: &DirectoryGroup, selector: &str, now: jiff::Timestamp) -> GroupReport {
    let unchanged = pin.filter(|p| p.display_name.as_deref() == Some(found.display_name.as_str()));
    let renamed_from = match (pin, unchanged) {
        (Some(p), None) => Some(p.display_name.clone().unwrap_or_else(|| "?".into())),
        _ => None,
    };
    GroupReport {
        pin: ResolvedGroup {
            object_id: found.object_id.clone(),
            display_name: Some(found.display_name.clone()),
            selector: Some(selector.to_string()),
            resolved_at: Some(unchanged.and_then(|p| p.resolved_at.clone()).unwrap_or_else(|| now.to_string())),
        },
        security_enabled: found.security_enabled,
        renamed_from,
    }
}

/// The subject name of a user: the UPN for members of the cluster's tenant, the
/// objectId for guests, and the objectId when that is how spec.users names them.
pub fn user_subject_name(requested: &UserRef, user: &DirectoryUser) -> String {
    if requested.object_id.is_some() || user.is_guest() {
        user.object_id.clone()
    } else {
        user.user_principal_name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Reason, TeamAccessSpec, TeamAccessStatus};

    const PINNED: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";
    const OTHER: &str = "7c2e4b91-3d5a-4f60-8b1c-2e9d0a4f6b02";

    fn by_name(name: &str) -> GroupSelector {
        GroupSelector { display_name: Some(name.into()), ..Default::default() }
    }

    fn pin(selector: &str, name: &str) -> ResolvedGroup {
        ResolvedGroup {
            object_id: PINNED.into(),
            display_name: Some(name.into()),
            selector: Some(selector.into()),
            resolved_at: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    fn group(id: &str, name: &str) -> DirectoryGroup {
        DirectoryGroup {
            object_id: id.into(),
            display_name: name.into(),
            mail_nickname: None,
            security_enabled: true,
            is_assignable_to_role: false,
            on_premises_sync_enabled: false,
        }
    }

    fn team_with_pin(pinned: Option<ResolvedGroup>) -> TeamAccess {
        let mut ta = TeamAccess::new("t", TeamAccessSpec::new(by_name("appdev"), "dev"));
        ta.status = Some(TeamAccessStatus { group: pinned, ..Default::default() });
        ta
    }

    #[test]
    fn the_first_resolution_has_no_pin() {
        assert!(pin_for(&team_with_pin(None)).is_none());
        let mut ta = team_with_pin(None);
        ta.status = None;
        assert!(pin_for(&ta).is_none());
    }

    #[test]
    fn a_pin_holds_only_for_the_selector_it_was_made_for() {
        let ta = team_with_pin(Some(pin("displayName=appdev", "appdev")));
        assert_eq!(pin_for(&ta).map(|p| p.object_id.as_str()), Some(PINNED));
        let changed = team_with_pin(Some(pin("displayName=old-name", "appdev")));
        assert!(pin_for(&changed).is_none(), "a changed spec.group resolves afresh");
    }

    #[test]
    fn a_first_resolution_pins_the_group_now() {
        let now: jiff::Timestamp = "2026-11-28T00:00:00Z".parse().unwrap();
        let report = repin(None, &group(PINNED, "appdev"), "displayName=appdev", now);
        assert_eq!(report.pin.object_id, PINNED);
        assert_eq!(report.pin.resolved_at.as_deref(), Some("2026-11-28T00:00:00Z"));
        assert_eq!(report.renamed_from, None);
        assert!(report.security_enabled);
    }

    #[test]
    fn an_unchanged_group_keeps_its_resolution_time() {
        let now: jiff::Timestamp = "2026-11-28T00:00:00Z".parse().unwrap();
        let old = pin("displayName=appdev", "appdev");
        let report = repin(Some(&old), &group(PINNED, "appdev"), "displayName=appdev", now);
        assert_eq!(report.pin, old, "an idle resync must not change status");
        assert_eq!(report.renamed_from, None);
    }

    #[test]
    fn a_renamed_group_is_followed_and_reported() {
        let now: jiff::Timestamp = "2026-11-28T00:00:00Z".parse().unwrap();
        let old = pin("objectId=5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01", "appdev");
        let report = repin(Some(&old), &group(PINNED, "appdev-renamed"), "objectId=x", now);
        assert_eq!(report.pin.display_name.as_deref(), Some("appdev-renamed"));
        assert_eq!(report.renamed_from.as_deref(), Some("appdev"));
        assert_eq!(report.pin.resolved_at.as_deref(), Some("2026-11-28T00:00:00Z"));
    }

    #[test]
    fn a_deleted_pinned_group_with_nothing_in_its_place_is_missing() {
        let old = pin("displayName=appdev", "appdev");
        let not_found = Err(DirectoryError::GroupNotFound { selector: "displayName=appdev".into() });
        assert_eq!(judge_lost_pin("displayName=appdev", &old, not_found).reason(), Reason::GroupMissing);
        let ambiguous = Err(DirectoryError::AmbiguousGroup { selector: "s".into(), candidates: vec![] });
        assert_eq!(judge_lost_pin("displayName=appdev", &old, ambiguous).reason(), Reason::GroupMissing);
        // The directory still lists it by name though not by id: treated as missing, nothing new bound.
        assert_eq!(judge_lost_pin("s", &old, Ok(group(PINNED, "appdev"))).reason(), Reason::GroupMissing);
    }

    #[test]
    fn a_group_recreated_under_the_same_name_is_a_changed_object_id() {
        let old = pin("displayName=appdev", "appdev");
        let err = judge_lost_pin("displayName=appdev", &old, Ok(group(OTHER, "appdev")));
        assert_eq!(err.reason(), Reason::GroupObjectIdChanged);
        assert!(err.to_string().contains(&format!("set spec.group.objectId to {OTHER}")), "{err}");
    }

    #[test]
    fn a_directory_failure_while_checking_a_lost_pin_is_that_failure() {
        let old = pin("displayName=appdev", "appdev");
        let err = judge_lost_pin("s", &old, Err(DirectoryError::Throttled { retry_after: None }));
        assert_eq!(err.reason(), Reason::GraphThrottled);
        assert!(err.is_transient());
    }

    #[test]
    fn guests_are_bound_by_object_id_and_members_by_upn() {
        let member =
            DirectoryUser { object_id: "a".into(), user_principal_name: "aksdev@contoso.com".into(), user_type: None };
        let guest = DirectoryUser {
            object_id: "b".into(),
            user_principal_name: "x_fabrikam.com#EXT#@contoso.onmicrosoft.com".into(),
            user_type: Some("Guest".into()),
        };
        let by_upn = UserRef { user_principal_name: Some("aksdev@contoso.com".into()), object_id: None };
        let by_id = UserRef { user_principal_name: None, object_id: Some("a".into()) };
        assert_eq!(user_subject_name(&by_upn, &member), "aksdev@contoso.com");
        assert_eq!(user_subject_name(&by_id, &member), "a");
        assert_eq!(user_subject_name(&by_upn, &guest), "b");
    }

    #[test]
    fn strict_names_bind_only_groups_no_user_could_create_spelled_exactly() {
        let by_name = GroupSelector { display_name: Some("appdev".into()), ..Default::default() };
        let cloud = group("g", "appdev");
        let err = trust_name(&by_name, &cloud).expect_err("any user may create a security group named appdev");
        assert_eq!(err.reason(), "GroupNameNotTrusted");
        assert!(err.to_string().contains("spec.group.objectId"), "{err}");
        let synced = DirectoryGroup { on_premises_sync_enabled: true, ..group("g", "appdev") };
        assert!(trust_name(&by_name, &synced).is_ok());
        let role_assignable = DirectoryGroup { is_assignable_to_role: true, ..group("g", "appdev") };
        assert!(trust_name(&by_name, &role_assignable).is_ok());
        let other_case = DirectoryGroup { is_assignable_to_role: true, ..group("g", "AppDev") };
        assert!(trust_name(&by_name, &other_case).unwrap_err().to_string().contains("spelled differently"));
        let not_security = DirectoryGroup { security_enabled: false, ..synced.clone() };
        assert!(trust_name(&by_name, &not_security).unwrap_err().to_string().contains("not security-enabled"));
        let by_nick = GroupSelector { mail_nickname: Some("appdev".into()), ..Default::default() };
        let nick = DirectoryGroup { mail_nickname: Some("appdev".into()), ..synced.clone() };
        assert!(trust_name(&by_nick, &nick).is_ok());
        assert!(trust_name(&by_nick, &synced).is_err(), "no mail nickname: no exact match");
        assert!(trust_name(&GroupSelector::by_object_id("g"), &cloud).is_ok(), "an objectId needs no trust in names");
    }
}
