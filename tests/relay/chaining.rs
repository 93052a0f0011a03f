//! A gateway behind a gateway: the lower one's handshakes and agents pass
//! through the upper one (the reference advertises this but cannot do it).

use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::ReferenceServerConfig;
use opamp_gateway::Gateway;

use crate::common::{config, round_trip, Harness, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_behind_gateway() {
    let server_cfg = ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() };
    // Upper gateway A in front of the server. A's links carry no key, so the
    // server must accept B's links by B's headers: give B the key.
    let upper = Harness::with(server_cfg, |c| c.server.connections = 2).await;
    let mut lower_cfg = config(&upper.gateway.agent_url());
    lower_cfg.server.connections = 2;
    lower_cfg
        .server
        .headers
        .insert("Authorization".into(), opamp_gateway::config::HeaderValues::One("Secret-Key k".into()));
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
