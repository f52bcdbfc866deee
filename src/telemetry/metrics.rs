//! Prometheus metrics. Every label has a small, fixed set of values (results,
//! condition reasons, HTTP status codes): never object names or error text.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::api::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ready` or `failed`.
    pub result: String,
    /// The Ready condition's reason.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The resource the operator asked for (a fixed set: its own kinds and children).
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmRequestLabels {
    /// GET, PUT or DELETE.
    pub method: String,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub graph_requests: Family<StatusLabels, Counter>,
    pub arm_requests: Family<ArmRequestLabels, Counter>,
    pub directory_cache: Family<CacheLabels, Counter>,
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    pub managed: Gauge,
    /// Grants within their last --expiry-warning, and grants past spec.expiresAt.
    pub grants_expiring: Gauge,
    pub grants_expired: Gauge,
    pub leader: Gauge,
    pub namespace_deletions_delayed: Counter,
    pub admission_policies_missing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("teamaccess");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles of TeamAccess objects by result and reason", reconciles.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconcile_duration_seconds", "Time to reconcile one TeamAccess", reconcile_duration.clone());
        let graph_requests = Family::<StatusLabels, Counter>::default();
        registry.register("graph_requests", "Microsoft Graph HTTP requests by status", graph_requests.clone());
        let arm_requests = Family::<ArmRequestLabels, Counter>::default();
        registry.register(
            "arm_requests",
            "Azure Resource Manager HTTP requests by method and status",
            arm_requests.clone(),
        );
        let directory_cache = Family::<CacheLabels, Counter>::default();
        registry.register("directory_cache", "Directory cache lookups by result", directory_cache.clone());
        let kube_requests = Family::<KubeRequestLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests the operator sent to the Kubernetes API server, by verb and resource",
            kube_requests.clone(),
        );
        let managed = Gauge::default();
        registry.register("managed_teamaccesses", "TeamAccess objects this operator manages", managed.clone());
        let grants_expiring = Gauge::default();
        registry.register(
            "grants_expiring",
            "TeamAccess grants whose spec.expiresAt falls within --expiry-warning",
            grants_expiring.clone(),
        );
        let grants_expired = Gauge::default();
        registry.register(
            "grants_expired",
            "TeamAccess grants past their spec.expiresAt: access removed, namespace kept",
            grants_expired.clone(),
        );
        let namespace_deletions_delayed = Counter::default();
        registry.register(
            "namespace_deletions_delayed",
            "Namespace deletions held back by the brake on mass deletion (--max-namespace-deletions)",
            namespace_deletions_delayed.clone(),
        );
        let admission_policies_missing = Gauge::default();
        registry.register(
            "admission_policies_missing",
            "Admission policies of the operator (authors, removers, integrity) not in force; while any is, whoever may write a TeamAccess can grant what the operator can",
            admission_policies_missing.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the leader Lease (or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            graph_requests,
            arm_requests,
            directory_cache,
            kube_requests,
            managed,
            grants_expiring,
            grants_expired,
            leader,
            namespace_deletions_delayed,
            admission_policies_missing,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, ready: bool, reason: Reason, seconds: f64) {
        let result = if ready { "ready" } else { "failed" };
        self.reconciles.get_or_create(&ReconcileLabels { result: result.into(), reason: reason.as_str().into() }).inc();
        self.reconcile_duration.observe(seconds);
    }

    pub fn graph_request(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.graph_requests.get_or_create(&StatusLabels { status }).inc();
    }

    pub fn arm_request(&self, method: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.arm_requests.get_or_create(&ArmRequestLabels { method: method.into(), status }).inc();
    }

    pub fn cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.directory_cache.get_or_create(&CacheLabels { result: result.into() }).inc();
    }

    pub fn kube_request(&self, verb: &str, resource: &str) {
        self.kube_requests.get_or_create(&KubeRequestLabels { verb: verb.into(), resource: resource.into() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition_with_bounded_labels() {
        let m = Metrics::default();
        m.reconciled(true, Reason::Reconciled, 0.01);
        m.graph_request(Some(429));
        m.cache(true);
        m.managed.set(3);
        let text = m.render();
        assert!(text.contains(r#"teamaccess_reconciles_total{result="ready",reason="Reconciled"} 1"#), "{text}");
        assert!(text.contains(r#"teamaccess_graph_requests_total{status="429"} 1"#), "{text}");
        assert!(text.contains(r#"teamaccess_directory_cache_total{result="hit"} 1"#), "{text}");
        assert!(text.contains("teamaccess_managed_teamaccesses 3"), "{text}");
        assert!(text.contains("teamaccess_reconcile_duration_seconds_bucket"), "{text}");
        assert!(text.contains("teamaccess_reconcile_duration_seconds_count 1"), "{text}");
    }
}
