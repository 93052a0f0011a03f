//! `listener.max_buffered_bytes`: agent messages between being read and
//! written upstream share one budget; beyond it WebSocket agents wait unread
//! and HTTP polls get 503, and nothing already read is lost.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_gateway::config::{ByteSize, Config};
use opamp_gateway::protocol::proto::{AgentToServer, CustomMessage};
use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::ReferenceServerConfig;
use prost::Message as _;

use crate::common::{eventually, Harness, T};

const BUDGET: u64 = 64 << 10;
/// Each test message, framed, stays under `listener.max_message_size`.
const MAX_MESSAGE: u64 = 32 << 10;
const BLOB: usize = 30_000;

/// A small budget, and a server link that tolerates a long stall. The
/// server does not answer: these agents never read, and unread replies
/// would close them as slow consumers.
async fn harness() -> Harness {
    let quiet = ReferenceServerConfig { reply_to_messages: false, ..Default::default() };
    Harness::with(quiet, |c| {
        c.listener.max_buffered_bytes = ByteSize(BUDGET);
        c.listener.max_message_size = ByteSize(MAX_MESSAGE);
        c.server.connections = 1;
        c.server.write_timeout = Duration::from_secs(120);
        c.server.keepalive = Duration::from_secs(120);
        c.listener.http.response_wait = Duration::from_millis(50);
    })
    .await
}

/// An agent the server has heard from.
async fn agent(h: &Harness) -> SimAgent {
    let mut a = SimAgent::connect(h.agent_options()).await.expect("agent connects");
    a.send(a.status_report()).await.expect("send");
    let uid = a.uid().as_bytes().to_vec();
    h.server.wait_until(T, |s| s.agent(&uid).is_some()).await.expect("status report arrives");
    a
}

fn blob(n: usize) -> AgentToServer {
    let data = Bytes::from(vec![0x5a; n]);
    let msg = CustomMessage { capability: "io.example.blob".into(), r#type: "blob".into(), data };
    AgentToServer { custom_message: Some(msg), ..Default::default() }
}

/// Sends `n` big messages from a task of its own (its writes may block).
fn flood(mut agent: SimAgent, n: u64) -> tokio::task::JoinHandle<SimAgent> {
    tokio::spawn(async move {
        for _ in 0..n {
            agent.send(blob(BLOB)).await.expect("send");
        }
        agent
    })
}

/// Waits until the server has every message of `agent` (its status report
/// plus `n` more), in the order sent.
async fn all_arrived(h: &Harness, agent: &SimAgent, n: u64) {
    let uid = agent.uid().as_bytes().to_vec();
    h.server
        .wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.messages == 1 + n))
        .await
        .unwrap_or_else(|_| panic!("the server got {:?} of {} messages", h.server.state().agent(&uid), 1 + n));
    assert_eq!(h.server.state().agent(&uid).unwrap().out_of_order, 0, "messages arrived in order");
}

