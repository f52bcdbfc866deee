//! What the operator remembers per TeamAccess between reconciles: its
//! consecutive failures (for the backoff of its next try), the status it last
//! wrote (until the cache has seen it) and what its author was found to hold.
//! Nothing here decides a grant by itself: it only spares repeated work, and
//! all of it is forgotten with the object (and lost, harmlessly, on a restart).

use std::{borrow::Cow, collections::HashMap, sync::Mutex};

use kube::ResourceExt;

use super::authorship::Verified;
use crate::api::{TeamAccess, TeamAccessStatus};

#[derive(Default)]
pub struct Memory {
    /// Consecutive failures per TeamAccess.
    failures: Mutex<HashMap<String, u32>>,
    /// The status last written per TeamAccess, until the cache has seen it.
    written: Mutex<HashMap<String, Written>>,
    /// What the authors of the specs were found to hold (SubjectAccessReviews).
    pub verified: Verified,
}

/// A status this operator wrote, and the resourceVersion the object had before.
struct Written {
    before: Option<String>,
    status: TeamAccessStatus,
}

/// A poisoned lock only means another reconcile panicked while holding it; the
/// maps stay consistent (every change is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memory {
    /// The object as this reconcile should see it: when the cache still holds the
    /// version from before our last status write (its watch event has not arrived
    /// yet), with the status we wrote, so the write and its Events are not repeated.
    pub fn with_own_status<'a>(&self, ta: &'a TeamAccess) -> Cow<'a, TeamAccess> {
        let mut written = lock(&self.written);
        let name = ta.name_any();
        match written.get(&name) {
            Some(w) if w.before == ta.metadata.resource_version => {
                let mut newer = ta.clone();
                newer.status = Some(w.status.clone());
                Cow::Owned(newer)
            }
            Some(_) => {
                // The cache moved on: it holds our write, or a later change.
                written.remove(&name);
                Cow::Borrowed(ta)
            }
            None => Cow::Borrowed(ta),
        }
    }

    /// Remembers the status just written for `ta` (as the cache held it before).
    pub fn wrote_status(&self, ta: &TeamAccess, status: &TeamAccessStatus) {
        let entry = Written { before: ta.metadata.resource_version.clone(), status: status.clone() };
        lock(&self.written).insert(ta.name_any(), entry);
    }

    /// Forgets what was remembered about `name`: it is gone.
    pub fn forget(&self, name: &str) {
        self.clear_failures(name);
        lock(&self.written).remove(name);
        self.verified.forget(name);
    }

    /// Consecutive failures of `name` so far.
    pub fn failures(&self, name: &str) -> u32 {
        lock(&self.failures).get(name).copied().unwrap_or(0)
    }

    /// Counts one more consecutive failure of `name`.
    pub fn record_failure(&self, name: &str) {
        let mut failures = lock(&self.failures);
        let n = failures.entry(name.to_string()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Forgets the failures of `name`: it succeeded, waits for the user, or is gone.
    pub fn clear_failures(&self, name: &str) {
        lock(&self.failures).remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupSelector, ResolvedGroup, TeamAccessSpec};

    fn at_version(version: &str) -> TeamAccess {
        let mut ta = TeamAccess::new("web", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev"));
        ta.metadata.resource_version = Some(version.into());
        ta
    }

    fn pinned(object_id: &str) -> TeamAccessStatus {
        TeamAccessStatus {
            group: Some(ResolvedGroup { object_id: object_id.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_cache_that_has_not_seen_our_write_is_read_with_the_status_we_wrote() {
        let memory = Memory::default();
        let before = at_version("10");
        memory.wrote_status(&before, &pinned("written"));
        let seen = memory.with_own_status(&before);
        assert!(matches!(seen, Cow::Owned(_)), "the cache is stale: our status is laid over it");
        assert_eq!(seen.status, Some(pinned("written")));
        // Until the cache moves, every look sees it, not just the first.
        assert_eq!(memory.with_own_status(&before).status, Some(pinned("written")));
    }

    #[test]
    fn once_the_cache_moved_on_it_is_read_as_it_is_and_the_write_is_forgotten() {
        let memory = Memory::default();
        memory.wrote_status(&at_version("10"), &pinned("written"));
        let mut later = at_version("11");
        later.status = Some(pinned("someone-else"));
        let seen = memory.with_own_status(&later);
        assert!(matches!(seen, Cow::Borrowed(_)));
        assert_eq!(seen.status, Some(pinned("someone-else")), "a later change is never hidden");
        // Forgotten: even the old version is now read as it is.
        assert_eq!(memory.with_own_status(&at_version("10")).status, None);
    }

    #[test]
    fn an_object_never_written_is_read_as_it_is() {
        let memory = Memory::default();
        assert!(matches!(memory.with_own_status(&at_version("1")), Cow::Borrowed(_)));
    }

    #[test]
    fn failures_count_up_per_object_and_are_cleared_and_forgotten() {
        let memory = Memory::default();
        assert_eq!(memory.failures("web"), 0);
        memory.record_failure("web");
        memory.record_failure("web");
        memory.record_failure("api");
        assert_eq!((memory.failures("web"), memory.failures("api")), (2, 1));
        memory.clear_failures("web");
        assert_eq!((memory.failures("web"), memory.failures("api")), (0, 1));
        memory.wrote_status(&at_version("3"), &pinned("x"));
        memory.record_failure("web");
        memory.forget("web");
        assert_eq!(memory.failures("web"), 0, "a deleted object's failures go with it");
        assert_eq!(memory.with_own_status(&at_version("3")).status, None, "and so does its status");
    }
}
