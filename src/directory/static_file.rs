//! A directory read from a YAML file and reloaded when the file changes.

use std::path::Path;

use async_trait::async_trait;
use tokio::sync::watch;

use std::collections::{BTreeSet, HashMap};

use super::{
    Directory, DirectoryError, DirectoryGroup, DirectoryUser,
    file_format::DirectoryFile,
    members::{GroupRead, MemberKind, MemberSource, Person, PersonKind, Poll},
};
use crate::{
    api::{GroupSelector, UserRef},
    watched_file::{LoadError, WatchedFile},
};

pub struct StaticDirectory {
    file: WatchedFile<DirectoryFile>,
}

impl StaticDirectory {
    /// Loads the file; it must exist and parse at startup. Afterwards it is
    /// re-read, and a file that no longer parses keeps the last good content.
    pub async fn load(path: &Path) -> Result<Self, LoadError> {
        let file =
            WatchedFile::load(path, "directory file", |text| DirectoryFile::parse(text).map_err(|e| e.to_string()))
                .await?;
        let loaded = file.current();
        tracing::info!(path = %path.display(), groups = loaded.groups.len(), users = loaded.users.len(), "loaded static directory");
        Ok(Self { file })
    }

    fn read<T>(&self, f: impl FnOnce(&DirectoryFile) -> T) -> T {
        f(&self.file.current())
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
        Some(self.file.changes())
    }

    async fn transitive_members(&self, group: &str) -> Result<Vec<Person>, DirectoryError> {
        let file = self.file.current();
        let people = file.transitive_members(group).into_iter().filter_map(|member| match member.kind {
            MemberKind::Group => None,
            MemberKind::ServicePrincipal => {
                Some(Person { kind: PersonKind::ServicePrincipal, subject: member.object_id })
            }
            MemberKind::User => {
                let user = crate::api::UserRef { object_id: Some(member.object_id), user_principal_name: None };
                file.find_user(&user).ok().map(|user| Person::from(&user))
            }
        });
        Ok(people.collect())
    }

    fn member_source(&self) -> Option<Box<dyn MemberSource>> {
        Some(Box::new(FileMembers { file: self.file.clone() }))
    }
}

/// Memberships from the directory file: every poll reads the file's current
/// content in full (it is local and re-read every few seconds anyway).
struct FileMembers {
    file: WatchedFile<DirectoryFile>,
}

#[async_trait]
impl MemberSource for FileMembers {
    async fn poll(&mut self, groups: &BTreeSet<String>) -> Poll {
        let mut memberships = self.file.current().memberships();
        let reads = groups
            .iter()
            .map(|group| {
                let read = memberships.remove(group).map_or(GroupRead::Gone, GroupRead::Full);
                (group.clone(), read)
            })
            .collect();
        Poll { reads, failed: Vec::new() }
    }

    async fn users(&mut self, object_ids: &[String]) -> Result<HashMap<String, Person>, DirectoryError> {
        let file = self.file.current();
        let mut found = HashMap::new();
        for id in object_ids {
            let user = crate::api::UserRef { object_id: Some(id.clone()), user_principal_name: None };
            if let Ok(user) = file.find_user(&user) {
                found.insert(id.clone(), Person::from(&user));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Reason, watched_file::RELOAD_INTERVAL};

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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_file_gives_members_in_full_and_expands_nesting() {
        let dir = std::env::temp_dir().join(format!("ta-static-members-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("directory.yaml");
        let (team, inner) = ("7b7b7b7b-7b7b-4b7b-8b7b-7b7b7b7b7b7b", "8c8c8c8c-8c8c-4c8c-8c8c-8c8c8c8c8c8c");
        std::fs::write(
            &path,
            format!(
                "groups:\n- {{objectId: {team}, displayName: team}}\n- {{objectId: {inner}, displayName: inner, memberOf: [{team}]}}\n\
                 users:\n- {{objectId: 11111111-1111-4111-8111-111111111111, userPrincipalName: ann@contoso.com, memberOf: [{inner}]}}\n\
                 servicePrincipals:\n- {{objectId: 22222222-2222-4222-8222-222222222222, displayName: deployer, memberOf: [{team}]}}\n"
            ),
        )
        .unwrap();
        let directory = StaticDirectory::load(&path).await.unwrap();
        let mut source = directory.member_source().unwrap();
        let asked = BTreeSet::from([team.to_string(), "99999999-9999-4999-8999-999999999999".to_string()]);
        let poll = source.poll(&asked).await;
        let reads: HashMap<String, GroupRead> = poll.reads.into_iter().collect();
        let GroupRead::Full(members) = &reads[team] else { panic!("a full read: {reads:?}") };
        assert_eq!(members.len(), 2, "the nested group and the service principal: {members:?}");
        assert_eq!(reads["99999999-9999-4999-8999-999999999999"], GroupRead::Gone);
        let mut people: Vec<String> =
            directory.transitive_members(team).await.unwrap().into_iter().map(|p| p.subject).collect();
        people.sort();
        assert_eq!(people, ["22222222-2222-4222-8222-222222222222", "ann@contoso.com"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
