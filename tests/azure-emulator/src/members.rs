//! Group membership as Graph serves it: `GET /groups/delta` (an id `$filter`
//! of at most 50 groups, `$select=members`, pages linked by
//! `@odata.nextLink` up to an `@odata.deltaLink`, `members@delta` entries with
//! `@removed` for members that left, `@removed` on a deleted group, and 410
//! `syncStateNotFound` for a state the service no longer holds), and
//! `GET /groups/{id}/transitiveMembers` with `$top` paging.
//!
//! Every membership change (a new directory, a member added or removed at run
//! time, a time-bound membership that ended as PIM for Groups ends one) is
//! logged with a sequence number; a delta state is the number it was issued at.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::Instant,
};

use serde_json::{Value, json};
use teamaccess_operator::directory::file_format::DirectoryFile;
pub use teamaccess_operator::directory::members::{Member, MemberKind};

/// The most group ids one delta `$filter` may name.
const MAX_DELTA_IDS: usize = 50;
/// Delta and page states kept at most; the oldest are dropped first, as the
/// service drops states it has held too long.
const MAX_STATES: usize = 50_000;

/// One change of a group's direct members; `member` None: the group was deleted.
#[derive(Debug, Clone)]
struct Change {
    seq: u64,
    group: String,
    member: Option<Member>,
    added: bool,
}

#[derive(Debug)]
enum Cursor {
    /// The rest of a round: items still to page, then a delta state at `end`.
    Pages { items: VecDeque<Value>, ids: Vec<String>, end: u64 },
    /// A deltaLink: what changed after `since` in `ids`.
    Delta { ids: Vec<String>, since: u64 },
}

/// A membership that ends by itself (PIM for Groups' end time).
#[derive(Debug, Clone)]
pub struct Timed {
    pub group: String,
    pub member: String,
    pub until: Instant,
}

#[derive(Debug, Default)]
pub struct Tracker {
    seq: u64,
    changes: Vec<Change>,
    cursors: HashMap<String, Cursor>,
    order: VecDeque<String>,
    pub timed: Vec<Timed>,
}

/// An error answer: status, Graph code, message.
pub type Refusal = (u16, &'static str, String);

fn odata_type(kind: MemberKind) -> &'static str {
    match kind {
        MemberKind::User => "#microsoft.graph.user",
        MemberKind::ServicePrincipal => "#microsoft.graph.servicePrincipal",
        MemberKind::Group => "#microsoft.graph.group",
    }
}

fn entry(member: &Member, removed: bool) -> Value {
    let mut e = json!({"@odata.type": odata_type(member.kind), "id": member.object_id});
    if removed {
        e["@removed"] = json!({"reason": "deleted"});
    }
    e
}

