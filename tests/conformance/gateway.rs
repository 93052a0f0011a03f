//! Relaying, affinity, agent and link lifecycle (reference:
//! internal/gateway/gateway_test.go and downstream_connection_test.go).

use bytes::Bytes;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::{AgentIdentification, AgentToServer, ServerToAgent};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::JsonEncoding;
use opamp_gateway::Gateway;

use crate::common::{both_encodings, config, eventually, Harness, T};

both_encodings!(
    two_agents_each_get_their_own_replies,
    closed_agent_releases_its_link,
    agent_closed_after_sending_is_forgotten_and_reported_upstream,
    agent_stays_on_one_link_of_ten,
    restarted_gateway_serves_again,
    agents_ride_out_a_link_loss_and_new_agents_connect,
    message_for_a_gone_agent_does_not_disturb_the_link,
    message_without_instance_uid_is_dropped_and_the_link_survives,
    message_with_a_short_instance_uid_is_dropped_and_the_link_survives,
    shutdown_with_active_agents_is_bounded,
    fifty_agents_spread_over_three_links_and_clean_up,
    agent_gone_right_after_upgrade_leaves_nothing_behind,
);

fn caps(n: u64) -> ServerToAgent {
    ServerToAgent { capabilities: n, ..Default::default() }
}

/// Restates TestGatewayMultipleAgentsRoundTrip: two agents on one link, each
/// message reaches the server under its agent's uid and each reply reaches
/// only its agent.
async fn two_agents_each_get_their_own_replies(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a1 = SimAgent::connect(h.agent_options()).await.unwrap();
    let mut a2 = SimAgent::connect(h.agent_options()).await.unwrap();
    h.send(&mut a1, AgentToServer { sequence_num: 1, ..Default::default() }).await;
    h.send(&mut a2, AgentToServer { sequence_num: 2, ..Default::default() }).await;
    let st = h.server.state();
    // SimAgent numbers its own messages from 0; what matters is whose is whose.
    assert_eq!(st.agent(a1.uid().as_bytes()).unwrap().messages, 1);
    assert_eq!(st.agent(a2.uid().as_bytes()).unwrap().messages, 1);

    assert_eq!(h.push(&mut a1, caps(11)).await.capabilities, 11);
    assert_eq!(h.push(&mut a2, caps(22)).await.capabilities, 22);
}

/// Restates TestGatewayHandlesAgentClose: an agent that closes is forgotten
/// (its link assignment released).
async fn closed_agent_releases_its_link(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let a = SimAgent::connect(h.agent_options()).await.unwrap();
    eventually("the agent holds the link", || h.loads() == vec![1]).await;
    a.say_goodbye().await.unwrap();
    eventually("the link assignment is released", || h.loads() == vec![0]).await;
}

/// Restates TestGatewayHandlesAgentCloseAfterSend: after an agent that has
/// spoken goes away, its connection, link assignment and uid route are gone.
/// Difference: it left without `agent_disconnect`, so we also tell the server
/// (a synthesized one), which the reference does not.
async fn agent_closed_after_sending_is_forgotten_and_reported_upstream(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let a = h.agent().await;
    let uid = a.uid().as_bytes().clone();
    a.drop_abruptly();
    h.server
        .wait_until(T, |s| s.agent(&uid).is_some_and(|r| r.disconnected == 1))
        .await
        .expect("the server is told the agent left");
    let relay = h.gateway.inspect();
    eventually("route and link assignment released", || relay.routed_uids() == 0 && relay.loads() == vec![0]).await;
}

/// Restates TestGatewayUpstreamConnectionAffinity: with ten links, every
/// message of one agent (and its handshake) goes over the same link.
async fn agent_stays_on_one_link_of_ten(json: JsonEncoding) {
    let h = Harness::start(json, 10).await;
    let mut a = h.agent().await;
    let first = h.conn_of(&a);
    for _ in 0..10 {
        h.send(&mut a, AgentToServer::default()).await;
        assert_eq!(h.conn_of(&a), first);
    }
    let st = h.server.state();
    let used: Vec<u64> = st.connections.iter().filter(|c| c.messages > 0).map(|c| c.id).collect();
    assert_eq!(used, vec![first], "handshake and all 11 messages on one link");
    assert_eq!(st.connect_requests.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![first]);
}

