//! Half-open links: the path to the server silently eats every byte.

use std::time::Duration;

use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::sim::BlackholeProxy;

use crate::support::{agent, gateway, log_lines, round_trip, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_notices_a_blackholed_link_and_its_agents_move() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let proxy = BlackholeProxy::start(server.addr()).await.unwrap();
    let url = format!("ws://{}/v1/opamp", proxy.addr());
    // The keepalive notices 2-3 s after the server falls silent: longer than
    // the one second of writes a link used to replay, so what the agents
    // send into the hole below is re-sent only because nothing written after
    // the server was last heard from counts as received.
    let g = gateway(&url, |c| {
        c.server.connections = 2;
        c.server.keepalive = Duration::from_secs(1);
    })
    .await;
    let mut agents = Vec::new();
    for _ in 0..6 {
        agents.push(agent(&g).await);
    }
    let links = g.inspect();
    let generations: Vec<u64> = links.link_states().iter().map(|l| l.generation).collect();
    let mut accepted = proxy.accepted();
    let dialed = *accepted.borrow_and_update();

    // Both links go half-open: nothing is closed, nothing gets through.
    proxy.set_blackhole(true);
    // Agents keep talking meanwhile; what they send into the hole is
    // replayed on the new links.
    for a in &mut agents {
        round_trip(a).await;
    }
    // Each slot was redialed through the proxy.
    let redialed = tokio::time::timeout(T, accepted.wait_for(|n| *n >= dialed + 2)).await;
    assert!(redialed.is_ok_and(|r| r.is_ok()), "the gateway redials both links");
    for (link, before) in generations.iter().enumerate() {
        let up = tokio::time::timeout(T, links.wait_for_link(link, |s| s.connected && s.generation > *before)).await;
        assert!(up.is_ok_and(|found| found), "link upstream-{link} reconnected");
    }
    assert!(!log_lines(&["upstream link lost", "no traffic from the server"]).is_empty(), "keepalive named the cause");
    for a in &mut agents {
        round_trip(a).await;
    }
    // Every agent's latest message came over a new server connection.
    let state = server.state();
    let first_new = state.connections.iter().rev().take(2).map(|c| c.id).min().unwrap();
    for a in &agents {
        let rec = state.agent(a.uid().as_bytes()).expect("agent known to the server");
        assert!(rec.conn_id >= first_new, "agent {} still on a half-open connection", a.uid());
    }
}
