//! Group membership for `spec.bind: Members`: who is in a group, transitively,
//! as the directory last said.
//!
//! A `MemberSource` reads the direct members of the tracked groups (Graph's
//! delta query, or the directory file) and the names of the users among them.
//! The `Roster` keeps what was read, per group, and expands a group into the
//! people its nested groups hold. It never forgets a membership because a read
//! failed: a failure is recorded beside the last good read, which stays in
//! force, so an outage or throttling changes no binding.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::RwLock,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use jiff::Timestamp;

use super::DirectoryError;

/// The most people one TeamAccess binds through a group: a bound on what the
/// operator writes and holds, far above a team.
pub const MAX_MEMBERS: usize = 10_000;

/// How long a group a reconcile asked for stays tracked without a TeamAccess
/// whose status names it (the reconcile that asked writes that status).
const REQUEST_LIFETIME: Duration = Duration::from_secs(600);

/// What kind of directory object a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberKind {
    User,
    ServicePrincipal,
    Group,
}

/// A direct member, as a group's membership lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub kind: MemberKind,
    pub object_id: String,
}

/// What a source read of one group's direct members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRead {
    /// The whole direct membership: a first read, or one after the source's
    /// change-tracking state was lost.
    Full(BTreeSet<Member>),
    /// What changed since the source's previous read of the group.
    Changes { added: BTreeSet<Member>, removed: BTreeSet<Member> },
    /// The group is no longer in the directory.
    Gone,
}

/// One poll's result: the groups read, and those whose read failed.
#[derive(Debug, Default)]
pub struct Poll {
    pub reads: Vec<(String, GroupRead)>,
    pub failed: Vec<(String, DirectoryError)>,
}

/// How a person is named in a RoleBinding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub kind: PersonKind,
    /// The RBAC `User` subject: the userPrincipalName of a user of the tenant
    /// (the name AKS gives them), the objectId of a guest or service principal.
    pub subject: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersonKind {
    User,
    Guest,
    ServicePrincipal,
}

/// Reads group memberships from a directory.
#[async_trait]
pub trait MemberSource: Send {
    /// The direct members of `groups`: in full for a group new to the source,
    /// as changes for one it read before. Groups it no longer gets asked about
    /// are forgotten.
    async fn poll(&mut self, groups: &BTreeSet<String>) -> Poll;

    /// The names of the users with these objectIds. A user the directory does
    /// not know is left out of the answer.
    async fn users(&mut self, object_ids: &[String]) -> Result<HashMap<String, Person>, DirectoryError>;
}

/// The members of a group, expanded through its nested groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Subject names, sorted and without repeats.
    pub subjects: Vec<String>,
    pub users: u32,
    pub guests: u32,
    pub service_principals: u32,
    pub nested_groups: u32,
    /// The latest read that changed this membership (or recovered from a failure).
    pub synced_at: Timestamp,
    /// The newest failed read among the groups, with the time of the last good
    /// read of the one that failed: the members above are from then.
    pub stale: Option<Stale>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub error: DirectoryError,
    pub last_good: Timestamp,
}

/// Why a group's members cannot be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Not read yet; the last attempt's failure, if one failed.
    Pending(Option<DirectoryError>),
    /// More people than `MAX_MEMBERS`.
    TooMany(usize),
}

#[derive(Debug, Default)]
struct GroupState {
    /// Direct members, once read.
    members: Option<BTreeSet<Member>>,
    last_good: Option<Timestamp>,
    /// When the last read changed the members (or followed a failure).
    changed_at: Option<Timestamp>,
    failure: Option<DirectoryError>,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<String, GroupState>,
    /// Users' names by objectId; None for a user the directory did not know.
    people: HashMap<String, Option<Person>>,
    /// Groups reconciles asked for, and when they last did.
    requested: HashMap<String, Instant>,
}

/// Memberships as last read, shared by the poller (which writes) and the
/// reconciles (which read).
#[derive(Debug, Default)]
pub struct Roster {
    state: RwLock<State>,
    /// Woken by a reconcile that needs a group not read yet.
    pub wanted: tokio::sync::Notify,
}

