//! The AKS cluster's Azure resource ID, as `--aks-cluster-resource-id` takes it.

use std::{fmt, str::FromStr};

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}`,
/// checked when the operator starts, so a typo fails at once with what to fix
/// rather than as a stream of ARM errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AksClusterId {
    subscription: String,
    resource_group: String,
    name: String,
}

const EXAMPLE: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/my-rg/providers/Microsoft.ContainerService/managedClusters/my-cluster";

impl AksClusterId {
    /// The resource ID, spelled canonically: the scope of the role assignments.
    pub fn scope(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }
}

impl fmt::Display for AksClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scope())
    }
}

impl FromStr for AksClusterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wrong = |why: &str| {
            format!(
                "{s:?} is not an AKS cluster resource ID: {why}. It looks like {EXAMPLE} (`az aks show -g <rg> -n <name> --query id -o tsv` prints it)"
            )
        };
        let parts: Vec<&str> = s.trim_end_matches('/').split('/').collect();
        let ["", subscriptions, subscription, resource_groups, resource_group, providers, namespace, kind, name] =
            parts.as_slice()
        else {
            return Err(wrong("it must have exactly the eight segments shown"));
        };
        let fixed = [
            (*subscriptions, "subscriptions"),
            (*resource_groups, "resourceGroups"),
            (*providers, "providers"),
            (*namespace, "Microsoft.ContainerService"),
            (*kind, "managedClusters"),
        ];
        // ARM compares resource IDs case-insensitively.
        if let Some((got, want)) = fixed.iter().find(|(got, want)| !got.eq_ignore_ascii_case(want)) {
            return Err(wrong(&format!("found {got:?} where {want:?} belongs")));
        }
        if !is_guid(subscription) {
            return Err(wrong(&format!("the subscription {subscription:?} is not a GUID")));
        }
        let valid_group = |c: char| c.is_alphanumeric() || "-_.()".contains(c);
        if resource_group.is_empty()
            || resource_group.len() > 90
            || !resource_group.chars().all(valid_group)
            || resource_group.ends_with('.')
        {
            return Err(wrong(&format!("the resource group {resource_group:?} is not a valid name")));
        }
        let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || name.len() > 63 || !name.chars().all(valid_name) {
            return Err(wrong(&format!("the cluster name {name:?} is not a valid AKS name")));
        }
        Ok(Self {
            subscription: subscription.to_ascii_lowercase(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        })
    }
}

pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks-prod";

    #[test]
    fn a_cluster_id_parses_and_keeps_its_spelling() {
        let id: AksClusterId = ID.parse().unwrap();
        assert_eq!(id.scope(), ID);
        assert_eq!(id.name, "aks-prod");
        let lower: AksClusterId = ID.to_ascii_lowercase().parse().unwrap();
        assert_eq!(lower.subscription(), id.subscription());
        assert_eq!(format!("{ID}/").parse::<AksClusterId>().unwrap(), id, "a trailing slash is fine");
    }

    #[test]
    fn a_wrong_id_says_what_is_wrong_and_how_to_find_the_right_one() {
        let cases = [
            ("aks-prod", "eight segments"),
            (&ID.replace("managedClusters", "virtualMachines"), "\"virtualMachines\" where \"managedClusters\""),
            (&ID.replace("6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b", "my-sub"), "subscription \"my-sub\" is not a GUID"),
            (&ID.replace("aks-prod", "aks prod"), "cluster name"),
            (&ID.replace("rg-aks", "rg/aks"), "eight segments"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<AksClusterId>().unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
            assert!(err.contains("az aks show"), "{err}");
        }
    }
}
