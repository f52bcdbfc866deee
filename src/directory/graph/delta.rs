//! Following group memberships through Graph's delta query.
//!
//! The tracked groups are split into channels of at most 50 (the most ids one
//! `$filter` of `/groups/delta` may name). A channel's first round reads its
//! groups' members in full, following `@odata.nextLink` to the
//! `@odata.deltaLink`; every later poll asks that link for what changed, which
//! for a quiet tenant is one request per channel. Graph may split one group's
//! `members@delta` over several pages, so a round is taken in only once it
//! reached its deltaLink. When Graph says the delta state is gone (410), the
//! channel reads its groups in full again.
//!
//! Users are named with `POST /directoryObjects/getByIds` (1,000 ids each).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Backoff,
    query::{odata_string, parse},
    transport::{Answer, Transport},
};
use crate::directory::{
    DirectoryError, DirectoryUser,
    members::{GroupRead, Member, MemberKind, MemberSource, Person, PersonKind, Poll},
};

/// The most ids one delta `$filter` may name.
pub const GROUPS_PER_CHANNEL: usize = 50;
/// The most ids one getByIds request may carry.
const IDS_PER_LOOKUP: usize = 1000;
/// Pages one round follows at most: 10,000 members of 50 groups at Graph's
/// page sizes fit well within.
const MAX_PAGES: usize = 1000;
/// Tries per request within one poll; a poll that still fails keeps the last
/// members and is tried again at the next poll.
const ATTEMPTS: u32 = 3;
/// The longest a Retry-After is waited within a poll.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// One delta query over up to 50 groups.
#[derive(Debug)]
struct Channel {
    groups: BTreeSet<String>,
    /// Where the next round starts; None: a full read.
    delta_link: Option<String>,
}

pub struct DeltaMembers {
    transport: Arc<Transport>,
    backoff: Backoff,
    channels: Vec<Channel>,
}

impl DeltaMembers {
    pub(super) fn new(transport: Arc<Transport>, backoff: Backoff) -> Self {
        Self { transport, backoff, channels: Vec::new() }
    }

    /// The first request of a full round.
    fn initial_url(&self, groups: &BTreeSet<String>) -> String {
        let filter = groups.iter().map(|id| format!("id eq {}", odata_string(id))).collect::<Vec<_>>().join(" or ");
        let mut url = url::Url::parse(&self.transport.url("/groups/delta")).expect("the Graph base is a URL");
        url.query_pairs_mut().append_pair("$filter", &filter).append_pair("$select", "members");
        url.to_string()
    }

    /// One round of a channel: its reads and the link for the next round.
    async fn round(&self, channel: &Channel) -> Result<(Vec<(String, GroupRead)>, String), DirectoryError> {
        if let Some(link) = &channel.delta_link {
            match self.follow(link, &channel.groups, false).await {
                Err(RoundError::Resync) => {
                    tracing::info!(
                        groups = channel.groups.len(),
                        "Graph lost the delta state; reading the groups in full"
                    );
                }
                other => return other.map_err(RoundError::into_error),
            }
        }
        self.follow(&self.initial_url(&channel.groups), &channel.groups, true).await.map_err(RoundError::into_error)
    }

