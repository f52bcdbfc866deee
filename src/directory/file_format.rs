//! The YAML file format of the static directory. The Graph emulator loads the same
//! format, so one file describes a tenant for the demo, the tests and the emulator.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    DirectoryError, DirectoryGroup, DirectoryUser,
    members::{Member, MemberKind},
};
use crate::api::{GroupSelector, UserRef};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectoryFile {
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    #[serde(default)]
    pub users: Vec<UserRecord>,
    /// Applications' service principals, which may be members of groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_principals: Vec<ServicePrincipalRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupRecord {
    pub object_id: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_nickname: Option<String>,
    #[serde(default = "default_true")]
    pub security_enabled: bool,
    /// Graph's isAssignableToRole: set when the group is created, and only a
    /// Privileged Role Administrator or Global Administrator may create one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_assignable_to_role: bool,
    /// Graph's onPremisesSyncEnabled: synchronized from on-premises AD, which
    /// users cannot create from the cloud.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_premises_sync_enabled: bool,
    /// objectIds of the groups this group is nested in (a direct member of).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
}

impl GroupRecord {
    /// A cloud security group as any user may make one: security-enabled,
    /// neither role-assignable nor synchronized, nested in no group.
    pub fn security_group(object_id: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self {
            object_id: object_id.into(),
            display_name: display_name.into(),
            mail_nickname: None,
            security_enabled: true,
            is_assignable_to_role: false,
            on_premises_sync_enabled: false,
            member_of: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePrincipalRecord {
    pub object_id: String,
    pub display_name: String,
    /// objectIds of the groups the service principal is a direct member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserRecord {
    pub object_id: String,
    pub user_principal_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// objectIds of the groups the user is a direct member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
}

/// A directory file that is not valid YAML of this format; says where and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileFormatError(String);

fn default_true() -> bool {
    true
}

impl DirectoryFile {
    /// Parses the YAML text of a directory file.
    pub fn parse(text: &str) -> Result<Self, FileFormatError> {
        serde_saphyr::from_str(text).map_err(|e| FileFormatError(e.to_string()))
    }

    /// Finds the one group matching the selector. Like Entra ID, names compare
    /// case-insensitively; more than one match is an error, never a guess.
    pub fn find_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError> {
        let matches: Vec<&GroupRecord> = self
            .groups
            .iter()
            .filter(|g| match selector {
                GroupSelector { object_id: Some(id), .. } => g.object_id.eq_ignore_ascii_case(id),
                GroupSelector { display_name: Some(name), .. } => g.display_name.to_lowercase() == name.to_lowercase(),
                GroupSelector { mail_nickname: Some(nick), .. } => {
                    g.mail_nickname.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(nick))
                }
                _ => false,
            })
            .collect();
        match matches.as_slice() {
            [] => Err(DirectoryError::GroupNotFound { selector: selector.describe() }),
            [g] => Ok(DirectoryGroup {
                object_id: g.object_id.to_lowercase(),
                display_name: g.display_name.clone(),
                mail_nickname: g.mail_nickname.clone(),
                security_enabled: g.security_enabled,
                is_assignable_to_role: g.is_assignable_to_role,
                on_premises_sync_enabled: g.on_premises_sync_enabled,
            }),
            many => Err(DirectoryError::AmbiguousGroup {
                selector: selector.describe(),
                candidates: many.iter().map(|g| g.object_id.to_lowercase()).collect(),
            }),
        }
    }

    /// Every group's direct members (users, service principals and nested
    /// groups), by lower-case objectId, in one pass over the file.
    pub fn memberships(&self) -> HashMap<String, BTreeSet<Member>> {
        let mut by_group: HashMap<String, BTreeSet<Member>> =
            self.groups.iter().map(|g| (g.object_id.to_lowercase(), BTreeSet::new())).collect();
        let mut add = |member_of: &[String], kind: MemberKind, id: &str| {
            for group in member_of {
                if let Some(members) = by_group.get_mut(&group.to_lowercase()) {
                    members.insert(Member { kind, object_id: id.to_lowercase() });
                }
            }
        };
        for u in &self.users {
            add(&u.member_of, MemberKind::User, &u.object_id);
        }
        for p in &self.service_principals {
            add(&p.member_of, MemberKind::ServicePrincipal, &p.object_id);
        }
        for g in &self.groups {
            add(&g.member_of, MemberKind::Group, &g.object_id);
        }
        by_group
    }

    /// Everyone in `group` through nesting, as Graph's transitiveMembers lists
    /// them: users, service principals and the nested groups themselves.
    pub fn transitive_members(&self, group: &str) -> Vec<Member> {
        let memberships = self.memberships();
        let mut found: BTreeSet<Member> = BTreeSet::new();
        let mut visited: BTreeSet<String> = BTreeSet::new();
        let mut queue = vec![group.to_lowercase()];
        while let Some(g) = queue.pop() {
            if !visited.insert(g.clone()) {
                continue;
            }
            for m in memberships.get(&g).into_iter().flatten() {
                if m.kind == MemberKind::Group {
                    queue.push(m.object_id.clone());
                }
                found.insert(m.clone());
            }
        }
        found.into_iter().collect()
    }

    /// Finds a user by userPrincipalName (case-insensitive) or objectId.
    pub fn find_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError> {
        self.users
            .iter()
            .find(|u| match user {
                UserRef { user_principal_name: Some(upn), .. } => u.user_principal_name.eq_ignore_ascii_case(upn),
                UserRef { object_id: Some(id), .. } => u.object_id.eq_ignore_ascii_case(id),
                _ => false,
            })
            .map(|u| DirectoryUser {
                object_id: u.object_id.to_lowercase(),
                user_principal_name: u.user_principal_name.clone(),
                user_type: u.user_type.clone(),
            })
            .ok_or_else(|| DirectoryError::UserNotFound { user: super::describe_user(user) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Reason;

    const SEED: &str = r#"
groups:
- objectId: 5F0A1D3E-8F8A-4C1E-9D55-0B0C2D7C1A01
  displayName: appdev
  mailNickname: appdev
- objectId: 6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d
  displayName: opssre
  mailNickname: opssre
- objectId: 11111111-1111-4111-8111-111111111111
  displayName: shared
- objectId: 22222222-2222-4222-8222-222222222222
  displayName: Shared
  securityEnabled: false
users:
- objectId: 0b9c7c52-1e6d-4a8a-9b4c-6a6f7b1f2e11
  userPrincipalName: aksdev@contoso.com
  memberOf: [5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01]
- objectId: 3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c
  userPrincipalName: partner_fabrikam.com#EXT#@contoso.onmicrosoft.com
  userType: Guest
"#;

    fn seed() -> DirectoryFile {
        DirectoryFile::parse(SEED).unwrap()
    }

    fn by_name(name: &str) -> GroupSelector {
        GroupSelector { display_name: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn display_name_lookup_is_case_insensitive_and_returns_lower_case_object_id() {
        let g = seed().find_group(&by_name("APPDEV")).unwrap();
        assert_eq!(g.object_id, "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01");
        assert!(g.security_enabled);
    }

    #[test]
    fn object_id_and_mail_nickname_lookups_find_the_group() {
        let by_id =
            GroupSelector { object_id: Some("6A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D".into()), ..Default::default() };
        assert_eq!(seed().find_group(&by_id).unwrap().display_name, "opssre");
        let by_nick = GroupSelector { mail_nickname: Some("appdev".into()), ..Default::default() };
        assert_eq!(seed().find_group(&by_nick).unwrap().display_name, "appdev");
    }

    #[test]
    fn duplicate_display_names_are_ambiguous_and_list_every_candidate() {
        let err = seed().find_group(&by_name("shared")).unwrap_err();
        assert_eq!(err.reason(), Reason::AmbiguousGroup);
        let msg = err.to_string();
        assert!(msg.contains("11111111-1111-4111-8111-111111111111"), "{msg}");
        assert!(msg.contains("22222222-2222-4222-8222-222222222222"), "{msg}");
    }

    #[test]
    fn a_missing_group_is_group_not_found() {
        let err = seed().find_group(&by_name("nobody")).unwrap_err();
        assert_eq!(err, DirectoryError::GroupNotFound { selector: "displayName=nobody".into() });
    }

    #[test]
    fn a_name_with_a_quote_matches_only_literally() {
        let err = seed().find_group(&by_name("x' or displayName eq 'appdev")).unwrap_err();
        assert_eq!(err.reason(), Reason::GroupNotFound);
    }

    #[test]
    fn users_are_found_by_upn_and_guests_are_recognised() {
        let f = seed();
        let dev =
            f.find_user(&UserRef { user_principal_name: Some("AKSDEV@contoso.com".into()), object_id: None }).unwrap();
        assert!(!dev.is_guest());
        let guest = f
            .find_user(&UserRef {
                user_principal_name: None,
                object_id: Some("3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c".into()),
            })
            .unwrap();
        assert!(guest.is_guest());
        let missing = f.find_user(&UserRef { user_principal_name: Some("nobody@contoso.com".into()), object_id: None });
        assert_eq!(missing.unwrap_err().reason(), Reason::UserNotFound);
    }

    #[test]
    fn unknown_fields_are_rejected_so_typos_do_not_pass_silently() {
        let err = DirectoryFile::parse("groups:\n- objectId: a\n  displayname: x\n").unwrap_err().to_string();
        assert!(err.contains("displayname") || err.contains("unknown"), "{err}");
    }
}
