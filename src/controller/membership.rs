//! The membership poller, for `spec.bind: Members`: every `--membership-poll`
//! (and at once when a reconcile needs a group not read yet) it reads what
//! changed in the tracked groups (`directory::members::sync`), and sends the
//! TeamAccess objects whose group's membership changed to the controller. A
//! change reaches each RoleBinding through one reconcile, which reads the
//! roster; nothing else is written.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use crate::{
    api::{BindMode, TeamAccess},
    directory::members::{self, MemberSource, Membership, Roster, Unavailable},
    reconcile::{Context, resolve},
};

/// What a reconcile reads of a group's membership, in brief: a change of it
/// is a reason to reconcile the group's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Members { subjects: u64, synced_at: jiff::Timestamp, stale: Option<&'static str> },
    Unavailable(Option<&'static str>, usize),
}

fn seen(view: Result<Membership, Unavailable>) -> Seen {
    match view {
        Ok(m) => Seen::Members {
            subjects: crate::hash::fnv1a(&m.subjects.join("\n")),
            synced_at: m.synced_at,
            stale: m.stale.map(|s| s.error.reason().as_str()),
        },
        Err(Unavailable::Pending(failure)) => Seen::Unavailable(failure.map(|f| f.reason().as_str()), 0),
        Err(Unavailable::TooMany(count)) => Seen::Unavailable(None, count),
    }
}

/// The group a Members-mode TeamAccess binds, once its status pins one.
fn bound_group(ta: &TeamAccess) -> Option<String> {
    (ta.spec.bind == BindMode::Members && ta.metadata.deletion_timestamp.is_none())
        .then(|| resolve::pin_for(ta).map(|pin| pin.object_id.to_lowercase()))
        .flatten()
}

/// Runs until the returned receiver is dropped; `poll` apart between reads.
pub fn start(
    ctx: Arc<Context>,
    source: Box<dyn MemberSource>,
    poll: Duration,
) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<ObjectRef<TeamAccess>>) {
    let (changed, receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(ctx, source, poll, changed));
    (task, receiver)
}

async fn run(
    ctx: Arc<Context>,
    mut source: Box<dyn MemberSource>,
    poll: Duration,
    changed: mpsc::UnboundedSender<ObjectRef<TeamAccess>>,
) {
    let roster: &Roster = &ctx.identity.roster;
    let mut before: HashMap<String, Seen> = HashMap::new();
    loop {
        let store = ctx.caches.teamaccesses.state();
        let mut roots: BTreeSet<String> = store.iter().filter_map(|ta| bound_group(ta)).collect();
        roots.extend(roster.requested());
        if !roots.is_empty() {
            let started = std::time::Instant::now();
            let tracked = members::sync(roster, source.as_mut(), &roots, jiff::Timestamp::now()).await;
            let now: HashMap<String, Seen> = roots.iter().map(|g| (g.clone(), seen(roster.view(g)))).collect();
            let moved: BTreeSet<&String> =
                now.iter().filter(|(g, s)| before.get(*g) != Some(s)).map(|(g, _)| g).collect();
            tracing::debug!(
                groups = tracked.len(),
                changed = moved.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "membership poll"
            );
            if !moved.is_empty() {
                // Objects not pinned yet asked for their group: they are waiting too.
                for ta in ctx.caches.teamaccesses.state() {
                    let wants = bound_group(&ta).or_else(|| pinned_or_waiting(&ta, &moved));
                    if wants.is_some_and(|g| moved.contains(&g)) {
                        let _ = changed.send(ObjectRef::from_obj(&*ta));
                    }
                }
            }
            before = now;
        }
        if changed.is_closed() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = roster.wanted.notified() => {}
        }
    }
}

/// A Members-mode object with no pin yet waits for whichever group moved: it
/// is looked at again (its reconcile finds whether its group is among them).
fn pinned_or_waiting(ta: &TeamAccess, moved: &BTreeSet<&String>) -> Option<String> {
    let waiting = ta.spec.bind == BindMode::Members && resolve::pin_for(ta).is_none();
    waiting.then(|| moved.iter().next().map(|g| (*g).clone())).flatten()
}
