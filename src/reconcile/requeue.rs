//! When to look at a TeamAccess again, decided from how its reconcile ended.

use std::time::Duration;

use super::error::Error;
use crate::backoff::Backoff;

/// The longest wait before a TeamAccess looks again at a directory that was down.
pub const MAX_DIRECTORY_RETRY: Duration = Duration::from_secs(20);
/// The longest wait before a TeamAccess held back for a missing authorship
/// policy looks again, so its condition follows a reinstall soon.
pub const MAX_POLICY_RECHECK: Duration = Duration::from_secs(20);
/// The longest wait before a TeamAccess that needs the user's fix is looked at
/// again, to catch a fix made outside the object (a group created, a namespace freed).
pub const MAX_USER_FIX_RECHECK: Duration = Duration::from_secs(300);

/// The next look, and whether this reconcile counts as one more consecutive failure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Next {
    pub after: Duration,
    pub failed: bool,
}

/// Decides the next look from the reconcile's error. `failures` counts the
/// consecutive failures before this one; `random` in [0, 1) jitters the delay.
pub fn next_action(error: Option<&Error>, failures: u32, resync: Duration, random: f64) -> Next {
    let backoff =
        |cap: Duration| Next { after: Backoff::CONTROLLER.delay_with(failures + 1, random).min(cap), failed: true };
    match error {
        None => Next { after: resync, failed: false },
        // Graph or ARM said when to come back: do so, with up to 50% added so
        // objects throttled together spread out, rather than back off further;
        // objects then recover soon after a throttling storm ends.
        Some(e) if e.retry_after().is_some() => {
            let wait = e.retry_after().unwrap_or_default().max(Duration::from_secs(1));
            Next { after: wait.mul_f64(1.0 + random * 0.5), failed: false }
        }
        // An outage ends on its own: look again at least every 20 s (the Graph
        // and ARM clients fail fast meanwhile, so this adds no load on them).
        Some(Error::Directory(e)) if e.is_transient() => backoff(MAX_DIRECTORY_RETRY),
        Some(Error::Arm(e)) if e.is_transient() => backoff(MAX_DIRECTORY_RETRY),
        // The authorship policy is missing: look again at least as often, so the
        // condition says what holds the object back once an admin reinstalls it.
        Some(Error::AuthorUnverified { policy_missing: true, .. }) => backoff(MAX_POLICY_RECHECK),
        Some(e) if e.is_transient() => backoff(Duration::MAX),
        // Needs the user to act; a change of the object or the directory triggers
        // a reconcile anyway.
        Some(_) => Next { after: resync.min(MAX_USER_FIX_RECHECK), failed: false },
    }
}

/// After the reconcile could not even write status or its finalizer.
pub fn after_error(failures: u32, random: f64) -> Duration {
    Backoff::CONTROLLER.delay_with(failures + 1, random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::DirectoryError;

    const RESYNC: Duration = Duration::from_secs(600);

    #[test]
    fn success_waits_for_the_resync_and_clears_the_failures() {
        assert_eq!(next_action(None, 4, RESYNC, 0.5), Next { after: RESYNC, failed: false });
    }

    #[test]
    fn throttling_comes_back_when_graph_said_with_some_spread() {
        let e = Error::from(DirectoryError::Throttled { retry_after: Some(Duration::from_secs(4)) });
        assert_eq!(next_action(Some(&e), 7, RESYNC, 0.0), Next { after: Duration::from_secs(4), failed: false });
        assert_eq!(next_action(Some(&e), 7, RESYNC, 0.999).after.as_millis(), 5998);
        let short = Error::from(DirectoryError::Throttled { retry_after: Some(Duration::from_millis(10)) });
        assert_eq!(next_action(Some(&short), 0, RESYNC, 0.0).after, Duration::from_secs(1), "at least 1 s");
    }

    #[test]
    fn a_directory_outage_backs_off_but_looks_again_within_20s() {
        let e = Error::from(DirectoryError::Unavailable { message: "down".into() });
        let first = next_action(Some(&e), 0, RESYNC, 0.5);
        assert_eq!(first, Next { after: Duration::from_secs(1), failed: true });
        assert_eq!(next_action(Some(&e), 12, RESYNC, 0.5).after, MAX_DIRECTORY_RETRY);
        let throttled_without_hint = Error::from(DirectoryError::Throttled { retry_after: None });
        assert_eq!(next_action(Some(&throttled_without_hint), 12, RESYNC, 0.5).after, MAX_DIRECTORY_RETRY);
    }

    #[test]
    fn other_transient_failures_back_off_up_to_five_minutes() {
        let e = Error::NamespaceTerminating { namespace: "dev".into(), blockers: Vec::new() };
        assert_eq!(next_action(Some(&e), 2, RESYNC, 0.5), Next { after: Duration::from_secs(4), failed: true });
        assert_eq!(next_action(Some(&e), 40, RESYNC, 0.999).after, Duration::from_secs(300));
    }

    #[test]
    fn a_failure_the_user_must_fix_is_looked_at_again_within_five_minutes() {
        let e = Error::ProtectedNamespace { namespace: "kube-system".into() };
        assert_eq!(next_action(Some(&e), 3, RESYNC, 0.5), Next { after: MAX_USER_FIX_RECHECK, failed: false });
        let short_resync = Duration::from_secs(30);
        assert_eq!(next_action(Some(&e), 3, short_resync, 0.5).after, short_resync);
    }

    #[test]
    fn a_failed_status_write_backs_off() {
        assert_eq!(after_error(0, 0.5), Duration::from_secs(1));
        assert_eq!(after_error(3, 0.5), Duration::from_secs(8));
    }
}
