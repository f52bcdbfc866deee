//! Logging setup: human-readable text by default, JSON for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            registry.with(fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr)).init()
        }
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
}

pub mod kube_requests;
pub mod metrics;

/// The process's metrics and readiness, made once at start-up and shared by
/// the server that serves them and the controller that sets them.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: std::sync::Arc<metrics::Metrics>,
    pub health: std::sync::Arc<Health>,
}

/// Whether the operator is ready to serve: /readyz answers from this.
#[derive(Debug, Default)]
pub struct Health {
    ready: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }
}
