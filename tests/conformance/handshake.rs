//! The connect / connectResult handshake (reference: server.go's
//! handleRequest and handleAuthResponse, gateway_test.go's test server and
//! TestGatewayAuthTimeout).

use std::collections::BTreeMap;
use std::time::Duration;

use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ConnectMode, JsonEncoding};
use opamp_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{both_encodings, config, header, server_config, Harness, T};

both_encodings!(
    accepted_agent_round_trips,
    silent_server_answers_504_with_retry_after_30,
    rejection_carries_status_and_headers_or_401,
    unreadable_connect_result_answers_502_at_once,
);

/// Restates the reference test server's `respondToConnect`: it accepts with
/// status 200 and no headers, which `encoding/json` writes as
/// `"response_headers":null`. These are its exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_test_servers_accept_bytes_admit_the_agent() {
    let h = Harness::start(JsonEncoding::Go, 1).await;
    h.server.set_connect_mode(ConnectMode::Raw(
        r#"{"request_uid":"{request_uid}","accept":true,"http_status_code":200,"response_headers":null}"#.into(),
    ));
    let mut a = SimAgent::connect(h.agent_options()).await.expect("accepted");
    h.announce(&mut a).await;
    assert_eq!(h.loads(), vec![1]);
}

/// Every scenario of the reference connects agents through the handshake;
/// this is the plain case, in both encodings (Go: `null` headers, no
/// `request_uid` omitted since it is set).
async fn accepted_agent_round_trips(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    let got = h.push(&mut a, Default::default()).await;
    assert!(got.custom_message.is_none(), "the handshake answer is the gateway's, not the agent's");
    assert_eq!(h.server.state().connects_accepted, 1);
}

/// Restates TestGatewayAuthTimeout: a server that never answers the connect
/// gets the agent a 504 with `Retry-After: 30` once the auth timeout passes.
/// Difference: the reference runs the handshake for any request, even a plain
/// GET; ours answers a request that is neither a WebSocket upgrade nor an
/// OpAMP POST with 405 straight away, without asking the server.
async fn silent_server_answers_504_with_retry_after_30(json: JsonEncoding) {
    let h = Harness::with(server_config(json), |c| {
        c.server.connections = 1;
        c.server.auth_timeout = Duration::from_millis(500);
    })
    .await;
    h.server.set_connect_mode(ConnectMode::Ignore);
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 504, headers }) => assert_eq!(header(&headers, "retry-after"), Some("30")),
        other => panic!("expected a 504, got {:?}", other.map(|_| ())),
    }
    assert_eq!(h.gateway.inspect().pending_handshakes(), 0, "the timed-out handshake is forgotten");
    assert_eq!(h.loads(), vec![0], "and holds no link");

    let status = plain_get(h.gateway.listen_addr()).await;
    assert!(status.starts_with("HTTP/1.1 405"), "a plain GET is not an agent: {status}");
    assert_eq!(h.server.state().connect_requests.len(), 1, "it never reached the server");
}

/// The reject path of the reference's handleRequest: the server's status and
/// response headers, 401 when the status is 0.
async fn rejection_carries_status_and_headers_or_401(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let why = BTreeMap::from([("X-Why".to_owned(), "banned".to_owned())]);
    h.server.set_connect_mode(ConnectMode::Reject { status: 403, headers: why });
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 403, headers }) => assert_eq!(header(&headers, "x-why"), Some("banned")),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
    // Go mode writes these headers as `null`.
    h.server.set_connect_mode(ConnectMode::Reject { status: 0, headers: BTreeMap::new() });
    assert!(matches!(SimAgent::connect(h.agent_options()).await, Err(AgentError::Rejected { status: 401, .. })));
    assert_eq!(h.loads(), vec![0], "rejected agents hold no link");
}

/// Not in the reference, which logs a connectResult it cannot unmarshal and
/// leaves the agent to its 30 s timeout: we answer 502 as soon as the bad
/// answer arrives (the auth timeout here is the default 30 s, so a 504 would
/// mean we waited). The encoding cannot matter: the server sends raw bytes.
async fn unreadable_connect_result_answers_502_at_once(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    h.server.set_connect_mode(ConnectMode::Raw(r#"{"request_uid":"{request_uid}","accept":"yes"}"#.into()));
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 502, headers }) => assert!(header(&headers, "retry-after").is_some()),
        other => panic!("expected a 502, got {:?}", other.map(|_| ())),
    }
    assert_eq!(h.gateway.inspect().pending_handshakes(), 0);
    // The link is fine: the next agent gets in.
    h.server.set_connect_mode(ConnectMode::Normal);
    h.agent().await;
}

/// The reference ignores a connectResult without `request_uid` (debug log);
/// so do we (a warning and a `malformed` drop): nobody can be told, so the
/// agent waits out the auth timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_result_without_request_uid_is_dropped() {
    let h = Harness::with(server_config(JsonEncoding::Go), |c| {
        c.server.connections = 1;
        c.server.auth_timeout = Duration::from_millis(300);
    })
    .await;
    h.server
        .set_connect_mode(ConnectMode::Raw(r#"{"accept":true,"http_status_code":200,"response_headers":null}"#.into()));
    assert!(matches!(SimAgent::connect(h.agent_options()).await, Err(AgentError::Rejected { status: 504, .. })));
    assert_eq!(h.server.state().open_connections, 1, "the link survives");
}

/// The reference's handleRequest when no upstream connection is assigned:
/// 503 with `Retry-After: 30`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_answers_503_with_retry_after_30() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let g = Gateway::start(&config(&format!("ws://{closed}/v1/opamp")), None).await.unwrap();
    match SimAgent::connect(AgentOptions::new(g.agent_url())).await {
        Err(AgentError::Rejected { status: 503, headers }) => assert_eq!(header(&headers, "retry-after"), Some("30")),
        other => panic!("expected a 503, got {:?}", other.map(|_| ())),
    }
    tokio::time::timeout(T, g.shutdown()).await.expect("shutdown is bounded");
}

/// The status line the gateway answers a bare `GET /` with.
async fn plain_get(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out)).await.expect("answered").unwrap();
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_owned()
}
