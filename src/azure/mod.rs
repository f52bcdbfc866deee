//! Azure: the credential the operator authenticates with (to Graph and to ARM),
//! and the Azure half of the seed's recipe: the group's "Azure Kubernetes
//! Service Cluster User Role" assignment on the AKS cluster, through Azure
//! Resource Manager.
//!
//! - `credential`: Workload Identity, client secret or managed identity, per cloud;
//! - `rest`: the bearer client (a token of the service's own audience on every
//!   request), reading answers, checking next-page links; for Graph and ARM alike;
//! - `cluster_id`: the AKS cluster resource ID (`--aks-cluster-resource-id`);
//! - `arm`: the ARM client (token, role assignment list / create / delete, errors);
//! - `cluster_user_role`: which groups hold the role, shared by every TeamAccess:
//!   one list per resync, a create per group that lacks it, and the removal of
//!   assignments this operator made once no TeamAccess wants them.

pub mod arm;
pub mod cluster_id;
pub mod cluster_user_role;
pub mod credential;
pub mod rest;

pub use cluster_id::AksClusterId;
pub use cluster_user_role::{Assignment, ClusterUserRole};
