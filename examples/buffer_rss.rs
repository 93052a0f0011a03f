//! Resident memory of a gateway process while agents send big messages,
//! for `listener.max_buffered_bytes` (issue 17). Prints figures; asserts
//! nothing.
//!
//! ```text
//! cargo build --release --bin opamp-gateway --example buffer_rss
//! target/release/examples/buffer_rss [--budget 64MiB|off|default] [--agents 6] [--mib 40] [--messages 4]
//!     [--pause-ms 0] [--bin target/release/opamp-gateway]
//! ```
//!
//! `--pause-ms`: the server stops reading for that long once the agents
//! start sending (a slow server), so messages pile up in the gateway.
//!
//! The reference server and the agents run in this process; the gateway
//! runs as its own, so its RSS is its own (sampled from /proc every 5 ms).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use opamp_gateway::protocol::proto::{AgentToServer, CustomMessage};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Args {
    budget: String,
    agents: usize,
    mib: usize,
    messages: u64,
    pause_ms: u64,
    bin: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        budget: "default".into(),
        agents: 6,
        mib: 40,
        messages: 4,
        pause_ms: 0,
        bin: "target/release/opamp-gateway".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--budget" => a.budget = value,
            "--agents" => a.agents = value.parse()?,
            "--mib" => a.mib = value.parse()?,
            "--messages" => a.messages = value.parse()?,
            "--pause-ms" => a.pause_ms = value.parse()?,
            "--bin" => a.bin = value,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    // "off": a budget no run can reach, i.e. the gateway before the cap.
    let budget = match a.budget.as_str() {
        "default" => String::new(),
        "off" => "  max_buffered_bytes: 1024GiB\n".into(),
        b => format!("  max_buffered_bytes: {b}\n"),
    };
    let yaml = format!(
        "server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\n{budget}policies:\n  directory: {}\n",
        server.url(),
        dir.path().join("none").display()
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml)?;
    let mut child = Command::new(&a.bin)
        .arg("--config")
        .arg(&path)
        .env("OPAMP_GATEWAY_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", a.bin))?;
    let pid = child.id().context("gateway pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??.context("gateway exited")?;
    let listener = ready.split_whitespace().find_map(|w| w.strip_prefix("listener=")).context("ready line")?;
    let url = format!("ws://{listener}/v1/opamp");

    let mut agents = Vec::new();
    for _ in 0..a.agents {
        // 503 until the gateway's links are up.
        let mut tries = 0;
        let mut agent = loop {
            match SimAgent::connect(AgentOptions::new(url.clone())).await {
                Ok(agent) => break agent,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        agent.send(agent.status_report()).await?;
        agent.recv(Duration::from_secs(10)).await?;
        agents.push(agent);
    }
    let idle = status_kib(pid, "VmRSS:");

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(status_kib(pid, "VmRSS:"), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let data = Bytes::from(vec![0x5a; a.mib << 20]);
    if a.pause_ms > 0 {
        server.set_reading(false);
    }
    let started = Instant::now();
    let uids: Vec<Vec<u8>> = agents.iter().map(|g| g.uid().as_bytes().to_vec()).collect();
    let senders: Vec<_> = agents
        .into_iter()
        .map(|mut agent| {
            let data = data.clone();
            let n = a.messages;
            tokio::spawn(async move {
                for _ in 0..n {
                    let msg = CustomMessage {
                        capability: "io.example.blob".into(),
                        r#type: "blob".into(),
                        data: data.clone(),
                    };
                    let msg = AgentToServer { custom_message: Some(msg), ..Default::default() };
                    agent.send(msg).await.expect("send");
                }
                agent
            })
        })
        .collect();
    if a.pause_ms > 0 {
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
        server.set_reading(true);
    }
    let want = 1 + a.messages;
    server
        .wait_until(Duration::from_secs(600), |s| uids.iter().all(|u| s.agent(u).is_some_and(|r| r.messages >= want)))
        .await
        .map_err(|_| anyhow::anyhow!("not every message arrived"))?;
    let elapsed = started.elapsed();
    for s in senders {
        s.await?;
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(status_kib(pid, "VmHWM:"));
    let after = status_kib(pid, "VmRSS:");
    println!(
        "budget={} agents={} message={}MiB messages/agent={} pause={}ms | gateway RSS MiB: idle {:.0}, peak {:.0}, after {:.0} | {:.1}s",
        a.budget,
        a.agents,
        a.mib,
        a.messages,
        a.pause_ms,
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        elapsed.as_secs_f64()
    );
    Ok(())
}