/// Restates TestGatewayRestartAfterShutdown: after a shutdown the gateway
/// starts again (same listener address) and relays both ways. Difference:
/// ours is a new `Gateway` from the same config; the reference restarts the
/// same object.
async fn restarted_gateway_serves_again(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut cfg = config(&h.server.url());
    cfg.server.connections = 1;
    cfg.listener.endpoint = h.gateway.listen_addr().to_string();
    let mut a1 = h.agent().await;
    assert_eq!(h.push(&mut a1, caps(10)).await.capabilities, 10);
    drop(a1);
    let Harness { server, gateway } = h;
    tokio::time::timeout(T, gateway.shutdown()).await.expect("shutdown is bounded");

    let g2 = Gateway::start(&cfg, None).await.expect("restart on the same address");
    assert!(g2.wait_for_links(1, T).await);
    let h = Harness { server, gateway: g2 };
    let mut a2 = h.agent().await;
    assert_eq!(h.push(&mut a2, caps(42)).await.capabilities, 42);
}

/// Restates TestGatewayUpstreamReconnection: the server drops every link, the
/// gateway redials, and a new agent round-trips on the recovered link.
/// Difference: the reference closes the agents of a lost link (they must
/// reconnect); ours keep their WebSocket and move to the new link, so the
/// first agent still round-trips too.
async fn agents_ride_out_a_link_loss_and_new_agents_connect(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a1 = h.agent().await;
    h.server.drop_connections();
    h.server.wait_until(T, |s| s.connections.len() == 2 && s.open_connections == 1).await.expect("redialed");
    assert!(h.gateway.wait_for_links(1, T).await);

    let mut a2 = h.agent().await;
    assert_eq!(h.push(&mut a2, caps(99)).await.capabilities, 99);
    // a1 re-ran its handshake on the new link and, since that server may not
    // know it, is asked for its full state; its next message lands there.
    assert_full_state_requested(&mut a1).await;
    h.send(&mut a1, AgentToServer::default()).await;
    assert_eq!(h.conn_of(&a1), 1);
    assert_eq!(h.push(&mut a1, caps(7)).await.capabilities, 7);
}

/// After a move to another link, the gateway asks the agent for its full
/// state (`ReportFullState`), as the server on the new link may not know it.
pub(crate) async fn assert_full_state_requested(a: &mut SimAgent) {
    let asked = a.recv(T).await.expect("a message from the gateway");
    assert_eq!(asked.flags & 1, 1, "ReportFullState requested: {asked:?}");
}

/// Restates TestGatewayDownstreamSendFailureDoesNotKillUpstream: a message
/// for an agent whose connection is gone is dropped without harming the link
/// or the other agents on it.
async fn message_for_a_gone_agent_does_not_disturb_the_link(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let a1 = h.agent().await;
    let mut a2 = h.agent().await;
    let uid1 = a1.uid().as_bytes().clone();
    a1.drop_abruptly();
    h.server.wait_until(T, |s| s.agent(&uid1).is_some_and(|r| r.disconnected == 1)).await.unwrap();
    // The server still thinks it can reach agent 1 over the link.
    assert!(h.server.push(&uid1, caps(11)));
    assert_eq!(h.push(&mut a2, caps(22)).await.capabilities, 22);
    let st = h.server.state();
    assert_eq!((st.connections.len(), st.open_connections), (1, 1), "the link was never dropped");
}

