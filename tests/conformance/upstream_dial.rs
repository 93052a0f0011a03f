//! The upstream dial's request headers (reference:
//! internal/gateway/upstream_connection_test.go, TestUpstreamConnectionHeader:
//! each link names itself with `X-Opamp-Gateway-Connection-Id:
//! upstream-<i>`, sends a User-Agent, and sends the configured headers).

use opamp_gateway::sim::server::JsonEncoding;

use crate::common::{both_encodings, server_config, Harness};

both_encodings!(
    each_link_names_itself_and_sends_a_user_agent,
    configured_headers_are_sent_on_every_link,
    a_configured_user_agent_takes_precedence,
);

/// The "no configured headers" case.
async fn each_link_names_itself_and_sends_a_user_agent(json: JsonEncoding) {
    let h = Harness::start(json, 3).await;
    let st = h.server.state();
    let mut ids: Vec<&str> =
        st.connections.iter().map(|c| c.header("x-opamp-gateway-connection-id").expect("link id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["upstream-0", "upstream-1", "upstream-2"]);
    for c in &st.connections {
        assert!(c.header("user-agent").is_some_and(|ua| ua.starts_with("opamp-gateway/")), "{:?}", c.headers);
    }
}

/// The "unrelated configured header" case.
async fn configured_headers_are_sent_on_every_link(json: JsonEncoding) {
    let h = Harness::with(server_config(json), |c| {
        c.server.connections = 2;
        c.server.headers = serde_yaml_ng::from_str("{ Authorization: Secret-Key secret }").expect("headers");
    })
    .await;
    for c in &h.server.state().connections {
        assert_eq!(c.header("authorization"), Some("Secret-Key secret"));
        assert!(c.header("user-agent").is_some());
    }
}

/// The "configured User-Agent takes precedence" case.
async fn a_configured_user_agent_takes_precedence(json: JsonEncoding) {
    let h = Harness::with(server_config(json), |c| {
        c.server.connections = 1;
        c.server.headers = serde_yaml_ng::from_str("{ User-Agent: custom/1.0.0 }").expect("headers");
    })
    .await;
    let st = h.server.state();
    let uas: Vec<&str> =
        st.connections[0].headers.iter().filter(|(n, _)| n == "user-agent").map(|(_, v)| v.as_str()).collect();
    assert_eq!(uas, ["custom/1.0.0"]);
    assert_eq!(st.connections[0].header("x-opamp-gateway-connection-id"), Some("upstream-0"));
}
