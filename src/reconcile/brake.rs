//! The brake on mass deletion: at most `max` namespaces deleted per `window`.
//!
//! A GitOps prune or a bulk delete can remove every TeamAccess at once; without a
//! brake, every namespace the operator made would go with its data in one pass.
//! Past the limit, deletions wait (their TeamAccess keeps its finalizer and says
//! so) until the window has room, so an admin can notice and stop it.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct DeletionBrake {
    /// 0 lifts the brake.
    max: u32,
    window: Duration,
    /// The namespaces deleted within the window, oldest first.
    recent: VecDeque<(Instant, String)>,
}

impl DeletionBrake {
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window, recent: VecDeque::new() }
    }

    /// Takes a slot to delete `namespace` at `now`, or says how long until one
    /// frees up. A namespace already counted in the window takes no second slot:
    /// a cleanup retried after its delete call must not use up the brake.
    pub fn try_acquire(&mut self, namespace: &str, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) >= self.window) {
            self.recent.pop_front();
        }
        if self.recent.iter().any(|(_, ns)| ns == namespace) {
            return Ok(());
        }
        if self.recent.len() < self.max as usize {
            self.recent.push_back((now, namespace.to_string()));
            return Ok(());
        }
        let (oldest, _) = self.recent.front().expect("full, so not empty");
        Err((*oldest + self.window).saturating_duration_since(now))
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_deletions_per_window() {
        let start = Instant::now();
        let mut brake = DeletionBrake::new(5, Duration::from_secs(60));
        for i in 0..5 {
            assert!(brake.try_acquire(&format!("ns{i}"), start).is_ok());
        }
        assert_eq!(brake.try_acquire("ns5", start), Err(Duration::from_secs(60)));
        assert_eq!(brake.try_acquire("ns5", start + Duration::from_secs(45)), Err(Duration::from_secs(15)));
        assert!(brake.try_acquire("ns5", start + Duration::from_secs(60)).is_ok(), "the window slid past the first");
    }

    #[test]
    fn the_window_slides_one_deletion_at_a_time() {
        let start = Instant::now();
        let mut brake = DeletionBrake::new(2, Duration::from_secs(10));
        assert!(brake.try_acquire("a", start).is_ok());
        assert!(brake.try_acquire("b", start + Duration::from_secs(5)).is_ok());
        assert_eq!(brake.try_acquire("c", start + Duration::from_secs(6)), Err(Duration::from_secs(4)));
        assert!(brake.try_acquire("c", start + Duration::from_secs(10)).is_ok());
        assert_eq!(brake.try_acquire("d", start + Duration::from_secs(11)), Err(Duration::from_secs(4)));
    }

    #[test]
    fn zero_lifts_the_brake() {
        let mut brake = DeletionBrake::new(0, Duration::from_secs(60));
        let now = Instant::now();
        assert!((0..1000).all(|i| brake.try_acquire(&i.to_string(), now).is_ok()));
    }

    #[test]
    fn a_retried_deletion_of_the_same_namespace_takes_no_second_slot() {
        let now = Instant::now();
        let mut brake = DeletionBrake::new(2, Duration::from_secs(60));
        assert!(brake.try_acquire("dev", now).is_ok());
        assert!(brake.try_acquire("dev", now).is_ok(), "the same namespace again");
        assert!(brake.try_acquire("sre", now).is_ok(), "a second namespace still fits");
        assert!(brake.try_acquire("ops", now).is_err());
    }
}
