//! Start and shutdown: a failed start leaves nothing running; shutdown lets
//! what is in flight on agent connections finish, and does not wait for
//! connections that have nothing in flight.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::policy::config::PoliciesConfig;
use opamp_gateway::protocol::handshake::ConnectResult;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::{ConnectMode, ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{config, eventually, Harness, T};
use crate::http::post;

/// How long an absence is watched for: a link dials loopback in
/// milliseconds, so one started by mistake shows up well within it.
const QUIET: Duration = Duration::from_millis(500);

/// Starts the shutdown while the handshake `request_uid` waits on the link
/// `conn_id`, checks the listener closes but the link stays up for `what` in
/// flight, then has the server accept it. Returns the shutdown task.
async fn shut_down_then_accept(
    server: &ReferenceServer,
    gateway: Gateway,
    conn_id: u64,
    request_uid: String,
    what: &str,
) -> tokio::task::JoinHandle<()> {
    let addr = gateway.listen_addr();
    let shutdown = tokio::spawn(gateway.shutdown());
    eventually("the listener is closed", || std::net::TcpStream::connect(addr).is_err()).await;
    assert!(
        server.wait_until(QUIET, |s| s.open_connections == 0).await.is_err(),
        "the link must stay up while {what} is in flight"
    );
    let verdict =
        ConnectResult { request_uid, accept: true, http_status_code: 200, response_headers: Default::default() };
    assert!(server.push_raw(conn_id, verdict.to_frame()), "the link is still there");
    shutdown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_no_upstream_link() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&server.url());
    cfg.listener.endpoint = taken.local_addr().unwrap().to_string();
    assert!(Gateway::start(&cfg, None).await.is_err(), "the listener port is in use");
    assert!(
        server.wait_until(QUIET, |s| !s.connections.is_empty()).await.is_err(),
        "a failed start must not leave links dialing the server: {:?}",
        server.state().connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_metrics_bind_leaves_no_upstream_link() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&server.url());
    cfg.telemetry.metrics.endpoint = Some(taken.local_addr().unwrap().to_string());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    assert!(Gateway::start(&cfg, Some(recorder)).await.is_err(), "the metrics port is in use");
    assert!(server.wait_until(QUIET, |s| !s.connections.is_empty()).await.is_err(), "no link was left dialing");
}

/// A connect handshake in flight when shutdown begins is answered (here:
/// admitted, then closed with 1001 like every agent), not cut by the links
/// closing under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_handshake_in_flight_finish() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.connections = 1;
        c.server.auth_timeout = Duration::from_secs(600);
        c.listener.shutdown_timeout = Duration::from_secs(600);
    })
    .await;
    h.server.set_connect_mode(ConnectMode::Ignore);
    let agent = tokio::spawn(SimAgent::connect(h.agent_options()));
    h.server.wait_until(T, |s| s.connect_requests.len() == 1).await.expect("the handshake reaches the server");
    let (conn_id, request) = h.server.state().connect_requests[0].clone();

    let Harness { server, gateway } = h;
    let shutdown = shut_down_then_accept(&server, gateway, conn_id, request.request_uid, "a handshake").await;
    let mut agent = tokio::time::timeout(T, agent).await.unwrap().unwrap().expect("the agent is admitted");
    assert_eq!(agent.recv_close(T).await.unwrap().code, Some(1001), "then closed as every agent at shutdown");
    drop(agent); // rather than have the session linger for its close reply
    tokio::time::timeout(T, shutdown).await.expect("shutdown completes").unwrap();
    server.wait_until(T, |s| s.open_connections == 0).await.expect("and the link is closed after");
}

/// The same for an HTTP poll: the agent gets the server's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_http_poll_in_flight_finish() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.connections = 1;
        c.server.auth_timeout = Duration::from_secs(600);
        c.listener.shutdown_timeout = Duration::from_secs(600);
    })
    .await;
    h.server.set_connect_mode(ConnectMode::Ignore);
    let addr = h.gateway.listen_addr();
    let uid = Bytes::from_static(&[7; 16]);
    let report = AgentToServer { instance_uid: uid.clone(), sequence_num: 1, ..Default::default() };
    let poll = tokio::spawn(post(addr, &[], report.encode_to_vec()));
    h.server.wait_until(T, |s| s.connect_requests.len() == 1).await.expect("the handshake reaches the server");
    let (conn_id, request) = h.server.state().connect_requests[0].clone();

    let Harness { server, gateway } = h;
    let shutdown = shut_down_then_accept(&server, gateway, conn_id, request.request_uid, "a poll").await;
    let reply = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    assert_eq!(reply.message().instance_uid, uid, "the server's reply to this agent");
    tokio::time::timeout(T, shutdown).await.expect("shutdown completes").unwrap();
}

/// Tracking connections must not make shutdown wait for ones with nothing
/// in flight: a silent socket and a keep-alive connection between requests
/// are closed at once (their timeouts here are far longer than the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_connections() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.header_timeout = Duration::from_secs(3600);
        c.listener.idle_timeout = Duration::from_secs(3600);
        c.listener.shutdown_timeout = Duration::from_secs(3600);
    })
    .await;
    let addr = h.gateway.listen_addr();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(T, kept.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the gateway answers the request");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 405"), "{}", String::from_utf8_lossy(&head));

    tokio::time::timeout(T, h.gateway.shutdown()).await.expect("shutdown does not wait for idle connections");
    for s in [&mut silent, &mut kept] {
        let mut rest = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    }
}

/// The default policy folder is not the repository's `policies/` (the SDK
/// and example sources), so a gateway started from a checkout without a
/// `policies.directory` does not try to load it.
#[test]
fn the_default_policy_directory_is_not_the_sdk_folder() {
    let default = PoliciesConfig::default().directory;
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(&default);
    assert!(!in_repo.exists(), "{} exists in the repository", in_repo.display());
}