    /// Follows a round from `url` to its deltaLink and gathers each group's
    /// member changes (`full`: the pages list every member).
    async fn follow(
        &self,
        url: &str,
        groups: &BTreeSet<String>,
        full: bool,
    ) -> Result<(Vec<(String, GroupRead)>, String), RoundError> {
        let mut added: BTreeMap<String, BTreeSet<Member>> = BTreeMap::new();
        let mut removed: BTreeMap<String, BTreeSet<Member>> = BTreeMap::new();
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let mut next = url.to_string();
        for _ in 0..MAX_PAGES {
            let page = self.get(&next).await?;
            let page: DeltaPage = parse(page).map_err(RoundError::Failed)?;
            for group in page.value {
                let id = group.id.to_lowercase();
                if !groups.contains(&id) {
                    continue;
                }
                if group.removed.is_some() {
                    gone.insert(id);
                    continue;
                }
                for entry in group.members_delta {
                    let Some(member) = entry.member() else { continue };
                    let (into, out) =
                        if entry.removed.is_some() { (&mut removed, &mut added) } else { (&mut added, &mut removed) };
                    // The later of two entries for one member wins.
                    out.entry(id.clone()).or_default().remove(&member);
                    into.entry(id.clone()).or_default().insert(member);
                }
                added.entry(id).or_default();
            }
            if let Some(delta_link) = page.delta_link {
                self.transport.check_link(&delta_link, "delta").map_err(RoundError::Failed)?;
                let mut reads: Vec<(String, GroupRead)> = gone.iter().map(|g| (g.clone(), GroupRead::Gone)).collect();
                for group in groups.iter().filter(|g| !gone.contains(*g)) {
                    let add = added.remove(group).unwrap_or_default();
                    let remove = removed.remove(group).unwrap_or_default();
                    if full {
                        // A group a full round does not list has no members (or
                        // is gone, which binds no one alike).
                        reads.push((group.clone(), GroupRead::Full(add)));
                    } else {
                        reads.push((group.clone(), GroupRead::Changes { added: add, removed: remove }));
                    }
                }
                return Ok((reads, delta_link));
            }
            let Some(next_link) = page.next_link else {
                return Err(RoundError::Failed(DirectoryError::Rejected {
                    message: "a Graph delta page had neither @odata.nextLink nor @odata.deltaLink".into(),
                }));
            };
            self.transport.check_link(&next_link, "delta").map_err(RoundError::Failed)?;
            next = next_link;
        }
        Err(RoundError::Failed(DirectoryError::Rejected {
            message: format!("a Graph delta round did not end within {MAX_PAGES} pages"),
        }))
    }

    /// GETs a page, with a few tries for throttling and outages.
    async fn get(&self, url: &str) -> Result<Value, RoundError> {
        let answer = retried(self.backoff, || self.transport.get(url)).await.map_err(RoundError::Failed)?;
        match answer.status {
            200 => Ok(answer.body),
            // The delta state expired or is unknown: start over.
            410 => Err(RoundError::Resync),
            _ => Err(RoundError::Failed(answer.into_request_error())),
        }
    }
}

/// Fits the channels to `groups`: untracked groups leave their channel
/// (its state stays valid: their changes are ignored), and new ones fill
/// the last channel with room, which then reads again from the start, or
/// open new channels. When groups leaving made more channels than
/// ceil(groups / 50) + 1, the channels that are not full are read again as new
/// ones, packed: so a quiet poll never costs more requests than that.
fn assign(channels: &mut Vec<Channel>, groups: &BTreeSet<String>) {
    for channel in channels.iter_mut() {
        channel.groups.retain(|g| groups.contains(g));
    }
    channels.retain(|c| !c.groups.is_empty());
    if channels.len() > groups.len().div_ceil(GROUPS_PER_CHANNEL) + 1 {
        channels.retain(|c| c.groups.len() == GROUPS_PER_CHANNEL);
    }
    let assigned: BTreeSet<&String> = channels.iter().flat_map(|c| &c.groups).collect();
    let mut new: Vec<String> = groups.iter().filter(|g| !assigned.contains(g)).cloned().collect();
    if new.is_empty() {
        return;
    }
    if let Some(last) = channels.last_mut()
        && last.groups.len() < GROUPS_PER_CHANNEL
    {
        let room = GROUPS_PER_CHANNEL - last.groups.len();
        let taken: Vec<String> = new.drain(..room.min(new.len())).collect();
        last.groups.extend(taken);
        last.delta_link = None;
    }
    for chunk in new.chunks(GROUPS_PER_CHANNEL) {
        channels.push(Channel { groups: chunk.iter().cloned().collect(), delta_link: None });
    }
}

/// How a round ended without its deltaLink.
enum RoundError {
    /// Graph no longer has the delta state: read in full.
    Resync,
    Failed(DirectoryError),
}

