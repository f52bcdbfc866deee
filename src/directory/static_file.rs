//! A directory read from a YAML file and reloaded when the file changes.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    Directory, DirectoryError, DirectoryGroup, DirectoryUser,
    file_format::{DirectoryFile, FileFormatError},
};
use crate::api::{GroupSelector, UserRef};

/// How often the file is read again. A mounted ConfigMap is updated by swapping a
/// symlink, which file-change notifications on the file itself miss; reading a small
/// file every few seconds is cheap and sees every kind of update.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Why the directory file could not be loaded at startup.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the directory file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the directory file {} does not parse: {source}", path.display())]
    Parse { path: PathBuf, source: FileFormatError },
}

pub struct StaticDirectory {
    content: Arc<RwLock<Loaded>>,
    changes: watch::Receiver<u64>,
}

struct Loaded {
    text: String,
    file: DirectoryFile,
}

impl StaticDirectory {
    /// Loads the file; it must exist and parse at startup. Afterwards a background
    /// task reloads it, and a file that no longer parses keeps the last good content.
    pub async fn load(path: &Path) -> Result<Self, LoadError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        let file =
            DirectoryFile::parse(&text).map_err(|source| LoadError::Parse { path: path.to_path_buf(), source })?;
        tracing::info!(path = %path.display(), groups = file.groups.len(), users = file.users.len(), "loaded static directory");
        let content = Arc::new(RwLock::new(Loaded { text, file }));
        let (tx, rx) = watch::channel(0);
        tokio::spawn(reload_loop(path.to_path_buf(), content.clone(), tx));
        Ok(Self { content, changes: rx })
    }

    fn read<T>(&self, f: impl FnOnce(&DirectoryFile) -> T) -> T {
        // A poisoned lock only means a reader panicked; the data is still whole.
        let guard = self.content.read().unwrap_or_else(|e| e.into_inner());
        f(&guard.file)
    }
}

async fn reload_loop(path: PathBuf, content: Arc<RwLock<Loaded>>, tx: watch::Sender<u64>) {
    let mut generation = 0u64;
    let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        if reload(&path, &content).await == Reload::Changed {
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

async fn reload(path: &Path, content: &RwLock<Loaded>) -> Reload {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read directory file; keeping the last loaded content");
            return Reload::Kept;
        }
    };
    if content.read().unwrap_or_else(|e| e.into_inner()).text == text {
        return Reload::Unchanged;
    }
    match DirectoryFile::parse(&text) {
        Ok(file) => {
            tracing::info!(path = %path.display(), groups = file.groups.len(), users = file.users.len(), "reloaded static directory");
            *content.write().unwrap_or_else(|e| e.into_inner()) = Loaded { text, file };
            Reload::Changed
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "directory file does not parse; keeping the last loaded content");
            // Remember the text so the same broken content is not reported every tick.
            content.write().unwrap_or_else(|e| e.into_inner()).text = text;
            Reload::Kept
        }
    }
}

#[async_trait]
impl Directory for StaticDirectory {
    async fn resolve_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        self.read(|f| f.find_group(selector))
    }

    async fn resolve_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError> {
        self.read(|f| f.find_user(user))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Reason;

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_announced() {
        let dir = std::env::temp_dir().join(format!("ta-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("directory.yaml");
        std::fs::write(&path, "groups: []\n").unwrap();
        let directory = StaticDirectory::load(&path).await.unwrap();
        let selector = GroupSelector { display_name: Some("late".into()), ..Default::default() };
        assert_eq!(directory.resolve_group(&selector).await.unwrap_err().reason(), Reason::GroupNotFound);

        let mut changes = directory.changes().unwrap();
        std::fs::write(&path, "groups:\n- objectId: 7b7b7b7b-7b7b-4b7b-8b7b-7b7b7b7b7b7b\n  displayName: late\n")
            .unwrap();
        tokio::time::timeout(RELOAD_INTERVAL * 5, changes.changed()).await.unwrap().unwrap();
        assert_eq!(directory.resolve_group(&selector).await.unwrap().object_id, "7b7b7b7b-7b7b-4b7b-8b7b-7b7b7b7b7b7b");

        // A broken file, or none, keeps the last good content.
        std::fs::write(&path, "groups: [ {{{").unwrap();
        assert_eq!(reload(&path, &directory.content).await, Reload::Kept);
        assert!(directory.resolve_group(&selector).await.is_ok());
        assert_eq!(reload(&path, &directory.content).await, Reload::Unchanged, "reported once");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(reload(&path, &directory.content).await, Reload::Kept);
        assert!(directory.resolve_group(&selector).await.is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
