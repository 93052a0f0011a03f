//! A gateway behind a gateway: the lower one's handshakes and agents pass
//! through the upper one (the reference advertises this but cannot do it).

use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::ReferenceServerConfig;
use opamp_gateway::Gateway;

use opamp_gateway::config::{Config, GatewayRule, HeaderRule, HeaderValues};

use crate::common::{config, round_trip, Harness, T};

fn trust_token() -> GatewayRule {
    GatewayRule {
        header: Some(HeaderRule { name: "X-Gateway-Token".into(), value: "gw-token".into() }),
        client_cert_san: None,
    }
}

fn lower_config(upper: &Harness) -> Config {
    let mut c = config(&upper.gateway.agent_url());
    c.server.connections = 2;
    c.server.headers.insert("Authorization".into(), HeaderValues::One("Secret-Key k".into()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_behind_gateway() {
    let server_cfg = ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() };
    // Upper gateway A in front of the server. A's links carry no key, so the
    // server must accept B's links by B's headers: give B the key.
    // A trusts B explicitly, by a token only gateways hold.
    let upper = Harness::with(server_cfg, |c| {
        c.server.connections = 2;
        c.listener.downstream_gateways.trusted = vec![trust_token()];
    })
    .await;
    let mut lower_cfg = lower_config(&upper);
    lower_cfg.server.headers.insert("X-Gateway-Token".into(), HeaderValues::One("gw-token".into()));
    let lower = Gateway::start(&lower_cfg, None).await.unwrap();
    assert!(lower.wait_for_links(2, T).await, "B's links are admitted by A through the server");

    let mut agents = Vec::new();
    for _ in 0..4 {
        let opts = AgentOptions::new(lower.agent_url()).header("Authorization", "Secret-Key k");
        let mut a = SimAgent::connect(opts).await.expect("agent admitted through two gateways");
        round_trip(&mut a).await;
        agents.push(a);
    }
    for a in &mut agents {
        assert!(upper.server.push(a.uid().as_bytes(), ServerToAgent { flags: 1, ..Default::default() }));
        assert_eq!(a.recv(T).await.unwrap().flags, 1);
    }
    // The server still decides: a bad key is refused end to end.
    let bad = SimAgent::connect(AgentOptions::new(lower.agent_url()).header("Authorization", "Secret-Key no")).await;
    assert!(matches!(bad, Err(AgentError::Rejected { status: 401, .. })), "got {:?}", bad.map(|_| ()));

    // An agent vanishing below is reported all the way up.
    let gone = agents.pop().unwrap();
    let uid = gone.uid().as_bytes().clone();
    gone.drop_abruptly();
    upper.server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.disconnected == 1)).await.unwrap();
    lower.shutdown().await;
}

/// Without `listener.downstream_gateways`, a gateway below is just an agent:
/// its links connect (the server accepted their key), but the handshakes it
/// forwards are refused, so its agents get no further than its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_gateway_cannot_forward_handshakes() {
    let server_cfg = ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() };
    let upper = Harness::with(server_cfg, |c| {
        c.server.connections = 1;
        c.listener.downstream_gateways.trusted = vec![trust_token()];
    })
    .await;
    let mut lower_cfg = lower_config(&upper);
    lower_cfg.server.headers.insert("X-Gateway-Token".into(), HeaderValues::One("wrong".into()));
    lower_cfg.server.auth_timeout = std::time::Duration::from_secs(2);
    let lower = Gateway::start(&lower_cfg, None).await.unwrap();
    assert!(lower.wait_for_links(2, T).await, "B's links are admitted as ordinary agents");

    let opts = AgentOptions::new(lower.agent_url()).header("Authorization", "Secret-Key k");
    let refused = SimAgent::connect(opts).await;
    assert!(matches!(refused, Err(AgentError::Rejected { .. })), "got {:?}", refused.map(|_| ()));
    // Every connect the server saw is A's own, for B's links (they carry
    // B's token); none is the one B tried to forward for its agent.
    let state = upper.server.state();
    let forwarded: Vec<_> =
        state.connect_requests.iter().filter(|(_, r)| !r.headers.contains_key("X-Gateway-Token")).collect();
    assert!(forwarded.is_empty(), "a forwarded connect reached the server: {forwarded:?}");
    lower.shutdown().await;
}