impl RoundError {
    /// A 410 to a full read is not Graph asking for a resync.
    fn into_error(self) -> DirectoryError {
        match self {
            RoundError::Resync => DirectoryError::Rejected {
                message: "Graph answered 410 Gone to a delta query that carried no state".into(),
            },
            RoundError::Failed(e) => e,
        }
    }
}

/// Sends `request` up to `ATTEMPTS` times while the answer is 429, 503 or 504
/// (or the connection failed), waiting as Graph asks, else as `backoff` says;
/// at most `MAX_WAIT`.
async fn retried<F, Fut>(backoff: Backoff, request: F) -> Result<Answer, DirectoryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, DirectoryError>>,
{
    let mut attempt = 1;
    loop {
        let result = request().await;
        let retryable = match &result {
            Ok(answer) => answer.is_retryable(),
            Err(e) => e.is_transient(),
        };
        if !retryable || attempt >= ATTEMPTS {
            return match result {
                Ok(answer) if answer.is_retryable() => Err(answer.into_request_error()),
                other => other,
            };
        }
        let wait = match &result {
            Ok(answer) => answer.retry_after,
            Err(_) => None,
        };
        let wait = wait.unwrap_or_else(|| backoff.delay(attempt));
        tokio::time::sleep(wait.min(MAX_WAIT)).await;
        attempt += 1;
    }
}

#[async_trait]
impl MemberSource for DeltaMembers {
    async fn poll(&mut self, groups: &BTreeSet<String>) -> Poll {
        assign(&mut self.channels, groups);
        let mut poll = Poll::default();
        // Channels run one after another: a poll is a handful of requests, and
        // Graph throttles a burst sooner than a trickle.
        let mut links = Vec::with_capacity(self.channels.len());
        for channel in &self.channels {
            match self.round(channel).await {
                Ok((reads, link)) => {
                    poll.reads.extend(reads);
                    links.push(Some(link));
                }
                Err(error) => {
                    poll.failed.extend(channel.groups.iter().map(|g| (g.clone(), error.clone())));
                    links.push(None);
                }
            }
        }
        for (channel, link) in self.channels.iter_mut().zip(links) {
            if let Some(link) = link {
                channel.delta_link = Some(link);
            }
        }
        poll
    }

    async fn users(&mut self, object_ids: &[String]) -> Result<HashMap<String, Person>, DirectoryError> {
        let mut found = HashMap::new();
        for chunk in object_ids.chunks(IDS_PER_LOOKUP) {
            let url = self.transport.url("/directoryObjects/getByIds");
            let body = json!({"ids": chunk, "types": ["user"]});
            let answer = retried(self.backoff, || self.transport.post(&url, &body)).await?;
            if answer.status != 200 {
                return Err(answer.into_request_error());
            }
            let users: MemberPage = parse(answer.body)?;
            found.extend(users.value.into_iter().filter_map(ListedObject::person));
        }
        Ok(found)
    }
}

/// Everyone in `group` through nesting, read from `transitiveMembers` page by
/// page (for `access-report`; the poller follows changes with delta instead).
pub async fn transitive_members(
    transport: &Transport,
    backoff: Backoff,
    group: &str,
) -> Result<Vec<Person>, DirectoryError> {
    let mut url = url::Url::parse(&transport.url("/groups")).expect("the Graph base is a URL");
    url.path_segments_mut().expect("an https URL").extend([group, "transitiveMembers"]);
    url.query_pairs_mut().append_pair("$select", "id,userPrincipalName,userType").append_pair("$top", "999");
    let mut next = url.to_string();
    let mut people = Vec::new();
    for _ in 0..MAX_PAGES {
        transport.check_link(&next, "next-page")?;
        let answer = retried(backoff, || transport.get(&next)).await?;
        if answer.status != 200 {
            return Err(answer.into_error(|| DirectoryError::GroupNotFound { selector: format!("objectId={group}") }));
        }
        let page: MemberPage = parse(answer.body)?;
        people.extend(page.value.into_iter().filter_map(ListedObject::person).map(|(_, person)| person));
        match page.next_link {
            Some(link) => next = link,
            None => return Ok(people),
        }
    }
    Err(DirectoryError::Rejected { message: format!("the members of {group} did not end within {MAX_PAGES} pages") })
}

