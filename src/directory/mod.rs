//! The directory: where group and user identities are looked up.
//!
//! Two implementations share one trait: `graph` (Microsoft Graph, for Entra ID)
//! and `static_file` (a YAML file, for clusters without Entra ID, labs, the demo
//! and tests). See docs/architecture.md for how the reconcile uses them.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::api::{GroupSelector, Reason, UserRef};

pub mod file_format;
pub mod graph;
pub mod members;
pub mod static_file;

/// A group as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryGroup {
    pub object_id: String,
    pub display_name: String,
    pub mail_nickname: Option<String>,
    /// Only security-enabled groups appear in a token's groups claim.
    pub security_enabled: bool,
    /// Only privileged admins may create a role-assignable group.
    pub is_assignable_to_role: bool,
    /// Synchronized from on-premises Active Directory.
    pub on_premises_sync_enabled: bool,
}

impl DirectoryGroup {
    /// Whether an ordinary user could have created this group (users may create
    /// security groups by default): neither role-assignable nor synchronized
    /// from on-premises, which only admins can make. --strict-group-names binds
    /// a name only to a group for which this is false.
    pub fn could_be_squatted(&self) -> bool {
        !self.is_assignable_to_role && !self.on_premises_sync_enabled
    }
}

/// A user as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub object_id: String,
    pub user_principal_name: String,
    /// `Member` or `Guest`, as Entra ID's userType.
    pub user_type: Option<String>,
}

impl DirectoryUser {
    /// Guests and users of other tenants carry `#EXT#` in their UPN; the seed binds
    /// them by objectId since the UPN in their token is not the one seen here.
    pub fn is_guest(&self) -> bool {
        self.user_principal_name.contains("#EXT#")
            || self.user_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("guest"))
    }
}

/// How a user is named in a RoleBinding: a user of the tenant by the
/// userPrincipalName AKS puts in its token, a guest by objectId (the UPN in a
/// guest's token is its home tenant's, not the one seen here).
impl From<&DirectoryUser> for members::Person {
    fn from(user: &DirectoryUser) -> Self {
        if user.is_guest() {
            members::Person { kind: members::PersonKind::Guest, subject: user.object_id.clone() }
        } else {
            members::Person { kind: members::PersonKind::User, subject: user.user_principal_name.clone() }
        }
    }
}

/// Why a lookup failed. Each variant maps to its own condition reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("no group in the directory matches {selector}; check the spelling or use spec.group.objectId")]
    GroupNotFound { selector: String },

    #[error(
        "{selector} matches {} groups ({}); display names are not unique, so nothing is bound: set spec.group.objectId to the one you mean",
        candidates.len(),
        candidates.join(", ")
    )]
    AmbiguousGroup { selector: String, candidates: Vec<String> },

    #[error("no user in the directory matches {user}")]
    UserNotFound { user: String },

    #[error(
        "the directory refused the lookup ({message}); grant the operator's identity GroupMember.Read.All (and User.ReadBasic.All for spec.users)"
    )]
    PermissionDenied { message: String },

    #[error(
        "the directory rejected the operator's credentials ({message}); check the client id, tenant and secret or federated credential"
    )]
    AuthenticationFailed { message: String },

    #[error("the directory rejected the request ({message})")]
    Rejected { message: String },

    #[error("the directory is throttling requests; existing bindings are kept and the lookup is retried later")]
    Throttled { retry_after: Option<Duration> },

    #[error("the directory is unavailable ({message}); existing bindings are kept and the lookup is retried later")]
    Unavailable { message: String },
}

impl DirectoryError {
    /// The condition and event reason for this failure.
    pub fn reason(&self) -> Reason {
        match self {
            DirectoryError::GroupNotFound { .. } => Reason::GroupNotFound,
            DirectoryError::AmbiguousGroup { .. } => Reason::AmbiguousGroup,
            DirectoryError::UserNotFound { .. } => Reason::UserNotFound,
            DirectoryError::PermissionDenied { .. } => Reason::GraphPermissionDenied,
            DirectoryError::Throttled { .. } => Reason::GraphThrottled,
            DirectoryError::Unavailable { .. } => Reason::GraphUnavailable,
            DirectoryError::AuthenticationFailed { .. } => Reason::GraphAuthenticationFailed,
            DirectoryError::Rejected { .. } => Reason::GraphRequestRejected,
        }
    }

    /// Whether retrying without any change by the user can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DirectoryError::Throttled { .. } | DirectoryError::Unavailable { .. })
    }

    /// How long the service asked us to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DirectoryError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// Resolves groups and users.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Finds the one group the selector names.
    async fn resolve_group(&self, selector: &GroupSelector) -> Result<DirectoryGroup, DirectoryError>;

    /// Finds a user by userPrincipalName or objectId.
    async fn resolve_user(&self, user: &UserRef) -> Result<DirectoryUser, DirectoryError>;

    /// Starts resolving a group in the background so a later `resolve_group` finds
    /// it cached. Called when a TeamAccess is first seen, so the lookups of a burst
    /// of new objects travel together.
    fn prefetch_group(&self, _selector: &GroupSelector) {}

    /// A receiver that changes whenever the directory's content may have changed
    /// (a reloaded file), so every TeamAccess can be resolved again.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Where the members of groups are read from, for spec.bind Members; the
    /// membership poller owns it. None: this directory cannot list members.
    fn member_source(&self) -> Option<Box<dyn members::MemberSource>> {
        None
    }

    /// Everyone in a group through nesting (users and service principals), as
    /// the directory says now: for reports, not for the reconcile.
    async fn transitive_members(&self, _group: &str) -> Result<Vec<members::Person>, DirectoryError> {
        Err(DirectoryError::Rejected { message: "this directory cannot list a group's members".into() })
    }
}

/// Describes a user reference for messages: its UPN or objectId.
pub fn describe_user(user: &UserRef) -> String {
    user.user_principal_name.clone().or_else(|| user.object_id.clone()).unwrap_or_default()
}
