//! The `$batch` coalescer: lookups that arrive close together travel in one
//! request of up to 20, and the retry policy of Graph requests lives here.
//!
//! A throttled or unavailable item (429, 503, 504) is retried on its own; a failed
//! request is retried whole. Both honour Retry-After, else the Graph backoff
//! applies, a bounded number of times. While the service has asked us to wait
//! (for a request or an item), further lookups fail fast instead of adding load.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::transport::{Answer, Transport};
use crate::{backoff::Backoff, directory::DirectoryError};

/// Graph's limit of requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

#[derive(Clone, Debug)]
pub struct BatchSettings {
    /// Tries per lookup before a throttling or outage error is returned.
    pub max_attempts: u32,
    /// How long a batch waits for the next lookup before it is sent.
    pub window: Duration,
    /// The longest a lookup waits for others to share its `$batch`.
    pub max_wait: Duration,
    /// Retry delays when the service gives no Retry-After.
    pub backoff: Backoff,
}

/// A lookup waiting for its answer.
struct Pending {
    request: String,
    reply: oneshot::Sender<Result<Answer, DirectoryError>>,
}

/// Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the loop that gathers lookups into batches (on the current runtime).
    pub fn start(transport: Arc<Transport>, settings: BatchSettings) -> Self {
        let sender = Arc::new(Sender { transport, settings, hold_until: Mutex::new(None) });
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(sender, rx));
        Self { queue }
    }

    /// Sends `request` (relative to /v1.0) with whatever lookups arrive with it.
    pub async fn lookup(&self, request: String) -> Result<Answer, DirectoryError> {
        let stopped = || DirectoryError::Unavailable { message: "the Graph client has stopped".into() };
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { request, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Collects lookups that arrive within the window of each other into one batch.
/// While a burst lasts (the last batch was full), a pause of the watch a little
/// longer than the window does not split a batch: the window is four times as
/// long (at most `max_wait`). A lone lookup still goes after the short window.
async fn gather(sender: Arc<Sender>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut in_burst = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + sender.settings.max_wait;
        let window =
            if in_burst { (sender.settings.window * 4).min(sender.settings.max_wait) } else { sender.settings.window };
        while batch.len() < MAX_BATCH {
            let idle = tokio::time::Instant::now() + window;
            match tokio::time::timeout_at(idle.min(deadline), rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        in_burst = batch.len() == MAX_BATCH;
        tokio::spawn(sender.clone().answer(batch));
    }
}

struct Sender {
    transport: Arc<Transport>,
    settings: BatchSettings,
    /// Set when Graph asked us to wait: lookups fail fast until then.
    hold_until: Mutex<Option<(Instant, DirectoryError)>>,
}

impl Sender {
    /// The error to fail fast with while Graph has asked us to wait.
    fn held(&self) -> Option<DirectoryError> {
        let hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        hold.as_ref().filter(|(until, _)| Instant::now() < *until).map(|(until, err)| match err {
            DirectoryError::Throttled { .. } => {
                DirectoryError::Throttled { retry_after: Some(until.saturating_duration_since(Instant::now())) }
            }
            other => other.clone(),
        })
    }

    fn hold(&self, delay: Duration, err: DirectoryError) {
        *self.hold_until.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now() + delay, err));
    }

    /// Replies to the lookups Graph answered for good; returns those told to
    /// wait (to try again, unless this was the last attempt) and how long.
    /// Graph throttles the items of a batch one by one: an item told to wait
    /// holds back every lookup, as a throttled request does, so a storm is met
    /// with few requests.
    fn reply_or_keep(&self, pending: Vec<Pending>, answers: Vec<Answer>, attempt: u32) -> (Vec<Pending>, Duration) {
        let last = attempt >= self.settings.max_attempts;
        let mut again = Vec::new();
        let mut wait = Duration::ZERO;
        let mut hold: Option<(Duration, DirectoryError)> = None;
        for (p, answer) in pending.into_iter().zip(answers) {
            if !answer.is_retryable() {
                let _ = p.reply.send(Ok(answer));
                continue;
            }
            let delay = answer.retry_after.unwrap_or_else(|| self.settings.backoff.delay(attempt));
            if hold.as_ref().is_none_or(|(d, _)| delay > *d) {
                hold = Some((delay, answer.clone().into_request_error()));
            }
            if last {
                let _ = p.reply.send(Ok(answer));
            } else {
                wait = wait.max(delay);
                again.push(p);
            }
        }
        if let Some((delay, err)) = hold {
            self.hold(delay, err);
        }
        (again, wait)
    }

    /// Answers every pending lookup, retrying throttled items on their own and
    /// failed requests as a whole, a bounded number of times.
    async fn answer(self: Arc<Self>, mut pending: Vec<Pending>) {
        let attempts = self.settings.max_attempts;
        for attempt in 1..=attempts {
            if let Some(err) = self.held() {
                for p in pending {
                    let _ = p.reply.send(Err(err.clone()));
                }
                return;
            }
            let requests: Vec<&str> = pending.iter().map(|p| p.request.as_str()).collect();
            match self.transport.send(&requests).await {
                Ok(answers) => {
                    let (again, wait) = self.reply_or_keep(pending, answers, attempt);
                    if again.is_empty() {
                        return;
                    }
                    tracing::debug!(items = again.len(), ?wait, "Graph asked batch items to wait; retrying them");
                    pending = again;
                    tokio::time::sleep(wait).await;
                }
                Err((err, retry_after)) => {
                    let retryable = err.is_transient();
                    if let Some(delay) = retry_after {
                        self.hold(delay, err.clone());
                    }
                    if !retryable || attempt == attempts {
                        if retryable && retry_after.is_none() {
                            // No guidance from the service: hold off a little anyway.
                            self.hold(self.settings.backoff.delay(attempt), err.clone());
                        }
                        for p in pending {
                            let _ = p.reply.send(Err(err.clone()));
                        }
                        return;
                    }
                    tracing::debug!(error = %err, attempt, "Graph request failed; retrying");
                    tokio::time::sleep(retry_after.unwrap_or_else(|| self.settings.backoff.delay(attempt))).await;
                }
            }
        }
    }
}
