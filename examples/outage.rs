//! What agents see during an OpAMP server restart (issue 9.1): a fleet
//! sending a heartbeat a second through a gateway with default settings,
//! while the server refuses every connection for `--outage`. Prints figures;
//! asserts nothing.
//!
//! ```text
//! cargo run --release --example outage -- [--agents 150] [--outage 8s]
//! ```
//!
//! The reference server, the gateway and the agents share this process; the
//! clocks are the wall clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default, Clone, Copy)]
struct AgentLog {
    sent: u64,
    replies: u64,
    /// Longest time between two replies.
    max_silence: Duration,
    closed: bool,
}

async fn run_agent(mut a: SimAgent, stop: CancellationToken, log: Arc<Mutex<AgentLog>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if a.send(AgentToServer::default()).await.is_err() {
                    log.lock().closed = true;
                    return;
                }
                log.lock().sent += 1;
            }
            m = a.next_server_message() => match m {
                Ok(m) if m.flags & 1 == 0 => {
                    let now = Instant::now();
                    let mut l = log.lock();
                    l.replies += 1;
                    l.max_silence = l.max_silence.max(now - last);
                    last = now;
                }
                Ok(_) => {} // the gateway's ReportFullState after a move
                Err(_) => {
                    log.lock().closed = true;
                    return;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut agents = 150usize;
    let mut outage = Duration::from_secs(8);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => agents = value.parse()?,
            "--outage" => outage = humantime::parse_duration(&value)?,
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;
    // Defaults, but for the addresses.
    let mut cfg =
        Config::from_yaml(&format!("server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\n", server.url()))?;
    cfg.policies.directory = "/nonexistent/opamp-gateway-outage-example".into();
    let g = Gateway::start(&cfg, None).await?;
    anyhow::ensure!(g.wait_for_links(cfg.server.connections, Duration::from_secs(10)).await, "links did not connect");

    let stop = CancellationToken::new();
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..agents {
        let a = SimAgent::connect(AgentOptions::new(g.agent_url())).await?;
        let log = Arc::new(Mutex::new(AgentLog::default()));
        logs.push(log.clone());
        tasks.push(tokio::spawn(run_agent(a, stop.clone(), log)));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handshakes_before = server.state().connect_requests.len();
    let started = Instant::now();
    server.set_accepting(false);
    server.drop_connections();
    tokio::time::sleep(outage).await;
    server.set_accepting(true);
    let up = Instant::now();
    let links_back = g.wait_for_links(cfg.server.connections, Duration::from_secs(120)).await;
    let links_after = up.elapsed();
    // Until every agent has been answered after the outage, plus a margin.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let state = server.state(); // before the agents leave
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let logs: Vec<AgentLog> = logs.iter().map(|l| *l.lock()).collect();
    let mut silences: Vec<Duration> = logs.iter().map(|l| l.max_silence).collect();
    silences.sort();
    let pct = |p: f64| silences[((silences.len() as f64 - 1.0) * p) as usize];
    let sent: u64 = logs.iter().map(|l| l.sent).sum();
    let replies: u64 = logs.iter().map(|l| l.replies).sum();
    println!("outage {:?} (server refusing connections), {agents} agents, defaults", outage);
    println!("links back {:.1} s after the server returned: {links_back}", links_after.as_secs_f64());
    println!("agents closed: {}", logs.iter().filter(|l| l.closed).count());
    println!(
        "longest silence per agent: p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        pct(0.5).as_secs_f64(),
        pct(0.99).as_secs_f64(),
        pct(1.0).as_secs_f64()
    );
    println!("heartbeats sent {sent}, replies {replies} (a replayed frame can be answered twice)");
    println!(
        "re-handshakes {} (one per agent is the failover), agent_disconnect seen {}",
        state.connect_requests.len() - handshakes_before,
        state.total_disconnects
    );
    println!("run {:.1} s", started.elapsed().as_secs_f64());
    g.shutdown().await;
    Ok(())
}
