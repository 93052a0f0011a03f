//! The sim pieces against each other, over real loopback sockets, no gateway.
//! A test agent plays the gateway's part where the handshake is concerned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::protocol::handshake::{ConnectRequest, ConnectResult};
use crate::protocol::proto::{AgentToServer, ServerToAgent};
use crate::protocol::scan::ServerFrame;

const WAIT: Duration = Duration::from_secs(5);

async fn server() -> ReferenceServer {
    ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap()
}

async fn agent(url: &str) -> SimAgent {
    SimAgent::connect(AgentOptions::new(url)).await.unwrap()
}

/// Sends a gateway connect request and returns the server's verdict.
async fn ask(link: &mut SimAgent, request_uid: &str, headers: &[(&str, &str)]) -> (ServerToAgent, ConnectResult) {
    let req = ConnectRequest::new(request_uid.into(), "10.0.0.7:40000".into(), headers.iter().copied());
    link.send_raw(Message::Binary(req.to_frame())).await.unwrap();
    let reply = link.recv(WAIT).await.unwrap();
    let result = ConnectResult::from_custom(reply.custom_message.as_ref().unwrap()).unwrap().unwrap();
    (reply, result)
}

#[tokio::test]
async fn handshake_then_status_gets_capabilities_first_and_replies_by_uid() {
    let srv = server().await;
    let opts = AgentOptions::new(srv.url()).header("X-Opamp-Gateway-Connection-Id", "upstream-0");
    let mut link = SimAgent::connect(opts).await.unwrap();

    let (reply, result) = ask(&mut link, "req-1", &[("User-Agent", "otelcol")]).await;
    assert_eq!(result, ConnectResult { request_uid: "req-1".into(), accept: true, ..Default::default() });
    let caps = reply.custom_capabilities.expect("first message on a connection carries capabilities");
    assert_eq!(caps.capabilities, vec!["io.opamp-gateway.reference"]);

    let status = link.status_report();
    link.send(status).await.unwrap();
    let reply = link.recv(WAIT).await.unwrap();
    assert_eq!(&reply.instance_uid, link.uid().as_bytes());
    assert_eq!(reply.capabilities, server::REPLY_CAPABILITIES);
    assert!(reply.custom_capabilities.is_none(), "only the first message carries them");

    let state = srv.state();
    assert_eq!(state.open_connections, 1);
    let conn = &state.connections[0];
    assert_eq!(conn.header("x-opamp-gateway-connection-id"), Some("upstream-0"));
    assert_eq!(conn.path, "/v1/opamp");
    assert_eq!(conn.messages, 2);
    assert_eq!(state.connect_requests.len(), 1);
    assert_eq!(state.connect_requests[0].1.headers["User-Agent"], vec!["otelcol"]);
    assert_eq!(state.total_messages, 1, "connect requests are not agent messages");
    let rec = state.agent(link.uid().as_bytes()).unwrap();
    assert_eq!((rec.conn_id, rec.messages), (0, 1));
    assert_eq!(rec.last.agent_description.as_ref().unwrap().identifying_attributes.len(), 3);
    assert_eq!(rec.last.sequence_num, 0);
}

#[tokio::test]
async fn secret_key_decides_and_connect_mode_overrides() {
    let cfg = ReferenceServerConfig { secret_key: Some("s3cret".into()), ..Default::default() };
    let srv = ReferenceServer::start(cfg).await.unwrap();
    let mut link = agent(&srv.url()).await;

    let (_, r) = ask(&mut link, "no-key", &[]).await;
    assert!(!r.accept);
    assert_eq!(r.reject_status(), 401);
    assert_eq!(r.response_headers["X-Reject-Reason"], "bad key");

    // Header names arrive canonicalised, but any case must work.
    let (_, r) = ask(&mut link, "good", &[("authorization", "Secret-Key s3cret")]).await;
    assert!(r.accept);
    assert_eq!(r.http_status_code, 0);

    let headers = BTreeMap::from([("Retry-After".to_string(), "7".to_string())]);
    srv.set_connect_mode(ConnectMode::Reject { status: 503, headers });
    let (_, r) = ask(&mut link, "busy", &[("Authorization", "Secret-Key s3cret")]).await;
    assert_eq!((r.accept, r.http_status_code), (false, 503));
    assert_eq!(r.response_headers["Retry-After"], "7");

    // Ignore: no answer. Messages on one connection are answered in order, so
    // the status reply arriving first proves the connect was dropped.
    srv.set_connect_mode(ConnectMode::Ignore);
    let req = ConnectRequest::new("ignored".into(), "10.0.0.7:1".into(), []);
    link.send_raw(Message::Binary(req.to_frame())).await.unwrap();
    link.send(AgentToServer::default()).await.unwrap();
    let reply = link.recv(WAIT).await.unwrap();
    assert!(reply.custom_message.is_none());
    assert_eq!(&reply.instance_uid, link.uid().as_bytes());

    let state = srv.state();
    assert_eq!(state.connect_requests.len(), 4);
    assert_eq!((state.connects_accepted, state.connects_rejected), (1, 2));
}

