//! A namespace profile as Kubernetes objects: the namespace's labels and
//! annotations, and the guardrails inside it (a ResourceQuota, a LimitRange,
//! NetworkPolicies), under names the operator reserves in the namespaces it
//! creates. Pure: no client.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec},
        networking::v1::{
            NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{Chosen, NetworkPreset, PodSecurityLevel};
use crate::api::labels::{MANAGED_BY, MANAGED_BY_LABEL, PROFILE_ANNOTATION, PROFILE_REVISION_ANNOTATION};

pub const POD_SECURITY_PREFIX: &str = "pod-security.kubernetes.io/";
/// The names of the guardrails in a namespace the operator created: reserved
/// there, so whatever stands under them is brought back to the profile.
pub const QUOTA_NAME: &str = "teamaccess-profile";
pub const LIMIT_RANGE_NAME: &str = "teamaccess-profile";
pub const INGRESS_POLICY_NAME: &str = "teamaccess-profile-ingress";
pub const EGRESS_POLICY_NAME: &str = "teamaccess-profile-egress";

/// Whether `name` is one of the guardrails' reserved names.
pub fn is_guardrail_name(name: &str) -> bool {
    [QUOTA_NAME, LIMIT_RANGE_NAME, INGRESS_POLICY_NAME, EGRESS_POLICY_NAME].contains(&name)
}

/// What a profile puts in one namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub name: String,
    /// A hash of the profile's content: changes when the admin edits the profile.
    pub revision: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub guardrails: Guardrails,
}

/// The objects inside the namespace; None: the profile has none of that kind
/// (one left from before is removed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Guardrails {
    pub quota: Option<ResourceQuota>,
    pub limits: Option<LimitRange>,
    pub ingress: Option<NetworkPolicy>,
    pub egress: Option<NetworkPolicy>,
}

pub fn render(chosen: &Chosen, namespace: &str) -> Rendered {
    let profile = &chosen.profile;
    let revision =
        format!("{:016x}", crate::hash::fnv1a(&serde_json::to_string(profile).expect("a profile serializes")));
    let mut labels = profile.labels.clone();
    if let Some(pss) = &profile.pod_security {
        let version = pss.version.clone().unwrap_or_else(|| "latest".into());
        for (mode, level) in [("enforce", Some(pss.enforce)), ("warn", pss.warn), ("audit", pss.audit)] {
            let level = level.unwrap_or(pss.enforce);
            labels.insert(format!("{POD_SECURITY_PREFIX}{mode}"), level_name(level).into());
            labels.insert(format!("{POD_SECURITY_PREFIX}{mode}-version"), version.clone());
        }
    }
    let mut annotations = profile.annotations.clone();
    annotations.insert(PROFILE_ANNOTATION.into(), chosen.name.clone());
    annotations.insert(PROFILE_REVISION_ANNOTATION.into(), revision.clone());

    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())])),
        annotations: Some(BTreeMap::from([
            (PROFILE_ANNOTATION.into(), chosen.name.clone()),
            (PROFILE_REVISION_ANNOTATION.into(), revision.clone()),
        ])),
        ..Default::default()
    };
    let quantities = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| map.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
    };
    let quota = profile.resource_quota.as_ref().map(|q| ResourceQuota {
        metadata: meta(QUOTA_NAME),
        spec: Some(ResourceQuotaSpec { hard: quantities(&q.hard), ..Default::default() }),
        status: None,
    });
    let limits = profile.limit_range.as_ref().map(|l| LimitRange {
        metadata: meta(LIMIT_RANGE_NAME),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: quantities(&l.default),
                default_request: quantities(&l.default_request),
                max: quantities(&l.max),
                ..Default::default()
            }],
        }),
    });
    let presets = profile.network_policy.as_ref();
    let ingress = presets
        .and_then(|p| ingress_policy(p.ingress))
        .map(|spec| NetworkPolicy { metadata: meta(INGRESS_POLICY_NAME), spec: Some(spec) });
    let egress = presets
        .and_then(|p| egress_policy(p.egress))
        .map(|spec| NetworkPolicy { metadata: meta(EGRESS_POLICY_NAME), spec: Some(spec) });
    Rendered {
        name: chosen.name.clone(),
        revision,
        labels,
        annotations,
        guardrails: Guardrails { quota, limits, ingress, egress },
    }
}

fn level_name(level: PodSecurityLevel) -> &'static str {
    match level {
        PodSecurityLevel::Privileged => "privileged",
        PodSecurityLevel::Baseline => "baseline",
        PodSecurityLevel::Restricted => "restricted",
    }
}

/// Every pod of the namespace (an empty selector).
fn all_pods() -> LabelSelector {
    LabelSelector::default()
}

fn same_namespace() -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(all_pods()), ..Default::default() }
}

fn ingress_policy(preset: NetworkPreset) -> Option<NetworkPolicySpec> {
    let from = match preset {
        NetworkPreset::AllowAll => return None,
        NetworkPreset::AllowSameNamespace => {
            vec![NetworkPolicyIngressRule { from: Some(vec![same_namespace()]), ports: None }]
        }
        NetworkPreset::DenyAll => vec![],
    };
    Some(NetworkPolicySpec {
        pod_selector: Some(all_pods()),
        policy_types: Some(vec!["Ingress".into()]),
        ingress: (!from.is_empty()).then_some(from),
        egress: None,
    })
}

