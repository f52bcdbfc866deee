//! A configuration file read at start-up and re-read while the operator runs:
//! the static directory and the namespace profiles. It must exist and parse at
//! start-up; afterwards a file that no longer parses (or is gone) keeps the
//! last good content, and each change that parses is announced.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::watch;

/// How often the file is read again. A mounted ConfigMap is updated by swapping a
/// symlink, which file-change notifications on the file itself miss; reading a small
/// file every few seconds is cheap and sees every kind of update.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Why a file could not be loaded at start-up. `what` names the file for the
/// reader ("directory file", "namespace profiles file").
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the {what} {} does not parse: {message}", path.display())]
    Parse { what: &'static str, path: PathBuf, message: String },
}

/// How a file's text becomes its content; the error is shown to the admin.
pub type Parser<T> = fn(&str) -> Result<T, String>;

/// The content of a file, kept up to date. Clones share the content.
pub struct WatchedFile<T> {
    content: Arc<RwLock<Loaded<T>>>,
    changes: watch::Receiver<u64>,
}

struct Loaded<T> {
    text: String,
    value: Arc<T>,
}

impl<T> Clone for WatchedFile<T> {
    fn clone(&self) -> Self {
        Self { content: self.content.clone(), changes: self.changes.clone() }
    }
}

impl<T: Send + Sync + 'static> WatchedFile<T> {
    /// Loads the file, which must exist and parse, and starts re-reading it
    /// every `RELOAD_INTERVAL`.
    pub async fn load(path: &Path, what: &'static str, parse: Parser<T>) -> Result<Self, LoadError> {
        let text = tokio::fs::read_to_string(path).await.map_err(|source| LoadError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        let value = parse(&text).map_err(|message| LoadError::Parse { what, path: path.to_path_buf(), message })?;
        let content = Arc::new(RwLock::new(Loaded { text, value: Arc::new(value) }));
        let (tx, rx) = watch::channel(0);
        tokio::spawn(reload_loop(path.to_path_buf(), what, parse, content.clone(), tx));
        Ok(Self { content, changes: rx })
    }

    /// The content as last loaded.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock only means a reader panicked; the data is still whole.
        self.content.read().unwrap_or_else(|e| e.into_inner()).value.clone()
    }

    /// Ticks once per change that was loaded.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

async fn reload_loop<T>(
    path: PathBuf,
    what: &'static str,
    parse: Parser<T>,
    content: Arc<RwLock<Loaded<T>>>,
    tx: watch::Sender<u64>,
) {
    let mut generation = 0u64;
    let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        if reload(&path, what, parse, &content).await == Reload::Changed {
            generation += 1;
            let _ = tx.send(generation);
        }
    }
}

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
enum Reload {
    Unchanged,
    Changed,
    /// Unreadable or not parseable: the last good content stays in use.
    Kept,
}

async fn reload<T>(path: &Path, what: &'static str, parse: Parser<T>, content: &RwLock<Loaded<T>>) -> Reload {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the {what}; keeping the last loaded content");
            return Reload::Kept;
        }
    };
    if content.read().unwrap_or_else(|e| e.into_inner()).text == text {
        return Reload::Unchanged;
    }
    match parse(&text) {
        Ok(value) => {
            tracing::info!(path = %path.display(), "reloaded the {what}");
            *content.write().unwrap_or_else(|e| e.into_inner()) = Loaded { text, value: Arc::new(value) };
            Reload::Changed
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the {what} does not parse; keeping the last loaded content");
            // Remember the text so the same broken content is not reported every tick.
            content.write().unwrap_or_else(|e| e.into_inner()).text = text;
            Reload::Kept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(text: &str) -> Result<Vec<u32>, String> {
        text.split_whitespace().map(|w| w.parse::<u32>().map_err(|e| format!("{w}: {e}"))).collect()
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_announced_and_a_broken_one_keeps_the_last_content() {
        let dir = std::env::temp_dir().join(format!("ta-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("numbers");
        std::fs::write(&path, "1 2").unwrap();
        let file = WatchedFile::load(&path, "numbers file", numbers).await.unwrap();
        assert_eq!(*file.current(), [1, 2]);

        let mut changes = file.changes();
        std::fs::write(&path, "3").unwrap();
        tokio::time::timeout(RELOAD_INTERVAL * 5, changes.changed()).await.unwrap().unwrap();
        assert_eq!(*file.current(), [3]);

        std::fs::write(&path, "x").unwrap();
        assert_eq!(reload(&path, "numbers file", numbers, &file.content).await, Reload::Kept);
        assert_eq!(*file.current(), [3]);
        assert_eq!(reload(&path, "numbers file", numbers, &file.content).await, Reload::Unchanged, "reported once");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(reload(&path, "numbers file", numbers, &file.content).await, Reload::Kept);
        assert_eq!(*file.current(), [3]);

        let missing = WatchedFile::load(&path, "numbers file", numbers).await.err().unwrap();
        assert!(missing.to_string().starts_with("cannot read the numbers file"), "{missing}");
        std::fs::write(&path, "x").unwrap();
        let broken = WatchedFile::load(&path, "numbers file", numbers).await.err().unwrap();
        assert!(broken.to_string().contains("does not parse: x:"), "{broken}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
