//! Two gateway processes behind HAProxy (TCP mode, leastconn,
//! `send-proxy-v2`), a fleet of reconnecting agents from 127.0.0.2: one
//! gateway is killed with SIGKILL, every agent comes back through the
//! survivor, and the server is told the agents' own address throughout.
//!
//! Also, on the upstream side: a server that is two replicas behind HAProxy
//! gets links on the replica added later only because `server.max_link_age`
//! rotates them.
//!
//! Needs the `haproxy` binary (scripts/test installs the Debian package);
//! without it the test says so and passes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opamp_gateway::config::Config;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Generous: these wait on whole processes starting, dying and reconnecting.
const T: Duration = Duration::from_secs(30);
#[path = "support/gateway_process.rs"]
mod gateway_process;
use gateway_process::GatewayProcess;

const AGENTS: usize = 20;
const AGENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

impl GatewayProcess {
    async fn spawn_proxied(server_url: &str) -> Self {
        GatewayProcess::spawn(&format!(
            "server:\n  endpoint: {server_url}\n  reconnect: {{ initial_interval: 50ms, max_interval: 200ms }}\n\
             listener:\n  endpoint: 127.0.0.1:0\n  proxy_protocol: true\n\
             telemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n"
        ))
        .await
    }

    /// Agents connected here, from `/metrics` (the process has no other signal).
    async fn agents(&self) -> f64 {
        let body = opamp_gateway::sim::http_get(self.metrics, "/metrics").await.expect("admin answers").1;
        body.lines()
            .filter(|l| l.starts_with("opampgateway_connections{") && l.contains(r#"direction="downstream""#))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// Polls until `done` holds for the gateways' agent counts.
async fn until_agents(gws: &[&GatewayProcess], what: &str, done: impl Fn(&[f64]) -> bool) -> Vec<f64> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut counts = Vec::new();
        for g in gws {
            counts.push(g.agents().await);
        }
        if done(&counts) {
            return counts;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; agents per gateway: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `server_opts` follow each backend's `server` line.
async fn start_haproxy(
    dir: &tempfile::TempDir,
    front: SocketAddr,
    backends: &[SocketAddr],
    server_opts: &str,
) -> Child {
    let mut cfg = String::from(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5m\n  timeout server 5m\n  retries 3\n  \
         option redispatch\n\
         frontend front\n",
    );
    cfg += &format!("  bind {front}\n  default_backend backends\nbackend backends\n  balance leastconn\n");
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("  server b{i} {b} {server_opts}\n");
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy starts");
    // HAProxy tells nothing when it listens: poll its port.
    let deadline = tokio::time::Instant::now() + T;
    while TcpStream::connect(front).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "haproxy did not listen on {front}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// One agent session: dial from 127.0.0.2, upgrade, one round trip.
async fn session(
    front: SocketAddr,
    uid: &[u8; 16],
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(AGENT_IP, 0))?;
    let tcp = socket.connect(front).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{front}/v1/opamp"), tcp).await?;
    let msg = AgentToServer { instance_uid: uid.to_vec().into(), ..Default::default() };
    ws.send(Message::Binary(framing::encode(&msg))).await?;
    loop {
        match tokio::time::timeout(T, ws.next()).await? {
            Some(Ok(Message::Binary(_))) => return Ok(ws),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => return Err(format!("no reply: {other:?}").into()),
        }
    }
}

/// Reconnects forever; `sessions[i]` counts its sessions that round-tripped.
async fn agent(i: usize, front: SocketAddr, sessions: watch::Sender<Vec<u32>>) {
    let uid = *uuid::Uuid::new_v4().as_bytes();
    loop {
        if let Ok(mut ws) = session(front, &uid).await {
            sessions.send_modify(|s| s[i] += 1);
            while let Some(Ok(_)) = ws.next().await {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // reconnect backoff
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_behind_haproxy_survive_a_kill() {
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED two_gateways_behind_haproxy_survive_a_kill: no haproxy binary (scripts/test installs it)");
        return;
    }
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let mut g1 = GatewayProcess::spawn_proxied(&server.url()).await;
    let g2 = GatewayProcess::spawn_proxied(&server.url()).await;
    server.wait_until(T, |s| s.open_connections == 6).await.expect("both gateways' links connect");

    let dir = tempfile::tempdir().unwrap();
    let front = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
    let opts = "send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1";
    let _haproxy = start_haproxy(&dir, front, &[g1.listener, g2.listener], opts).await;

    let (sessions, mut seen) = watch::channel(vec![0u32; AGENTS]);
    let fleet: Vec<_> = (0..AGENTS).map(|i| tokio::spawn(agent(i, front, sessions.clone()))).collect();
    tokio::time::timeout(T, seen.wait_for(|s| s.iter().all(|&n| n >= 1))).await.unwrap().unwrap();
    let spread = until_agents(&[&g1, &g2], "the fleet spread over both gateways", |c| {
        c[0] + c[1] == AGENTS as f64 && c[0] > 0.0 && c[1] > 0.0
    })
    .await;
    let on_g1 = spread[0] as u32;

    // SIGKILL: no drain, no close frames; its agents see their TCP close.
    let before = seen.borrow().clone();
    let killed = std::time::Instant::now(); // reported, never asserted
    g1.child.start_kill().unwrap();
    g1.child.wait().await.unwrap();
    until_agents(&[&g2], "every agent on the survivor", |c| c[0] == AGENTS as f64).await;
    let total = |s: &[u32]| s.iter().sum::<u32>();
    tokio::time::timeout(T, seen.wait_for(|s| total(s) >= total(&before) + on_g1))
        .await
        .expect("the killed gateway's agents round-trip again")
        .unwrap();
    let back = killed.elapsed();
    let now = seen.borrow().clone();
    let moved = (0..AGENTS).filter(|&i| now[i] > before[i]).count();
    assert_eq!(moved as u32, on_g1, "exactly the killed gateway's agents reconnected");

    let state = server.state();
    let remotes: Vec<&str> = state.connect_requests.iter().map(|(_, r)| r.remote_address.as_str()).collect();
    assert!(remotes.len() >= AGENTS + moved, "every session was a handshake: {remotes:?}");
    for r in &remotes {
        let addr: SocketAddr = r.parse().expect("remote_address is ip:port");
        assert_eq!(addr.ip(), AGENT_IP, "the server is told the agent's own address, not HAProxy's: {remotes:?}");
    }
    eprintln!(
        "haproxy: {AGENTS} agents, {} moved to the survivor after kill -9 (the last answered {} ms after the kill), \
         {} handshakes, all from {AGENT_IP}",
        moved,
        back.as_millis(),
        remotes.len()
    );
    for f in fleet {
        f.abort();
    }
}

/// A status report and the server's reply (past any full-state requests).
async fn round_trip(a: &mut SimAgent) {
    a.answered(T).await.expect("agent stays connected and is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_links_reach_a_server_replica_added_later() {
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED rotated_links_reach_a_server_replica_added_later: no haproxy binary");
        return;
    }
    // Replica B is in HAProxy's backend from the start but not running yet:
    // every link lands on A (a refused connect is redispatched).
    let a = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let b_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let front = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
    let _haproxy = start_haproxy(&dir, front, &[a.addr(), b_addr], "check inter 200ms fall 1 rise 1").await;

    let yaml = format!(
        "server:\n  endpoint: ws://{front}/v1/opamp\n  max_link_age: 1s\n  \
         reconnect: {{ initial_interval: 50ms, max_interval: 200ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n"
    );
    let cfg = Config::from_yaml(&yaml).unwrap();
    let gateway = Gateway::start(&cfg, None).await.expect("gateway starts");
    assert!(gateway.wait_for_links(3, T).await, "links connect through haproxy");
    a.wait_until(T, |s| s.open_connections == 3).await.expect("every link on replica A");
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let mut agent = SimAgent::connect(AgentOptions::new(gateway.agent_url())).await.expect("agent connects");
        round_trip(&mut agent).await;
        agents.push(agent);
    }

    // Scale out: B comes up; only rotated links can reach it.
    let b = ReferenceServer::start(ReferenceServerConfig { listen: b_addr, ..Default::default() }).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        for agent in &mut agents {
            round_trip(agent).await;
        }
        let (sa, sb) = (a.state(), b.state());
        // Both replicas hold links, and agents moved onto B's (rebalancing).
        let spread = sb.open_connections >= 1 && sa.open_connections >= 1;
        if spread && sa.open_connections + sb.open_connections == 3 && sb.total_messages > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "links did not spread: A {} open, B {} open, {} messages on B",
            sa.open_connections,
            sb.open_connections,
            sb.total_messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for agent in &mut agents {
        round_trip(agent).await;
    }
    let (sa, sb) = (a.state(), b.state());
    assert_eq!(sa.total_disconnects + sb.total_disconnects, 0, "no agent was reported gone");
    eprintln!(
        "haproxy upstream: links A {} open ({} ever), B {} open ({} ever), {AGENTS} agents kept working",
        sa.open_connections,
        sa.connections.len(),
        sb.open_connections,
        sb.connections.len()
    );
}
