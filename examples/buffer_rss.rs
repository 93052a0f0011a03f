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

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use opamp_gateway::protocol::proto::{AgentToServer, CustomMessage};
use opamp_gateway::sim::agent::AgentOptions;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

#[path = "support/gateway_child.rs"]
mod gateway_child;
use gateway_child::GatewayChild;

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
    let gw = GatewayChild::start(&a.bin, None, &path).await?;

    let mut agents = Vec::new();
    for _ in 0..a.agents {
        let mut agent = gw.first_agent(|| AgentOptions::new(gw.url.clone())).await?;
        agent.send(agent.status_report()).await?;
        agent.recv(Duration::from_secs(10)).await?;
        agents.push(agent);
    }
    let idle = gw.status_kib("VmRSS:");
    let sampler = gw.sample_peak(idle);
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
    let peak = sampler.peak().max(gw.status_kib("VmHWM:"));
    drop(sampler);
    let after = gw.status_kib("VmRSS:");
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
