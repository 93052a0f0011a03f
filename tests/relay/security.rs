//! An agent with valid credentials of its own can affect nothing but its own
//! session: these are the attacks a tenant could try through the gateway.
//!
//! The server here accepts any credentials, so "agent A" and "agent B" are
//! simply agents with different `Authorization` headers, as two tenants
//! with their own keys would be.

use bytes::Bytes;
use opamp_gateway::protocol::handshake::{ConnectRequest, CAPABILITY, CONNECT};
use opamp_gateway::protocol::proto::{AgentDisconnect, AgentToServer, CustomMessage, ServerToAgent};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::ReferenceServerConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{round_trip, Harness, T};

fn tenant(h: &Harness, key: &str) -> AgentOptions {
    h.agent_options().header("Authorization", format!("Secret-Key {key}"))
}

/// Reads until the gateway closes the connection; returns the close code
/// and the `error_response` message sent before it, if any.
async fn closed_by_gateway(a: &mut SimAgent) -> (Option<u16>, Option<String>) {
    let seen = a.recv_close(T).await.expect("the gateway closes the agent");
    (seen.code, seen.error.map(|e| e.error_message))
}

/// Single link, so everything the gateway sends upstream is in order and a
/// later round trip proves an earlier message would already have arrived.
async fn one_link() -> Harness {
    Harness::with(ReferenceServerConfig::default(), |c| c.server.connections = 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_take_over_a_uid() {
    let h = one_link().await;
    let mut victim = h.agent_with(tenant(&h, "a")).await;
    let mut attacker = h.agent_with(tenant(&h, "b")).await;

    // The attacker names the victim's uid, and even says goodbye for it.
    let forged = AgentToServer {
        instance_uid: victim.uid().as_bytes().clone(),
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    };
    attacker.send(forged).await.unwrap();
    let (code, error) = closed_by_gateway(&mut attacker).await;
    assert_eq!(code, Some(1008), "policy violation");
    assert!(error.is_some_and(|e| e.contains("another instance_uid")), "told why before the close");

    // The victim keeps its route, and the server never heard the goodbye.
    let uid = victim.uid().as_bytes().clone();
    for flags in 1..=3 {
        assert!(h.server.push(&uid, ServerToAgent { flags, ..Default::default() }));
        assert_eq!(victim.recv(T).await.unwrap().flags, flags);
    }
    round_trip(&mut victim).await;
    // The attacker's session reports its own uid gone as it ends, after the
    // close: on the one link, behind anything it relayed before.
    let attacker_uid = attacker.uid().as_bytes().clone();
    h.server
        .wait_until(T, |s| s.agent(&attacker_uid).is_some_and(|r| r.disconnected == 1))
        .await
        .expect("the attacker's own uid is reported");
    assert_eq!(h.server.state().agent(&uid).unwrap().disconnected, 0, "the forged agent_disconnect was not relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_cannot_claim_a_live_uid_with_other_credentials() {
    let h = one_link().await;
    let mut victim = h.agent_with(tenant(&h, "a")).await;
    let mut opts = tenant(&h, "b");
    opts.uid = victim.uid().clone();
    let mut attacker = SimAgent::connect(opts).await.expect("the server accepts the attacker's own key");
    let report = attacker.status_report();
    attacker.send(report).await.unwrap();
    let (code, _) = closed_by_gateway(&mut attacker).await;
    assert_eq!(code, Some(1008));

    // The victim still owns its uid, and its route survived the attacker's
    // release (which must not send a goodbye for it either).
    assert!(h.server.push(victim.uid().as_bytes(), ServerToAgent { flags: 7, ..Default::default() }));
    assert_eq!(victim.recv(T).await.unwrap().flags, 7);
    round_trip(&mut victim).await;
    assert_eq!(h.server.state().agent(victim.uid().as_bytes()).unwrap().disconnected, 0);
}

/// Issue 18 §6: a reconnect racing a half-open socket. The agent comes back
/// on a new connection while its old one is not yet known dead. Same
/// credentials: the new connection takes the uid over, the old one is
/// closed, and no `agent_disconnect` is sent for the live agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_takes_over_from_a_half_open_socket_without_a_goodbye() {
    let h = one_link().await;
    let mut old = h.agent_with(tenant(&h, "a")).await;
    let mut opts = tenant(&h, "a");
    opts.uid = old.uid().clone();
    let mut new = h.agent_with(opts).await;

    // The old socket is told, then closed; the gateway drops it only after
    // releasing the session, so the end of the stream is our signal.
    let (code, _) = closed_by_gateway(&mut old).await;
    assert_eq!(code, Some(1000));
    while old.recv_message(T).await.is_ok() {}

    round_trip(&mut new).await;
    let uid = new.uid().as_bytes().clone();
    assert_eq!(h.server.state().agent(&uid).unwrap().disconnected, 0, "no goodbye for a live agent");
    assert!(h.server.push(&uid, ServerToAgent { flags: 1, ..Default::default() }));
    assert_eq!(new.recv(T).await.unwrap().flags, 1, "replies reach the new connection");

    // When the new connection vanishes, the uid is reported gone once.
    new.drop_abruptly();
    h.server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.disconnected == 1)).await.unwrap();
}

