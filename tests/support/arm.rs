//! The emulated Azure Resource Manager beside the real control plane: the
//! operator binary on the emulator's Graph and ARM, and what ARM holds.

use std::time::Duration;

use azure_emulator::{Emulator, RoleAssignment};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use teamaccess_operator::{
    api::TeamAccess,
    directory::file_format::{DirectoryFile, GroupRecord, UserRecord},
};

use super::{operator::TEST_LABEL, process::OperatorProcess, *};

pub const SUBSCRIPTION: &str = "6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b";
pub const CLUSTER_USER_ROLE: &str = "4abbcc35-e782-43d8-92c5-2d3f1bd2253f";
pub const WAIT: Duration = Duration::from_secs(40);

pub fn cluster_id() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks-test"
    )
}

pub fn role_definition_id() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{CLUSTER_USER_ROLE}")
}

/// A group objectId no other test uses: whether a group is still wanted is
/// decided over every TeamAccess in the cluster, other tests' included.
pub fn fresh_group() -> String {
    fresh_object_id()
}

/// A tenant of `n` fresh security groups, each with one member.
pub fn groups_with_a_member(n: usize) -> (DirectoryFile, Vec<String>) {
    let groups: Vec<String> = (0..n).map(|_| fresh_group()).collect();
    let directory = DirectoryFile {
        groups: groups
            .iter()
            .enumerate()
            .map(|(i, id)| GroupRecord::security_group(id.clone(), format!("arm-team-{i}-{id}")))
            .collect(),
        users: vec![UserRecord {
            object_id: fresh_group(),
            user_principal_name: "member@contoso.com".into(),
            display_name: Some("member".into()),
            user_type: None,
            member_of: groups.clone(),
        }],
        service_principals: vec![],
    };
    (directory, groups)
}

/// A TeamAccess `name` with `spec`, labelled for the operator of `label`.
pub fn labelled_manifest(label: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess",
        "metadata": {"name": name, "labels": {TEST_LABEL: label}},
        "spec": spec,
    })
}

/// Applies `labelled_manifest` as its only field manager, whether or not an
/// operator runs (a harness stopped for a while has handed its label back).
pub async fn apply_labelled(tas: &Api<TeamAccess>, label: &str, name: &str, spec: serde_json::Value) {
    let manifest = labelled_manifest(label, name, spec);
    tas.patch(name, &PatchParams::apply("arm-test").force(), &Patch::Apply(manifest)).await.unwrap();
}

pub struct Harness {
    pub emulator: Emulator,
    pub op: OperatorProcess,
    pub tas: Api<TeamAccess>,
    pub label: String,
}

impl Harness {
    /// The operator binary on the emulator's Graph and ARM, resyncing every 2 s
    /// and with no deletion brake unless `extra` says otherwise.
    pub async fn start(directory: DirectoryFile, extra: &[String]) -> Self {
        let emulator = graph::emulator_of(directory).await;
        Self::start_on(emulator, extra).await
    }

    pub async fn start_on(emulator: Emulator, extra: &[String]) -> Self {
        Self::start_labelled(emulator, unique("arm"), extra).await
    }

    /// The operator for the TeamAccess objects labelled `label` (a restart
    /// passes the label of the harness it replaces).
    pub async fn start_labelled(emulator: Emulator, label: String, extra: &[String]) -> Self {
        let admin = admin_client().await;
        ensure_crd(&admin).await;
        let selector = format!("{TEST_LABEL}={label}");
        let mut args: Vec<String> = ["--selector", &selector].map(String::from).to_vec();
        // The brake is lifted unless `extra` sets it: other tests' deletions share its Lease.
        if !extra.iter().any(|a| a == "--max-namespace-deletions") {
            args.extend(["--max-namespace-deletions", "0"].map(String::from));
        }
        if !extra.iter().any(|a| a == "--resync") {
            args.extend(["--resync", "2s"].map(String::from));
        }
        args.extend(extra.iter().cloned());
        let op = OperatorProcess::start_on_emulator(&emulator, &args, &label);
        op.wait_ready().await;
        Self { emulator, op, tas: Api::all(admin), label }
    }

    pub fn arm_args(emulator: &Emulator) -> Vec<String> {
        vec!["--aks-cluster-resource-id".into(), cluster_id(), "--arm-endpoint".into(), emulator.arm_url().into()]
    }

    /// Stops the operator (as a pod shutdown would), keeping the emulator and
    /// the label for the one `start_labelled` starts next.
    pub async fn stop(self) -> (Emulator, String) {
        self.op.stop().await;
        (self.emulator, self.label)
    }

    /// The spec the tests grant `group` in `namespace` with.
    pub fn spec(group: &str, namespace: &str) -> serde_json::Value {
        json!({"group": {"objectId": group}, "namespace": namespace, "verbs": ["get", "list", "create"]})
    }

    pub async fn apply(&self, name: &str, group: &str, namespace: &str, cluster_user_role: Option<bool>) {
        let mut spec = Self::spec(group, namespace);
        if let Some(wanted) = cluster_user_role {
            spec["clusterUserRole"] = json!(wanted);
        }
        self.apply_spec(name, spec).await;
    }

    /// Applies a TeamAccess of this harness's label with `spec`, as its only field manager.
    pub async fn apply_spec(&self, name: &str, spec: serde_json::Value) {
        apply_labelled(&self.tas, &self.label, name, spec).await;
    }

    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.label)
    }

    /// Waits for condition `type_` to be `status` (with `reason`) for the current generation.
    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) -> TeamAccess {
        wait_for(WAIT, &format!("{name}: {type_}={status} {reason}"), || async {
            let ta = self.tas.get(name).await.map_err(|e| e.to_string())?;
            let conditions = ta.status.clone().map(|s| s.conditions).unwrap_or_default();
            let found = conditions.iter().any(|c| {
                c.type_ == type_
                    && c.status == status
                    && c.reason == reason
                    && c.observed_generation == ta.metadata.generation
            });
            if found { Ok(ta) } else { Err(format!("{conditions:?}; log: {}", self.op.log_tail())) }
        })
        .await
    }

    pub async fn delete(&self, name: &str) {
        self.tas.delete(name, &Default::default()).await.unwrap();
        wait_gone(&self.tas, name, WAIT).await;
    }

    /// The Cluster User Role assignments at the cluster, by principal.
    pub fn holders(&self) -> Vec<(String, RoleAssignment)> {
        let mut holders: Vec<(String, RoleAssignment)> = self
            .emulator
            .role_assignments()
            .into_iter()
            .filter(|a| a.scope == cluster_id() && a.role_definition_id.ends_with(CLUSTER_USER_ROLE))
            .map(|a| (a.principal_id.clone(), a))
            .collect();
        holders.sort_by(|a, b| a.0.cmp(&b.0));
        holders
    }

    pub async fn wait_holders(&self, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|g| g.to_string()).collect();
        expected.sort();
        wait_for(WAIT, &format!("the role held by exactly {expected:?}"), || async {
            let holders: Vec<String> = self.holders().into_iter().map(|(g, _)| g).collect();
            if holders == expected { Ok(()) } else { Err(format!("{holders:?}; log: {}", self.op.log_tail())) }
        })
        .await
    }

    pub async fn cleanup(&self, names: &[String]) {
        for name in names {
            let _ = self.tas.delete(name, &Default::default()).await;
        }
        for name in names {
            wait_gone(&self.tas, name, WAIT).await;
        }
    }
}
