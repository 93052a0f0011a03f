//! Authentication is the server's: connect / connectResult on the agent's link.
//! Each scenario runs against both JSON encodings of the reference server
//! (`::rust`, `::go`): a Go server writes no headers as `null`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use opamp_gateway::sim::agent::{AgentError, SimAgent};
use opamp_gateway::sim::server::{ConnectMode, JsonEncoding, ReferenceServerConfig};
use opamp_gateway::Gateway;

use crate::common::{config, round_trip, skip, Harness, T};

/// Runs `async fn $name(JsonEncoding)` as the tests `$name::rust` and `$name::go`.
macro_rules! both_encodings {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            // Current-thread: `skip` needs it.
            #[tokio::test]
            async fn rust() {
                super::$name(super::JsonEncoding::Rust).await
            }
            #[tokio::test]
            async fn go() {
                super::$name(super::JsonEncoding::Go).await
            }
        }
    )*};
}

both_encodings!(
    accepted_agent_is_announced_on_its_own_link,
    rejection_carries_the_servers_status_and_headers,
    silent_server_means_504_after_auth_timeout,
    unreadable_answer_means_502_at_once,
);

fn keyed(json: JsonEncoding) -> ReferenceServerConfig {
    ReferenceServerConfig { secret_key: Some("s3cret".into()), json, ..Default::default() }
}

/// An agent's connect while the server sits on the connect request: once
/// the server holds it, `auth_timeout` is let pass at once.
async fn connect_past_auth_timeout(h: &Harness, auth_timeout: Duration) -> Result<SimAgent, AgentError> {
    let asked = h.server.state().connect_requests.len();
    let waited = async {
        h.server.wait_until(T, |s| s.connect_requests.len() > asked).await.expect("the server is asked");
        skip(auth_timeout).await;
    };
    tokio::join!(SimAgent::connect(h.agent_options()), waited).0
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

async fn accepted_agent_is_announced_on_its_own_link(json: JsonEncoding) {
    let h = Harness::with(keyed(json), |_| {}).await;
    let opts = h
        .agent_options()
        .header("Authorization", "Secret-Key s3cret")
        .header("x-tenant", "blue")
        .header("X-Multi", "1")
        .header("x-multi", "2");
    let mut a = SimAgent::connect(opts).await.expect("a good key is accepted");
    round_trip(&mut a).await;

    let state = h.server.state();
    let (conn, req) = state.connect_requests.last().cloned().unwrap();
    // Names arrive in Go's canonical form, repeated headers as a list.
    assert_eq!(req.headers["Authorization"], ["Secret-Key s3cret"]);
    assert_eq!(req.headers["X-Tenant"], ["blue"]);
    assert_eq!(req.headers["X-Multi"], ["1", "2"]);
    assert!(!req.headers.contains_key("Host"));
    let remote: SocketAddr = req.remote_address.parse().expect("remote_address is ip:port");
    assert!(remote.ip().is_loopback() && remote.port() != 0);
    assert!(uuid::Uuid::parse_str(&req.request_uid).is_ok());
    // The handshake went over the link the agent's traffic then used.
    assert_eq!(state.agent(a.uid().as_bytes()).unwrap().conn_id, conn);
}

async fn rejection_carries_the_servers_status_and_headers(json: JsonEncoding) {
    let h = Harness::with(keyed(json), |_| {}).await;
    let bad = SimAgent::connect(h.agent_options().header("Authorization", "Secret-Key wrong")).await;
    match bad {
        Err(AgentError::Rejected { status, headers }) => {
            assert_eq!(status, 401);
            assert_eq!(header(&headers, "x-reject-reason"), Some("bad key"));
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }

    let mut why = BTreeMap::new();
    why.insert("X-Why".to_owned(), "banned".to_owned());
    h.server.set_connect_mode(ConnectMode::Reject { status: 403, headers: why });
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 403, headers }) => assert_eq!(header(&headers, "x-why"), Some("banned")),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }

    h.server.set_connect_mode(ConnectMode::Reject { status: 0, headers: BTreeMap::new() });
    assert!(matches!(SimAgent::connect(h.agent_options()).await, Err(AgentError::Rejected { status: 401, .. })));
    assert_eq!(h.loads().iter().sum::<u32>(), 0, "rejected agents hold no link");
}