#[tokio::test]
async fn push_reaches_the_connection_where_the_uid_was_last_seen() {
    let srv = server().await;
    let mut a = agent(&srv.url()).await;
    let mut b = agent(&srv.url()).await;
    assert!(!srv.push(a.uid().as_bytes(), ServerToAgent::default()), "unknown uid");

    a.send(AgentToServer::default()).await.unwrap();
    b.send(AgentToServer::default()).await.unwrap();
    a.recv(WAIT).await.unwrap();
    b.recv(WAIT).await.unwrap();

    let pushed = ServerToAgent { flags: 1, ..Default::default() };
    assert!(srv.push(b.uid().as_bytes(), pushed));
    let got = b.recv(WAIT).await.unwrap();
    assert_eq!((&got.instance_uid, got.flags), (b.uid().as_bytes(), 1));

    // Raw pushes go out verbatim, so tests can feed the gateway anything.
    let conn_b = srv.state().agent(b.uid().as_bytes()).unwrap().conn_id;
    assert!(srv.push_raw(conn_b, bytes::Bytes::from_static(&[0x00, 0x30, 0x02])));
    assert_eq!(b.recv(WAIT).await.unwrap().flags, 2);
}

#[tokio::test]
async fn wait_until_wakes_on_change_and_times_out() {
    let srv = server().await;
    let short = Duration::from_millis(50);
    assert_eq!(srv.wait_until(short, |s| s.total_messages > 0).await, Err(WaitTimeout(short)));

    let mut a = agent(&srv.url()).await;
    let waiter = srv.wait_until(WAIT, |s| s.total_messages == 2);
    let sender = async {
        a.send(AgentToServer::default()).await.unwrap();
        a.send(AgentToServer::default()).await.unwrap();
    };
    let (waited, ()) = tokio::join!(waiter, sender);
    waited.unwrap();
}

#[tokio::test]
async fn legacy_frames_and_goodbyes_are_recorded() {
    let srv = server().await;
    let opts = AgentOptions { legacy_frames: true, ..AgentOptions::new(srv.url()) };
    let mut a = SimAgent::connect(opts).await.unwrap();
    let uid = a.uid().as_bytes().to_vec();
    a.send(AgentToServer::default()).await.unwrap();
    a.recv(WAIT).await.unwrap();
    a.say_goodbye().await.unwrap();

    srv.wait_until(WAIT, |s| s.open_connections == 0).await.unwrap();
    let state = srv.state();
    let rec = state.agent(&uid).unwrap();
    assert_eq!((rec.messages, rec.disconnected), (2, 1));
    assert_eq!(rec.last.sequence_num, 1);
    assert_eq!(state.total_disconnects, 1);
    assert_eq!(state.malformed_messages, 0);
    assert!(!state.connections[0].open);

    // Garbage is counted, not fatal.
    let mut b = agent(&srv.url()).await;
    b.send_raw(Message::Binary(bytes::Bytes::from_static(&[0x00, 0xff]))).await.unwrap();
    b.send(AgentToServer::default()).await.unwrap();
    b.recv(WAIT).await.unwrap();
    assert_eq!(srv.state().malformed_messages, 1);
}

