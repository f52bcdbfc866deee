//! The "Azure Kubernetes Service Cluster User Role" on the AKS cluster, per group.
//!
//! Members of a group need this role to fetch a kubeconfig (`az aks
//! get-credentials` calls `listClusterUserCredential`) before the RoleBinding
//! means anything to them. The role is per group and per cluster, while
//! TeamAccess objects are per namespace, so this is shared by all of them:
//!
//! - one list of the assignments at the cluster scope per `refresh_every` (the
//!   resync) answers "does this group hold it?" for every TeamAccess;
//! - a group that lacks it gets an assignment named by a deterministic GUID
//!   (UUID v5 of scope, group and role), so a retry, a restart or a second
//!   replica never makes a second one, and "ours" is decidable from the name;
//! - an assignment of the role to the group under another name was made by
//!   someone else: it satisfies the group and is never deleted;
//! - ours is deleted once no TeamAccess wants the group (the last one deleted
//!   or opted out, or its group changed), by the owner's cleanup or by the sweep.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{
    arm::{ArmClient, ArmError, NewAssignment, RoleAssignment},
    cluster_id::AksClusterId,
};

/// The built-in "Azure Kubernetes Service Cluster User Role".
pub const CLUSTER_USER_ROLE_ID: &str = "4abbcc35-e782-43d8-92c5-2d3f1bd2253f";
/// The namespace of the assignment names (UUID v5): fixed forever, since
/// changing it would orphan every assignment already made.
const NAME_NAMESPACE: Uuid = Uuid::from_u128(0x6c1d_5f0e_9b7a_4e36_a1c4_2f8d_3e5b_7a90);

/// The group's assignment of the role, as a TeamAccess reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Its resource ID (for an assignment someone else made and ARM only named
    /// in a 409, built from its name).
    pub id: String,
    /// Made by this operator (its deterministic name), so it removes it when no
    /// TeamAccess wants the group any more.
    pub by_operator: bool,
}

/// Which groups hold the role at the cluster scope, as last listed.
#[derive(Default)]
struct Snapshot {
    listed_at: Option<Instant>,
    /// By lower-case principal objectId.
    holders: HashMap<String, Assignment>,
}

