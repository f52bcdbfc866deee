//! The one retry policy of the operator, and the one Retry-After parser.
//!
//! Both the controller (requeue after a failed reconcile) and the Graph client
//! (retry of a failed request) ask the same question: "how long before try n?".
//! The answer is exponential, capped, and jittered so that many objects failing
//! together do not retry together. A small module rather than `backon`: backon
//! drives a retry loop and adds jitter on top of its cap, while both callers
//! here need the delay for a given attempt with a hard upper bound.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the second try (the first failure's wait).
    pub initial: Duration,
    /// No delay is ever longer than this, jitter included.
    pub max: Duration,
    /// Each delay is drawn from [base × (1 − jitter), base × (1 + jitter)].
    pub jitter: f64,
}

impl Backoff {
    /// Requeue after a failed reconcile: 1 s doubling to at most 5 min.
    pub const CONTROLLER: Backoff =
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(300), jitter: 0.2 };

    /// Retry of a Graph request without Retry-After: 500 ms doubling to at most 30 s.
    pub const GRAPH: Backoff =
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.25 };

    /// The same policy with another first step (tests use short ones).
    pub fn starting_at(self, initial: Duration) -> Self {
        Self { initial, ..self }
    }

    /// The un-jittered delay after `failures` consecutive failures (1-based).
    pub fn base(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The delay after `failures` consecutive failures, jittered with `random`
    /// in [0, 1) and never above `max`.
    pub fn delay_with(&self, failures: u32, random: f64) -> Duration {
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * random.clamp(0.0, 1.0);
        self.base(failures).mul_f64(factor).min(self.max)
    }

    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, fastrand::f64())
    }
}

/// Parses an HTTP Retry-After value: delay-seconds or an HTTP-date (RFC 9110
/// §10.2.3). A date in the past means "now". Anything else is ignored.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(at.duration_since(now).try_into().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_policy_doubles_from_one_second_up_to_five_minutes() {
        let b = Backoff::CONTROLLER;
        let bases: Vec<u64> = (1..=11).map(|n| b.base(n).as_secs()).collect();
        assert_eq!(bases, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.base(u32::MAX), Duration::from_secs(300), "no overflow after many failures");
    }

    #[test]
    fn jitter_stays_within_its_band_and_under_the_cap() {
        let b = Backoff::CONTROLLER;
        assert_eq!(b.delay_with(3, 0.0), Duration::from_secs(4).mul_f64(0.8));
        assert_eq!(b.delay_with(3, 0.999_999).as_millis(), 4799);
        assert_eq!(b.delay_with(20, 0.999), Duration::from_secs(300), "jitter never exceeds the cap");
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_millis(2400), "{d:?}");
        }
    }

    #[test]
    fn the_graph_policy_can_start_lower() {
        let b = Backoff::GRAPH.starting_at(Duration::from_millis(100));
        assert_eq!(b.base(1), Duration::from_millis(100));
        assert_eq!(b.base(3), Duration::from_millis(400));
        assert_eq!(b.max, Duration::from_secs(30));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now: jiff::Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