async fn silent_server_means_504_after_auth_timeout(json: JsonEncoding) {
    let cfg = ReferenceServerConfig { json, ..Default::default() };
    let h = Harness::with(cfg, |c| c.server.auth_timeout = Duration::from_millis(300)).await;
    h.server.set_connect_mode(ConnectMode::Ignore);
    match connect_past_auth_timeout(&h, Duration::from_millis(300)).await {
        Err(AgentError::Rejected { status: 504, headers }) => assert!(header(&headers, "retry-after").is_some()),
        other => panic!("expected a 504, got {:?}", other.map(|_| ())),
    }
    assert_eq!(h.gateway.inspect().pending_handshakes(), 0, "timed-out handshakes are forgotten");
    h.server.set_connect_mode(ConnectMode::Normal);
    h.agent().await;
}

/// A connectResult the gateway cannot read still answers its agent, with a
/// 502, as soon as it arrives: not a 504 after the (default, 30 s) auth
/// timeout. One without a findable request uid can only be dropped.
async fn unreadable_answer_means_502_at_once(json: JsonEncoding) {
    let h = Harness::with(ReferenceServerConfig { json, ..Default::default() }, |_| {}).await;
    h.server.set_connect_mode(ConnectMode::Raw(r#"{"request_uid":"{request_uid}","accept":1}"#.into()));
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 502, headers }) => assert!(header(&headers, "retry-after").is_some()),
        other => panic!("expected a 502, got {:?}", other.map(|_| ())),
    }
    assert_eq!(h.gateway.inspect().pending_handshakes(), 0, "the failed handshake is forgotten");
    assert_eq!(h.loads().iter().sum::<u32>(), 0, "and holds no link");
    h.server.set_connect_mode(ConnectMode::Normal);
    h.agent().await;
}

/// A connectResult without request uid matches no handshake: it is dropped
/// (and logged), the agent waits out the auth timeout, the link is unharmed.
#[tokio::test]
async fn answer_without_request_uid_is_dropped() {
    let h = Harness::with(ReferenceServerConfig { json: JsonEncoding::Go, ..Default::default() }, |c| {
        c.server.auth_timeout = Duration::from_millis(300)
    })
    .await;
    h.server
        .set_connect_mode(ConnectMode::Raw(r#"{"accept":true,"http_status_code":200,"response_headers":null}"#.into()));
    let connect = connect_past_auth_timeout(&h, Duration::from_millis(300)).await;
    assert!(matches!(connect, Err(AgentError::Rejected { status: 504, .. })));
    h.server.set_connect_mode(ConnectMode::Normal);
    h.agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_means_503_with_retry_after() {
    // Nothing listens on the endpoint: the links can never connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = config(&format!("ws://{closed}/v1/opamp"));
    cfg.listener.retry_after = Duration::from_secs(7);
    let g = Gateway::start(&cfg, None).await.unwrap();
    match SimAgent::connect(opamp_gateway::sim::agent::AgentOptions::new(g.agent_url())).await {
        Err(AgentError::Rejected { status: 503, headers }) => assert_eq!(header(&headers, "retry-after"), Some("7")),
        other => panic!("expected a 503, got {:?}", other.map(|_| ())),
    }
    tokio::time::timeout(T, g.shutdown()).await.expect("shutdown is bounded");
}

/// A reject must be a refusal: a 101 or 2xx would tell the agent it was
/// admitted, a 3xx send it elsewhere. Only 4xx/5xx pass; the rest is 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_that_is_no_4xx_or_5xx_becomes_502() {
    let h = Harness::start().await;
    for status in [101, 200, 302] {
        h.server.set_connect_mode(ConnectMode::Reject { status, headers: BTreeMap::new() });
        match tokio::time::timeout(T, SimAgent::connect(h.agent_options())).await.expect("answered") {
            Err(AgentError::Rejected { status: 502, .. }) => {}
            other => panic!("a reject with {status}: expected a 502, got {:?}", other.map(|_| ())),
        }
    }
    h.server.set_connect_mode(ConnectMode::Reject { status: 429, headers: BTreeMap::new() });
    assert!(matches!(SimAgent::connect(h.agent_options()).await, Err(AgentError::Rejected { status: 429, .. })));
    assert_eq!(h.loads().iter().sum::<u32>(), 0, "rejected agents hold no link");
}