/// Egress stays open to the cluster's DNS (kube-dns in kube-system, port 53
/// UDP and TCP) whatever the preset: without it no name resolves, and a
/// restricted namespace would look broken rather than isolated.
fn egress_policy(preset: NetworkPreset) -> Option<NetworkPolicySpec> {
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), "kube-system".into())])),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                match_expressions: None,
            }),
            ip_block: None,
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.into()),
                    port: Some(IntOrString::Int(53)),
                    end_port: None,
                })
                .collect(),
        ),
    };
    let rules = match preset {
        NetworkPreset::AllowAll => return None,
        NetworkPreset::AllowSameNamespace => {
            vec![NetworkPolicyEgressRule { to: Some(vec![same_namespace()]), ports: None }, dns]
        }
        NetworkPreset::DenyAll => vec![dns],
    };
    Some(NetworkPolicySpec {
        pod_selector: Some(all_pods()),
        policy_types: Some(vec!["Egress".into()]),
        ingress: None,
        egress: Some(rules),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::ProfilesFile;

    fn rendered(profile_yaml: &str) -> Rendered {
        let file = ProfilesFile::parse(&format!("default: p\nprofiles:\n  p: {profile_yaml}\n")).unwrap();
        render(&file.choose(None).unwrap().unwrap(), "dev")
    }

    #[test]
    fn pod_security_sets_all_three_modes_with_their_version() {
        let r = rendered("{podSecurity: {enforce: restricted, warn: baseline}, labels: {tier: team}}");
        assert_eq!(r.labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(r.labels["pod-security.kubernetes.io/enforce-version"], "latest");
        assert_eq!(r.labels["pod-security.kubernetes.io/warn"], "baseline");
        assert_eq!(r.labels["pod-security.kubernetes.io/audit"], "restricted", "defaults to enforce");
        assert_eq!(r.labels["tier"], "team");
        assert_eq!(r.annotations[PROFILE_ANNOTATION], "p");
        assert_eq!(r.guardrails, Guardrails::default(), "no objects asked");
    }

    #[test]
    fn the_presets_mean_what_aks_managed_namespaces_mean() {
        let open = rendered("{networkPolicy: {ingress: AllowAll, egress: AllowAll}}");
        assert!(open.guardrails.ingress.is_none() && open.guardrails.egress.is_none(), "AllowAll: no policy");

        let same = rendered("{networkPolicy: {ingress: AllowSameNamespace, egress: AllowSameNamespace}}");
        let ingress = same.guardrails.ingress.unwrap().spec.unwrap();
        assert_eq!(ingress.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
        let from = &ingress.ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(
            (from.pod_selector.clone(), from.namespace_selector.clone()),
            (Some(LabelSelector::default()), None)
        );
        let egress = same.guardrails.egress.unwrap().spec.unwrap().egress.unwrap();
        assert_eq!(egress.len(), 2, "the namespace, and DNS");

        let closed = rendered("{networkPolicy: {ingress: DenyAll, egress: DenyAll}}");
        let ingress = closed.guardrails.ingress.unwrap();
        assert_eq!(ingress.metadata.name.as_deref(), Some(INGRESS_POLICY_NAME));
        assert_eq!(ingress.spec.unwrap().ingress, None, "no rule: nothing comes in");
        let egress = closed.guardrails.egress.unwrap().spec.unwrap().egress.unwrap();
        assert_eq!(egress.len(), 1, "DNS only");
        let ports = egress[0].ports.clone().unwrap();
        assert_eq!(ports.iter().map(|p| p.protocol.clone().unwrap()).collect::<Vec<_>>(), ["UDP", "TCP"]);
        assert!(ports.iter().all(|p| p.port == Some(IntOrString::Int(53))));
    }

    #[test]
    fn quota_and_limits_carry_the_profile_and_its_revision() {
        let r = rendered(
            "{resourceQuota: {hard: {pods: \"2\"}}, limitRange: {default: {cpu: 500m}, defaultRequest: {cpu: 100m}}}",
        );
        let quota = r.guardrails.quota.unwrap();
        assert_eq!(quota.metadata.namespace.as_deref(), Some("dev"));
        assert_eq!(quota.spec.unwrap().hard.unwrap()["pods"], Quantity("2".into()));
        let annotations = quota.metadata.annotations.unwrap();
        assert_eq!(annotations[PROFILE_REVISION_ANNOTATION], r.revision);
        let limits = r.guardrails.limits.unwrap().spec.unwrap().limits;
        assert_eq!(limits[0].type_, "Container");
        assert_eq!(limits[0].default_request.clone().unwrap()["cpu"], Quantity("100m".into()));
        let other = rendered("{resourceQuota: {hard: {pods: \"3\"}}}");
        assert_ne!(other.revision, r.revision, "an edited profile has another revision");
    }
}
