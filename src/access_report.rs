//! `teamaccess-operator access-report`: who can get into which namespace, and
//! through which TeamAccess and group, joined from the cluster's TeamAccess
//! objects and the directory as it is now.
//!
//! For a TeamAccess in `Group` mode a person gets in through the groups claim
//! of their token, which lists transitive memberships; in `Members` mode the
//! operator binds the same transitive members by name. Either way a person of
//! the group's transitive membership has the access, and `spec.users` have it
//! directly. Only TeamAccess objects whose group the operator resolved (a pin
//! in status) and that are Ready are reported: the rest grant nobody yet.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    api::{BindMode, ResolvedGroup, TeamAccess, conditions},
    directory::{
        Directory, DirectoryError,
        members::{Person, PersonKind},
    },
    reconcile::resolve,
};

/// One person's access to one namespace through one TeamAccess.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The name the API server knows them by: a UPN, or an objectId.
    pub person: String,
    /// user, guest, servicePrincipal
    pub kind: &'static str,
    pub namespace: String,
    /// The verbs, rules or ClusterRole granted.
    pub access: String,
    pub teamaccess: String,
    /// The group's display name and objectId, or `spec.users` for a person named there.
    pub via: String,
    /// Group (the token's groups claim) or Members (bound by name).
    pub bind: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// A TeamAccess left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub teamaccess: String,
    pub why: String,
}

/// The rows of the TeamAccess objects in `namespace` (all, when None).
pub async fn collect(
    teamaccesses: &[TeamAccess],
    namespace: Option<&str>,
    directory: &dyn Directory,
) -> Result<(Vec<Row>, Vec<Skipped>), DirectoryError> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for ta in teamaccesses.iter().filter(|ta| namespace.is_none_or(|ns| ta.spec.namespace == ns)) {
        let name = kube::ResourceExt::name_any(ta);
        let pin = match granting_group(ta) {
            Ok(pin) => pin,
            Err(why) => {
                skipped.push(Skipped { teamaccess: name, why });
                continue;
            }
        };
        let group = format!("{} ({})", pin.display_name.as_deref().unwrap_or("?"), pin.object_id);
        let people = match directory.transitive_members(&pin.object_id).await {
            Ok(people) => people,
            // Gone from the directory since it was bound: it grants nobody by name.
            Err(e @ DirectoryError::GroupNotFound { .. }) => {
                skipped.push(Skipped { teamaccess: name, why: e.to_string() });
                continue;
            }
            Err(e) => return Err(e),
        };
        rows.extend(rows_for(ta, &group, &people));
        for user in &ta.spec.users {
            let person = match directory.resolve_user(user).await {
                Ok(found) => Person { subject: resolve::user_subject_name(user, &found), ..Person::from(&found) },
                Err(DirectoryError::UserNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            rows.extend(rows_for(ta, "spec.users", std::slice::from_ref(&person)));
        }
    }
    rows.sort_by(|a, b| (&a.namespace, &a.person, &a.teamaccess).cmp(&(&b.namespace, &b.person, &b.teamaccess)));
    rows.dedup();
    Ok((rows, skipped))
}

/// The group a TeamAccess grants access through now, or why it grants nobody.
fn granting_group(ta: &TeamAccess) -> Result<&ResolvedGroup, String> {
    if ta.metadata.deletion_timestamp.is_some() {
        return Err("being deleted".into());
    }
    let pin = resolve::pin_for(ta).ok_or("its group is not resolved yet")?;
    let ready = ta.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match ready {
        Some(c) if c.status == "True" => Ok(pin),
        Some(c) => Err(format!("not Ready ({})", c.reason)),
        None => Err("not reconciled yet".into()),
    }
}

/// One row per person.
pub fn rows_for(ta: &TeamAccess, via: &str, people: &[Person]) -> Vec<Row> {
    let access = match (&ta.spec.cluster_role, &ta.spec.rules, &ta.spec.verbs) {
        (Some(cr), _, _) => format!("ClusterRole {cr}"),
        (_, Some(rules), _) => format!("{} rule(s)", rules.len()),
        (_, _, Some(verbs)) => format!("verbs {}", verbs.join(",")),
        _ => "none".into(),
    };
    people
        .iter()
        .map(|p| Row {
            person: p.subject.clone(),
            kind: match p.kind {
                PersonKind::User => "user",
                PersonKind::Guest => "guest",
                PersonKind::ServicePrincipal => "servicePrincipal",
            },
            namespace: ta.spec.namespace.clone(),
            access: access.clone(),
            teamaccess: kube::ResourceExt::name_any(ta),
            via: via.to_string(),
            bind: match ta.spec.bind {
                BindMode::Group => "Group",
                BindMode::Members => "Members",
            },
        })
        .collect()
}

const HEADERS: [&str; 7] = ["PERSON", "KIND", "NAMESPACE", "ACCESS", "TEAMACCESS", "VIA", "BIND"];

fn cells(row: &Row) -> [&str; 7] {
    [&row.person, row.kind, &row.namespace, &row.access, &row.teamaccess, &row.via, row.bind]
}

/// The rows as `format` prints them.
pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(rows).expect("rows serialize") + "\n",
        Format::Csv => {
            let mut out = HEADERS.map(str::to_lowercase).join(",") + "\n";
            for row in rows {
                out += &cells(row).map(csv_field).join(",");
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let mut widths = HEADERS.map(str::len);
            for row in rows {
                for (w, cell) in widths.iter_mut().zip(cells(row)) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let mut out = String::new();
            let mut line = |values: [&str; 7]| {
                let padded: Vec<String> = values.iter().zip(widths).map(|(v, w)| format!("{v:<w$}")).collect();
                let _ = writeln!(out, "{}", padded.join("   ").trim_end());
            };
            line(HEADERS);
            for row in rows {
                line(cells(row));
            }
            out
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break;
/// and a leading `=`, `+`, `-` or `@` is quoted behind a `'`, so a spreadsheet
/// does not run a name chosen in the directory as a formula.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value.to_string() };
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GroupSelector, TeamAccessSpec};

    fn person(kind: PersonKind, subject: &str) -> Person {
        Person { kind, subject: subject.into() }
    }

    #[test]
    fn rows_name_the_access_the_teamaccess_and_the_mode() {
        let mut spec = TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev");
        spec.bind = BindMode::Members;
        let ta = TeamAccess::new("appdev-dev", spec);
        let rows = rows_for(
            &ta,
            "appdev (g)",
            &[person(PersonKind::User, "ann@contoso.com"), person(PersonKind::Guest, "0b9c")],
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(cells(&rows[1]), ["0b9c", "guest", "dev", "verbs *", "appdev-dev", "appdev (g)", "Members"]);
    }

    #[test]
    fn formats_are_aligned_parsable_and_safe() {
        let ta = TeamAccess::new("t", TeamAccessSpec::new(GroupSelector::by_object_id("g"), "dev"));
        let rows = rows_for(&ta, "=HYPERLINK(\"x\"), evil", &[person(PersonKind::User, "a@b.c")]);
        let table = render(&rows, Format::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PERSON   KIND"), "{table}");
        assert_eq!(lines[0].find("NAMESPACE"), lines[1].find("dev"), "columns line up:\n{table}");
        let csv = render(&rows, Format::Csv);
        assert!(csv.contains(r#""'=HYPERLINK(""x""), evil""#), "{csv}");
        let json: serde_json::Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
        assert_eq!(json[0]["person"], "a@b.c");
        assert_eq!(json[0]["bind"], "Group");
    }
}
