//! Memory per agent as a user sees it (issue 13): peak RSS of a gateway
//! process while `--agents` agents connect all at once, each with an
//! `Authorization` and a `User-Agent` header, make one round trip and stay
//! idle. Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release --bin opamp-gateway --example storm_rss
//! target/release/examples/storm_rss [--agents 2000] [--bin target/release/opamp-gateway] [--wrap heaptrack]
//!     [--listener max_handshaking=64]...
//! ```
//!
//! `--listener key=value` (repeatable) adds a `listener.` setting.
//!
//! The reference server and the agents run in this process; the gateway
//! runs as its own (or under `--wrap`, e.g. heaptrack), so its RSS is its
//! own (sampled from /proc every 5 ms; the peak is also the kernel's
//! VmHWM). Allocators: `--bin` another build, or `LD_PRELOAD` set for
//! this command (it is inherited).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Args {
    agents: usize,
    bin: String,
    wrap: Option<String>,
    listener: Vec<(String, String)>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { agents: 2000, bin: "target/release/opamp-gateway".into(), wrap: None, listener: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => a.agents = value.parse()?,
            "--bin" => a.bin = value,
            "--wrap" => a.wrap = Some(value),
            "--listener" => {
                let (k, v) = value.split_once('=').context("--listener expects key=value")?;
                a.listener.push((k.into(), v.into()));
            }
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let extra: String = a.listener.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect();
    let yaml = format!(
        "server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\n  max_handshaking_per_source: 100000\n{extra}\
         policies:\n  directory: {}\n",
        server.url(),
        dir.path().join("none").display()
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml)?;
    let mut cmd = match &a.wrap {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(&a.bin);
            c
        }
        None => Command::new(&a.bin),
    };
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .env("OPAMP_GATEWAY_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", a.bin))?;
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
    let url = format!("ws://{listener}/v1/opamp");
    // The links are up once one agent is admitted (503 before).
    let mut tries = 0;
    let first = loop {
        match SimAgent::connect(AgentOptions::new(url.clone())).await {
            Ok(agent) => break agent,
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = status_kib(pid, "VmRSS:");

    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.agents)
        .map(|i| {
            let opts = AgentOptions::new(url.clone())
                .header("Authorization", format!("Secret-Key agent-{i:06}-0123456789abcdef0123456789abcdef"))
                .header("User-Agent", "OpenTelemetry Collector Contrib/0.112.0 (linux/amd64)");
            tokio::spawn(async move {
                let mut agent = SimAgent::connect(opts).await.ok()?;
                agent.send(agent.status_report()).await.ok()?;
                agent.recv(Duration::from_secs(60)).await.ok()?;
                Some(agent)
            })
        })
        .collect();
    let mut agents = Vec::with_capacity(a.agents);
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Some(agent) => agents.push(agent),
            None => errors += 1,
        }
    }
    let storm = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(status_kib(pid, "VmHWM:"));
    let settled = status_kib(pid, "VmRSS:");
    let n = agents.len().max(1) as f64;
    println!(
        "agents={} errors={errors} storm={:.2}s | gateway RSS KiB: idle {idle}, peak {peak}, 2s later {settled} \
         | per agent at peak {:.1} KiB, settled {:.1} KiB",
        agents.len(),
        storm.as_secs_f64(),
        (peak.saturating_sub(idle)) as f64 / n,
        (settled.saturating_sub(idle)) as f64 / n,
    );
    drop(agents);
    Ok(())
}
