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
//! `--config-kib N` pads the first status report's effective config to
//! about N KiB (a real collector reports its whole config at connect).
//!
//! The reference server and the agents run in this process; the gateway
//! runs as its own (or under `--wrap`, e.g. heaptrack), so its RSS is its
//! own (sampled from /proc every 5 ms; the peak is also the kernel's
//! VmHWM). Allocators: `--bin` another build, or `LD_PRELOAD` set for
//! this command (it is inherited).

use std::time::{Duration, Instant};

use anyhow::Context;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

#[path = "support/gateway_child.rs"]
mod gateway_child;
use gateway_child::GatewayChild;

struct Args {
    agents: usize,
    bin: String,
    wrap: Option<String>,
    listener: Vec<(String, String)>,
    config_kib: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        agents: 2000,
        bin: "target/release/opamp-gateway".into(),
        wrap: None,
        listener: Vec::new(),
        config_kib: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => a.agents = value.parse()?,
            "--bin" => a.bin = value,
            "--wrap" => a.wrap = Some(value),
            "--config-kib" => a.config_kib = value.parse()?,
            "--listener" => {
                let (k, v) = value.split_once('=').context("--listener expects key=value")?;
                a.listener.push((k.into(), v.into()));
            }
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
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
    let gw = GatewayChild::start(&a.bin, a.wrap.as_deref(), &path).await?;
    let url = gw.url.clone();
    drop(gw.first_agent(|| AgentOptions::new(url.clone())).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = gw.status_kib("VmRSS:");

    let sampler = gw.sample_peak(idle);
    let started = Instant::now();
    let pad = a.config_kib;
    let tasks: Vec<_> = (0..a.agents)
        .map(|i| {
            let opts = AgentOptions::new(url.clone())
                .header("Authorization", format!("Secret-Key agent-{i:06}-0123456789abcdef0123456789abcdef"))
                .header("User-Agent", "OpenTelemetry Collector Contrib/0.112.0 (linux/amd64)");
            tokio::spawn(async move {
                let mut agent = SimAgent::connect(opts).await.ok()?;
                agent.send(agent.status_report_sized(pad * 1024)).await.ok()?;
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
    let peak = sampler.peak().max(gw.status_kib("VmHWM:"));
    drop(sampler);
    let settled = gw.status_kib("VmRSS:");
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