/// Stops the server reading, then floods one agent until the gateway holds
/// a message it has no room for: the budget is full and closed.
async fn stall(h: &Harness, agent: SimAgent, n: u64) -> tokio::task::JoinHandle<SimAgent> {
    h.server.set_reading(false);
    let sender = flood(agent, n);
    let budget = h.gateway.inspect();
    // Both change together, but not atomically: wait for the pair.
    eventually("a message waits for room, and the budget is closed", || {
        budget.buffer_waiting() == 1 && !budget.is_buffer_open()
    })
    .await;
    assert!(budget.buffered_bytes() <= budget.buffer_capacity());
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_big_messages_all_arrive_in_order() {
    let h = harness().await;
    const EACH: u64 = 24;
    let mut agents = Vec::new();
    for _ in 0..4 {
        agents.push(agent(&h).await);
    }
    let senders: Vec<_> = agents.into_iter().map(|a| flood(a, EACH)).collect();
    for s in senders {
        let agent = s.await.expect("sender task");
        all_arrived(&h, &agent, EACH).await;
    }
    let budget = h.gateway.inspect();
    eventually("every share given back", || budget.buffered_bytes() == 0).await;
    assert!(budget.is_buffer_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_holds_the_agent_unread_then_everything_flows() {
    let h = harness().await;
    let agent = agent(&h).await;
    let uid = agent.uid().as_bytes().to_vec();
    const N: u64 = 2000; // ~60 MB: far more than the stalled link's TCP buffers
    let sender = stall(&h, agent, N).await;
    let got = h.server.state().agent(&uid).map_or(0, |a| a.messages);
    assert!(got < 1 + N, "the server is not reading");

    h.server.set_reading(true);
    let agent = sender.await.expect("sender task");
    all_arrived(&h, &agent, N).await;
    let budget = h.gateway.inspect();
    eventually("every share given back", || budget.buffered_bytes() == 0 && budget.buffer_waiting() == 0).await;
    assert!(budget.is_buffer_open());
}

async fn post(h: &Harness, uid: [u8; 16]) -> (u16, Option<String>) {
    let body = AgentToServer { instance_uid: Bytes::copy_from_slice(&uid), ..Default::default() }.encode_to_vec();
    let tcp = tokio::net::TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/opamp")
        .header("host", "gateway")
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(T, sender.send_request(req)).await.expect("answered in time").unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let _ = resp.into_body().collect().await;
    (status, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_poll_gets_503_while_the_budget_is_full() {
    let h = harness().await;
    const HTTP_UID: [u8; 16] = [0x42; 16];
    assert_eq!(post(&h, HTTP_UID).await.0, 200, "admitted while the server reads");
    let sender = stall(&h, agent(&h).await, 2000).await;

    // A poll that finds room is queued like any message (and answered 200);
    // one that finds none is refused at once.
    let deadline = tokio::time::Instant::now() + T;
    let retry_after = loop {
        match post(&h, HTTP_UID).await {
            (503, retry_after) => break retry_after,
            (200, _) => assert!(tokio::time::Instant::now() < deadline, "never refused"),
            (status, _) => panic!("unexpected status {status}"),
        }
    };
    assert_eq!(retry_after.as_deref(), Some("30"), "listener.retry_after");

    h.server.set_reading(true);
    let agent = sender.await.expect("sender task");
    all_arrived(&h, &agent, 2000).await;
    let budget = h.gateway.inspect();
    eventually("the budget reopens", || budget.is_buffer_open()).await;
    assert_eq!(post(&h, HTTP_UID).await.0, 200, "accepted once there is room");
}

#[test]
fn the_budget_must_hold_one_message() {
    let yaml = "server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\nlistener:\n  max_message_size: 1MiB\n  max_buffered_bytes: 512KiB\n";
    let err = Config::from_yaml(yaml).and_then(|c| c.check()).expect_err("a budget smaller than one message");
    let text = err.to_string();
    assert!(text.contains("listener.max_buffered_bytes") && text.contains("listener.max_message_size"), "{text}");
}

/// The link writes big messages as several WebSocket frames (so its write
/// buffer stays small); the server gets them whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_several_mib_arrives_whole() {
    let h = Harness::start().await;
    let mut agent = h.agent().await;
    let sizes = [100, 1 << 20, (3 << 20) + 5];
    for n in sizes {
        agent.send(blob(n)).await.expect("send");
    }
    let uid = agent.uid().as_bytes().to_vec();
    h.server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.messages == 4)).await.expect("all arrive");
    let last = h.server.state().agent(&uid).unwrap().clone();
    assert_eq!(last.out_of_order, 0);
    let data = last.last.custom_message.expect("the blob").data;
    assert!(data.len() == (3 << 20) + 5 && data.iter().all(|&b| b == 0x5a), "the last message, intact");
    assert_eq!(h.server.state().malformed_messages, 0);
}
