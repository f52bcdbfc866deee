//! Leader election on a Lease (kube-lease-manager): wait, lead, release.

use std::sync::Arc;

use anyhow::Context as _;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

use crate::reconcile;

use super::flags::RunArgs;

/// Completes once `stopping` turns true.
pub(super) async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

async fn lease_manager(
    ctx: &reconcile::Context,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
) -> anyhow::Result<LeaseManager> {
    let duration = args.lease_duration.as_secs().max(2);
    LeaseManagerBuilder::new(ctx.client.clone(), &args.lease_name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 5).max(1))
        // One field manager per identity, as the lease manager requires: its lock
        // is a server-side apply without force, so two replicas under one manager
        // name could both take a free Lease (two leaders until the next renewal).
        .with_field_manager(format!("{}-lease-{identity}", crate::api::labels::FIELD_MANAGER))
        .build()
        .await
        .context("setting up leader election")
}

/// Completes when the Lease goes from held to free (its holder released it).
/// Watch errors are retried by the watcher's backoff; the Lease's state when the
/// watch starts does not count, so a free Lease nobody takes does not spin.
async fn lease_released(client: kube::Client, namespace: &str, name: &str) {
    use futures::StreamExt as _;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let leases = kube::Api::<Lease>::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(leases, config).default_backoff().applied_objects());
    let mut held = false;
    while let Some(event) = events.next().await {
        let Ok(lease) = event else { continue };
        let holder = lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty());
        match holder {
            Some(_) => held = true,
            None if held => return,
            None => {}
        }
    }
    std::future::pending().await
}

/// The lease manager's view of leadership, and its task (which releases the
/// Lease once the receiver is dropped).
type Leading = (watch::Receiver<bool>, tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>);

/// Waits until this instance holds the Lease (Some) or `stopping` turns true (None).
async fn wait_to_lead(
    ctx: &reconcile::Context,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<Option<Leading>> {
    let (mut leading, mut lease) = lease_manager(ctx, args, namespace, identity).await?.watch().await;
    // A standby is ready: it can take over at any moment.
    ctx.report.health.set_ready(true);
    tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), %identity, "waiting for the leader Lease");
    loop {
        let became_leader = tokio::select! {
            _ = leading.wait_for(|l| *l) => true,
            _ = stopping.wait_for(|s| *s) => break,
            // The lease manager looks again only when the holder's lease would
            // expire; a leader that released it on SIGTERM (a rollout) would leave
            // the operator without one for up to --lease-duration. Seeing the
            // release, start over: a fresh manager takes a free Lease at once.
            () = lease_released(ctx.client.clone(), namespace, &args.lease_name) => false,
        };
        if became_leader {
            return Ok(Some((leading, lease)));
        }
        drop(leading);
        let _ = lease.await;
        (leading, lease) = lease_manager(ctx, args, namespace, identity).await?.watch().await;
    }
    drop(leading);
    let _ = lease.await;
    Ok(None)
}

/// Waits for the Lease, reconciles while holding it, and releases it on shutdown.
/// Losing the Lease ends the process with an error, so a restart rejoins cleanly.
pub(super) async fn run_as_leader(
    ctx: Arc<reconcile::Context>,
    feeds: reconcile::caches::Feeds,
    args: &RunArgs,
    namespace: String,
    identity: String,
    stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some((leading, lease)) = wait_to_lead(&ctx, args, &namespace, &identity, stopping.clone()).await? else {
        return Ok(());
    };
    tracing::info!(%identity, "became the leader");
    ctx.report.metrics.leader.set(1);
    let lost = {
        let mut leading = leading.clone();
        async move {
            let _ = leading.wait_for(|l| !*l).await;
        }
    };
    let stopped_or_lost = {
        let stopped = stopped(stopping.clone());
        async move {
            tokio::select! {
                _ = stopped => {},
                _ = lost => tracing::warn!("lost the leader Lease"),
            }
        }
    };
    crate::controller::run(ctx.clone(), feeds, stopped_or_lost).await?;
    ctx.report.metrics.leader.set(0);
    let lost_it = !*leading.borrow() && !*stopping.borrow();
    // Closing the channel makes the manager release the Lease for the next leader.
    drop(leading);
    match lease.await {
        Ok(Ok(_)) => tracing::info!("released the leader Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader Lease"),
        Err(e) => tracing::warn!(error = %e, "the lease task failed"),
    }
    if lost_it {
        anyhow::bail!("lost the leader Lease; exiting so a restart rejoins the election");
    }
    Ok(())
}
