//! The Microsoft Graph v1.0 directory.
//!
//! Least privilege: it only reads groups (`GroupMember.Read.All` suffices) and, for
//! spec.users, users (`User.ReadBasic.All`). The work is split by job:
//! - `query`: the requests (URLs, OData quoting) and the wire shapes of answers;
//! - `transport`: token, HTTP, and reading an answer or a `$batch` of answers;
//! - `batch`: coalescing lookups into `$batch` requests, retries and throttling;
//! - this module: the `Directory` itself, with a TTL cache that also makes
//!   concurrent lookups of one selector share a single request.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use moka::future::Cache;

use super::{
    Directory, DirectoryError, DirectoryGroup, DirectoryUser, describe_user,
    members::{MemberSource, Person},
};
use crate::{
    api::{GroupSelector, UserRef},
    backoff::Backoff,
    telemetry::metrics::Metrics,
};

mod batch;
mod delta;
pub mod query;
mod transport;

pub use batch::MAX_BATCH;
use batch::{BatchSettings, Batcher};
use query::{GraphGroup, GraphUser, group_request, parse, user_request};
use transport::Transport;

/// Pages followed at most when listing groups by name (100 matches each).
const MAX_PAGES: usize = 5;
/// Entries each cache holds at most; far above any real number of TeamAccess objects.
const CACHE_CAPACITY: u64 = 100_000;

#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// The Graph root, such as https://graph.microsoft.com.
    pub endpoint: String,
    pub cache_ttl: Duration,
    pub request_timeout: Duration,
    /// Tries per lookup before a throttling or outage error is returned.
    pub max_attempts: u32,
    /// How long a batch waits for the next lookup before it is sent.
    pub batch_window: Duration,
    /// The longest a lookup waits for others to share its `$batch`.
    pub batch_max_wait: Duration,
    /// Retry delays when the service gives no Retry-After.
    pub backoff: Backoff,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            endpoint: "https://graph.microsoft.com".into(),
            cache_ttl: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            // Reconciles reach their lookups some milliseconds apart; these windows
            // gather a burst into full $batch requests, and only cold lookups wait.
            batch_window: Duration::from_millis(150),
            batch_max_wait: Duration::from_secs(1),
            backoff: Backoff::GRAPH,
        }
    }
}

/// Cheap to clone: clones share the transport, the batch queue and the caches.
#[derive(Clone)]
pub struct GraphDirectory {
    transport: Arc<Transport>,
    batcher: Batcher,
    groups: Cache<String, DirectoryGroup>,
    users: Cache<String, DirectoryUser>,
    /// Retry delays of the membership reads, which do not go through `batcher`.
    backoff: Backoff,
    metrics: Option<Arc<Metrics>>,
}

impl GraphDirectory {
    /// `http` must be the client the credential uses too (same trusted CAs).
    /// Counts Graph requests and cache hits in `metrics` when given.
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        settings: GraphSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let transport =
            Arc::new(Transport::new(http, credential, &settings.endpoint, settings.request_timeout, metrics.clone()));
        let batcher = Batcher::start(
            transport.clone(),
            BatchSettings {
                max_attempts: settings.max_attempts,
                window: settings.batch_window,
                max_wait: settings.batch_max_wait,
                backoff: settings.backoff,
            },
        );
        Self {
            transport,
            batcher,
            groups: ttl_cache(settings.cache_ttl),
            users: ttl_cache(settings.cache_ttl),
            backoff: settings.backoff,
            metrics,
        }
    }

    fn count_cache(&self, hit: bool) {
        if let Some(m) = &self.metrics {
            m.cache(hit);
        }
    }

    async fn find_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        let not_found = || DirectoryError::GroupNotFound { selector: selector.describe() };
        let answer = self.batcher.lookup(group_request(selector)).await?;
        if answer.status != 200 {
            return Err(answer.into_error(not_found));
        }
        if selector.object_id.is_some() {
            return parse::<GraphGroup>(answer.body).map(DirectoryGroup::from);
        }
        // A name lookup lists matches; follow the pages to name every candidate.
        let mut groups: Vec<DirectoryGroup> = Vec::new();
        let mut page = answer.body;
        for _ in 0..MAX_PAGES {
            let items: Vec<GraphGroup> = parse(page["value"].take())?;
            groups.extend(items.into_iter().map(DirectoryGroup::from));
            let Some(next) = page["@odata.nextLink"].as_str().map(str::to_string) else { break };
            self.transport.check_link(&next, "next-page")?;
            let next_page = self.transport.get(&next).await?;
            if next_page.status != 200 {
                return Err(next_page.into_error(not_found));
            }
            page = next_page.body;
        }
        match groups.len() {
            0 => Err(not_found()),
            1 => Ok(groups.remove(0)),
            _ => Err(DirectoryError::AmbiguousGroup {
                selector: selector.describe(),
                candidates: groups.into_iter().map(|g| g.object_id).collect(),
            }),
        }
    }

    async fn find_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError> {
        let answer = self.batcher.lookup(user_request(user)).await?;
        if answer.status != 200 {
            return Err(answer.into_error(|| DirectoryError::UserNotFound { user: describe_user(user) }));
        }
        parse::<GraphUser>(answer.body).map(DirectoryUser::from)
    }
}

fn ttl_cache<V: Clone + Send + Sync + 'static>(ttl: Duration) -> Cache<String, V> {
    Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(ttl).build()
}

#[async_trait]
impl Directory for GraphDirectory {
    async fn resolve_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        let key = selector.describe();
        if let Some(group) = self.groups.get(&key).await {
            self.count_cache(true);
            return Ok(group);
        }
        self.count_cache(false);
        // Concurrent callers for one selector wait for the first one's lookup;
        // failures are not cached.
        let group = self.groups.try_get_with(key, self.find_group(selector)).await.map_err(|e| (*e).clone())?;
        // Once pinned, the group is verified by objectId: make that lookup warm too.
        self.groups.insert(GroupSelector::by_object_id(&group.object_id).describe(), group.clone()).await;
        Ok(group)
    }

    async fn resolve_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError> {
        let key = describe_user(user).to_lowercase();
        if let Some(found) = self.users.get(&key).await {
            self.count_cache(true);
            return Ok(found);
        }
        self.count_cache(false);
        self.users.try_get_with(key, self.find_user(user)).await.map_err(|e| (*e).clone())
    }

    async fn transitive_members(&self, group: &str) -> Result<Vec<Person>, DirectoryError> {
        delta::transitive_members(&self.transport, self.backoff, group).await
    }

    fn member_source(&self) -> Option<Box<dyn MemberSource>> {
        Some(Box::new(delta::DeltaMembers::new(self.transport.clone(), self.backoff)))
    }

    fn prefetch_group(&self, selector: &GroupSelector) {
        if self.groups.contains_key(&selector.describe()) {
            return;
        }
        let directory = self.clone();
        let selector = selector.clone();
        tokio::spawn(async move {
            // Errors are the reconcile's to report; this only warms the cache.
            let _ = directory.resolve_group(&selector).await;
        });
    }
}
