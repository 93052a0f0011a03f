//! The upgrade request's User-Agent: ours by default, the operator's when
//! `server.headers` sets one (the reference's behaviour).

use opamp_gateway::config::HeaderValues;
use opamp_gateway::sim::server::ReferenceServerConfig;

use crate::common::{Harness, T};

/// The User-Agent of every upstream connection, once the server has
/// recorded all of them (the gateway sees a link up as soon as it reads the
/// 101, a moment before the server files the connection).
async fn user_agents(h: &Harness) -> Vec<Vec<String>> {
    h.server.wait_until(T, |s| s.open_connections == 3).await.expect("the server records every link");
    let state = h.server.state();
    let agents = state.connections.iter().map(|c| {
        c.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("user-agent")).map(|(_, v)| v.clone()).collect()
    });
    agents.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_user_agent_names_the_gateway() {
    let h = Harness::start().await;
    for ua in user_agents(&h).await {
        assert_eq!(ua, vec![format!("opamp-gateway/{}", env!("CARGO_PKG_VERSION"))]);
    }
    h.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_user_agent_wins() {
    let h = Harness::with(ReferenceServerConfig::default(), |cfg| {
        cfg.server.headers.insert("User-Agent".into(), HeaderValues::One("bindplane-agent/1.2.3".into()));
    })
    .await;
    let seen = user_agents(&h).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for ua in seen {
        assert_eq!(ua, vec!["bindplane-agent/1.2.3".to_owned()], "exactly the configured value, once");
    }
    h.gateway.shutdown().await;
}
