//! Namespace profiles: what a namespace the operator creates arrives with (a
//! Pod Security level, a ResourceQuota, a LimitRange, network policy presets,
//! labels and annotations), configured by the admin in a file
//! (`--namespace-profiles`, the chart's `namespaceProfiles`) that is re-read
//! while the operator runs. `render` turns a profile into Kubernetes objects;
//! this module holds the file's format, its checks and the choice of a profile.
//! It imports nothing of the reconcile.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::watched_file::{LoadError, WatchedFile};

pub mod render;

/// The namespace profiles file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilesFile {
    /// The profile of a TeamAccess that names none; absent: such a namespace
    /// gets no profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// What one profile puts in a namespace. Every part is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security: Option<PodSecurity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_quota: Option<ResourceQuotaProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_range: Option<LimitRangeProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicyProfile>,
    /// Extra labels and annotations on the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Pod Security Admission labels of the namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSecurity {
    pub enforce: PodSecurityLevel,
    /// Defaults to enforce's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<PodSecurityLevel>,
    /// Defaults to enforce's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<PodSecurityLevel>,
    /// The Pod Security Standards version, such as v1.37; default "latest".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    Restricted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceQuotaProfile {
    /// As a ResourceQuota's spec.hard: `requests.cpu: "4"`, `pods: "50"`, ...
    pub hard: BTreeMap<String, String>,
}

/// A LimitRange of type Container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRangeProfile {
    /// The limits a container gets when it sets none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default: BTreeMap<String, String>,
    /// The requests a container gets when it sets none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: BTreeMap<String, String>,
    /// The most a container may set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, String>,
}

/// Network policy presets, with the meanings of AKS managed namespaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyProfile {
    #[serde(default)]
    pub ingress: NetworkPreset,
    #[serde(default)]
    pub egress: NetworkPreset,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPreset {
    /// No restriction (no NetworkPolicy for this direction).
    #[default]
    AllowAll,
    /// Only pods of the same namespace (egress: and DNS to kube-dns).
    AllowSameNamespace,
    /// Nothing (egress: but DNS to kube-dns).
    DenyAll,
}

impl ProfilesFile {
    /// Parses and checks the file: every profile name a DNS label, the default
    /// one of them, no label or annotation the operator itself owns.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ProfilesFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(default) = &self.default
            && !self.profiles.contains_key(default)
        {
            return Err(format!("default names profile {default:?}, which profiles does not define"));
        }
        for (name, profile) in &self.profiles {
            if !is_dns_label(name) {
                return Err(format!(
                    "profile name {name:?} must be a DNS label (lower-case letters, digits and '-', at most 63)"
                ));
            }
            profile.check().map_err(|e| format!("profile {name}: {e}"))?;
        }
        Ok(())
    }

    /// The profile a TeamAccess gets: the one it names, else the default.
    /// None when it names none and there is no default.
    pub fn choose(&self, asked: Option<&str>) -> Result<Option<Chosen>, ProfileNotFound> {
        let name = match (asked, &self.default) {
            (Some(name), _) => name,
            (None, Some(default)) => default.as_str(),
            (None, None) => return Ok(None),
        };
        match self.profiles.get(name) {
            Some(profile) => Ok(Some(Chosen {
                name: name.to_string(),
                is_default: self.default.as_deref() == Some(name),
                profile: profile.clone(),
            })),
            None => Err(ProfileNotFound { name: name.to_string(), known: self.profiles.keys().cloned().collect() }),
        }
    }
}

/// The profile a TeamAccess gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub name: String,
    /// Choosing the default needs no permission; any other needs `use` on
    /// namespaceprofiles/<name> in API group teamaccess.dev.
    pub is_default: bool,
    pub profile: Profile,
}

/// spec.namespaceProfile names a profile the operator does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileNotFound {
    pub name: String,
    pub known: Vec<String>,
}

