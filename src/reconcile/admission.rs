//! Whether the admission policies the operator's safety rests on are installed.
//!
//! Authors, removers and integrity (the chart's admission-policy.yaml) decide who
//! may give the operator each of its inputs, and authorship names who wrote each
//! spec (without it nothing new is granted); without them anyone who may write a
//! TeamAccess borrows the operator's rights. The operator cannot enforce them,
//! but it can say when they are missing: a log line at start and whenever that
//! changes, and the gauge `teamaccess_admission_policies_missing`.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::{Api, Client};

use super::context::Context;

/// How often the policies are looked at after the start: not with every resync,
/// so an idle operator stays idle (six reads per look).
pub const PERIOD: Duration = Duration::from_secs(300);

/// The policies the chart installs, by the suffix of their names.
pub const POLICIES: [&str; 3] = ["authors", "removers", "integrity"];

/// The policies of `prefix` (the chart's full name, `<prefix>-authors`, ...) that
/// are not in force: the policy or its binding is missing, or its binding does
/// not deny. A read that fails says so, and counts as missing.
pub async fn missing(client: &Client, prefix: &str) -> Vec<String> {
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    let mut missing = Vec::new();
    for suffix in POLICIES {
        let name = format!("{prefix}-{suffix}");
        let policy = policies.get_opt(&name).await;
        let binding = bindings.get_opt(&name).await;
        let in_force = match (&policy, &binding) {
            (Ok(Some(_)), Ok(Some(binding))) => binding.spec.validation_actions.iter().any(|a| a == "Deny"),
            _ => false,
        };
        if let (Err(e), _) | (_, Err(e)) = (&policy, &binding) {
            tracing::warn!(policy = %name, error = %e, "cannot read an admission policy");
        }
        if !in_force {
            missing.push(name);
        }
    }
    // The authorship policy stamps who wrote each spec; without it nothing new
    // is granted (see authorship.rs), which is safe but stops the operator.
    if let Err(why) = super::authorship::current_epoch(client, prefix).await {
        tracing::warn!(policy = %super::authorship::policy_name(prefix), reason = %why, "the authorship policy is not in force");
        missing.push(super::authorship::policy_name(prefix));
    }
    missing
}

/// Looks every `period`, for as long as the operator runs.
pub async fn watch(ctx: std::sync::Arc<Context>, prefix: String, period: Duration) {
    let mut reported: Option<Vec<String>> = None;
    loop {
        let now_missing = missing(&ctx.client, &prefix).await;
        ctx.report.metrics.admission_policies_missing.set(now_missing.len() as i64);
        if reported.as_ref() != Some(&now_missing) {
            if now_missing.is_empty() {
                tracing::info!(prefix = %prefix, "the admission policies are in force");
            } else {
                tracing::warn!(
                    missing = %now_missing.join(", "),
                    "admission policies are missing: anyone who may write a TeamAccess can grant what the operator can \
                     (install the chart with admissionPolicy.enabled, or deploy/admission-policy.yaml)"
                );
            }
            reported = Some(now_missing);
        }
        tokio::time::sleep(period).await;
    }
}
