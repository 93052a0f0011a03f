//! Custom capabilities replay (reference: gateway_test.go's
//! TestGatewayCustomCapabilities* and TestGatewayNoCustomCapabilities).
//!
//! Like opamp-go servers, the reference server sends its custom capabilities
//! once per connection, on its first message: the connectResult of the first
//! agent, which the gateway consumes. Each agent must still see them once.

use opamp_gateway::protocol::proto::{AgentRemoteConfig, CustomCapabilities, ServerToAgent};
use opamp_gateway::sim::server::{JsonEncoding, ReferenceServerConfig};

use crate::common::{both_encodings, server_config, Harness};

both_encodings!(
    capabilities_are_added_to_the_first_message_and_keep_its_fields,
    every_agent_gets_the_capabilities,
    only_the_first_message_carries_them,
    the_servers_own_capabilities_are_not_overwritten,
    none_are_added_when_the_server_sends_none,
);

fn with_capabilities(json: JsonEncoding, caps: &[&str]) -> ReferenceServerConfig {
    ReferenceServerConfig { custom_capabilities: caps.iter().map(|s| s.to_string()).collect(), ..server_config(json) }
}

async fn one_link(cfg: ReferenceServerConfig) -> Harness {
    Harness::with(cfg, |c| c.server.connections = 1).await
}

fn caps(n: u64) -> ServerToAgent {
    ServerToAgent { capabilities: n, ..Default::default() }
}

fn names(m: &ServerToAgent) -> Option<Vec<String>> {
    m.custom_capabilities.as_ref().map(|c| c.capabilities.clone())
}

/// Restates TestGatewayCustomCapabilitiesInjection: the capabilities the
/// server sent with the handshake answer arrive with the agent's first
/// message, whose own fields (a remote config) are untouched.
async fn capabilities_are_added_to_the_first_message_and_keep_its_fields(json: JsonEncoding) {
    let list = ["com.bindplane.report_measurements_v1", "com.bindplane.report_topology"];
    let h = one_link(with_capabilities(json, &list)).await;
    let mut a = h.agent().await;
    let msg = ServerToAgent {
        remote_config: Some(AgentRemoteConfig { config_hash: b"test-hash".to_vec().into(), ..Default::default() }),
        ..Default::default()
    };
    let got = h.push(&mut a, msg).await;
    assert_eq!(names(&got), Some(list.map(String::from).to_vec()));
    assert_eq!(&got.remote_config.unwrap().config_hash[..], b"test-hash");
}

/// Restates TestGatewayCustomCapabilitiesMultipleAgents: not only the first
/// agent of the link gets them.
async fn every_agent_gets_the_capabilities(json: JsonEncoding) {
    let list = ["com.bindplane.report_measurements_v1"];
    let h = one_link(with_capabilities(json, &list)).await;
    let mut a1 = h.agent().await;
    let mut a2 = h.agent().await;
    let r1 = h.push(&mut a1, caps(11)).await;
    let r2 = h.push(&mut a2, caps(22)).await;
    assert_eq!(names(&r1), Some(vec![list[0].to_owned()]));
    assert_eq!(names(&r2), Some(vec![list[0].to_owned()]));
    assert_eq!((r1.capabilities, r2.capabilities), (11, 22), "original fields preserved");
}

/// Restates TestGatewayCustomCapabilitiesInjectedOnce.
async fn only_the_first_message_carries_them(json: JsonEncoding) {
    let h = one_link(with_capabilities(json, &["com.bindplane.test"])).await;
    let mut a = h.agent().await;
    assert!(h.push(&mut a, caps(1)).await.custom_capabilities.is_some());
    h.announce(&mut a).await;
    let second = h.push(&mut a, caps(2)).await;
    assert_eq!(second.custom_capabilities, None);
    assert_eq!(second.capabilities, 2);
}

/// Restates TestGatewayCustomCapabilitiesNotOverwritten: a message that
/// carries the server's own capabilities keeps them, and counts as the
/// agent's first, so nothing is added later.
async fn the_servers_own_capabilities_are_not_overwritten(json: JsonEncoding) {
    let h = one_link(with_capabilities(json, &["com.bindplane.cached"])).await;
    let mut a = h.agent().await;
    let own = ServerToAgent {
        capabilities: 1,
        custom_capabilities: Some(CustomCapabilities { capabilities: vec!["com.bindplane.direct".into()] }),
        ..Default::default()
    };
    assert_eq!(names(&h.push(&mut a, own).await), Some(vec!["com.bindplane.direct".to_owned()]));
    h.announce(&mut a).await;
    assert_eq!(h.push(&mut a, caps(2)).await.custom_capabilities, None);
}

/// Restates TestGatewayNoCustomCapabilities.
async fn none_are_added_when_the_server_sends_none(json: JsonEncoding) {
    let h = one_link(server_config(json)).await;
    let mut a = h.agent().await;
    let got = h.push(&mut a, caps(1)).await;
    assert_eq!(got.custom_capabilities, None);
    assert_eq!(got.capabilities, 1);
}
