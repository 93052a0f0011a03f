//! The real gateway binary as a child process, started on a YAML config and
//! ready once it prints its `ready listener=… metrics=… workers=…` line (the signal
//! scripts wait for too). Killed when dropped.
//!
//! Included with `#[path = ".../support/gateway_process.rs"] mod gateway_process;`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct GatewayProcess {
    /// To signal or kill it (not every test does).
    #[allow(dead_code)]
    pub(crate) child: Child,
    pub(crate) listener: SocketAddr,
    pub(crate) metrics: SocketAddr,
    /// The runtime's worker threads, as the binary reports them.
    #[allow(dead_code)]
    pub(crate) workers: usize,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Writes `yaml` to a temporary file and starts the binary on it, logging
    /// at warn; returns once it is ready.
    pub(crate) async fn spawn(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_opamp-gateway"))
            .arg("--config")
            .arg(&path)
            .env("OPAMP_GATEWAY_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line());
        let line = ready.await.expect("ready in time").unwrap().expect("a ready line");
        let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap().to_owned();
        Self {
            listener: field("listener=").parse().unwrap(),
            metrics: field("metrics=").parse().unwrap(),
            workers: field("workers=").parse().unwrap(),
            child,
            _dir: dir,
        }
    }
}
