//! The listener at the boundary: header and idle deadlines, the socket
//! budget, the per-source cap on connections that are not agents yet, and
//! `listener.endpoint` forms.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use opamp_gateway::config::{Config, ServerTlsConfig};
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::ReferenceServerConfig;
use opamp_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{config, skip, Harness, T};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(600);

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Reads until the gateway closes the socket (EOF or reset), within `T`.
async fn closed_by_gateway(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(T, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closes the connection");
    got
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// An agent that connects once the gateway has room again (closing sockets
/// return their permits asynchronously).
async fn agent_when_admitted(opts: impl Fn() -> AgentOptions) -> SimAgent {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match SimAgent::connect(opts()).await {
            Ok(a) => return a,
            Err(AgentError::Rejected { status: 503 | 429, .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("agent not admitted: {e}"),
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_after_header_timeout() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| c.listener.header_timeout = SHORT).await;
    let addr = h.gateway.listen_addr();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Served in order: once a later connection is answered, the silent
    // ones' deadlines are running.
    assert!(request(&mut TcpStream::connect(addr).await.unwrap()).await.starts_with("HTTP/1.1 405"));
    skip(SHORT).await;
    for tcp in &mut silent {
        assert!(closed_by_gateway(tcp).await.is_empty(), "closed without an answer");
    }
    h.agent().await; // agents still connect
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_trickling_headers_is_closed() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| c.listener.header_timeout = SHORT).await;
    let tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // One header line every 50 ms, for as long as the gateway listens.
    let trickle = tokio::spawn(async move {
        wr.write_all(b"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\n").await?;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wr.write_all(format!("X-Slow-{i}: still here\r\n").as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(T, rd.read(&mut buf)).await.expect("the gateway closes the trickling connection");
    assert!(matches!(n, Ok(0) | Err(_)), "no answer, just a close: {n:?}");
    trickle.abort();
}

async fn request(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, tcp.read(&mut buf)).await.expect("answered").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn idle_timeout_closes_keep_alive_connections() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.header_timeout = LONG;
        c.listener.idle_timeout = SHORT;
    })
    .await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    assert!(request(&mut tcp).await.starts_with("HTTP/1.1 405"), "a plain GET is answered and kept alive");
    skip(SHORT).await;
    assert!(closed_by_gateway(&mut tcp).await.is_empty());
}

#[tokio::test]
async fn keep_alive_wait_is_idle_timeout_not_header_timeout() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.header_timeout = Duration::from_millis(400);
        c.listener.idle_timeout = LONG;
    })
    .await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    assert!(request(&mut tcp).await.starts_with("HTTP/1.1 405"));
    // Nothing signals "still open": let well past header_timeout pass, then use it.
    skip(Duration::from_millis(1200)).await;
    assert!(request(&mut tcp).await.starts_with("HTTP/1.1 405"), "the idle connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_503_and_retry_after() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.max_connections = 3;
        c.listener.retry_after = Duration::from_secs(9);
        c.listener.header_timeout = LONG;
    })
    .await;
    let mut agents = vec![h.agent().await, h.agent().await];
    let _silent = TcpStream::connect(h.gateway.listen_addr()).await.unwrap(); // not an agent, still a socket
    match SimAgent::connect(h.agent_options()).await {
        Err(AgentError::Rejected { status: 503, headers }) => assert_eq!(header(&headers, "retry-after"), Some("9")),
        other => panic!("expected a 503, got {:?}", other.map(|_| ())),
    }
    // A raw client sees a whole HTTP answer, then the close.
    let mut raw = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    raw.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(closed_by_gateway(&mut raw).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 9\r\n"), "{answer}");

    // An agent leaving frees its socket's place.
    agents.pop().unwrap().drop_abruptly();
    agents.push(agent_when_admitted(|| h.agent_options()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_more_than_its_share_of_connecting_sockets() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.max_handshaking_per_source = 2;
        c.listener.header_timeout = LONG;
    })
    .await;
    let addr = h.gateway.listen_addr();
    let here = Ipv4Addr::new(127, 0, 0, 1);
    // Agents are not "connecting" any more: they do not use up the share.
    let _agents = [h.agent().await, h.agent().await, h.agent().await];
    let mut silent = vec![connect_from(here, addr).await, connect_from(here, addr).await];
    let mut third = connect_from(here, addr).await;
    third.write_all(b"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(closed_by_gateway(&mut third).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 30\r\n"), "{answer}");

    // Another address has a share of its own.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    assert!(request(&mut other).await.starts_with("HTTP/1.1 405"), "another source is served");

    // Closing a connecting socket returns its place.
    drop(silent.pop());
    agent_when_admitted(|| h.agent_options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_forms_bind_as_go_does() {
    let server = opamp_gateway::sim::server::ReferenceServer::start(Default::default()).await.unwrap();
    for (endpoint, expect_ip) in [("localhost:0", "127.0.0.1"), (":0", "::"), ("[::]:0", "::")] {
        let mut cfg = config(&server.url());
        cfg.listener.endpoint = endpoint.into();
        let g = Gateway::start(&cfg, None).await.unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(g.listen_addr().ip().to_string(), expect_ip, "{endpoint}");
        assert!(g.wait_for_links(cfg.server.connections, T).await);
        let port = g.listen_addr().port();
        // The wildcard takes IPv4 and IPv6 alike.
        let urls: &[String] = if expect_ip == "::" {
            &[format!("ws://127.0.0.1:{port}/v1/opamp"), format!("ws://[::1]:{port}/v1/opamp")]
        } else {
            &[g.agent_url()]
        };
        for url in urls {
            SimAgent::connect(AgentOptions::new(url.clone())).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        tokio::time::timeout(T, g.shutdown()).await.expect("shutdown is bounded");
    }

    let mut cfg = config(&server.url());
    cfg.listener.endpoint = "no-such-host.invalid:0".into();
    let e = Gateway::start(&cfg, None).await.err().expect("an unresolvable name is an error").to_string();
    assert!(e.starts_with("listener.endpoint: cannot resolve \"no-such-host.invalid\""), "{e}");

    // In a collector config the error names the path as written there.
    let yaml = format!(
        "extensions:\n  opampgateway:\n    server: {{ endpoint: \"{}\" }}\n    listener: {{ endpoint: \"127.0.0.1:{}\" }}\n\
         service: {{ extensions: [opampgateway] }}\n",
        server.url(),
        server.addr().port(),
    );
    let mut cfg = Config::from_yaml(&yaml).unwrap();
    cfg.policies = config(&server.url()).policies;
    let e = Gateway::start(&cfg, None).await.err().expect("the port is taken").to_string();
    assert!(e.starts_with("extensions.opampgateway.listener.endpoint: cannot listen on 127.0.0.1:"), "{e}");
}

#[tokio::test]
async fn tls_handshake_has_its_own_deadline_and_refusals_just_close() {
    let pki = crate::tls::Pki::new();
    let leaf = pki.leaf(&["localhost"], false);
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.tls = Some(ServerTlsConfig {
            cert_pem: Some(leaf.cert.clone()),
            key_pem: Some(leaf.key.clone()),
            ..Default::default()
        });
        c.listener.tls_handshake_timeout = SHORT;
        c.listener.header_timeout = LONG;
        c.listener.max_connections = 1;
    })
    .await;
    let addr = h.gateway.listen_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap(); // takes the only place, says nothing
    let mut refused = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_gateway(&mut refused).await.is_empty(), "over the budget a TLS socket is closed unanswered");
    skip(SHORT).await;
    assert!(closed_by_gateway(&mut silent).await.is_empty(), "a silent TLS handshake is abandoned");
}