#[tokio::test]
async fn drop_connections_and_refusal_simulate_link_loss() {
    let srv = server().await;
    let mut a = agent(&srv.url()).await;
    a.send(AgentToServer::default()).await.unwrap();
    a.recv(WAIT).await.unwrap();

    srv.drop_connections();
    match a.recv(WAIT).await {
        Err(AgentError::Closed { code: None, .. }) => {}
        other => panic!("expected an abrupt close, got {other:?}"),
    }
    srv.wait_until(WAIT, |s| s.open_connections == 0).await.unwrap();

    srv.set_accepting(false);
    let refused = SimAgent::connect(AgentOptions::new(srv.url())).await;
    assert!(matches!(refused, Err(AgentError::Closed { code: None, .. })), "{:?}", refused.err());
    assert_eq!(srv.state().refused_connections, 1);

    srv.set_accepting(true);
    let mut b = agent(&srv.url()).await;
    b.send(AgentToServer::default()).await.unwrap();
    let reply = b.recv(WAIT).await.unwrap();
    assert!(reply.custom_capabilities.is_some(), "a new connection gets capabilities again");
    assert_eq!(srv.state().open_connections, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn rejected_upgrade_exposes_status_and_headers() {
    // A bare HTTP responder standing in for a gateway that says "not now".
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        let resp = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n";
        tcp.write_all(resp.as_bytes()).await.unwrap();
    });
    match SimAgent::connect(AgentOptions::new(format!("ws://{addr}/v1/opamp"))).await {
        Err(AgentError::Rejected { status, headers }) => {
            assert_eq!(status, 503);
            assert!(headers.iter().any(|(n, v)| n == "retry-after" && v == "5"), "{headers:?}");
        }
        other => panic!("expected a rejection, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn close_codes_are_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let frame = CloseFrame { code: CloseCode::Size, reason: "too big".into() };
        let _ = futures_util::SinkExt::send(&mut ws, Message::Close(Some(frame))).await;
    });
    let mut a = agent(&format!("ws://{addr}/")).await;
    match a.recv(WAIT).await {
        Err(AgentError::Closed { code: Some(1009), reason }) => assert_eq!(reason, "too big"),
        other => panic!("expected 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_server_and_agent() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cfg = ReferenceServerConfig {
        tls: Some((cert_pem.clone().into_bytes(), cert.signing_key.serialize_pem().into_bytes())),
        ..Default::default()
    };
    let srv = ReferenceServer::start(cfg).await.unwrap();
    assert!(srv.url().starts_with("wss://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let opts = AgentOptions { tls: Some(Arc::new(client)), ..AgentOptions::new(srv.url()) };
    let mut a = SimAgent::connect(opts).await.unwrap();
    a.send(a.status_report()).await.unwrap();
    let reply = a.recv(WAIT).await.unwrap();
    assert_eq!(&reply.instance_uid, a.uid().as_bytes());
    // The sim's own parser agrees with the one the gateway uses.
    let frame = ServerFrame::parse_payload(prost::Message::encode_to_vec(&reply).into()).unwrap();
    assert!(frame.has_custom_capabilities);
}

#[tokio::test]
async fn fleet_reports_heartbeats_and_says_goodbye() {
    let srv = server().await;
    let cfg = FleetConfig {
        url: srv.url(),
        agents: 20,
        heartbeat: Duration::from_millis(50),
        connect_concurrency: 4,
        ..Default::default()
    };
    let fleet = Fleet::start(cfg).await;
    assert_eq!(fleet.stats().connected, 20);
    // Status report + at least one heartbeat each, all answered.
    fleet.wait_until(WAIT, |s| s.replies >= 40).await.unwrap();
    srv.wait_until(WAIT, |s| s.agents.len() == 20 && s.agents.values().all(|a| a.messages >= 2)).await.unwrap();
    assert!(srv.state().agents.values().all(|a| a.last.agent_description.is_none()), "heartbeats are bare");

    fleet.stop().await;
    srv.wait_until(WAIT, |s| s.total_disconnects == 20 && s.open_connections == 0).await.unwrap();
}

#[tokio::test]
async fn fleet_reconnects_after_link_loss() {
    let srv = server().await;
    let cfg = FleetConfig {
        url: srv.url(),
        agents: 5,
        heartbeat: Duration::from_secs(60),
        reconnect_delay: Some(Duration::from_millis(10)),
        ..Default::default()
    };
    let fleet = Fleet::start(cfg).await;
    srv.wait_until(WAIT, |s| s.agents.len() == 5).await.unwrap();
    srv.drop_connections();
    fleet.wait_until(WAIT, |s| s.errors == 5 && s.reconnects == 5 && s.connected == 5).await.unwrap();
    // Each agent re-sent its status report on the new connection.
    srv.wait_until(WAIT, |s| s.agents.values().all(|a| a.messages == 2)).await.unwrap();
}