impl Roster {
    /// The members of `group`, or why they cannot be bound. A reconcile that
    /// finds the group not read yet asks the poller for it.
    pub fn members(&self, group: &str) -> Result<Membership, Unavailable> {
        let view = self.view(group);
        if let Err(Unavailable::Pending(_)) = &view {
            let first = self.state.write().unwrap().requested.insert(group.to_string(), Instant::now()).is_none();
            if first {
                self.wanted.notify_one();
            }
        }
        view
    }

    /// The groups reconciles asked for lately.
    pub fn requested(&self) -> BTreeSet<String> {
        let mut state = self.state.write().unwrap();
        state.requested.retain(|_, at| at.elapsed() < REQUEST_LIFETIME);
        state.requested.keys().cloned().collect()
    }

    /// `roots` and every group nested in them as far as read, in a set.
    pub fn closure(&self, roots: &BTreeSet<String>) -> BTreeSet<String> {
        let state = self.state.read().unwrap();
        let mut seen = BTreeSet::new();
        let mut queue: Vec<String> = roots.iter().cloned().collect();
        while let Some(group) = queue.pop() {
            if !seen.insert(group.clone()) {
                continue;
            }
            let nested = state.groups.get(&group).and_then(|g| g.members.as_ref());
            for member in nested.into_iter().flatten().filter(|m| m.kind == MemberKind::Group) {
                queue.push(member.object_id.clone());
            }
        }
        seen
    }

    /// Takes in a poll made at `now`, then forgets groups outside `tracked`.
    pub fn record(&self, poll: Poll, tracked: &BTreeSet<String>, now: Timestamp) {
        let mut state = self.state.write().unwrap();
        for (group, read) in poll.reads {
            let entry = state.groups.entry(group).or_default();
            let after = match read {
                GroupRead::Full(members) => members,
                GroupRead::Gone => BTreeSet::new(),
                GroupRead::Changes { added, removed } => {
                    // Changes apply only on top of a full read; the source sends
                    // a full read first for any group it did not read before.
                    let mut members = entry.members.clone().unwrap_or_default();
                    members.retain(|m| !removed.contains(m));
                    members.extend(added);
                    members
                }
            };
            if entry.members.as_ref() != Some(&after) || entry.failure.is_some() {
                entry.changed_at = Some(now);
            }
            entry.members = Some(after);
            entry.last_good = Some(now);
            entry.failure = None;
        }
        for (group, error) in poll.failed {
            let entry = state.groups.entry(group).or_default();
            if entry.failure.is_none() {
                entry.changed_at = Some(now);
            }
            entry.failure = Some(error);
        }
        state.groups.retain(|g, _| tracked.contains(g));
        // People stay known only while a tracked group holds them.
        let held: HashSet<String> = state
            .groups
            .values()
            .filter_map(|g| g.members.as_ref())
            .flatten()
            .filter(|m| m.kind == MemberKind::User)
            .map(|m| m.object_id.clone())
            .collect();
        state.people.retain(|id, _| held.contains(id));
    }

    /// Users among the members whose names are not known yet.
    pub fn unnamed_users(&self) -> Vec<String> {
        let state = self.state.read().unwrap();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for group in state.groups.values() {
            for member in group.members.iter().flatten().filter(|m| m.kind == MemberKind::User) {
                if !state.people.contains_key(&member.object_id) {
                    ids.insert(member.object_id.clone());
                }
            }
        }
        ids.into_iter().collect()
    }

    /// Takes in the names of users; `asked` that are missing from `found` are
    /// not in the directory (deleted since), and are bound by no one.
    pub fn name_users(&self, asked: &[String], mut found: HashMap<String, Person>) {
        let mut state = self.state.write().unwrap();
        for id in asked {
            state.people.insert(id.clone(), found.remove(id));
        }
    }

    /// Records that naming users failed: the groups holding unnamed users are
    /// failing until it works.
    pub fn naming_failed(&self, error: &DirectoryError, now: Timestamp) {
        let mut state = self.state.write().unwrap();
        let State { groups, people, .. } = &mut *state;
        for group in groups.values_mut() {
            let unnamed = group
                .members
                .iter()
                .flatten()
                .any(|m| m.kind == MemberKind::User && !people.contains_key(&m.object_id));
            if unnamed {
                if group.failure.is_none() {
                    group.changed_at = Some(now);
                }
                group.failure = Some(error.clone());
            }
        }
    }

