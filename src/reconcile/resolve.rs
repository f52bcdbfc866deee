//! Resolves the group and users of a TeamAccess through the directory, holding
//! to the objectId pinned in status.

use kube::runtime::events::EventType;

use super::{Context, Error, build, status::Report};
use crate::{
    api::{GroupSelector, ResolvedGroup, TeamAccess},
    directory::{DirectoryError, DirectoryGroup},
};

/// Resolves spec.group. The first objectId found is pinned in status; afterwards
/// the pinned group is verified by objectId, so a rename is followed while a group
/// deleted and re-created under the same name is never bound silently.
pub async fn group(ta: &TeamAccess, ctx: &Context, report: &mut Report) -> Result<DirectoryGroup, Error> {
    let selector = ta.spec.group.describe();
    // A pin made for another selector does not hold: changing spec.group is the
    // deliberate act that lets another group be bound.
    let pinned =
        ta.status.as_ref().and_then(|s| s.group.as_ref()).filter(|g| g.selector.as_deref() == Some(selector.as_str()));
    report.group = pinned.cloned();

    let result = match pinned {
        None => ctx.directory.resolve_group(&ta.spec.group).await.map_err(Error::from),
        Some(pin) => verify_pinned(ta, ctx, pin, &selector).await,
    };
    if let Ok(found) = &result {
        if let Some(pin) = pinned
            && pin.display_name.as_deref() != Some(found.display_name.as_str())
        {
            report.events.push((
                EventType::Normal,
                "GroupRenamed",
                format!(
                    "group {} was renamed from {} to {}; the binding is unchanged",
                    found.object_id,
                    pin.display_name.as_deref().unwrap_or("?"),
                    found.display_name
                ),
            ));
        }
        let resolved_at = pinned
            .filter(|p| p.display_name.as_deref() == Some(found.display_name.as_str()))
            .and_then(|p| p.resolved_at.clone())
            .unwrap_or_else(|| jiff::Timestamp::now().to_string());
        report.group = Some(ResolvedGroup {
            object_id: found.object_id.clone(),
            display_name: Some(found.display_name.clone()),
            selector: Some(selector),
            resolved_at: Some(resolved_at),
        });
        report.security_disabled = !found.security_enabled;
    }
    report.group_outcome = Some(result.as_ref().map(|_| ()).map_err(|e| (e.reason(), e.to_string())));
    result
}

async fn verify_pinned(
    ta: &TeamAccess,
    ctx: &Context,
    pin: &ResolvedGroup,
    selector: &str,
) -> Result<DirectoryGroup, Error> {
    match ctx.directory.resolve_group(&GroupSelector::by_object_id(&pin.object_id)).await {
        Ok(found) => Ok(found),
        // The pinned group is gone. Say whether the selector now names another group.
        Err(DirectoryError::GroupNotFound { .. }) => match ctx.directory.resolve_group(&ta.spec.group).await {
            Ok(other) if other.object_id != pin.object_id => Err(Error::GroupChanged {
                selector: selector.to_string(),
                pinned: pin.object_id.clone(),
                resolved: other.object_id,
            }),
            Ok(_) | Err(DirectoryError::GroupNotFound { .. } | DirectoryError::AmbiguousGroup { .. }) => {
                Err(Error::GroupMissing { selector: selector.to_string(), pinned: pin.object_id.clone() })
            }
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The subjects for spec.users, and the users the directory does not know.
pub struct ResolvedUsers {
    pub subjects: Vec<String>,
    missing: Vec<String>,
}

impl ResolvedUsers {
    /// Unknown users are not bound; the rest of the access still is, and the
    /// condition names who is missing.
    pub fn into_result(self) -> Result<(), Error> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(DirectoryError::UserNotFound { user: self.missing.join(", ") }.into())
        }
    }
}

/// Resolves spec.users. A directory failure other than "not found" stops the
/// reconcile, so existing bindings stay exactly as they are.
pub async fn users(ta: &TeamAccess, ctx: &Context) -> Result<ResolvedUsers, Error> {
    let mut resolved = ResolvedUsers { subjects: Vec::new(), missing: Vec::new() };
    for user in &ta.spec.users {
        match ctx.directory.resolve_user(user).await {
            Ok(found) => resolved.subjects.push(build::user_subject_name(user.object_id.is_some(), &found)),
            Err(DirectoryError::UserNotFound { user }) => resolved.missing.push(user),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(resolved)
}