fn token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl Tracker {
    /// Logs what differs between two directories.
    pub fn record_diff(&mut self, old: &DirectoryFile, new: &DirectoryFile) {
        let (before, after) = (old.memberships(), new.memberships());
        let mut groups: BTreeSet<&String> = before.keys().collect();
        groups.extend(after.keys());
        let empty = BTreeSet::new();
        for group in groups {
            let (was, is) = (before.get(group), after.get(group));
            if was.is_some() && is.is_none() {
                self.push(group, None, false);
                continue;
            }
            let (was, is) = (was.unwrap_or(&empty), is.unwrap_or(&empty));
            for m in is.difference(was) {
                self.push(group, Some(m.clone()), true);
            }
            for m in was.difference(is) {
                self.push(group, Some(m.clone()), false);
            }
        }
    }

    pub fn record(&mut self, group: &str, member: Member, added: bool) {
        self.push(&group.to_lowercase(), Some(member), added);
    }

    fn push(&mut self, group: &str, member: Option<Member>, added: bool) {
        self.seq += 1;
        self.changes.push(Change { seq: self.seq, group: group.to_string(), member, added });
    }

    /// Forgets every delta state: the next deltaLink gets 410.
    pub fn expire_states(&mut self) {
        self.cursors.clear();
        self.order.clear();
    }

    fn keep(&mut self, cursor: Cursor) -> String {
        let token = token();
        self.cursors.insert(token.clone(), cursor);
        self.order.push_back(token.clone());
        while self.order.len() > MAX_STATES {
            if let Some(old) = self.order.pop_front() {
                self.cursors.remove(&old);
            }
        }
        token
    }

    /// Answers `GET /groups/delta` with `params` (decoded query).
    pub fn delta(
        &mut self,
        dir: &DirectoryFile,
        params: &HashMap<String, String>,
        link_base: &str,
        page_entries: usize,
    ) -> Result<Value, Refusal> {
        let gone =
            || (410, "syncStateNotFound", "The delta state is no longer available; start a new round.".to_string());
        if let Some(tok) = params.get("$skiptoken") {
            let Some(Cursor::Pages { items, ids, end }) = self.cursors.remove(tok) else { return Err(gone()) };
            return Ok(self.page(items, ids, end, link_base, page_entries));
        }
        if let Some(tok) = params.get("$deltatoken") {
            let Some(Cursor::Delta { ids, since }) = self.cursors.get(tok) else { return Err(gone()) };
            let (ids, since) = (ids.clone(), *since);
            let items = self.changes_since(&ids, since, dir, page_entries);
            let end = self.seq;
            return Ok(self.page(items, ids, end, link_base, page_entries));
        }
        let ids = filter_ids(params)?;
        if let Some(select) = params.get("$select")
            && select.split(',').map(str::trim).any(|p| p != "members" && p != "id")
        {
            return Err((400, "Request_BadRequest", "This emulator's delta serves $select=members only.".into()));
        }
        let members = dir.memberships();
        let mut items = VecDeque::new();
        for id in &ids {
            let Some(list) = members.get(id) else { continue };
            let entries: Vec<Value> = list.iter().map(|m| entry(m, false)).collect();
            push_group(&mut items, id, entries, page_entries);
        }
        let end = self.seq;
        Ok(self.page(items, ids, end, link_base, page_entries))
    }

    /// The items of a later round: per group, each member's last change.
    fn changes_since(&self, ids: &[String], since: u64, dir: &DirectoryFile, page_entries: usize) -> VecDeque<Value> {
        let start = self.changes.partition_point(|c| c.seq <= since);
        let mut last: HashMap<(&str, Option<&Member>), bool> = HashMap::new();
        let mut order: Vec<(&str, Option<&Member>)> = Vec::new();
        for change in &self.changes[start..] {
            if !ids.contains(&change.group) {
                continue;
            }
            let key = (change.group.as_str(), change.member.as_ref());
            if last.insert(key, change.added).is_none() {
                order.push(key);
            }
        }
        let exists: BTreeSet<String> = dir.groups.iter().map(|g| g.object_id.to_lowercase()).collect();
        let mut items = VecDeque::new();
        for id in ids {
            let deleted = order.iter().any(|(g, m)| g == id && m.is_none()) && !exists.contains(id);
            if deleted {
                items.push_back(
                    json!({"@odata.type": "#microsoft.graph.group", "id": id, "@removed": {"reason": "deleted"}}),
                );
                continue;
            }
            let entries: Vec<Value> =
                order.iter().filter(|(g, _)| g == id).filter_map(|key| key.1.map(|m| entry(m, !last[key]))).collect();
            if !entries.is_empty() {
                push_group(&mut items, id, entries, page_entries);
            }
        }
        items
    }

    /// One page of `items`; the rest is kept behind a nextLink, or the round
    /// ends with a deltaLink at `end`.
    fn page(
        &mut self,
        mut items: VecDeque<Value>,
        ids: Vec<String>,
        end: u64,
        link_base: &str,
        page_entries: usize,
    ) -> Value {
        let mut value = Vec::new();
        let mut entries = 0;
        while let Some(item) = items.front() {
            let n = item["members@delta"].as_array().map_or(1, |a| a.len().max(1));
            if !value.is_empty() && entries + n > page_entries {
                break;
            }
            entries += n;
            value.push(items.pop_front().expect("front exists"));
        }
        let mut body = json!({"@odata.context": format!("{link_base}/$metadata#groups"), "value": value});
        if items.is_empty() {
            let token = self.keep(Cursor::Delta { ids, since: end });
            body["@odata.deltaLink"] = json!(format!("{link_base}/groups/delta?$deltatoken={token}"));
        } else {
            let token = self.keep(Cursor::Pages { items, ids, end });
            body["@odata.nextLink"] = json!(format!("{link_base}/groups/delta?$skiptoken={token}"));
        }
        body
    }
}

/// A group's entries, split into items of at most `page_entries`, as Graph
/// splits a large group's members over several pages.
fn push_group(items: &mut VecDeque<Value>, id: &str, entries: Vec<Value>, page_entries: usize) {
    if entries.is_empty() {
        items.push_back(json!({"@odata.type": "#microsoft.graph.group", "id": id, "members@delta": []}));
        return;
    }
    for chunk in entries.chunks(page_entries.max(1)) {
        items.push_back(json!({"@odata.type": "#microsoft.graph.group", "id": id, "members@delta": chunk}));
    }
}

/// The ids of a delta `$filter`: `id eq '...'` clauses joined by `or`, at most 50.
fn filter_ids(params: &HashMap<String, String>) -> Result<Vec<String>, Refusal> {
    let Some(filter) = params.get("$filter") else {
        return Err((400, "Request_BadRequest", "This emulator's delta needs a $filter of group ids.".into()));
    };
    let parsed = crate::odata::parse_filter(filter).map_err(|m| (400, "Request_UnsupportedQuery", m))?;
    let mut ids = Vec::new();
    for all in &parsed.any_of {
        match all.as_slice() {
            [(prop, value)] if prop == "id" => ids.push(value.to_lowercase()),
            _ => {
                return Err((
                    400,
                    "Request_UnsupportedQuery",
                    "Unsupported Query: delta takes only id eq clauses joined by or.".into(),
                ));
            }
        }
    }
    if ids.len() > MAX_DELTA_IDS {
        return Err((
            400,
            "Request_UnsupportedQuery",
            format!("Too many ids in the filter: at most {MAX_DELTA_IDS} are supported."),
        ));
    }
    Ok(ids)
}
