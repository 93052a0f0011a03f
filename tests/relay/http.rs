//! Agents that poll with plain HTTP, on the same listener and pool.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_gateway::protocol::proto::{AgentDisconnect, AgentToServer, ServerToAgent};
use opamp_gateway::sim::server::{ConnectMode, ReferenceServerConfig};
use opamp_gateway::Gateway;
use prost::Message;

use crate::common::{config, round_trip, skip, Harness, T};

pub(crate) struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    pub(crate) fn message(&self) -> ServerToAgent {
        assert_eq!(self.status, 200, "body: {:?}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.headers["content-type"], "application/x-protobuf");
        let body = if self.headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..]).read_to_end(&mut out).unwrap();
            Bytes::from(out)
        } else {
            self.body.clone()
        };
        ServerToAgent::decode(body).expect("a bare ServerToAgent (no WebSocket header)")
    }
}

pub(crate) async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post("/v1/opamp").header("host", "gateway");
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        req = req.header(*k, *v);
    }
    if !has_type {
        req = req.header("content-type", "application/x-protobuf");
    }
    let resp = tokio::time::timeout(T, sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

fn status_msg(uid: &[u8; 16]) -> Vec<u8> {
    AgentToServer { instance_uid: Bytes::copy_from_slice(uid), capabilities: 1, ..Default::default() }.encode_to_vec()
}

const KEY: (&str, &str) = ("authorization", "Secret-Key k");

fn keyed() -> ReferenceServerConfig {
    ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_websocket_agents_share_the_listener() {
    let h = Harness::with(keyed(), |c| c.listener.http.response_wait = Duration::from_millis(300)).await;
    let addr = h.gateway.listen_addr();
    let mut ws = h.agent_with(h.agent_options().header("Authorization", "Secret-Key k")).await;

    let uid = [0x11; 16];
    let first = post(addr, &[KEY], status_msg(&uid)).await.message();
    assert_eq!(&first.instance_uid[..], &uid, "the server's reply, addressed to this agent");
    assert!(first.custom_capabilities.is_some(), "capabilities replayed to HTTP agents too");
    assert_eq!(h.server.state().agent(&uid).unwrap().messages, 1);

    // A push between polls waits for the next poll; none is lost.
    for flags in [1, 2] {
        assert!(h.server.push(&uid, ServerToAgent { flags, ..Default::default() }));
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        // Each poll gets one message: two replies and the two pushes, in order.
        let m = post(addr, &[KEY], status_msg(&uid)).await.message();
        assert_eq!(&m.instance_uid[..], &uid);
        seen.push(m.flags);
    }
    assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
    round_trip(&mut ws).await;

    // One handshake for the HTTP agent across all its polls (cached).
    let http_handshakes =
        h.server.state().connect_requests.iter().filter(|(_, r)| r.headers.contains_key("Content-Type")).count();
    assert_eq!(http_handshakes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_both_ways_and_empty_reply_when_server_is_silent() {
    let h = Harness::with(ReferenceServerConfig { reply_to_messages: false, ..Default::default() }, |c| {
        c.listener.http.response_wait = Duration::from_millis(200)
    })
    .await;
    let uid = [0x22; 16];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&status_msg(&uid)).unwrap();
    let r = post(
        h.gateway.listen_addr(),
        &[("content-encoding", "gzip"), ("accept-encoding", "gzip")],
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    let m = r.message();
    assert_eq!(&m.instance_uid[..], &uid, "an empty reply still names the agent");
    assert_eq!(m.remote_config, None);
    assert_eq!(h.server.state().agent(&uid).unwrap().messages, 1, "the gzip body was relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx() {
    let h = Harness::with(Default::default(), |c| c.listener.max_message_size = opamp_gateway::config::ByteSize(1024))
        .await;
    let addr = h.gateway.listen_addr();
    assert_eq!(post(addr, &[], vec![0u8; 4096]).await.status, 413);
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![0u8; 1 << 20]).unwrap();
    assert_eq!(
        post(addr, &[("content-encoding", "gzip")], bomb.finish().unwrap()).await.status,
        413,
        "limit applies after decompression"
    );
    assert_eq!(post(addr, &[], vec![0x0a, 0xff]).await.status, 400);
    assert_eq!(post(addr, &[], AgentToServer::default().encode_to_vec()).await.status, 400, "no instance_uid");
    assert_eq!(post(addr, &[("content-type", "application/json")], status_msg(&[3; 16])).await.status, 415);
    // The gateway is unaffected.
    assert_eq!(post(addr, &[], status_msg(&[4; 16])).await.message().instance_uid[..], [4; 16]);
}

#[tokio::test]
async fn revoked_credentials_stop_working_within_the_cache_ttl() {
    // Longer than `T`: only tokio's clock, skipped below, can expire it.
    let h = Harness::with(keyed(), |c| c.listener.http.auth_cache_ttl = Duration::from_secs(20)).await;
    let addr = h.gateway.listen_addr();
    let uid = [0x33; 16];
    assert_eq!(post(addr, &[KEY], status_msg(&uid)).await.status, 200);
    // Other credentials on a live agent's uid are refused before the server
    // is asked (see a_poll_cannot_read_another_agents_messages); on a new
    // uid they are the server's to judge.
    let connects = h.server.state().connect_requests.len();
    let wrong = post(addr, &[("authorization", "Secret-Key wrong")], status_msg(&uid)).await;
    assert_eq!(wrong.status, 409);
    assert_eq!(h.server.state().connect_requests.len(), connects);
    let wrong = post(addr, &[("authorization", "Secret-Key wrong")], status_msg(&[0x34; 16])).await;
    assert_eq!(wrong.status, 401, "the server's verdict");
    assert_eq!(wrong.headers["x-reject-reason"], "bad key");

    assert_eq!(post(addr, &[KEY], status_msg(&uid)).await.status, 200);
    let mut headers = BTreeMap::new();
    headers.insert("X-Why".to_owned(), "revoked".to_owned());
    h.server.set_connect_mode(ConnectMode::Reject { status: 403, headers });
    skip(Duration::from_secs(20)).await;
    let deadline = tokio::time::Instant::now() + T;
    let revoked = loop {
        let r = post(addr, &[KEY], status_msg(&uid)).await;
        if r.status != 200 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "revocation never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((revoked.status, &revoked.headers["x-why"]), (403, &http::HeaderValue::from_static("revoked")));
}

#[tokio::test]
async fn idle_agents_are_reported_gone_and_goodbyes_release_at_once() {
    // Longer than `T`: only tokio's clock, skipped below, can reach it.
    let h = Harness::with(Default::default(), |c| c.listener.http.idle_timeout = Duration::from_secs(20)).await;
    let addr = h.gateway.listen_addr();
    let quiet = [0x44; 16];
    assert_eq!(post(addr, &[], status_msg(&quiet)).await.status, 200);
    skip(Duration::from_secs(25)).await; // past idle_timeout and the reaper's next tick
    h.server.wait_until(T, |s| s.agent(&quiet).is_some_and(|a| a.disconnected == 1)).await.expect("reported gone");

    let polite = [0x55; 16];
    assert_eq!(post(addr, &[], status_msg(&polite)).await.status, 200);
    let bye = AgentToServer {
        instance_uid: Bytes::copy_from_slice(&polite),
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    };
    assert_eq!(post(addr, &[], bye.encode_to_vec()).await.message().instance_uid[..], polite);
    h.server.wait_until(T, |s| s.agent(&polite).is_some_and(|a| a.disconnected == 1)).await.unwrap();
    assert!(!h.gateway.inspect().is_routed(&polite), "released at once, not after the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_is_503_with_retry_after() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let g = Gateway::start(&config(&format!("ws://{closed}/v1/opamp")), None).await.unwrap();
    let r = post(g.listen_addr(), &[], status_msg(&[6; 16])).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "30");
    g.shutdown().await;
}

/// The uid rule holds over HTTP too: a poll naming a live agent's uid with
/// other credentials is refused before the server is asked anything, and the
/// victim's queued messages stay the victim's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cannot_read_another_agents_messages() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| c.server.connections = 1).await;
    let addr = h.gateway.listen_addr();
    let (victim_key, attacker_key) = (("authorization", "Secret-Key a"), ("authorization", "Secret-Key b"));
    let uid = [0x42; 16];
    post(addr, &[victim_key], status_msg(&uid)).await.message();
    assert!(h.server.push(&uid, ServerToAgent { flags: 5, ..Default::default() }));
    let connects = h.server.state().connect_requests.len();

    let stolen = post(addr, &[attacker_key], status_msg(&uid)).await;
    assert_eq!(stolen.status, 409, "body: {:?}", String::from_utf8_lossy(&stolen.body));
    assert_eq!(h.server.state().connect_requests.len(), connects, "no credential check on the attacker's behalf");

    let mut seen = Vec::new();
    while !seen.contains(&5) {
        assert!(seen.len() < 5, "the pushed message never reached the victim: {seen:?}");
        seen.push(post(addr, &[victim_key], status_msg(&uid)).await.message().flags);
    }
}

/// The first reply to an HTTP agent carries the server's capabilities, even
/// when the gateway writes it (nothing from the server within the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesized_first_replies_carry_capabilities() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.connections = 1;
        c.listener.http.response_wait = Duration::from_millis(50);
    })
    .await;
    // The gateway learns the server's capabilities from what it relays.
    let mut ws = h.agent().await;
    round_trip(&mut ws).await;
    let uid = [0x43; 16];
    // A goodbye is answered by the gateway itself, never by the server.
    let bye = AgentToServer {
        instance_uid: Bytes::copy_from_slice(&uid),
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    };
    let reply = post(h.gateway.listen_addr(), &[], bye.encode_to_vec()).await.message();
    assert_eq!(&reply.instance_uid[..], &uid);
    assert_eq!(reply.capabilities, opamp_gateway::sim::server::REPLY_CAPABILITIES, "the server's own capabilities");
}

/// A declared `Content-Length` over the limit is answered 413 at once, not
/// held open waiting for a body that may never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_declared_length_is_refused_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let mut tcp = tokio::net::TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    let head = "POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n\
                Content-Length: 99999999999\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(T, tcp.read_exact(&mut status)).await.expect("answered without a body").unwrap();
    assert_eq!(&status, b"HTTP/1.1 413");
}
