//! `server.max_link_age`: links are closed and redialed one at a time, their
//! agents moved away first, so no agent notices and the server is never told
//! one left. Off by default.

use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::ReferenceServerConfig;

use crate::common::{round_trip_past_moves, skip, Harness, T};

const AGENTS: usize = 9;

async fn fleet(h: &Harness) -> Vec<SimAgent> {
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        agents.push(h.agent().await);
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_links_are_replaced_one_at_a_time_without_losing_an_agent() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.max_link_age = Some(Duration::from_secs(1));
    })
    .await;
    let mut agents = fleet(&h).await;
    let first: Vec<u64> = h.server.state().connections.iter().map(|c| c.id).collect();
    assert_eq!(first.len(), 3);
    // Agents keep talking while every first-generation link is retired.
    let deadline = tokio::time::Instant::now() + 3 * T;
    loop {
        for a in &mut agents {
            round_trip_past_moves(a).await;
        }
        let state = h.server.state();
        if first.iter().all(|&id| !state.connections[id as usize].open) && state.open_connections == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "links were not rotated: {:?}", state.connections);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still connected (an agent the gateway closed would fail here).
    for a in &mut agents {
        round_trip_past_moves(a).await;
    }
    let state = h.server.state();
    assert!(state.connections.len() >= 6, "each link redialed: {}", state.connections.len());
    assert_eq!(state.total_disconnects, 0, "the server was never told an agent left");
    for a in &agents {
        assert_eq!(state.agent(a.uid().as_bytes()).expect("server knows the agent").disconnected, 0);
    }
}

/// The default: on tokio's clock, five times the age above passes.
#[tokio::test(flavor = "current_thread")]
async fn without_max_link_age_links_are_never_replaced() {
    let h = Harness::start().await;
    let mut agents = fleet(&h).await;
    skip(Duration::from_secs(5)).await;
    for a in &mut agents {
        round_trip_past_moves(a).await;
    }
    let state = h.server.state();
    assert_eq!(state.connections.len(), 3);
    assert_eq!(state.open_connections, 3);
}

#[test]
fn max_link_age_is_validated_with_its_field_path() {
    let base = "server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\n";
    let c = Config::from_yaml(base).unwrap();
    assert_eq!(c.server.max_link_age, None, "off by default");
    let c = Config::from_yaml(&format!("{base}  max_link_age: 1h\n")).unwrap();
    assert_eq!(c.server.max_link_age, Some(Duration::from_secs(3600)));
    for bad in ["max_link_age: 100ms", "max_link_age: 1h\n  connections: 1"] {
        let err = Config::from_yaml(&format!("{base}  {bad}\n")).unwrap_err().to_string();
        assert!(err.contains("server.max_link_age"), "{bad}: {err}");
    }
}
