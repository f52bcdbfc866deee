//! A control plane of a test's own, for tests that take the API server down or
//! delete the TeamAccess CRD, which would disturb every other test on a shared one.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use kube::Client;

/// Started by `tests/cluster/cluster.sh up`, stopped and removed when dropped.
pub struct OwnCluster {
    pub kubeconfig: PathBuf,
    /// Processes a test started for this cluster (an API server started again);
    /// reaped after cluster-down has stopped them.
    pub restarted: Mutex<Option<Child>>,
}

impl OwnCluster {
    pub fn start() -> Self {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/cluster.sh"))
            .arg("up")
            .env_remove("KUBECONFIG")
            .stderr(Stdio::inherit())
            .output()
            .expect("cluster.sh up");
        assert!(out.status.success(), "cluster.sh up failed");
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        Self { kubeconfig: PathBuf::from(line.trim().trim_start_matches("KUBECONFIG=")), restarted: Mutex::default() }
    }

    /// The launcher's state file: pids, ports and paths of the components.
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.kubeconfig.with_file_name("cluster.json")).unwrap()).unwrap()
    }

    pub async fn client(&self) -> Client {
        super::client_for(&self.kubeconfig).await
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/cluster.sh"))
            .arg("down")
            .env("KUBECONFIG", &self.kubeconfig)
            .status();
        // Also after a panic while the lock was held: a panic in Drop would abort
        // every other test of the binary.
        if let Some(mut child) = self.restarted.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