pub struct ClusterUserRole {
    arm: ArmClient,
    /// The cluster's resource ID: the scope of every assignment.
    scope: String,
    role_definition_id: String,
    refresh_every: Duration,
    snapshot: tokio::sync::Mutex<Snapshot>,
    /// Per group, the TeamAccess objects that asked for it and when: an
    /// assignment one of them asked for moments ago is not swept before that
    /// TeamAccess's status shows the group.
    wanted_lately: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Per group, held while its assignment is created.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ClusterUserRole {
    pub fn new(arm: ArmClient, cluster: &AksClusterId, refresh_every: Duration) -> Self {
        let scope = cluster.scope();
        let role_definition_id = format!(
            "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{CLUSTER_USER_ROLE_ID}",
            cluster.subscription()
        );
        Self {
            arm,
            scope,
            role_definition_id,
            refresh_every,
            snapshot: tokio::sync::Mutex::default(),
            wanted_lately: Mutex::default(),
            creating: Mutex::default(),
        }
    }

    /// The name of the assignment this operator makes for `group`: the same in
    /// every process and after every restart.
    pub fn name_for(&self, group: &str) -> String {
        let key = format!("{}|{}|{CLUSTER_USER_ROLE_ID}", self.scope.to_ascii_lowercase(), group.to_ascii_lowercase());
        Uuid::new_v5(&NAME_NAMESPACE, key.as_bytes()).to_string()
    }

    fn id_for(&self, name: &str) -> String {
        format!("{}/providers/Microsoft.Authorization/roleAssignments/{name}", self.scope)
    }

    /// Makes sure `group` holds the role, for the TeamAccess `by`. Reads the
    /// shared list (refreshed once per `refresh_every`) and writes only when
    /// the group lacks the role.
    pub async fn ensure(&self, group: &str, by: &str) -> Result<Assignment, ArmError> {
        let key = group.to_ascii_lowercase();
        self.wanted_lately
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .insert(by.to_string(), Instant::now());
        {
            let mut snapshot = self.snapshot.lock().await;
            self.refresh_if_due(&mut snapshot).await?;
            if let Some(held) = snapshot.holders.get(&key) {
                return Ok(held.clone());
            }
        }
        // One create per group at a time (objects of one group reconciling
        // together make one request), while other groups' creates go in parallel.
        let group_lock =
            self.creating.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let _creating = group_lock.lock().await;
        if let Some(held) = self.snapshot.lock().await.holders.get(&key) {
            return Ok(held.clone());
        }
        let name = self.name_for(group);
        let new = NewAssignment {
            scope: &self.scope,
            name: &name,
            role_definition_id: &self.role_definition_id,
            principal_id: group,
        };
        let assignment = match self.arm.create_role_assignment(&new).await {
            Ok(created) => Assignment { id: created.id, by_operator: true },
            Err(ArmError::RoleAssignmentExists { existing, message }) => {
                tracing::info!(%group, ?existing, "the group already holds the Cluster User Role; not ours to manage");
                match existing {
                    Some(name) => Assignment { id: self.id_for(&name), by_operator: false },
                    // ARM did not name it: the list does.
                    None => {
                        let mut snapshot = self.snapshot.lock().await;
                        self.refresh(&mut snapshot).await?;
                        match snapshot.holders.get(&key) {
                            Some(held) => held.clone(),
                            None => return Err(ArmError::Rejected { message }),
                        }
                    }
                }
            }
            Err(e) => return Err(e),
        };
        tracing::info!(%group, id = %assignment.id, by_operator = assignment.by_operator, "group holds the Cluster User Role");
        self.snapshot.lock().await.holders.insert(key, assignment.clone());
        Ok(assignment)
    }

    /// `by` no longer wants `group` (deleted, opted out or moved to another
    /// group). When `still_wanted` says no other TeamAccess does, the
    /// assignment this operator made is deleted; one it did not make never is.
    pub async fn release(&self, group: &str, by: &str, still_wanted: bool) -> Result<bool, ArmError> {
        let key = group.to_ascii_lowercase();
        let others_lately = {
            let mut lately = self.wanted_lately.lock().unwrap_or_else(|e| e.into_inner());
            let recent = lately.get_mut(&key).map(|by_ta| {
                by_ta.remove(by);
                by_ta.retain(|_, at| at.elapsed() < self.refresh_every);
                !by_ta.is_empty()
            });
            if recent == Some(false) {
                lately.remove(&key);
            }
            recent.unwrap_or(false)
        };
        if still_wanted || others_lately {
            return Ok(false);
        }
        let mut snapshot = self.snapshot.lock().await;
        // When the list is unknown, delete by name anyway: a missing one is fine.
        if snapshot.listed_at.is_some() && snapshot.holders.get(&key).is_none_or(|held| !held.by_operator) {
            return Ok(false);
        }
        self.arm.delete_role_assignment(&self.scope, &self.name_for(group)).await?;
        snapshot.holders.remove(&key);
        tracing::info!(%group, "removed the Cluster User Role assignment this operator made: no TeamAccess wants the group");
        Ok(true)
    }

    /// Lists the assignments again and deletes each one this operator made for
    /// a group no TeamAccess wants (`wanted`: lower-case objectIds), except
    /// groups asked for lately. Returns how many went.
    pub async fn sweep(&self, wanted: &HashSet<String>) -> Result<usize, ArmError> {
        let mut snapshot = self.snapshot.lock().await;
        self.refresh(&mut snapshot).await?;
        let lately: HashSet<String> = {
            let mut lately = self.wanted_lately.lock().unwrap_or_else(|e| e.into_inner());
            lately.retain(|_, by_ta| {
                by_ta.retain(|_, at| at.elapsed() < self.refresh_every);
                !by_ta.is_empty()
            });
            lately.keys().cloned().collect()
        };
        let unwanted: Vec<String> = snapshot
            .holders
            .iter()
            .filter(|(group, held)| held.by_operator && !wanted.contains(*group) && !lately.contains(*group))
            .map(|(group, _)| group.clone())
            .collect();
        for group in &unwanted {
            self.arm.delete_role_assignment(&self.scope, &self.name_for(group)).await?;
            snapshot.holders.remove(group);
            tracing::info!(%group, "swept a Cluster User Role assignment this operator made: no TeamAccess wants the group");
        }
        Ok(unwanted.len())
    }

    async fn refresh_if_due(&self, snapshot: &mut Snapshot) -> Result<(), ArmError> {
        if snapshot.listed_at.is_some_and(|at| at.elapsed() < self.refresh_every) {
            return Ok(());
        }
        match self.refresh(snapshot).await {
            Ok(()) => Ok(()),
            // A list that fails changes nothing that was known: the assignments
            // did not go away because ARM is busy. Only what was never listed fails.
            Err(e) if snapshot.listed_at.is_some() => {
                tracing::warn!(error = %e, "cannot list the Cluster User Role assignments; using the last list");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn refresh(&self, snapshot: &mut Snapshot) -> Result<(), ArmError> {
        let listed = self.arm.list_role_assignments(&self.scope).await?;
        snapshot.holders = self.holders(listed);
        snapshot.listed_at = Some(Instant::now());
        Ok(())
    }

    /// The groups holding the role at exactly the cluster scope: an assignment
    /// above it (resource group, subscription) is someone else's business and
    /// not one this operator could have made.
    fn holders(&self, listed: Vec<RoleAssignment>) -> HashMap<String, Assignment> {
        let role_suffix = format!("/{CLUSTER_USER_ROLE_ID}");
        let mut holders = HashMap::new();
        for a in listed {
            let at_cluster = a.scope.trim_end_matches('/').eq_ignore_ascii_case(&self.scope);
            let is_role = a.role_definition_id.to_ascii_lowercase().ends_with(&role_suffix);
            if !(at_cluster && is_role) {
                continue;
            }
            let group = a.principal_id.to_ascii_lowercase();
            let by_operator = a.name.eq_ignore_ascii_case(&self.name_for(&group));
            // When the group holds it twice, ours is the one to report and manage.
            let entry = holders.entry(group).or_insert(Assignment { id: a.id.clone(), by_operator });
            if by_operator {
                *entry = Assignment { id: a.id, by_operator };
            }
        }
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks";
    const GROUP: &str = "5f0a1d3e-8f8a-4c1e-9d55-0b0c2d7c1a01";

    #[derive(Debug)]
    struct NoToken;

    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for NoToken {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Err(azure_core::Error::new(azure_core::error::ErrorKind::Credential, "no token in unit tests"))
        }
    }

    fn role() -> ClusterUserRole {
        let arm = ArmClient::new(
            reqwest::Client::new(),
            Arc::new(NoToken),
            "https://arm.invalid",
            Duration::from_secs(1),
            None,
        );
        ClusterUserRole::new(arm, &CLUSTER.parse().unwrap(), Duration::from_secs(60))
    }

    fn listed(name: &str, scope: &str, role_id: &str, principal: &str) -> RoleAssignment {
        RoleAssignment {
            id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name: name.into(),
            scope: scope.into(),
            role_definition_id: format!(
                "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
            ),
            principal_id: principal.into(),
        }
    }

    #[test]
    fn the_name_is_a_stable_guid_per_group_and_cluster() {
        let r = role();
        let name = r.name_for(GROUP);
        assert_eq!(name, r.name_for(&GROUP.to_ascii_uppercase()), "objectIds compare case-insensitively");
        assert_ne!(name, r.name_for("11111111-2222-3333-4444-555555555555"));
        assert_eq!(Uuid::parse_str(&name).unwrap().get_version_num(), 5);
        // Pinned: changing the derivation would orphan every assignment already made.
        assert_eq!(name, "17633900-0eeb-5e9e-81c0-0981d0ccd037");
    }

    #[test]
    fn only_the_role_at_the_cluster_scope_counts_and_ours_is_known_by_its_name() {
        let r = role();
        let ours = r.name_for(GROUP);
        let other_group = "11111111-2222-3333-4444-555555555555";
        let holders = r.holders(vec![
            listed(&ours, CLUSTER, CLUSTER_USER_ROLE_ID, GROUP),
            listed("aaaaaaaa-0000-0000-0000-000000000001", CLUSTER, CLUSTER_USER_ROLE_ID, other_group),
            // Another role, and the role above the cluster: neither counts.
            listed(
                "aaaaaaaa-0000-0000-0000-000000000002",
                CLUSTER,
                "b24988ac-6180-42a0-ab88-20f7382dd24c",
                "22222222-2222-3333-4444-555555555555",
            ),
            listed(
                "aaaaaaaa-0000-0000-0000-000000000003",
                "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b",
                CLUSTER_USER_ROLE_ID,
                "33333333-2222-3333-4444-555555555555",
            ),
        ]);
        assert_eq!(holders.len(), 2, "{:?}", holders.keys());
        assert!(holders[GROUP].by_operator);
        assert!(!holders[other_group].by_operator, "made by someone else: never ours to delete");
    }
}
