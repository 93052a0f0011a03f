//! `listener.proxy_protocol`: the PROXY header's source, not the TCP peer,
//! is the agent's address the server is told; without a header, no agent.

use std::net::Ipv6Addr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opamp_gateway::config::ServerTlsConfig;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::server::ReferenceServerConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Harness, T};
use crate::tls::Pki;

const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

async fn proxied_gateway() -> Harness {
    Harness::with(ReferenceServerConfig::default(), |c| c.listener.proxy_protocol = true).await
}

/// A v2 PROXY header for TCP over IPv6, with a NOOP TLV.
fn v2_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut body = src.octets().to_vec();
    body.extend(Ipv6Addr::LOCALHOST.octets());
    body.extend(sport.to_be_bytes());
    body.extend(4320u16.to_be_bytes());
    body.extend([0x04, 0x00, 0x02, 0xAA, 0xBB]);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x21]);
    h.extend((body.len() as u16).to_be_bytes());
    h.extend(body);
    h
}

/// Upgrades over `io` and makes one round trip through the server.
async fn agent_round_trip<S: AsyncRead + AsyncWrite + Unpin>(io: S, url: &str) {
    let (mut ws, _) = tokio_tungstenite::client_async(url, io).await.expect("the upgrade succeeds");
    let uid = uuid::Uuid::new_v4().as_bytes().to_vec();
    let msg = AgentToServer { instance_uid: uid.into(), ..Default::default() };
    ws.send(Message::Binary(framing::encode(&msg))).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("a reply").expect("open").unwrap() {
            Message::Binary(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn server_saw(h: &Harness, remote: &str) {
    let seen = h.server.wait_until(T, |s| s.connect_requests.iter().any(|(_, r)| r.remote_address == remote)).await;
    assert!(seen.is_ok(), "the server was told {remote}: {:?}", h.server.state().connect_requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_header_source_is_the_agents_address() {
    let h = proxied_gateway().await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 4320\r\n").await.unwrap();
    agent_round_trip(tcp, &h.gateway.agent_url()).await;
    server_saw(&h, "192.0.2.7:56324").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_source_is_the_agents_address() {
    let h = proxied_gateway().await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    tcp.write_all(&v2_tcp6("2001:db8::7".parse().unwrap(), 40000)).await.unwrap();
    agent_round_trip(tcp, &h.gateway.agent_url()).await;
    server_saw(&h, "[2001:db8::7]:40000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_local_keeps_the_tcp_peer() {
    let h = proxied_gateway().await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    let peer = tcp.local_addr().unwrap();
    let mut local = V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0x00, 0x00]);
    tcp.write_all(&local).await.unwrap();
    agent_round_trip(tcp, &h.gateway.agent_url()).await;
    server_saw(&h, &peer.to_string()).await;
}

/// Reads until the gateway closes; what it answered, if anything.
async fn answer(mut tcp: TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut got)).await.expect("the gateway closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

const UPGRADE: &str = "GET /v1/opamp HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                       Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_header_no_agent() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.proxy_protocol = true;
        c.listener.header_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = h.gateway.listen_addr();

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(answer(tcp).await, "", "a request without a header is closed unanswered");

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 99999\r\n").await.unwrap();
    assert_eq!(answer(tcp).await, "", "an invalid header is closed unanswered");

    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(answer(tcp).await, "", "a silent connection is closed at header_timeout");

    assert!(h.server.state().connect_requests.is_empty(), "the server was asked about none of them");
    // The listener still serves agents that do send a header.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.8 127.0.0.1 1 2\r\n").await.unwrap();
    agent_round_trip(tcp, &h.gateway.agent_url()).await;
    server_saw(&h, "192.0.2.8:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_off_a_header_is_a_bad_request() {
    let h = Harness::start().await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    tcp.write_all(format!("PROXY TCP4 192.0.2.7 127.0.0.1 56324 4320\r\n{UPGRADE}").as_bytes()).await.unwrap();
    let got = answer(tcp).await;
    assert!(got.starts_with("HTTP/1.1 400"), "the header is not HTTP: {got:?}");
    assert!(h.server.state().connect_requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_comes_before_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"], false);
    let (cert, key) = (pki.write("gw.pem", &leaf.cert), pki.write("gw.key", &leaf.key));
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.proxy_protocol = true;
        c.listener.tls = Some(ServerTlsConfig { cert_file: Some(cert), key_file: Some(key), ..Default::default() });
    })
    .await;
    let mut tcp = TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 443 4320\r\n").await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client(None));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS after the header");
    let url = format!("wss://localhost:{}/v1/opamp", h.gateway.listen_addr().port());
    agent_round_trip(tls, &url).await;
    server_saw(&h, "192.0.2.9:443").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_share_is_the_headers_source() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.listener.proxy_protocol = true;
        c.listener.max_handshaking_per_source = 1;
    })
    .await;
    let addr = h.gateway.listen_addr();
    // Holds 192.0.2.1's one slot: a request head that never ends.
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\nGET /v1/opamp HTTP/1.1\r\n").await.unwrap();

    // Same TCP peer (127.0.0.1), another source: not counted against it.
    let mut other = TcpStream::connect(addr).await.unwrap();
    other.write_all(b"PROXY TCP4 192.0.2.2 127.0.0.1 1 2\r\n").await.unwrap();
    agent_round_trip(other, &h.gateway.agent_url()).await;

    let mut same = TcpStream::connect(addr).await.unwrap();
    same.write_all(format!("PROXY TCP4 192.0.2.1 127.0.0.1 3 2\r\n{UPGRADE}").as_bytes()).await.unwrap();
    let got = answer(same).await;
    assert!(got.starts_with("HTTP/1.1 429"), "192.0.2.1 has no slot left: {got:?}");
    drop(held);
}
