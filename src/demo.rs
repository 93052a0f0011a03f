//! `opamp-gateway demo`: the whole picture on loopback, in one process.
//!
//! Two reference OpAMP servers, "blue" (the gateway's `server`) and "green"
//! (a named upstream), both with a secret key; the gateway in front; a
//! simulated fleet of two tenants behind it. Halfway through, blue drops
//! every upstream connection (as in a server restart) to show agents riding
//! it out, then the rebalancer spreading them over the returned links again.
//! Later the `upstream_router` Wasm policy is dropped into the policy folder
//! (`route: [acme=green]`): tenant acme's agents move to green live, and
//! blue is told each one left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{AgentConfigFile, AgentConfigMap, AgentRemoteConfig, ServerToAgent};
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::fleet::{Fleet, FleetConfig, FleetStats};
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
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Interval between each agent's heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let server_cfg = ReferenceServerConfig { secret_key: Some(SECRET.into()), ..Default::default() };
    let server = ReferenceServer::start(server_cfg.clone()).await.context("starting the reference server")?;
    let green = ReferenceServer::start(server_cfg).await.context("starting the green reference server")?;
    let folder = PolicyFolder::create()?;
    let config = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  connections: {}\n  reconnect: {{ initial_interval: 100ms, max_interval: 2s }}\n\
         upstreams:\n  green:\n    endpoint: {}\n    connections: 2\n\
         listener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n\
         policies:\n  directory: {}\n  watch: true\n",
        server.url(),
        args.connections,
        green.url(),
        folder.path.display(),
    ))?;
    let gateway = Gateway::start(&config, Some(telemetry::install_recorder()?)).await?;
    let links = args.connections + 2;
    anyhow::ensure!(gateway.wait_for_links(links, Duration::from_secs(10)).await, "links did not connect");

    println!("reference server  {}  (blue: the default upstream)", server.url());
    println!("reference server  {}  (green: a named upstream)", green.url());
    println!("gateway           {}  ({} links to blue, 2 to green)", gateway.agent_url(), args.connections);
    if let Some(m) = gateway.metrics_addr() {
        println!("metrics           http://{m}/metrics");
    }
    println!("policy folder     {}", folder.path.display());
    let acme = args.agents / 4;
    println!(
        "fleet             {} agents ({acme} of tenant acme), heartbeat every {:?}\n",
        args.agents, args.heartbeat
    );

    let started = Instant::now();
    let tenant = |name: &str, agents: usize| FleetConfig {
        url: gateway.agent_url(),
        agents,
        heartbeat: args.heartbeat,
        headers: vec![("Authorization".into(), format!("Secret-Key {SECRET}")), ("X-Tenant".into(), name.into())],
        ..Default::default()
    };
    let fleets = [Fleet::start(tenant("acme", acme)).await, Fleet::start(tenant("globex", args.agents - acme)).await];
    for f in &fleets {
        let n = f.stats().agents as u64;
        f.wait_until(Duration::from_secs(30), |s| s.connected == n).await.ok();
    }
    let stats = || fleets.iter().map(Fleet::stats).fold(FleetStats::default(), add);
    println!("{} agents connected through the gateway in {:?}", stats().connected, started.elapsed());

    println!("\n  time  agents  sent  replies  errors  blue-links  blue-agents  green-agents  link-loads");
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let (mut pushed, mut restarted, mut routed) = (false, false, false);
    let run_start = Instant::now();
    while run_start.elapsed() < args.duration {
        ticker.tick().await;
        let f = stats();
        let s = server.state();
        let upstreams = gateway.inspect().upstream_loads();
        println!(
            "{:>5.1}s  {:>6}  {:>4}  {:>7}  {:>6}  {:>10}  {:>11}  {:>12}  {:?}",
            run_start.elapsed().as_secs_f64(),
            f.connected,
            f.sent,
            f.replies,
            f.errors,
            s.open_connections,
            upstreams[0].1,
            upstreams[1].1,
            gateway.inspect().loads()
        );
        if !pushed && run_start.elapsed() >= args.duration / 6 {
            pushed = true;
            let n = push_config(&server);
            println!("        blue pushed a remote config to {n} agents (routed by instance_uid)");
        }
        if !restarted && run_start.elapsed() >= args.duration / 3 {
            restarted = true;
            server.drop_connections();
            println!("        blue dropped every upstream link; agents move to links as they redial");
            println!(
                "        (server.rebalance then moves them back into balance, at most {}/s, without reconnects)",
                config.server.rebalance.max_moves_per_second
            );
        }
        if !routed && run_start.elapsed() >= args.duration * 2 / 3 {
            routed = true;
            match folder.install_router() {
                Ok(how) => println!(
                    "        upstream_router.wasm dropped into the policy folder ({how}), route: [acme=green]:\n        \
                     acme's agents follow the new route live (re-handshake on green, blue told they left)"
                ),
                Err(e) => println!("        the router policy could not be built, so no routing is shown: {e:#}"),
            }
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

    let f = stats();
    let upstreams = gateway.inspect().upstream_loads();
    for fleet in fleets {
        fleet.stop().await;
    }
    gateway.shutdown().await;
    let s = server.state();
    println!(
        "\nsummary: {} agents over {} + 2 links; {} messages sent, {} replies; {} connection errors, {} reconnects",
        args.agents, args.connections, f.sent, f.replies, f.errors, f.reconnects
    );
    println!("server saw {} upstream connections in total for {} agents", s.connections.len(), s.agents.len());
    if routed {
        let moved = green.state().agents.len();
        println!(
            "at the end: {} agents on blue, {} on green; green learned {moved} agents; blue got {} goodbyes \
             (synthesized when agents moved, and at shutdown)",
            upstreams[0].1, upstreams[1].1, s.total_disconnects
        );
    }
    server.shutdown().await;
    green.shutdown().await;
    Ok(())
}

fn add(a: FleetStats, b: FleetStats) -> FleetStats {
    FleetStats {
        agents: a.agents + b.agents,
        connected: a.connected + b.connected,
        sent: a.sent + b.sent,
        replies: a.replies + b.replies,
        errors: a.errors + b.errors,
        reconnects: a.reconnects + b.reconnects,
    }
}

/// The demo's policy folder, removed when the demo ends.
struct PolicyFolder {
    path: PathBuf,
}

impl PolicyFolder {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("opamp-gateway-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Writes the router's yaml, then its component (the watcher reloads on
    /// the `.wasm`). The component is this repository's example, built for
    /// wasm32-wasip2 if it is not yet.
    fn install_router(&self) -> anyhow::Result<&'static str> {
        let (wasm, how) = router_wasm()?;
        std::fs::write(self.path.join("upstream_router.yaml"), "header: x-tenant\nroute: [acme=green]\n")?;
        let tmp = self.path.join(".upstream_router.wasm.tmp");
        std::fs::copy(&wasm, &tmp)?;
        std::fs::rename(&tmp, self.path.join("upstream_router.wasm"))?;
        Ok(how)
    }
}

impl Drop for PolicyFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `policies/examples/upstream_router` as a component: built already, or
/// built now with cargo (the wasm32-wasip2 target added if missing).
fn router_wasm() -> anyhow::Result<(PathBuf, &'static str)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let wasm = root.join("target/wasm32-wasip2/release/upstream_router.wasm");
    if wasm.exists() {
        return Ok((wasm, "built before"));
    }
    let build = || {
        std::process::Command::new("cargo")
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "-p", "upstream-router"])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .status()
    };
    println!("        building the router policy for wasm32-wasip2 (once)...");
    if !build().is_ok_and(|s| s.success()) {
        let _ = std::process::Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        anyhow::ensure!(build()?.success(), "cargo build of policies/examples/upstream_router failed");
    }
    Ok((wasm, "just built"))
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