fn forged_connect(remote: &str) -> AgentToServer {
    let request = ConnectRequest::new(
        "5f0c3a7e-0000-4000-8000-000000000001".into(),
        remote.into(),
        [("authorization", "Secret-Key guessed")],
    );
    let frame = request.to_frame();
    let mut msg = <AgentToServer as prost::Message>::decode(&frame[1..]).unwrap();
    msg.instance_uid = Bytes::new();
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_forge_a_gateway_handshake() {
    let h = one_link().await;
    let mut agent = h.agent_with(tenant(&h, "a")).await;
    let connects_before = h.server.state().connect_requests.len();

    // Without a uid (as a chained gateway sends it) and with its own uid.
    agent
        .send_raw(Message::Binary(opamp_gateway::protocol::framing::encode(&forged_connect("10.9.9.9:4444"))))
        .await
        .unwrap();
    assert_eq!(closed_by_gateway(&mut agent).await.0, Some(1008));

    let mut other = h.agent_with(tenant(&h, "b")).await;
    let mut msg = forged_connect("10.9.9.9:4444");
    msg.instance_uid = other.uid().as_bytes().clone();
    other.send(msg).await.unwrap();
    let (code, error) = closed_by_gateway(&mut other).await;
    assert_eq!(code, Some(1008));
    assert!(error.is_some_and(|e| e.contains("gateway custom messages")), "told why, its uid being known");

    // A third agent's round trip orders after anything the two could have
    // sent upstream: the server saw no connect from them.
    let mut witness = h.agent_with(tenant(&h, "c")).await;
    round_trip(&mut witness).await;
    let state = h.server.state();
    let forged: Vec<_> =
        state.connect_requests[connects_before..].iter().filter(|(_, r)| r.remote_address == "10.9.9.9:4444").collect();
    assert!(forged.is_empty(), "forged connects reached the server: {forged:?}");
    assert_eq!(state.connect_requests.len(), connects_before + 2, "only the two real agents' handshakes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_messages_of_other_capabilities_still_pass() {
    let h = one_link().await;
    let mut agent = h.agent_with(tenant(&h, "a")).await;
    let msg = AgentToServer {
        custom_message: Some(CustomMessage {
            capability: "io.example.other".into(),
            r#type: CONNECT.into(),
            data: Bytes::new(),
        }),
        ..Default::default()
    };
    agent.send(msg).await.unwrap();
    let uid = agent.uid().as_bytes().clone();
    h.server
        .wait_until(T, |s| {
            s.agent(&uid).is_some_and(|a| a.last.custom_message.as_ref().is_some_and(|m| m.capability != CAPABILITY))
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_sees_hop_by_hop_or_gateway_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = one_link().await;
    // A raw upgrade, so every header is exactly what an agent could send.
    let mut tcp = tokio::net::TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    let request = "GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\n\
        Connection: Upgrade, X-Drop-Me\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Authorization: Secret-Key a\r\nX-Opamp-Gateway-Connection-Id: upstream-9\r\n\
        Proxy-Authorization: Basic c2VjcmV0\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\n\
        X-Drop-Me: 1\r\nX-Keep-Me: 2\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(T, tcp.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 101", "upgraded");

    let state = h.server.state();
    let (_, request) = state.connect_requests.last().expect("a connect request");
    let names: Vec<&str> = request.headers.keys().map(String::as_str).collect();
    for gone in [
        "X-Opamp-Gateway-Connection-Id",
        "Proxy-Authorization",
        "Te",
        "Keep-Alive",
        "Connection",
        "Upgrade",
        "X-Drop-Me",
        "Host",
    ] {
        assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("Sec-Websocket-")), "{names:?}");
    assert_eq!(names, ["Authorization", "X-Keep-Me"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_bad_request_before_the_close() {
    let h = one_link().await;
    let mut agent = h.agent_with(tenant(&h, "a")).await;
    agent.send_raw(Message::Binary(Bytes::from_static(&[0x00, 0x0a, 0x05, 0x01]))).await.unwrap();
    let reply = agent.recv(T).await.expect("an error_response first");
    let e = reply.error_response.expect("error_response");
    assert_eq!(e.r#type, opamp_gateway::protocol::proto::ServerErrorResponseType::BadRequest as i32);
    assert_eq!(&reply.instance_uid, agent.uid().as_bytes(), "addressed to the agent");
    assert_ne!(reply.capabilities, 0, "a first message carries capabilities");
    assert_eq!(agent.recv_close(T).await.unwrap().code, Some(1007));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_unavailable_with_retry_info() {
    let h = one_link().await;
    let mut agent = h.agent_with(tenant(&h, "a")).await;
    let Harness { server: _server, gateway } = h;
    let closing = tokio::spawn(gateway.shutdown());
    let reply = agent.recv(T).await.expect("an error_response before the close");
    let e = reply.error_response.expect("error_response");
    assert_eq!(e.r#type, opamp_gateway::protocol::proto::ServerErrorResponseType::Unavailable as i32);
    assert!(matches!(
        e.details,
        Some(opamp_gateway::protocol::proto::server_error_response::Details::RetryInfo(r)) if r.retry_after_nanoseconds > 0
    ));
    assert_eq!(agent.recv_close(T).await.unwrap().code, Some(1001));
    closing.await.unwrap();
}

/// `listener.downstream_gateways` by client certificate: a connection whose
/// verified certificate names the trusted SAN may speak for several uids; one
/// with another certificate is an ordinary agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_client_certificate_makes_a_gateway() {
    use opamp_gateway::config::{GatewayRule, ServerTlsConfig};
    use opamp_gateway::protocol::InstanceUid;
    use opamp_gateway::sim::server::ReferenceServer;

    let pki = crate::tls::Pki::new();
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let leaf = pki.leaf(&["localhost"], false);
    let mut cfg = crate::common::config(&server.url());
    cfg.server.connections = 1;
    cfg.listener.tls = Some(ServerTlsConfig {
        cert_file: Some(pki.write("gw.pem", &leaf.cert)),
        key_file: Some(pki.write("gw.key", &leaf.key)),
        client_ca_file: Some(pki.write("ca.pem", &pki.ca_pem())),
        ..Default::default()
    });
    cfg.listener.downstream_gateways.trusted =
        vec![GatewayRule { header: None, client_cert_san: Some("gw-east.internal".into()) }];
    let g = opamp_gateway::Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(1, T).await);
    let url = format!("wss://localhost:{}/v1/opamp", g.listen_addr().port());
    let connect = |san: &str| {
        let mut opts = AgentOptions::new(url.clone());
        opts.tls = Some(pki.client(Some(&pki.leaf(&[san], true))));
        SimAgent::connect(opts)
    };

    let mut gateway = connect("gw-east.internal").await.unwrap();
    round_trip(&mut gateway).await;
    let second = InstanceUid::from_uuid(uuid::Uuid::new_v4());
    gateway.send(AgentToServer { instance_uid: second.as_bytes().clone(), ..Default::default() }).await.unwrap();
    let reply = gateway.recv(T).await.unwrap();
    assert_eq!(&reply.instance_uid, second.as_bytes(), "a second uid is routed back to the gateway");

    let mut agent = connect("agent-7.internal").await.unwrap();
    round_trip(&mut agent).await;
    agent.send(AgentToServer { instance_uid: second.as_bytes().clone(), ..Default::default() }).await.unwrap();
    assert_eq!(agent.recv_close(T).await.unwrap().code, Some(1008), "an ordinary agent: one uid");
    g.shutdown().await;
}

/// A deployment whose server authenticates by another header names it in
/// `listener.credential_headers`; two tenants then differ, and one cannot
/// take the other's uid over (by default that header is not a credential,
/// so both would look like the same credential-less agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_headers_are_configurable() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.connections = 1;
        c.listener.credential_headers = vec!["X-Tenant-Key".into()];
    })
    .await;
    let mut victim = h.agent_with(h.agent_options().header("X-Tenant-Key", "tenant-a")).await;
    let mut opts = h.agent_options().header("X-Tenant-Key", "tenant-b");
    opts.uid = victim.uid().clone();
    let mut attacker = SimAgent::connect(opts).await.unwrap();
    let report = attacker.status_report();
    attacker.send(report).await.unwrap();
    assert_eq!(closed_by_gateway(&mut attacker).await.0, Some(1008), "uid_in_use, not a takeover");
    round_trip(&mut victim).await;
}
