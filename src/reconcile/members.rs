//! Between resolve and build, for `spec.bind: Members`: the people the
//! RoleBinding names instead of the group, from the membership the poller
//! keeps (`crate::directory::members::Roster`). Pure apart from the roster read.
//!
//! A group not read yet binds nothing new: what was bound before stays (so a
//! switch from `Group` keeps the group's binding until its members are known,
//! and then one write replaces the group by its members). A failed read keeps
//! the members read last; the condition says since when.

use super::error::Error;
use crate::{
    api::{BindMode, MembersStatus, TeamAccess},
    directory::members::{MAX_MEMBERS, Membership, Roster, Unavailable},
};

/// Whom the RoleBinding names for the group.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    /// The group's objectId (spec.bind Group).
    Group,
    /// The group's transitive members, by subject name.
    Members(Membership),
}

/// What the members step found, for status.
#[derive(Clone, Debug, PartialEq)]
pub enum MembersReport {
    /// spec.bind Group: no members are read, status shows none.
    NotBound,
    /// The pipeline stopped before this step: status says what it said.
    NotReached,
    Bound(Membership),
    /// The members cannot be bound (`Error::MembersPending`, `TooManyMembers`).
    Unavailable,
}

/// The subjects for `group` under `ta`'s spec.bind.
pub fn bind(ta: &TeamAccess, group: &str, roster: &Roster) -> Result<Bound, Error> {
    if ta.spec.bind == BindMode::Group {
        return Ok(Bound::Group);
    }
    match roster.members(group) {
        Ok(members) => Ok(Bound::Members(members)),
        Err(Unavailable::Pending(failure)) => Err(Error::MembersPending { group: group.into(), failure }),
        Err(Unavailable::TooMany(count)) => Err(Error::TooManyMembers { group: group.into(), count, max: MAX_MEMBERS }),
    }
}

/// Whether `error` (of resolving the pinned group) means the group of a
/// Members-mode object is gone for certain. A Group-mode binding to a deleted
/// group lets nobody in (no token carries its objectId), so it may stay; a
/// Members-mode binding names people, so it must go.
pub fn group_is_gone(ta: &TeamAccess, error: &Error) -> bool {
    ta.spec.bind == BindMode::Members && matches!(error, Error::GroupMissing { .. } | Error::GroupChanged { .. })
}

impl Bound {
    pub fn report(&self) -> MembersReport {
        match self {
            Bound::Group => MembersReport::NotBound,
            Bound::Members(m) => MembersReport::Bound(m.clone()),
        }
    }
}

/// status.members for a bound membership.
pub fn status_of(m: &Membership) -> MembersStatus {
    MembersStatus {
        total: m.users + m.guests + m.service_principals,
        users: m.users,
        guests: m.guests,
        service_principals: m.service_principals,
        nested_groups: m.nested_groups,
        synced_at: Some(m.synced_at.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        api::{GroupSelector, TeamAccessSpec},
        directory::members::{GroupRead, Member, MemberKind, Poll},
    };

    fn ta(bind: BindMode) -> TeamAccess {
        let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev");
        spec.bind = bind;
        TeamAccess::new("t", spec)
    }

    #[test]
    fn only_a_members_binding_goes_with_its_group() {
        let gone = Error::GroupMissing { selector: "objectId=g".into(), pinned: "g".into() };
        let outage = Error::Directory(crate::directory::DirectoryError::Unavailable { message: "503".into() });
        assert!(group_is_gone(&ta(BindMode::Members), &gone));
        assert!(!group_is_gone(&ta(BindMode::Group), &gone), "a binding to a deleted group lets nobody in");
        assert!(!group_is_gone(&ta(BindMode::Members), &outage), "an outage keeps the members");
    }

    #[test]
    fn group_mode_reads_no_members() {
        let roster = Roster::default();
        assert_eq!(bind(&ta(BindMode::Group), "g", &roster).unwrap(), Bound::Group);
        assert!(roster.requested().is_empty(), "no group is tracked for Group mode");
    }

    #[test]
    fn members_mode_waits_for_a_first_read_then_binds_the_members() {
        let roster = Roster::default();
        let err = bind(&ta(BindMode::Members), "g", &roster).unwrap_err();
        assert_eq!(err.reason(), "MembersPending");
        assert!(err.is_transient());
        let sp = Member { kind: MemberKind::ServicePrincipal, object_id: "s1".into() };
        let tracked: BTreeSet<String> = ["g".to_string()].into();
        let now = jiff::Timestamp::from_second(5).unwrap();
        roster.record(Poll { reads: vec![("g".into(), GroupRead::Full([sp].into()))], failed: vec![] }, &tracked, now);
        let Bound::Members(m) = bind(&ta(BindMode::Members), "g", &roster).unwrap() else { panic!("members") };
        assert_eq!(m.subjects, ["s1"]);
        let status = status_of(&m);
        assert_eq!((status.total, status.service_principals), (1, 1));
        assert_eq!(status.synced_at.as_deref(), Some("1970-01-01T00:00:05Z"));
    }
}
