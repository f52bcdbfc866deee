//! Step 0, expiry: what `spec.expiresAt` means at the instant of a reconcile.
//!
//! Pure. The reconcile reads the clock once and asks `judge`; the answer says
//! whether the grant still stands, whether it is in its last --expiry-warning,
//! and when the clock alone will change that. The reconcile is requeued for
//! that instant, so a grant is revoked when it expires, not at the next resync.
//! It runs before everything else: an expired grant needs no directory and no
//! author, so neither an outage nor a missing policy can delay its revocation.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::error::Error;
use crate::api::TeamAccess;

/// What `spec.expiresAt` says at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No spec.expiresAt: the grant stands until the object is deleted.
    Never,
    /// The grant stands until `at`; from `warn_from` (`warning`) it is in its
    /// last --expiry-warning.
    Until { at: Timestamp, warn_from: Timestamp, warning: bool },
    /// `at` has passed: nothing is granted.
    Expired { at: Timestamp },
    /// spec.expiresAt is not an instant. The CRD's rule refuses such a value;
    /// should one get through (a CRD from an older chart), nothing is granted
    /// rather than a time guessed.
    Invalid { value: String },
}

/// Reads `expires_at` (spec.expiresAt) at `now`, with a warning window of `warning`.
pub fn judge(expires_at: Option<&str>, now: Timestamp, warning: Duration) -> Expiry {
    let Some(value) = expires_at else { return Expiry::Never };
    let Ok(at) = value.parse::<Timestamp>() else { return Expiry::Invalid { value: value.to_string() } };
    if now >= at {
        return Expiry::Expired { at };
    }
    let window = SignedDuration::try_from(warning).unwrap_or(SignedDuration::MAX);
    let warn_from = at.checked_sub(window).unwrap_or(Timestamp::MIN);
    Expiry::Until { at, warn_from, warning: now >= warn_from }
}

impl Expiry {
    /// The instant the grant ends, when it has one.
    pub fn at(&self) -> Option<Timestamp> {
        match self {
            Expiry::Until { at, .. } | Expiry::Expired { at } => Some(*at),
            Expiry::Never | Expiry::Invalid { .. } => None,
        }
    }

    /// Why nothing may be granted now, when that is so.
    pub fn revocation(&self, namespace: &str) -> Option<Error> {
        match self {
            Expiry::Expired { at } => {
                Some(Error::Expired { at: at.to_string(), namespace: namespace.to_string(), renewal_refused: None })
            }
            Expiry::Invalid { value } => Some(Error::InvalidExpiry { value: value.clone() }),
            Expiry::Never | Expiry::Until { .. } => None,
        }
    }

    /// How long from `now` until the clock alone changes this answer: the start
    /// of the warning window, then the expiry itself.
    pub fn next_change(&self, now: Timestamp) -> Option<Duration> {
        let Expiry::Until { at, warn_from, warning } = self else { return None };
        let next = if *warning { *at } else { *warn_from };
        Duration::try_from(now.duration_until(next)).ok()
    }
}

/// Whether `wanted` (spec.expiresAt) lasts longer than `granted` (status.expiresAt,
/// the expiry last granted): a later instant, or none at all. That is more
/// access, which the spec's author must be able to grant. Nothing recorded
/// means nothing was granted with an expiry (not yet granted, or granted
/// without one), so any expiry is a shortening; a record that is no instant
/// counts as extended, so it is checked rather than trusted.
pub fn extends(granted: Option<&str>, wanted: Option<&str>) -> bool {
    let Some(granted) = granted else { return false };
    let Ok(granted) = granted.parse::<Timestamp>() else { return true };
    match wanted.map(str::parse::<Timestamp>) {
        None => true,
        Some(Ok(wanted)) => wanted > granted,
        // Not an instant: it grants nothing (`judge`), so it extends nothing.
        Some(Err(_)) => false,
    }
}

/// How many grants are in their warning window, and how many have expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub expiring: usize,
    pub expired: usize,
}