impl Profile {
    fn check(&self) -> Result<(), String> {
        for key in self.labels.keys().chain(self.annotations.keys()) {
            if key.starts_with("teamaccess.dev/") || key == crate::api::labels::MANAGED_BY_LABEL {
                return Err(format!("{key} is the operator's own key; choose another"));
            }
        }
        if let Some(key) = self.labels.keys().find(|k| k.starts_with(render::POD_SECURITY_PREFIX)) {
            return Err(format!("label {key}: set Pod Security with podSecurity, not with labels"));
        }
        let quantities = self
            .resource_quota
            .iter()
            .flat_map(|q| q.hard.iter())
            .chain(self.limit_range.iter().flat_map(|l| l.default.iter().chain(&l.default_request).chain(&l.max)));
        for (resource, quantity) in quantities {
            if quantity.trim().is_empty() || quantity.contains(char::is_whitespace) {
                return Err(format!("{resource}: {quantity:?} is not a quantity such as 500m, 2 or 1Gi"));
            }
        }
        if let Some(version) = self.pod_security.as_ref().and_then(|p| p.version.as_deref())
            && version != "latest"
            && !(version.starts_with("v1.") && version[3..].chars().all(|c| c.is_ascii_digit()) && version.len() > 3)
        {
            return Err(format!("podSecurity.version {version:?} must be latest or v1.N"));
        }
        Ok(())
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The profiles file, kept up to date while the operator runs.
pub struct NamespaceProfiles {
    file: WatchedFile<ProfilesFile>,
}

impl NamespaceProfiles {
    pub async fn load(path: &Path) -> Result<Self, LoadError> {
        let file = WatchedFile::load(path, "namespace profiles file", ProfilesFile::parse).await?;
        let loaded = file.current();
        tracing::info!(path = %path.display(), profiles = ?loaded.profiles.keys().collect::<Vec<_>>(), default = ?loaded.default, "loaded namespace profiles");
        Ok(Self { file })
    }

    pub fn current(&self) -> Arc<ProfilesFile> {
        self.file.current()
    }

    /// Ticks when the file changed: every namespace may need its objects updated.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.file.changes()
    }
}

impl std::fmt::Debug for NamespaceProfiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceProfiles").field("current", &self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
default: standard
profiles:
  standard:
    podSecurity: {enforce: restricted}
    resourceQuota: {hard: {requests.cpu: "4", pods: "20"}}
    limitRange:
      default: {cpu: 500m, memory: 512Mi}
      defaultRequest: {cpu: 100m, memory: 128Mi}
    networkPolicy: {ingress: AllowSameNamespace, egress: AllowAll}
    labels: {tier: team}
  open:
    podSecurity: {enforce: privileged}
"#;

    #[test]
    fn the_file_parses_and_a_team_gets_the_profile_it_names_or_the_default() {
        let file = ProfilesFile::parse(FILE).unwrap();
        let standard = file.choose(None).unwrap().unwrap();
        assert_eq!((standard.name.as_str(), standard.is_default), ("standard", true));
        let policy = standard.profile.network_policy.as_ref().unwrap();
        assert_eq!((policy.ingress, policy.egress), (NetworkPreset::AllowSameNamespace, NetworkPreset::AllowAll));
        let open = file.choose(Some("open")).unwrap().unwrap();
        assert_eq!((open.name.as_str(), open.is_default), ("open", false));
        assert!(file.choose(Some("standard")).unwrap().unwrap().is_default, "naming the default");
        let missing = file.choose(Some("gold")).unwrap_err();
        assert_eq!(missing, ProfileNotFound { name: "gold".into(), known: vec!["open".into(), "standard".into()] });
        assert_eq!(ProfilesFile::default().choose(None).unwrap(), None, "no profiles, none asked");
    }

    #[test]
    fn a_file_that_would_mislead_is_refused_with_what_to_fix() {
        let refused = |text: &str| ProfilesFile::parse(text).unwrap_err();
        assert!(refused("default: gold\nprofiles: {}\n").contains("does not define"));
        assert!(refused("profiles: {Gold: {}}\n").contains("DNS label"));
        assert!(refused("profiles: {a: {podsecurity: {}}}\n").contains("unknown field"));
        assert!(
            refused("profiles: {a: {labels: {pod-security.kubernetes.io/enforce: privileged}}}\n")
                .contains("set Pod Security with podSecurity")
        );
        assert!(refused("profiles: {a: {annotations: {teamaccess.dev/created-by: x}}}\n").contains("operator's own"));
        assert!(refused("profiles: {a: {resourceQuota: {hard: {pods: \"2 0\"}}}}\n").contains("not a quantity"));
        assert!(refused("profiles: {a: {podSecurity: {enforce: restricted, version: \"1.30\"}}}\n").contains("v1.N"));
        assert!(refused("profiles: {a: {networkPolicy: {ingress: Closed}}}\n").contains("Closed"));
    }
}