    /// The members of `root` as read, expanded through nested groups.
    pub fn view(&self, root: &str) -> Result<Membership, Unavailable> {
        let state = self.state.read().unwrap();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue = vec![root];
        let mut subjects: BTreeSet<&str> = BTreeSet::new();
        let (mut users, mut guests, mut service_principals) = (0u32, 0u32, 0u32);
        let mut synced_at: Option<Timestamp> = None;
        let mut stale: Option<Stale> = None;
        while let Some(group) = queue.pop() {
            if !seen.insert(group) {
                continue;
            }
            let Some(entry) = state.groups.get(group) else { return Err(Unavailable::Pending(None)) };
            let (Some(members), Some(last_good)) = (&entry.members, entry.last_good) else {
                return Err(Unavailable::Pending(entry.failure.clone()));
            };
            synced_at = synced_at.max(entry.changed_at);
            if let Some(error) = &entry.failure
                && stale.as_ref().is_none_or(|s| s.last_good > last_good)
            {
                stale = Some(Stale { error: error.clone(), last_good });
            }
            for member in members {
                let person = match member.kind {
                    MemberKind::Group => {
                        queue.push(&member.object_id);
                        continue;
                    }
                    MemberKind::ServicePrincipal => None,
                    // Unnamed yet (its group is failing), or unknown to the directory.
                    MemberKind::User => match state.people.get(&member.object_id) {
                        Some(Some(person)) => Some(person),
                        _ => continue,
                    },
                };
                let (kind, subject) = match person {
                    Some(p) => (p.kind, p.subject.as_str()),
                    None => (PersonKind::ServicePrincipal, member.object_id.as_str()),
                };
                // Kubernetes reserves `system:` for its own identities; no
                // directory name may become one (Entra ID's UPNs cannot hold ':').
                if subject.starts_with("system:") {
                    continue;
                }
                if subjects.insert(subject) {
                    match kind {
                        PersonKind::User => users += 1,
                        PersonKind::Guest => guests += 1,
                        PersonKind::ServicePrincipal => service_principals += 1,
                    }
                }
            }
            if subjects.len() > MAX_MEMBERS {
                return Err(Unavailable::TooMany(subjects.len()));
            }
        }
        Ok(Membership {
            subjects: subjects.into_iter().map(str::to_string).collect(),
            users,
            guests,
            service_principals,
            nested_groups: (seen.len() - 1) as u32,
            synced_at: synced_at.unwrap_or_default(),
            stale,
        })
    }
}