/// Counts `grants` at `now`, for the gauges.
pub fn tally<'a>(grants: impl Iterator<Item = &'a TeamAccess>, now: Timestamp, warning: Duration) -> Tally {
    grants.fold(Tally::default(), |mut tally, ta| {
        match judge(ta.spec.expires_at.as_deref(), now, warning) {
            Expiry::Until { warning: true, .. } => tally.expiring += 1,
            Expiry::Expired { .. } => tally.expired += 1,
            Expiry::Never | Expiry::Until { .. } | Expiry::Invalid { .. } => {}
        }
        tally
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn no_expiry_never_changes() {
        let expiry = judge(None, t("2026-12-04T10:00:00Z"), DAY);
        assert_eq!(expiry, Expiry::Never);
        assert_eq!((expiry.at(), expiry.next_change(t("2026-12-04T10:00:00Z"))), (None, None));
        assert!(expiry.revocation("dev").is_none());
    }

    #[test]
    fn before_the_window_the_next_change_is_the_start_of_the_warning() {
        let now = t("2026-12-01T18:00:00Z");
        let expiry = judge(Some("2026-12-04T18:00:00Z"), now, DAY);
        assert!(matches!(expiry, Expiry::Until { warning: false, .. }), "{expiry:?}");
        assert_eq!(expiry.next_change(now), Some(2 * DAY));
        assert!(expiry.revocation("dev").is_none());
    }

    #[test]
    fn inside_the_window_it_warns_and_the_next_change_is_the_expiry() {
        let now = t("2026-12-04T17:59:58.500Z");
        let expiry = judge(Some("2026-12-04T19:00:00+01:00"), now, DAY);
        assert!(matches!(expiry, Expiry::Until { warning: true, .. }), "{expiry:?}");
        assert_eq!(expiry.next_change(now), Some(Duration::from_millis(1500)));
        assert_eq!(expiry.at().unwrap().to_string(), "2026-12-04T18:00:00Z", "status shows it in UTC");
    }

    #[test]
    fn a_zero_window_never_warns() {
        let now = t("2026-12-04T17:59:59Z");
        assert!(matches!(
            judge(Some("2026-12-04T18:00:00Z"), now, Duration::ZERO),
            Expiry::Until { warning: false, .. }
        ));
    }

    #[test]
    fn a_huge_window_warns_at_once_instead_of_overflowing() {
        let now = t("2026-12-04T10:00:00Z");
        let expiry = judge(Some("2026-12-04T18:00:00Z"), now, Duration::MAX);
        assert!(matches!(expiry, Expiry::Until { warning: true, .. }), "{expiry:?}");
    }

    #[test]
    fn at_the_instant_and_after_it_the_grant_is_revoked() {
        for now in ["2026-12-04T18:00:00Z", "2026-12-05T00:00:00Z"] {
            let expiry = judge(Some("2026-12-04T18:00:00Z"), t(now), DAY);
            assert_eq!(expiry, Expiry::Expired { at: t("2026-12-04T18:00:00Z") }, "at {now}");
            assert_eq!(expiry.next_change(t(now)), None, "nothing changes by the clock any more");
            let error = expiry.revocation("dev").unwrap();
            assert_eq!(error.reason(), crate::api::Reason::Expired);
            assert!(error.to_string().contains("namespace dev and everything in it are kept"), "{error}");
        }
    }

    #[test]
    fn a_value_that_is_no_instant_grants_nothing() {
        for value in ["2026-12-04T18:00:00", "tomorrow", "2026-02-30T00:00:00Z"] {
            let expiry = judge(Some(value), t("2026-01-01T00:00:00Z"), DAY);
            assert_eq!(expiry, Expiry::Invalid { value: value.into() });
            assert_eq!(expiry.revocation("dev").unwrap().reason(), crate::api::Reason::InvalidExpiry);
        }
    }

    #[test]
    fn the_tally_counts_grants_in_their_window_and_past_it() {
        use crate::api::{GroupSelector, TeamAccessSpec};
        let grant = |expires_at: Option<&str>| {
            let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev");
            spec.expires_at = expires_at.map(String::from);
            TeamAccess::new("t", spec)
        };
        let grants = [
            grant(None),
            grant(Some("2026-12-10T00:00:00Z")),
            grant(Some("2026-12-04T12:00:00Z")),
            grant(Some("2026-12-04T13:00:00Z")),
            grant(Some("2026-12-03T00:00:00Z")),
            grant(Some("soon")),
        ];
        let tally = tally(grants.iter(), t("2026-12-04T10:00:00Z"), DAY);
        assert_eq!(tally, Tally { expiring: 2, expired: 1 });
    }

    #[test]
    fn a_later_expiry_or_none_extends_what_was_granted_and_an_earlier_one_does_not() {
        let granted = Some("2026-12-04T18:00:00Z");
        assert!(extends(granted, Some("2026-12-04T18:00:01Z")));
        assert!(extends(granted, None), "removing it grants for ever");
        assert!(!extends(granted, Some("2026-12-04T19:00:00+01:00")), "the same instant");
        assert!(!extends(granted, Some("2026-12-04T17:00:00Z")), "shortening needs no right");
        assert!(!extends(None, Some("2026-12-04T17:00:00Z")), "a first expiry on a lasting grant");
        assert!(!extends(None, None));
        assert!(extends(Some("garbled"), Some("2026-12-04T17:00:00Z")), "an unreadable record is not trusted");
    }
}
