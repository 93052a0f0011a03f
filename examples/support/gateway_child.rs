//! The gateway binary as a child process, for the examples that measure it
//! from outside: start it, find its agent URL, read its memory from /proc.
//!
//! Included with `#[path = "support/gateway_child.rs"] mod gateway_child;`.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running gateway: kill it by dropping.
pub(crate) struct GatewayChild {
    _child: Child,
    /// The process whose memory counts (the gateway, also under a wrapper).
    pub(crate) pid: u32,
    /// `ws://…/v1/opamp`.
    pub(crate) url: String,
}

impl GatewayChild {
    /// Runs `bin --config config` (under `wrap`, e.g. heaptrack, if given),
    /// logging errors only; returns once it printed its ready line.
    pub(crate) async fn start(bin: &str, wrap: Option<&str>, config: &Path) -> anyhow::Result<Self> {
        let mut cmd = match wrap {
            Some(w) => {
                let mut c = Command::new(w);
                c.arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env("OPAMP_GATEWAY_LOG", "error")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready = loop {
            let line =
                tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??.context("gateway exited")?;
            if line.contains("listener=") {
                break line;
            }
        };
        let pid = gateway_pid(child.id().context("gateway pid")?);
        let listener = ready.split_whitespace().find_map(|w| w.strip_prefix("listener=")).context("ready line")?;
        Ok(Self { _child: child, pid, url: format!("ws://{listener}/v1/opamp") })
    }

    /// An agent admitted as soon as the links are up (503 before).
    pub(crate) async fn first_agent(&self, opts: impl Fn() -> AgentOptions) -> anyhow::Result<SimAgent> {
        let mut tries = 0;
        loop {
            match SimAgent::connect(opts()).await {
                Ok(agent) => return Ok(agent),
                Err(_) if tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A field of /proc/PID/status in KiB (`VmRSS:`, `VmHWM:`); 0 if gone.
    pub(crate) fn status_kib(&self, key: &str) -> u64 {
        status_kib(self.pid, key)
    }

    /// Samples RSS every 5 ms until the sampler is dropped; `peak()` is the
    /// highest seen, from `start` on.
    pub(crate) fn sample_peak(&self, start: u64) -> PeakSampler {
        let peak = Arc::new(AtomicU64::new(start));
        let (pid, seen) = (self.pid, peak.clone());
        let task = tokio::spawn(async move {
            loop {
                seen.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        PeakSampler { peak, task }
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

pub(crate) struct PeakSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pid whose RSS counts: the gateway itself, also under a wrapper that
/// execs it or runs it as its child.
fn gateway_pid(pid: u32) -> u32 {
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if comm(pid).trim() == "opamp-gateway" {
        return pid;
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| comm(c).trim() == "opamp-gateway")
        .unwrap_or(pid)
}