/// Reads the source once for the closure of `roots`, and again while the
/// read finds nested groups not read yet (each level is one more round), then
/// names the new users. Returns the groups now tracked.
pub async fn sync(
    roster: &Roster,
    source: &mut dyn MemberSource,
    roots: &BTreeSet<String>,
    now: Timestamp,
) -> BTreeSet<String> {
    /// Nesting deeper than this is read over the next polls.
    const MAX_ROUNDS: usize = 8;
    let mut tracked = roster.closure(roots);
    let mut asked: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_ROUNDS {
        if tracked.is_subset(&asked) {
            break;
        }
        let poll = source.poll(&tracked).await;
        roster.record(poll, &tracked, now);
        asked = tracked;
        tracked = roster.closure(roots);
    }
    let unnamed = roster.unnamed_users();
    if !unnamed.is_empty() {
        match source.users(&unnamed).await {
            Ok(found) => roster.name_users(&unnamed, found),
            Err(error) => roster.naming_failed(&error, now),
        }
    }
    tracked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Member {
        Member { kind: MemberKind::User, object_id: id.into() }
    }
    fn group(id: &str) -> Member {
        Member { kind: MemberKind::Group, object_id: id.into() }
    }
    fn sp(id: &str) -> Member {
        Member { kind: MemberKind::ServicePrincipal, object_id: id.into() }
    }
    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }
    fn named(roster: &Roster, people: &[(&str, PersonKind, &str)]) {
        let asked: Vec<String> = people.iter().map(|p| p.0.to_string()).collect();
        let found = people
            .iter()
            .map(|(id, kind, subject)| (id.to_string(), Person { kind: *kind, subject: subject.to_string() }))
            .collect();
        roster.name_users(&asked, found);
    }
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn nested_groups_are_expanded_and_people_counted_once_by_kind() {
        let roster = Roster::default();
        let tracked = set(&["root", "inner"]);
        let poll = Poll {
            reads: vec![
                ("root".into(), GroupRead::Full([user("u1"), user("g1"), sp("s1"), group("inner")].into())),
                ("inner".into(), GroupRead::Full([user("u1"), user("u2")].into())),
            ],
            failed: vec![],
        };
        roster.record(poll, &tracked, at(100));
        assert_eq!(roster.unnamed_users(), ["g1", "u1", "u2"]);
        named(
            &roster,
            &[
                ("u1", PersonKind::User, "ann@contoso.com"),
                ("u2", PersonKind::User, "bob@contoso.com"),
                ("g1", PersonKind::Guest, "g1"),
            ],
        );
        let m = roster.view("root").unwrap();
        assert_eq!(m.subjects, ["ann@contoso.com", "bob@contoso.com", "g1", "s1"]);
        assert_eq!((m.users, m.guests, m.service_principals, m.nested_groups), (2, 1, 1, 1));
        assert_eq!(m.synced_at, at(100));
        assert_eq!(m.stale, None);
    }

    #[test]
    fn no_directory_name_becomes_a_reserved_kubernetes_identity() {
        let roster = Roster::default();
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([user("u1"), user("u2")].into()))], failed: vec![] },
            &set(&["root"]),
            at(1),
        );
        named(&roster, &[("u1", PersonKind::User, "system:masters"), ("u2", PersonKind::User, "ann@contoso.com")]);
        assert_eq!(roster.view("root").unwrap().subjects, ["ann@contoso.com"]);
    }

    #[test]
    fn a_group_not_read_yet_is_pending_and_asked_for() {
        let roster = Roster::default();
        assert_eq!(roster.members("root"), Err(Unavailable::Pending(None)));
        assert_eq!(roster.requested(), set(&["root"]));
        // A nested group not read yet keeps the whole membership pending: binding
        // part of it would look like removals.
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([group("inner")].into()))], failed: vec![] },
            &set(&["root", "inner"]),
            at(1),
        );
        assert_eq!(roster.view("root"), Err(Unavailable::Pending(None)));
        assert_eq!(roster.closure(&set(&["root"])), set(&["inner", "root"]));
    }

    #[test]
    fn a_failed_read_keeps_the_last_members_and_says_since_when() {
        let roster = Roster::default();
        let tracked = set(&["root"]);
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([sp("s1")].into()))], failed: vec![] },
            &tracked,
            at(10),
        );
        let outage = DirectoryError::Unavailable { message: "503".into() };
        roster.record(Poll { reads: vec![], failed: vec![("root".into(), outage.clone())] }, &tracked, at(20));
        let m = roster.view("root").unwrap();
        assert_eq!(m.subjects, ["s1"], "the outage removed no one");
        assert_eq!(m.stale, Some(Stale { error: outage, last_good: at(10) }));
        // Recovery with the same members: fresh again, and the time moves once.
        roster.record(
            Poll {
                reads: vec![("root".into(), GroupRead::Changes { added: BTreeSet::new(), removed: BTreeSet::new() })],
                failed: vec![],
            },
            &tracked,
            at(30),
        );
        let m = roster.view("root").unwrap();
        assert_eq!((m.stale, m.synced_at), (None, at(30)));
        // A quiet read later changes nothing, not even the time.
        roster.record(
            Poll {
                reads: vec![("root".into(), GroupRead::Changes { added: BTreeSet::new(), removed: BTreeSet::new() })],
                failed: vec![],
            },
            &tracked,
            at(40),
        );
        assert_eq!(roster.view("root").unwrap().synced_at, at(30));
    }

    #[test]
    fn a_first_read_that_fails_is_pending_with_its_reason() {
        let roster = Roster::default();
        let throttled = DirectoryError::Throttled { retry_after: None };
        roster.record(Poll { reads: vec![], failed: vec![("root".into(), throttled.clone())] }, &set(&["root"]), at(1));
        assert_eq!(roster.view("root"), Err(Unavailable::Pending(Some(throttled))));
    }

    #[test]
    fn changes_add_and_remove_and_a_gone_group_holds_no_one() {
        let roster = Roster::default();
        let tracked = set(&["root"]);
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([sp("a"), sp("b")].into()))], failed: vec![] },
            &tracked,
            at(1),
        );
        let changes = GroupRead::Changes { added: [sp("c")].into(), removed: [sp("a")].into() };
        roster.record(Poll { reads: vec![("root".into(), changes)], failed: vec![] }, &tracked, at(2));
        assert_eq!(roster.view("root").unwrap().subjects, ["b", "c"]);
        roster.record(Poll { reads: vec![("root".into(), GroupRead::Gone)], failed: vec![] }, &tracked, at(3));
        assert!(roster.view("root").unwrap().subjects.is_empty());
    }

    #[test]
    fn users_the_directory_does_not_know_are_bound_by_no_one_and_not_asked_again() {
        let roster = Roster::default();
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([user("u1"), user("gone")].into()))], failed: vec![] },
            &set(&["root"]),
            at(1),
        );
        named(&roster, &[("u1", PersonKind::User, "ann@contoso.com")]);
        roster.name_users(&["gone".into()], HashMap::new());
        assert!(roster.unnamed_users().is_empty());
        assert_eq!(roster.view("root").unwrap().subjects, ["ann@contoso.com"]);
    }

    #[test]
    fn naming_failures_mark_the_groups_holding_unnamed_users() {
        let roster = Roster::default();
        let tracked = set(&["root", "other"]);
        roster.record(
            Poll {
                reads: vec![
                    ("root".into(), GroupRead::Full([user("u1")].into())),
                    ("other".into(), GroupRead::Full([sp("s")].into())),
                ],
                failed: vec![],
            },
            &tracked,
            at(1),
        );
        roster.naming_failed(&DirectoryError::Throttled { retry_after: None }, at(2));
        assert!(roster.view("root").unwrap().stale.is_some(), "u1 is not bound yet and that is said");
        assert!(roster.view("other").unwrap().stale.is_none());
    }

    #[test]
    fn too_many_people_is_an_error_not_a_truncation() {
        let roster = Roster::default();
        let many: BTreeSet<Member> = (0..=MAX_MEMBERS).map(|i| sp(&format!("s{i}"))).collect();
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full(many))], failed: vec![] },
            &set(&["root"]),
            at(1),
        );
        assert_eq!(roster.view("root"), Err(Unavailable::TooMany(MAX_MEMBERS + 1)));
    }

    #[test]
    fn untracked_groups_and_their_people_are_forgotten() {
        let roster = Roster::default();
        roster.record(
            Poll { reads: vec![("root".into(), GroupRead::Full([user("u1")].into()))], failed: vec![] },
            &set(&["root"]),
            at(1),
        );
        named(&roster, &[("u1", PersonKind::User, "ann@contoso.com")]);
        roster.record(Poll::default(), &BTreeSet::new(), at(2));
        assert_eq!(roster.view("root"), Err(Unavailable::Pending(None)));
        assert!(roster.state.read().unwrap().people.is_empty());
    }

    /// A nested cycle (A in B, B in A) ends the walk and counts each group once.
    #[test]
    fn cycles_of_nesting_end() {
        let roster = Roster::default();
        let tracked = set(&["a", "b"]);
        roster.record(
            Poll {
                reads: vec![
                    ("a".into(), GroupRead::Full([group("b"), sp("s1")].into())),
                    ("b".into(), GroupRead::Full([group("a"), sp("s2")].into())),
                ],
                failed: vec![],
            },
            &tracked,
            at(1),
        );
        let m = roster.view("a").unwrap();
        assert_eq!((m.subjects.len(), m.nested_groups), (2, 1));
    }
}
