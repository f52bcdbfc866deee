//! Runs the real operator binary as a process, the way a pod would run it. The
//! tests run the debug build cargo made for them; the benchmark the release build.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use super::{unique, wait_for};

pub struct OperatorProcess {
    child: Child,
    /// The port the operator bound for /metrics (it picks one: `127.0.0.1:0`), as
    /// its log says. A port picked here and handed over could be taken meanwhile,
    /// say by an API server a test restarts.
    metrics_port: OnceLock<u16>,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `teamaccess-operator run` with `args`, the given kubeconfig and env.
    pub fn start(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        Self::start_binary(Path::new(env!("CARGO_BIN_EXE_teamaccess-operator")), kubeconfig, args, env, log_dir)
    }

    /// Like `start`, with another build of the operator. `RUST_LOG` in `env`
    /// overrides the default level (info).
    pub fn start_binary(bin: &Path, kubeconfig: &Path, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let log = log_dir.join(format!("{}.log", unique("operator")));
        let log_file = std::fs::File::create(&log).unwrap();
        // The startup lines (the metrics address among them) are logged whatever
        // level the caller asks for.
        let level = env.iter().find(|(k, _)| *k == "RUST_LOG").map_or("info", |(_, v)| v);
        let child = Command::new(bin)
            .arg("run")
            .args(args)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig)
            // A brake window of its own, unless the test shares one on purpose.
            .env("TEAMACCESS_DELETION_BRAKE_LEASE", unique("brake"))
            .envs(env.iter().copied())
            .env("RUST_LOG", format!("{level},teamaccess_operator::cli=info"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start teamaccess-operator");
        Self { child, metrics_port: OnceLock::new(), log }
    }

    /// The metrics port, once the operator has logged it.
    fn metrics_port(&self) -> Option<u16> {
        if let Some(port) = self.metrics_port.get() {
            return Some(*port);
        }
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log.lines().find(|l| l.contains("serving /metrics"))?;
        let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
        let port = after.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?;
        Some(*self.metrics_port.get_or_init(|| port))
    }

    pub fn url(&self, path: &str) -> Option<String> {
        Some(format!("http://127.0.0.1:{}{path}", self.metrics_port()?))
    }

    /// GETs an endpoint of the operator: (status, body), or None when nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = self.url(path)?;
        let response = reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    pub async fn wait_ready(&self) {
        wait_for(Duration::from_secs(30), "the operator's /readyz", || async {
            match self.get("/readyz").await {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}; log: {}", self.log_tail())),
            }
        })
        .await
    }

    /// The value of a metric line (exact name with labels); None when the series
    /// is absent or nothing answers, so an absent series never reads as 0.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.starts_with(' ').then(|| rest.trim().split(' ').next()?.parse().ok())?
        })
    }

    /// Waits until metric `series` reads `value` (gauges follow the caches every few seconds).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        wait_for(Duration::from_secs(15), &format!("{series} to be {value}"), || async {
            match self.metric(series).await {
                Some(n) if n == value => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// What the operator's own Kubernetes client has sent so far
    /// (`teamaccess_kube_requests_total`), by kind of request.
    pub async fn kube_requests(&self) -> KubeRequests {
        let (_, body) = self.get("/metrics").await.unwrap_or_default();
        KubeRequests::parse(&body)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the process to exit (as a pod shutdown would).
    pub async fn stop(mut self) {
        if self.is_running() {
            self.signal("TERM");
            self.wait_exit(Duration::from_secs(30)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn wait_exit(&mut self, timeout: Duration) {
        wait_for(timeout, "the operator to exit", || {
            let running = self.child.try_wait().unwrap().is_none();
            async move { if running { Err("running".to_string()) } else { Ok(()) } }
        })
        .await
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments that point the operator at the Graph emulator with its
/// client-secret credential (the secret itself goes in AZURE_CLIENT_SECRET).
pub fn graph_args(emulator: &azure_emulator::Emulator) -> Vec<String> {
    let url = emulator.url().to_string();
    let ca = emulator.ca_path().to_str().expect("a UTF-8 path").to_string();
    [
        "--directory",
        "graph",
        "--credential",
        "secret",
        "--graph-endpoint",
        &url,
        "--authority-host",
        &url,
        "--ca-file",
        &ca,
    ]
    .map(String::from)
    .to_vec()
}

impl OperatorProcess {
    /// Starts the operator on the emulator's Graph with its client-secret identity,
    /// plus `extra` arguments; the log goes to a directory named after `label`.
    pub fn start_on_emulator(emulator: &azure_emulator::Emulator, extra: &[String], label: &str) -> Self {
        let args: Vec<String> = graph_args(emulator).into_iter().chain(extra.iter().cloned()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(&super::kubeconfig_path(), &args, &GRAPH_ENV, &std::env::temp_dir().join(label))
    }
}

/// The environment that gives the operator the emulator's client-secret
/// identity, as the chart's Secret and values would.
pub const GRAPH_ENV: [(&str, &str); 3] = [
    ("AZURE_TENANT_ID", azure_emulator::TENANT_ID),
    ("AZURE_CLIENT_ID", azure_emulator::CLIENT_ID),
    ("AZURE_CLIENT_SECRET", azure_emulator::CLIENT_SECRET),
];

/// Requests an operator sent to the API server, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KubeRequests {
    /// get and list.
    pub reads: f64,
    /// Watches (long-lived; started at startup and after a watch ends).
    pub watches: f64,
    /// create, update, patch, delete of anything but Events and access reviews.
    pub writes: f64,
    /// SubjectAccessReviews (the authorship step's checks): answered, never stored.
    pub reviews: f64,
    /// Events published.
    pub events: f64,
}

impl KubeRequests {
    pub fn parse(exposition: &str) -> Self {
        let mut sum = Self::default();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix("teamaccess_kube_requests_total{") else { continue };
            let Some((labels, value)) = rest.split_once("} ") else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            let label =
                |name: &str| labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}=\""))?.strip_suffix('"'));
            match (label("verb").unwrap_or_default(), label("resource").unwrap_or_default()) {
                (_, "events") => sum.events += value,
                (_, "subjectaccessreviews") => sum.reviews += value,
                ("get" | "list", _) => sum.reads += value,
                ("watch", _) => sum.watches += value,
                _ => sum.writes += value,
            }
        }
        sum
    }

    pub fn total(&self) -> f64 {
        self.reads + self.watches + self.writes + self.reviews + self.events
    }

    /// Every count times `factor` (per object, per minute).
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            reads: self.reads * factor,
            watches: self.watches * factor,
            writes: self.writes * factor,
            reviews: self.reviews * factor,
            events: self.events * factor,
        }
    }

    /// What was sent since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            reads: self.reads - earlier.reads,
            watches: self.watches - earlier.watches,
            writes: self.writes - earlier.writes,
            reviews: self.reviews - earlier.reviews,
            events: self.events - earlier.events,
        }
    }
}

/// A field of /proc/PID/status given in kB (VmRSS, VmHWM, ...), in MiB; 0 when unreadable.
pub fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
