//! Upstream link loss: agents move to surviving links instead of dropping.

use std::collections::BTreeMap;

use opamp_gateway::sim::agent::{is_full_state_request, AgentError, SimAgent};
use opamp_gateway::sim::server::{ConnectMode, ReferenceServerConfig};

use crate::common::{eventually, heartbeat, round_trip, Harness, T};

async fn fleet(h: &Harness, n: usize) -> Vec<SimAgent> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(h.agent_with(h.agent_options().header("Authorization", "Secret-Key k")).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_survive_link_loss_and_nothing_is_lost() {
    let server_cfg = ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() };
    let h = Harness::with(server_cfg, |_| {}).await;
    let mut agents = fleet(&h, 9).await;
    let before = h.server.state().connect_requests.len();

    // Every link drops at once; agents immediately keep talking.
    h.server.drop_connections();
    for a in &mut agents {
        for _ in 0..5 {
            heartbeat(a).await;
        }
    }
    // Each message is answered by the server, so 5 replies each = none lost.
    // Every agent moved, so the gateway also asks each for its full state
    // (opamp-go agents send only deltas after a reconnect).
    for a in &mut agents {
        let (mut replies, mut full_state_requests) = (0, 0);
        while replies < 5 || full_state_requests == 0 {
            let reply = a.recv(T).await.expect("agent stays connected and is answered");
            assert_eq!(&reply.instance_uid, a.uid().as_bytes());
            if is_full_state_request(&reply) {
                full_state_requests += 1;
            } else {
                replies += 1;
            }
        }
        assert!(replies == 5, "exactly the five replies, got {replies}");
    }
    let state = h.server.state();
    let redone = &state.connect_requests[before..];
    // At least one re-handshake per agent (an agent that lands on a link
    // which dies a moment later, as all three did here, moves again).
    assert!(redone.len() >= 9, "expected a re-handshake per agent, got {}", redone.len());
    assert!(redone.iter().all(|(_, r)| r.headers["Authorization"] == ["Secret-Key k"]), "original headers reused");

    // Links come back; loads are exact, not drifting upward.
    assert!(h.gateway.wait_for_links(3, T).await);
    assert_eq!(h.loads().iter().sum::<u32>(), 9);
    h.server.drop_connections();
    for a in &mut agents {
        round_trip(a).await;
    }
    // Replayed frames may be answered twice, so a round trip can complete
    // while a session is still moving; once all have moved, loads are exact.
    assert!(h.gateway.wait_for_links(3, T).await);
    let relay = h.gateway.inspect();
    eventually("loads settle at one per agent", || relay.loads().iter().sum::<u32>() == 9).await;
    drop(agents);
    eventually("loads return to zero", || relay.loads().iter().sum::<u32>() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_surviving_link_closes_agents_to_reconnect() {
    let h = Harness::with(Default::default(), |c| c.server.failover_wait = std::time::Duration::from_millis(200)).await;
    let mut agents = fleet(&h, 4).await;
    h.server.set_accepting(false);
    h.server.drop_connections();
    for a in &mut agents {
        // The server drops its links one by one, so an agent may first move
        // to a link still alive and be answered (its replayed status) before
        // the last link goes: read through to the close.
        loop {
            match a.recv(T).await {
                Ok(reply) => assert_eq!(&reply.instance_uid, a.uid().as_bytes()),
                Err(AgentError::Closed { code: Some(1013), .. }) => break,
                Err(other) => panic!("expected 1013 try-again-later, got {other:?}"),
            }
        }
    }
    // When the server is back, agents can reconnect.
    h.server.set_accepting(true);
    assert!(h.gateway.wait_for_links(3, T).await);
    h.agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rehandshake_closes_the_agent() {
    let h = Harness::start().await;
    let mut agents = fleet(&h, 3).await;
    h.server.set_connect_mode(ConnectMode::Reject { status: 403, headers: BTreeMap::new() });
    h.server.drop_connections();
    for a in &mut agents {
        loop {
            match a.recv(T).await {
                Ok(reply) => assert_eq!(&reply.instance_uid, a.uid().as_bytes()),
                Err(AgentError::Closed { code: Some(1008), .. }) => break,
                Err(other) => panic!("expected 1008, got {other:?}"),
            }
        }
    }
}
