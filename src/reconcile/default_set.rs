//! The default resource set that `spec.verbs` grants: the seed's "everything a
//! team runs" (core, apps, extensions, batch jobs and cronjobs), but with the
//! core group spelled out instead of `*`.
//!
//! Why spelled out: a RoleBinding in namespace X also authorizes requests on the
//! Namespace object X itself, so `resources: ["*"]` in the core group would let a
//! team delete or relabel its own namespace (turning off Pod Security, say), and
//! rewrite the ResourceQuota and LimitRange its admin set. Listing the resources
//! leaves those out while the rest of the seed's access matrix holds. Endpoints
//! are readable only: written by hand, one sends a Service's traffic anywhere
//! (CVE-2021-25740), which is why built-in edit and admin dropped them. A test
//! compares this list with the API server's discovery, so a core resource added
//! by a later Kubernetes release is noticed and decided on, never granted silently.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Namespaced core resources a team gets every verb of `spec.verbs` on.
pub const CORE_RESOURCES: [&str; 22] = [
    "bindings",
    "configmaps",
    "events",
    "persistentvolumeclaims",
    "pods",
    "pods/attach",
    "pods/binding",
    "pods/ephemeralcontainers",
    "pods/eviction",
    "pods/exec",
    "pods/log",
    "pods/portforward",
    "pods/proxy",
    "pods/resize",
    "podtemplates",
    "replicationcontrollers",
    "replicationcontrollers/scale",
    "secrets",
    "serviceaccounts",
    "serviceaccounts/token",
    "services",
    "services/proxy",
];

/// Namespaced core resources left out of the default set, and why.
pub const EXCLUDED_CORE_RESOURCES: [(&str, &str); 8] = [
    (
        "endpoints",
        "written by the endpoints controller; a hand-written one sends a Service's traffic anywhere \
         (CVE-2021-25740, left out of built-in edit and admin since 1.22); the team may read them",
    ),
    ("resourcequotas", "the admin's limits on the namespace; the team may read them"),
    ("resourcequotas/status", "written by the quota controller"),
    ("limitranges", "the admin's limits on the namespace; the team may read them"),
    ("pods/status", "written by the kubelet"),
    ("services/status", "written by load balancer controllers; a forged address redirects other tenants' traffic"),
    ("persistentvolumeclaims/status", "written by the volume controllers"),
    ("replicationcontrollers/status", "written by the replication controller"),
];

/// Readable by a team with a read verb, never writable: the limits the admin put
/// on the namespace, and the Endpoints the endpoints controller writes.
const READ_ONLY: [&str; 3] = ["resourcequotas", "limitranges", "endpoints"];
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

/// The rules of the Role for `spec.verbs`.
pub fn default_rules(verbs: &[String]) -> Vec<PolicyRule> {
    let rule = |groups: &[&str], resources: &[&str], verbs: Vec<String>| PolicyRule {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs,
        ..Default::default()
    };
    let mut rules = vec![
        rule(&[""], &CORE_RESOURCES, verbs.to_vec()),
        rule(&["extensions", "apps"], &["*"], verbs.to_vec()),
        rule(&["batch"], &["jobs", "cronjobs"], verbs.to_vec()),
    ];
    let reads: Vec<String> = if verbs.iter().any(|v| v == "*") {
        READ_VERBS.iter().map(|v| v.to_string()).collect()
    } else {
        verbs.iter().filter(|v| READ_VERBS.contains(&v.as_str())).cloned().collect()
    };
    if !reads.is_empty() {
        rules.push(rule(&[""], &READ_ONLY, reads));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_core_group_is_listed_and_never_names_the_namespace_or_its_limits() {
        let rules = default_rules(&strings(&["*"]));
        for rule in &rules {
            let resources = rule.resources.as_deref().unwrap();
            assert!(!resources.contains(&"namespaces".to_string()), "{rule:?}");
            if rule.api_groups.as_deref().unwrap().contains(&String::new()) {
                assert!(!resources.contains(&"*".to_string()), "core group never gets *: {rule:?}");
            }
        }
        // Quotas, limit ranges and Endpoints are read-only, whatever the verbs.
        let limits = rules.iter().find(|r| r.resources.as_deref().unwrap().contains(&"resourcequotas".into())).unwrap();
        assert_eq!(limits.verbs, ["get", "list", "watch"]);
        assert!(limits.resources.as_deref().unwrap().contains(&"endpoints".into()));
        let writable = |resource: &str| {
            rules
                .iter()
                .any(|r| r.resources.as_deref().unwrap().contains(&resource.into()) && r.verbs.contains(&"*".into()))
        };
        assert!(!writable("endpoints"), "CVE-2021-25740: the team never writes Endpoints");
        assert!(!rules.iter().any(|r| r.api_groups.as_deref().unwrap().contains(&"discovery.k8s.io".into())));
        for (excluded, _) in EXCLUDED_CORE_RESOURCES {
            assert!(!CORE_RESOURCES.contains(&excluded), "{excluded} is both granted and excluded");
        }
    }

    #[test]
    fn write_only_verbs_get_no_read_of_the_limits() {
        let rules = default_rules(&strings(&["create", "delete"]));
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert!(rules.iter().all(|r| r.verbs == ["create", "delete"]));
        let rules = default_rules(&strings(&["get", "create"]));
        assert_eq!(rules[3].verbs, ["get"]);
    }
}