/// Restates TestGatewayInvalidInstanceUidDoesNotKillUpstream: a server
/// message with no instance uid (a bare `agent_identification`) is dropped;
/// the link carries on.
async fn message_without_instance_uid_is_dropped_and_the_link_survives(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    let orphan = ServerToAgent {
        agent_identification: Some(AgentIdentification { new_instance_uid: Bytes::from_static(&[9; 16]) }),
        ..Default::default()
    };
    assert!(h.server.push_raw(h.conn_of(&a), framing::encode(&orphan)));
    let got = h.push(&mut a, caps(77)).await;
    assert_eq!(got.capabilities, 77, "the orphan was not delivered to anyone");
    assert_eq!(h.server.state().open_connections, 1);
}

/// Restates TestGatewayInvalidInstanceUidWrongLength: a uid that is neither
/// 16 bytes nor a 26-byte ULID is dropped; the link carries on.
async fn message_with_a_short_instance_uid_is_dropped_and_the_link_survives(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    let short = ServerToAgent { instance_uid: Bytes::from_static(b"short"), capabilities: 99, ..Default::default() };
    assert!(h.server.push_raw(h.conn_of(&a), framing::encode(&short)));
    assert_eq!(h.push(&mut a, caps(88)).await.capabilities, 88);
    assert_eq!(h.server.state().open_connections, 1);
}

/// Restates TestGatewayGracefulShutdownWithActiveConnections: two links,
/// five agents that have spoken; shutdown completes (bounded here by T, the
/// reference allows 15 s). Ours also closes each agent with 1001 so it
/// reconnects elsewhere.
async fn shutdown_with_active_agents_is_bounded(json: JsonEncoding) {
    let h = Harness::start(json, 2).await;
    let mut agents = Vec::new();
    for _ in 0..5 {
        agents.push(h.agent().await);
    }
    let Harness { server, gateway } = h;
    tokio::time::timeout(T, gateway.shutdown()).await.expect("shutdown completes");
    for mut a in agents {
        let seen = a.recv_close(T).await.expect("closed");
        assert_eq!(seen.code, Some(1001), "going away: reconnect elsewhere");
    }
    server.wait_until(T, |s| s.open_connections == 0).await.expect("links closed");
}

/// Restates TestGatewayConcurrentAgentStress: fifty agents through three
/// links; every message arrives, more than one link carries agents, and when
/// they all leave nothing is left behind.
async fn fifty_agents_spread_over_three_links_and_clean_up(json: JsonEncoding) {
    let h = Harness::start(json, 3).await;
    let mut agents = Vec::new();
    for _ in 0..50 {
        agents.push(SimAgent::connect(h.agent_options()).await.unwrap());
    }
    for a in &mut agents {
        a.send(a.status_report()).await.unwrap();
    }
    let uids: Vec<Bytes> = agents.iter().map(|a| a.uid().as_bytes().clone()).collect();
    h.server.wait_until(T, |s| uids.iter().all(|u| s.agent(u).is_some())).await.expect("all 50 arrived");
    let loads = h.loads();
    assert_eq!(loads.iter().sum::<u32>(), 50);
    assert!(loads.iter().filter(|l| **l > 0).count() > 1, "spread over links: {loads:?}");

    for a in agents {
        a.say_goodbye().await.unwrap();
    }
    let relay = h.gateway.inspect();
    eventually("every agent released", || relay.routed_uids() == 0 && relay.loads().iter().sum::<u32>() == 0).await;
}

/// Restates TestDownstreamConnectionCloseBeforeStart (closing a connection
/// before its session started must be safe): an agent that goes away right
/// after its upgrade, before saying anything, releases its link and is not
/// reported (it never named a uid).
async fn agent_gone_right_after_upgrade_leaves_nothing_behind(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    for _ in 0..3 {
        SimAgent::connect(AgentOptions::new(h.gateway.agent_url())).await.unwrap().drop_abruptly();
    }
    eventually("links released", || h.loads() == vec![0]).await;
    let mut a = h.agent().await;
    assert_eq!(h.push(&mut a, caps(1)).await.capabilities, 1);
    let st = h.server.state();
    assert_eq!(st.total_disconnects, 0, "no goodbye for agents that never named a uid");
    assert_eq!(st.agents.len(), 1);
}
