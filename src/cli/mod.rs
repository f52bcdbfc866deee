//! The command line: the flags (`flags.rs`), start-up in one order (`startup.rs`:
//! clients, directory, ARM, metrics, then the controller), leader election
//! (`leader.rs`) and the shutdown signal (`shutdown.rs`). Every `run` flag can
//! also be set through a `TEAMACCESS_*` environment variable, which is how the
//! Helm chart passes values.

use clap::{Parser, Subcommand};

mod flags;
mod leader;
mod shutdown;
mod startup;

pub use flags::{AccessReportArgs, DirectoryArgs, DirectoryKind, RunArgs};
pub use startup::{access_report, run};

#[derive(Parser, Debug)]
#[command(
    name = "teamaccess-operator",
    version,
    about = "Grants Microsoft Entra ID groups access to Kubernetes namespaces"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
    /// Print the TeamAccess CustomResourceDefinition as YAML.
    Crd,
    /// Print who can get into which namespace, through which TeamAccess and
    /// group: the cluster's TeamAccess objects joined with the directory as it
    /// is now. Run by an admin with a kubeconfig and the directory settings of `run`.
    AccessReport(Box<AccessReportArgs>),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reconcile::{Policy, policy::DEFAULT_PROTECTED_NAMESPACES};

    #[test]
    fn protected_namespaces_add_to_the_defaults_and_are_trimmed() {
        let cli = Cli::try_parse_from(["teamaccess-operator", "run", "--directory", "static", "--directory-file", "x"])
            .unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert!(args.protected_namespaces.is_empty());
        assert_eq!(args.resync, Duration::from_secs(600));
        assert_eq!(args.expiry_warning, crate::reconcile::Settings::DEFAULT_EXPIRY_WARNING);
        let policy = Policy::new(args.protected_namespaces.clone(), None);
        assert!(DEFAULT_PROTECTED_NAMESPACES.iter().all(|ns| policy.protected_namespaces.contains(*ns)));

        let cli =
            Cli::try_parse_from(["teamaccess-operator", "run", "--protected-namespaces", " prod , ,billing"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        let policy = Policy::new(args.protected_namespaces.clone(), Some("teamaccess-system"));
        for ns in DEFAULT_PROTECTED_NAMESPACES.into_iter().chain(["prod", "billing", "teamaccess-system"]) {
            assert!(policy.protected_namespaces.contains(ns), "{ns} in {:?}", policy.protected_namespaces);
        }
        assert_eq!(
            policy.protected_namespaces.len(),
            7,
            "no empty or untrimmed entry: {:?}",
            policy.protected_namespaces
        );
    }

    #[test]
    fn cluster_roles_default_to_view_edit_admin_and_an_empty_list_allows_none() {
        let parse = |extra: &[&str]| {
            let argv = ["teamaccess-operator", "run"].iter().chain(extra).copied().collect::<Vec<_>>();
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("expected run") };
            Policy::default()
                .with_allowed_cluster_roles(args.allowed_cluster_roles.clone())
                .with_escalating_rules(args.allow_escalating_rules)
        };
        let policy = parse(&[]);
        assert_eq!(policy.allowed_cluster_roles.iter().collect::<Vec<_>>(), ["admin", "edit", "view"]);
        assert!(!policy.allow_escalating_rules);
        let policy = parse(&["--allowed-cluster-roles", "view, team-lead", "--allow-escalating-rules"]);
        assert_eq!(policy.allowed_cluster_roles.iter().collect::<Vec<_>>(), ["team-lead", "view"]);
        assert!(policy.allow_escalating_rules);
        assert!(parse(&["--allowed-cluster-roles="]).allowed_cluster_roles.is_empty());
    }

    #[test]
    fn a_malformed_cluster_id_fails_at_startup_saying_what_to_fix() {
        let err = Cli::try_parse_from(["teamaccess-operator", "run", "--aks-cluster-resource-id", "my-cluster"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--aks-cluster-resource-id"), "{err}");
        assert!(err.contains("is not an AKS cluster resource ID"), "{err}");
        let id = "/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks";
        let cli = Cli::try_parse_from(["teamaccess-operator", "run", "--aks-cluster-resource-id", id]).unwrap();
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert_eq!(args.aks_cluster_resource_id.unwrap().scope(), id);
    }

    #[test]
    fn the_static_directory_needs_a_file() {
        let err = Cli::try_parse_from(["teamaccess-operator", "run", "--directory", "static"]).unwrap_err();
        assert!(err.to_string().contains("--directory-file"), "{err}");
    }
}
