//! Rebalancing: agents crowded on one link are moved to the others without
//! being disconnected, unless rebalancing is off or their assign policy
//! keeps choosing the link they are on.

use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::policy::{AssignInput, HookError, Hooks, Policy, Route};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

use crate::common::{config, eventually, round_trip, round_trip_past_moves, skip, T};

const AGENTS: usize = 30;

/// Assigns the first `pinned` agents to link 0 (a crowd, as after links
/// came back one by one), then leaves the choice to least connections.
/// Agents are told apart by address, not counted by call: the reroute pass
/// also asks `assign` about agents already connected (after the links came
/// up), and counting those calls ran the pins out before the last agent.
struct PinFirst {
    pinned: usize,
    seen: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl PinFirst {
    fn new(pinned: usize) -> Arc<Self> {
        Arc::new(Self { pinned, seen: Default::default() })
    }
}

impl Policy for PinFirst {
    fn name(&self) -> &str {
        "pin-first"
    }
    fn hooks(&self) -> Hooks {
        Hooks { assign: true, ..Hooks::default() }
    }
    fn assign(&self, input: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        let mut seen = self.seen.lock();
        if seen.len() < self.pinned {
            seen.insert(input.remote_addr.to_owned());
            return Ok(Some(Route::default_link(0)));
        }
        Ok(None)
    }
}

struct Setup {
    server: ReferenceServer,
    gateway: Gateway,
    agents: Vec<SimAgent>,
}

/// A gateway with three links and `AGENTS` agents all on link 0.
async fn crowded(policy: Arc<dyn Policy>, tweak: impl FnOnce(&mut Config)) -> Setup {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("server starts");
    let mut cfg = config(&server.url());
    tweak(&mut cfg);
    let gateway = Gateway::builder(cfg).policy(policy).start().await.expect("gateway starts");
    assert!(gateway.wait_for_links(3, T).await, "links did not connect");
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let mut a = SimAgent::connect(AgentOptions::new(gateway.agent_url())).await.expect("agent connects");
        round_trip(&mut a).await;
        agents.push(a);
    }
    Setup { server, gateway, agents }
}

fn spread(loads: &[u32]) -> u32 {
    loads.iter().max().unwrap() - loads.iter().min().unwrap()
}

/// Every agent is still connected and answered, and the server was never
/// told any of them left.
async fn all_still_connected(s: &mut Setup) {
    for a in &mut s.agents {
        // A move also asks the agent for its full state: read past those.
        round_trip_past_moves(a).await;
    }
    let state = s.server.state();
    for a in &s.agents {
        let rec = state.agent(a.uid().as_bytes()).expect("server knows the agent");
        assert_eq!(rec.disconnected, 0, "a moved agent is never reported gone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crowded_links_rebalance_without_disconnecting_anyone() {
    let mut s = crowded(PinFirst::new(AGENTS), |_| {}).await;
    let relay = s.gateway.inspect();
    // Within the default tolerance (10% of 10 rounds down to one agent),
    // with no move in flight (a moving agent holds both its leases).
    eventually("loads converge", || {
        let loads = relay.loads();
        loads.iter().sum::<u32>() == AGENTS as u32 && spread(&loads) <= 1
    })
    .await;
    assert_eq!(relay.loads(), vec![10, 10, 10], "balanced, so nothing moves any more");
    let handshakes = s.server.state().connect_requests.len();
    // About 20 moves (fewer if the first tick came before the last connect).
    assert!(handshakes > AGENTS + 10, "moves re-handshake on their new link, got {handshakes}");
    all_still_connected(&mut s).await;

    // The server drops every link: failover piles agents on whichever link
    // returns first; once all are back, balance returns.
    s.server.drop_connections();
    assert!(s.gateway.wait_for_links(3, T).await);
    for a in &mut s.agents {
        round_trip(a).await;
    }
    eventually("loads converge after the links return", || {
        let loads = relay.loads();
        loads.iter().sum::<u32>() == AGENTS as u32 && spread(&loads) <= 1
    })
    .await;
    all_still_connected(&mut s).await;
}

/// The off switch. On tokio's clock, five rebalancing ticks pass.
#[tokio::test(flavor = "current_thread")]
async fn disabled_rebalancing_leaves_loads_skewed() {
    let mut s = crowded(PinFirst::new(AGENTS), |c| c.server.rebalance.enabled = false).await;
    assert_eq!(s.gateway.inspect().loads(), vec![30, 0, 0]);
    skip(Duration::from_secs(5)).await;
    for a in &mut s.agents {
        round_trip(a).await;
    }
    assert_eq!(s.gateway.inspect().loads(), vec![30, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assign_policy_choice_is_not_fought() {
    let mut s = crowded(PinFirst::new(usize::MAX), |_| {}).await;
    let relay = s.gateway.inspect();
    // Each agent is asked once, the chain names link 0 again, it stays.
    eventually("every agent was asked and stayed", || relay.agents_staying() == AGENTS).await;
    assert_eq!(relay.loads(), vec![30, 0, 0]);
    let state = s.server.state();
    assert_eq!(state.connect_requests.len(), AGENTS, "a move the policy refuses makes no handshake");
    all_still_connected(&mut s).await;
}

#[test]
fn rebalance_config_is_validated_with_its_field_path() {
    let base = "server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\n  rebalance:\n";
    let c = Config::from_yaml(&format!("{base}    enabled: true\n")).unwrap();
    assert!(c.server.rebalance.enabled);
    assert_eq!(c.server.rebalance.max_moves_per_second, 50);
    assert!((c.server.rebalance.tolerance - 0.1).abs() < f64::EPSILON);
    for (bad, field) in [
        ("tolerance: -1", "server.rebalance.tolerance"),
        ("max_moves_per_second: 0", "server.rebalance.max_moves_per_second"),
    ] {
        let err = Config::from_yaml(&format!("{base}    {bad}\n")).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}
