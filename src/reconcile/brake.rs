//! The brake on mass deletion: at most `max` namespaces deleted per `window`.
//!
//! A GitOps prune or a bulk delete can remove every TeamAccess at once; without a
//! brake, every namespace the operator made would go with its data in one pass.
//! Past the limit, deletions wait (their TeamAccess keeps its finalizer and says
//! so) until the window has room, so an admin can notice and stop it.
//!
//! **Why in a Lease, not in memory:** a window kept in the process starts empty
//! after a restart, a leader failover or on a second shard, and each would let
//! another `max` through. The deletions of the window are kept in an annotation
//! of one Lease (`--deletion-brake-lease` in `--deletion-brake-namespace`),
//! updated with optimistic concurrency, so every replica and every shard that
//! names the same Lease draws on one allowance, and a restart changes nothing.

use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client,
    api::{PostParams, entry::Entry},
};
use serde::{Deserialize, Serialize};

use super::error::Error;
use crate::api::labels::FIELD_MANAGER;

/// The annotation of the Lease that holds the window's deletions.
pub const RECENT_ANNOTATION: &str = "teamaccess.dev/recent-namespace-deletions";

/// One namespace deletion the brake let through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub namespace: String,
    pub at: jiff::Timestamp,
}

/// The pure rule: takes a slot to delete `namespace` at `now` in `recent` (the
/// window's deletions, which it prunes), or says how long until one frees up. A
/// namespace already counted in the window takes no second slot: a cleanup
/// retried after its delete call must not use up the brake. `max` 0 lifts it.
pub fn admit(
    recent: &mut Vec<Deletion>,
    namespace: &str,
    now: jiff::Timestamp,
    max: u32,
    window: Duration,
) -> Result<(), Duration> {
    if max == 0 {
        return Ok(());
    }
    let window_start = now - jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    // A deletion dated in the future (another replica's clock ahead) counts until it ages out.
    recent.retain(|d| d.at > window_start);
    recent.sort_by_key(|d| d.at);
    if recent.iter().any(|d| d.namespace == namespace) {
        return Ok(());
    }
    if recent.len() < max as usize {
        recent.push(Deletion { namespace: namespace.to_string(), at: now });
        return Ok(());
    }
    let oldest = recent.first().expect("full, so not empty").at;
    let frees_at = oldest + jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    Err(Duration::try_from(frees_at.duration_since(now)).unwrap_or_default())
}

/// The brake of one operator: its limits, and the Lease it shares with every
/// other replica and shard that names it.
pub struct DeletionBrake {
    max: u32,
    window: Duration,
    leases: Api<Lease>,
    namespace: String,
    name: String,
    /// One read-modify-write of the Lease at a time from this process, so a bulk
    /// deletion does not make its own cleanups conflict with each other.
    turn: tokio::sync::Mutex<()>,
}

impl DeletionBrake {
    /// Conflicting writes (another replica or shard in between) are tried again
    /// this many times before the cleanup fails and is retried with backoff.
    const ATTEMPTS: usize = 5;

    pub fn new(client: Client, namespace: &str, name: &str, max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            leases: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Takes a slot to delete `namespace` now: Ok(Ok) to go ahead, Ok(Err(wait))
    /// when the window is full, Err when the Lease could not be read or written
    /// (nothing is deleted then: the brake holds when in doubt).
    pub async fn try_acquire(&self, namespace: &str) -> Result<Result<(), Duration>, Error> {
        if self.max == 0 {
            return Ok(Ok(()));
        }
        let _turn = self.turn.lock().await;
        let what = || format!("record the namespace deletion in Lease {}/{}", self.namespace, self.name);
        for _ in 0..Self::ATTEMPTS {
            let entry = self.leases.entry(&self.name).await.map_err(|e| Error::kube(what(), e))?;
            let mut recent = match &entry {
                Entry::Occupied(lease) => recorded(lease.get()),
                Entry::Vacant(_) => Vec::new(),
            };
            let decision = admit(&mut recent, namespace, jiff::Timestamp::now(), self.max, self.window);
            if decision.is_err() {
                return Ok(decision);
            }
            let recent = serde_json::to_string(&recent).expect("deletions serialize");
            let written = match entry {
                Entry::Occupied(mut lease) => {
                    lease
                        .get_mut()
                        .metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(RECENT_ANNOTATION.into(), recent);
                    lease.commit(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }).await
                }
                Entry::Vacant(vacant) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            annotations: Some([(RECENT_ANNOTATION.to_string(), recent)].into()),
                            ..Default::default()
                        },
                        spec: None,
                    };
                    vacant
                        .insert(lease)
                        .commit(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() })
                        .await
                }
            };
            match written {
                Ok(()) => return Ok(Ok(())),
                // Someone else wrote the Lease since we read it: read it again.
                Err(kube::api::entry::CommitError::Save(kube::Error::Api(s)))
                    if s.is_conflict() || s.is_already_exists() => {}
                Err(kube::api::entry::CommitError::Save(e)) => return Err(Error::kube(what(), e)),
                Err(e) => return Err(Error::Kube { action: what(), source: kube::Error::Service(Box::new(e)) }),
            }
        }
        Err(Error::Kube {
            action: what(),
            source: kube::Error::Service(format!("{} conflicting writes in a row", Self::ATTEMPTS).into()),
        })
    }
}