#[derive(Deserialize)]
struct MemberPage {
    #[serde(default)]
    value: Vec<ListedObject>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedObject {
    id: String,
    #[serde(rename = "@odata.type", default)]
    odata_type: String,
    user_principal_name: Option<String>,
    user_type: Option<String>,
}

impl ListedObject {
    /// A user or service principal as a RoleBinding names them, with its
    /// objectId; None for other objects, and for a user without a name to bind.
    fn person(self) -> Option<(String, Person)> {
        let id = self.id.to_lowercase();
        match self.odata_type.as_str() {
            "#microsoft.graph.user" => {
                let user = DirectoryUser {
                    object_id: id.clone(),
                    user_principal_name: self.user_principal_name.unwrap_or_default(),
                    user_type: self.user_type,
                };
                (!user.user_principal_name.is_empty() || user.is_guest()).then(|| (id, Person::from(&user)))
            }
            "#microsoft.graph.servicePrincipal" => {
                Some((id.clone(), Person { kind: PersonKind::ServicePrincipal, subject: id }))
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct DeltaPage {
    #[serde(default)]
    value: Vec<DeltaGroup>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
struct DeltaGroup {
    id: String,
    #[serde(rename = "members@delta", default)]
    members_delta: Vec<DeltaMember>,
    #[serde(rename = "@removed")]
    removed: Option<Value>,
}

#[derive(Deserialize)]
struct DeltaMember {
    id: String,
    #[serde(rename = "@odata.type", default)]
    odata_type: String,
    #[serde(rename = "@removed")]
    removed: Option<Value>,
}

impl DeltaMember {
    /// Users, service principals and groups; other members (devices, contacts)
    /// cannot sign in to a cluster and are not bound.
    fn member(&self) -> Option<Member> {
        let kind = match self.odata_type.as_str() {
            "#microsoft.graph.user" => MemberKind::User,
            "#microsoft.graph.servicePrincipal" => MemberKind::ServicePrincipal,
            "#microsoft.graph.group" => MemberKind::Group,
            _ => return None,
        };
        Some(Member { kind, object_id: self.id.to_lowercase() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> BTreeSet<String> {
        range.map(|i| format!("g{i:04}")).collect()
    }

    #[test]
    fn channels_hold_fifty_groups_and_grow_by_filling_the_last_one() {
        let mut channels = Vec::new();
        assign(&mut channels, &ids(0..120));
        assert_eq!(channels.iter().map(|c| c.groups.len()).collect::<Vec<_>>(), [50, 50, 20]);
        for c in &mut channels {
            c.delta_link = Some("link".into());
        }
        // Groups arriving one poll after another fill the last channel, which
        // reads again from the start; the full ones keep their state.
        assign(&mut channels, &ids(0..135));
        assert_eq!(channels.iter().map(|c| c.groups.len()).collect::<Vec<_>>(), [50, 50, 35]);
        assert_eq!(channels.iter().map(|c| c.delta_link.is_some()).collect::<Vec<_>>(), [true, true, false]);
        assign(&mut channels, &ids(0..1000));
        assert!(channels.len() <= 1000usize.div_ceil(GROUPS_PER_CHANNEL) + 1, "{}", channels.len());
        assert!(channels.iter().all(|c| c.groups.len() <= GROUPS_PER_CHANNEL));
        // Untracked groups leave; an emptied channel goes.
        assign(&mut channels, &ids(60..70));
        assert_eq!(channels.iter().map(|c| c.groups.len()).collect::<Vec<_>>(), [10]);
        // Half of every channel leaves: the sparse channels are packed again.
        assign(&mut channels, &ids(0..1000));
        let half: BTreeSet<String> =
            ids(0..1000).into_iter().enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, g)| g).collect();
        assign(&mut channels, &half);
        assert!(channels.len() <= 500usize.div_ceil(GROUPS_PER_CHANNEL) + 1, "{}", channels.len());
        assert_eq!(channels.iter().map(|c| c.groups.len()).sum::<usize>(), 500);
    }
}
