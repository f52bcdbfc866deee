//! What the Graph client asks and how it reads the answers: request URLs (relative
//! to /v1.0, as `$batch` items take them) and the wire shapes of groups and users.
//!
//! Values reach Graph only through the `url` crate's encoders, so a quote, `&`,
//! `#` or `/` in a name can never change the request; the one thing done by hand
//! is OData's own quoting (a quote inside a string literal is doubled).

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use url::Url;

use crate::{
    api::{GroupSelector, UserRef},
    directory::{DirectoryError, DirectoryGroup, DirectoryUser},
};

const GROUP_FIELDS: &str = "id,displayName,mailNickname,securityEnabled,isAssignableToRole,onPremisesSyncEnabled";
const USER_FIELDS: &str = "id,userPrincipalName,userType";

/// An OData string literal: single-quoted, with quotes inside doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A request path and query below /v1.0, every part encoded by `url`.
fn relative(segments: &[&str], query: &[(&str, &str)]) -> String {
    let mut url = Url::parse("https://graph.invalid/").expect("a constant base URL parses");
    url.path_segments_mut().expect("an https URL has path segments").extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url[url::Position::BeforePath..].to_string()
}

/// The request that finds the groups a selector names.
pub fn group_request(selector: &GroupSelector) -> String {
    let by = |property: &str, value: &str| {
        let filter = format!("{property} eq {}", odata_string(value));
        relative(&["groups"], &[("$filter", &filter), ("$select", GROUP_FIELDS)])
    };
    match selector {
        GroupSelector { object_id: Some(id), .. } => relative(&["groups", id], &[("$select", GROUP_FIELDS)]),
        GroupSelector { display_name: Some(name), .. } => by("displayName", name),
        GroupSelector { mail_nickname: Some(nick), .. } => by("mailNickname", nick),
        // The CRD schema requires one of the three; an empty selector matches nothing.
        _ => by("id", ""),
    }
}

/// The request that fetches one user by userPrincipalName or objectId.
pub fn user_request(user: &UserRef) -> String {
    let key = user.user_principal_name.as_deref().or(user.object_id.as_deref()).unwrap_or_default();
    relative(&["users", key], &[("$select", USER_FIELDS)])
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphGroup {
    id: String,
    display_name: Option<String>,
    mail_nickname: Option<String>,
    security_enabled: Option<bool>,
    /// null for most groups: only true counts.
    is_assignable_to_role: Option<bool>,
    /// null for cloud-only groups.
    on_premises_sync_enabled: Option<bool>,
}

impl From<GraphGroup> for DirectoryGroup {
    fn from(g: GraphGroup) -> Self {
        DirectoryGroup {
            object_id: g.id.to_lowercase(),
            display_name: g.display_name.unwrap_or_default(),
            mail_nickname: g.mail_nickname,
            security_enabled: g.security_enabled.unwrap_or(false),
            is_assignable_to_role: g.is_assignable_to_role.unwrap_or(false),
            on_premises_sync_enabled: g.on_premises_sync_enabled.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    id: String,
    user_principal_name: String,
    user_type: Option<String>,
}

impl From<GraphUser> for DirectoryUser {
    fn from(u: GraphUser) -> Self {
        DirectoryUser {
            object_id: u.id.to_lowercase(),
            user_principal_name: u.user_principal_name,
            user_type: u.user_type,
        }
    }
}

/// Reads a JSON value Graph sent; a shape we do not expect is a rejected request,
/// never "not found".
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, DirectoryError> {
    serde_json::from_value(value)
        .map_err(|e| DirectoryError::Rejected { message: format!("unexpected Graph response: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a query value the way Graph (ASP.NET) does: `+` is a space.
    fn decoded_query(request: &str) -> Vec<(String, String)> {
        let query = request.split_once('?').map_or("", |(_, q)| q);
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    #[test]
    fn odata_literals_double_embedded_quotes() {
        assert_eq!(odata_string("appdev"), "'appdev'");
        assert_eq!(odata_string("x' or displayName eq 'appdev"), "'x'' or displayName eq ''appdev'");
    }

    #[test]
    fn a_quote_or_ampersand_in_a_name_cannot_change_the_query() {
        let req = group_request(&GroupSelector { display_name: Some("a'b&$top=999#".into()), ..Default::default() });
        assert!(req.starts_with("/groups?"), "{req}");
        assert!(!req.contains('#') && !req.contains('\''), "{req}");
        assert_eq!(
            decoded_query(&req),
            [
                ("$filter".to_string(), "displayName eq 'a''b&$top=999#'".to_string()),
                ("$select".to_string(), GROUP_FIELDS.to_string())
            ]
        );
    }

    #[test]
    fn a_plus_in_a_name_stays_a_plus() {
        let req = group_request(&GroupSelector { mail_nickname: Some("c++".into()), ..Default::default() });
        assert_eq!(decoded_query(&req)[0].1, "mailNickname eq 'c++'");
    }

    #[test]
    fn object_ids_are_fetched_directly_and_guest_upns_are_encoded() {
        let req = group_request(&GroupSelector::by_object_id("5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01"));
        assert_eq!(
            req,
            "/groups/5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01?%24select=id%2CdisplayName%2CmailNickname%2CsecurityEnabled%2CisAssignableToRole%2ConPremisesSyncEnabled"
        );
        let user = UserRef {
            user_principal_name: Some("x_fabrikam.com#EXT#@contoso.onmicrosoft.com".into()),
            object_id: None,
        };
        let req = user_request(&user);
        assert!(req.starts_with("/users/x_fabrikam.com%23EXT%23@contoso.onmicrosoft.com?"), "{req}");
        let slash = UserRef { user_principal_name: Some("a/../groups@x".into()), object_id: None };
        assert!(user_request(&slash).starts_with("/users/a%2F..%2Fgroups@x?"), "{}", user_request(&slash));
    }
}
