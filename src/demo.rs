//! `opamp-gateway demo`: the whole picture on loopback, in one process.
//!
//! A reference OpAMP server (with a secret key), the gateway in front of it,
//! and a simulated fleet behind it. Halfway through, the server drops every
//! upstream connection (as in a server restart) to show agents riding it out,
//! then the rebalancer spreading them over the returned links again.

use std::time::{Duration, Instant};

use anyhow::Context;
use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{AgentConfigFile, AgentConfigMap, AgentRemoteConfig, ServerToAgent};
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::fleet::{Fleet, FleetConfig};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::{telemetry, Gateway};

const SECRET: &str = "demo-secret";

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 200)]
    pub agents: usize,
    /// Upstream links in the gateway's pool.
    #[arg(long, default_value_t = 3)]
    pub connections: usize,
    /// How long the fleet runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Interval between each agent's heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let server =
        ReferenceServer::start(ReferenceServerConfig { secret_key: Some(SECRET.into()), ..Default::default() })
            .await
            .context("starting the reference server")?;
    let config = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  connections: {}\n  reconnect: {{ initial_interval: 100ms, max_interval: 2s }}\n\
         listener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n\
         policies:\n  directory: demo-policies-none\n",
        server.url(),
        args.connections
    ))?;
    let gateway = Gateway::start(&config, Some(telemetry::install_recorder()?)).await?;
    anyhow::ensure!(gateway.wait_for_links(args.connections, Duration::from_secs(10)).await, "links did not connect");

    println!("reference server  {}", server.url());
    println!("gateway           {}  ({} upstream links)", gateway.agent_url(), args.connections);
    if let Some(m) = gateway.metrics_addr() {
        println!("metrics           http://{m}/metrics");
    }
    println!("fleet             {} agents, heartbeat every {:?}\n", args.agents, args.heartbeat);

    let started = Instant::now();
    let fleet = Fleet::start(FleetConfig {
        url: gateway.agent_url(),
        agents: args.agents,
        heartbeat: args.heartbeat,
        headers: vec![("Authorization".into(), format!("Secret-Key {SECRET}"))],
        ..Default::default()
    })
    .await;
    let all = args.agents as u64;
    fleet.wait_until(Duration::from_secs(30), |s| s.connected == all).await.ok();
    println!("{} agents connected through the gateway in {:?}", fleet.stats().connected, started.elapsed());

    println!("\n  time  agents  sent  replies  errors  server-links  server-agents  link-loads");
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut restarted = false;
    let mut pushed = false;
    let run_start = Instant::now();
    while run_start.elapsed() < args.duration {
        ticker.tick().await;
        let f = fleet.stats();
        let s = server.state();
        println!(
            "{:>5.1}s  {:>6}  {:>4}  {:>7}  {:>6}  {:>12}  {:>13}  {:?}",
            run_start.elapsed().as_secs_f64(),
            f.connected,
            f.sent,
            f.replies,
            f.errors,
            s.open_connections,
            s.agents.len(),
            gateway.inspect().loads()
        );
        if !pushed && run_start.elapsed() >= args.duration / 4 {
            pushed = true;
            let n = push_config(&server);
            println!("        server pushed a remote config to {n} agents (routed by instance_uid)");
        }
        if !restarted && run_start.elapsed() >= args.duration / 2 {
            restarted = true;
            server.drop_connections();
            println!("        server dropped every upstream link; agents move to links as they redial");
            println!(
                "        (server.rebalance then moves them back into balance, at most {}/s, without reconnects)",
                config.server.rebalance.max_moves_per_second
            );
        }
    }

    // An agent with the wrong key is refused by the server, not the gateway.
    let refused =
        SimAgent::connect(AgentOptions::new(gateway.agent_url()).header("Authorization", "Secret-Key wrong")).await;
    match refused {
        Err(AgentError::Rejected { status, .. }) => {
            println!("\nagent with a wrong key: HTTP {status} (the server's decision)")
        }
        other => println!("\nagent with a wrong key: unexpected {:?}", other.map(|_| ())),
    }

    let f = fleet.stats();
    fleet.stop().await;
    gateway.shutdown().await;
    let s = server.state();
    println!(
        "\nsummary: {} agents over {} links; {} messages sent, {} replies; {} connection errors, {} reconnects",
        args.agents, args.connections, f.sent, f.replies, f.errors, f.reconnects
    );
    println!("server saw {} upstream connections in total for {} agents", s.connections.len(), s.agents.len());
    server.shutdown().await;
    Ok(())
}

fn push_config(server: &ReferenceServer) -> usize {
    let body = b"exporters:\n  otlp:\n    endpoint: collector.example:4317\n".to_vec();
    let mut files = std::collections::HashMap::new();
    files.insert(String::new(), AgentConfigFile { body: body.into(), content_type: "text/yaml".into() });
    let msg = ServerToAgent {
        remote_config: Some(AgentRemoteConfig {
            config: Some(AgentConfigMap { config_map: files }),
            config_hash: bytes::Bytes::from_static(b"demo-v2"),
        }),
        ..Default::default()
    };
    let uids: Vec<_> = server.state().agents.keys().cloned().collect();
    uids.iter().filter(|uid| server.push(uid, msg.clone())).count()
}