/// The deletions a Lease records. An annotation that does not parse is logged and
/// read as an empty window: whoever may write the Lease may delete it as well.
fn recorded(lease: &Lease) -> Vec<Deletion> {
    let Some(text) = lease.metadata.annotations.as_ref().and_then(|a| a.get(RECENT_ANNOTATION)) else {
        return Vec::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the deletion brake's Lease annotation does not parse; starting its window again");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn at_most_max_deletions_per_window() {
        let mut recent = Vec::new();
        let window = Duration::from_secs(60);
        for i in 0..5 {
            assert!(admit(&mut recent, &format!("ns{i}"), at(0), 5, window).is_ok());
        }
        assert_eq!(admit(&mut recent, "ns5", at(0), 5, window), Err(Duration::from_secs(60)));
        assert_eq!(admit(&mut recent, "ns5", at(45), 5, window), Err(Duration::from_secs(15)));
        assert!(admit(&mut recent, "ns5", at(60), 5, window).is_ok(), "the window slid past the first");
    }

    #[test]
    fn the_window_slides_one_deletion_at_a_time() {
        let mut recent = Vec::new();
        let window = Duration::from_secs(10);
        assert!(admit(&mut recent, "a", at(0), 2, window).is_ok());
        assert!(admit(&mut recent, "b", at(5), 2, window).is_ok());
        assert_eq!(admit(&mut recent, "c", at(6), 2, window), Err(Duration::from_secs(4)));
        assert!(admit(&mut recent, "c", at(10), 2, window).is_ok());
        assert_eq!(admit(&mut recent, "d", at(11), 2, window), Err(Duration::from_secs(4)));
    }

    #[test]
    fn zero_lifts_the_brake() {
        let mut recent = Vec::new();
        assert!((0..1000).all(|i| admit(&mut recent, &i.to_string(), at(0), 0, Duration::from_secs(60)).is_ok()));
        assert!(recent.is_empty());
    }

    #[test]
    fn a_retried_deletion_of_the_same_namespace_takes_no_second_slot() {
        let mut recent = Vec::new();
        let window = Duration::from_secs(60);
        assert!(admit(&mut recent, "dev", at(0), 2, window).is_ok());
        assert!(admit(&mut recent, "dev", at(1), 2, window).is_ok(), "the same namespace again");
        assert!(admit(&mut recent, "sre", at(1), 2, window).is_ok(), "a second namespace still fits");
        assert!(admit(&mut recent, "ops", at(1), 2, window).is_err());
    }

    #[test]
    fn the_window_survives_a_round_trip_through_the_annotation() {
        let mut recent = Vec::new();
        let window = Duration::from_secs(60);
        assert!(admit(&mut recent, "dev", at(0), 1, window).is_ok());
        let lease = Lease {
            metadata: ObjectMeta {
                annotations: Some([(RECENT_ANNOTATION.to_string(), serde_json::to_string(&recent).unwrap())].into()),
                ..Default::default()
            },
            spec: None,
        };
        // What a restarted process (or another shard) reads: the same full window.
        let mut read = recorded(&lease);
        assert_eq!(read, recent);
        assert_eq!(admit(&mut read, "sre", at(30), 1, window), Err(Duration::from_secs(30)));
        assert!(recorded(&Lease::default()).is_empty());
    }
}
