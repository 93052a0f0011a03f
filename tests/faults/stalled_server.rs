//! The server stops reading while many agents keep sending.

use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::config::ByteSize;
use opamp_gateway::protocol::proto::{AgentToServer, CustomMessage};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

use crate::support::{gateway, metric, T};

const AGENTS: usize = 120;
/// Messages each agent sends while the server is stalled.
const EACH: u64 = 40;
const BLOB: usize = 12_000;
const BUDGET: u64 = 256 << 10;

fn blob() -> AgentToServer {
    let data = Bytes::from(vec![0x5a; BLOB]);
    let msg = CustomMessage { capability: "io.example.blob".into(), r#type: "blob".into(), data };
    AgentToServer { custom_message: Some(msg), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_costs_bounded_memory_and_loses_nothing() {
    // The server does not answer: the agents here only send, and unread
    // replies would (rightly) close them as slow consumers.
    let quiet = ReferenceServerConfig { reply_to_messages: false, ..Default::default() };
    let server = ReferenceServer::start(quiet).await.unwrap();
    let g = gateway(&server.url(), |c| {
        c.listener.max_buffered_bytes = ByteSize(BUDGET);
        c.listener.max_message_size = ByteSize(32 << 10);
        c.server.connections = 2;
        // A stall, not a dead server: the links must wait it out.
        c.server.write_timeout = Duration::from_secs(120);
        c.server.keepalive = Duration::from_secs(120);
    })
    .await;
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let mut a = SimAgent::connect(AgentOptions::new(g.agent_url())).await.expect("agent connects");
        a.send(a.status_report()).await.expect("send");
        agents.push(a);
    }
    server.wait_until(T, |s| s.agents.len() == AGENTS).await.expect("every agent is routed");

    server.set_reading(false);
    let senders: Vec<_> = agents
        .into_iter()
        .map(|mut a| {
            tokio::spawn(async move {
                for _ in 0..EACH {
                    a.send(blob()).await.expect("the gateway keeps the agent open");
                }
                a
            })
        })
        .collect();
    // ~58 MB offered, far more than the links' TCP buffers hold, against a
    // 256 KiB budget: it fills and closes.
    let budget = g.inspect();
    let deadline = tokio::time::Instant::now() + T;
    while budget.is_buffer_open() {
        assert!(tokio::time::Instant::now() < deadline, "the budget never filled: {} held", budget.buffered_bytes());
        assert!(budget.buffered_bytes() <= budget.buffer_capacity());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Until the links' TCP buffers fill, the budget drains and refills.
    let mut peak = 0.0f64;
    for _ in 0..10 {
        assert!(budget.buffered_bytes() <= BUDGET as usize, "held bytes stay within listener.max_buffered_bytes");
        // The gauge is process-wide; other tests' gateways hold a few KiB.
        let gauge = metric(&g, "opampgateway_buffered_bytes", &[]).await;
        assert!(gauge <= (BUDGET + (64 << 10)) as f64, "opampgateway_buffered_bytes = {gauge}");
        peak = peak.max(gauge);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak > 0.0, "the gauge shows what is held");
    let got = server.state().total_messages;
    assert!(got < (AGENTS as u64) * (1 + EACH), "the server is not reading");

    server.set_reading(true);
    let mut agents = Vec::new();
    for s in senders {
        agents.push(s.await.expect("sender task"));
    }
    let want = 1 + EACH;
    server
        .wait_until(T, |s| s.agents.values().all(|a| a.messages == want) && s.agents.len() == AGENTS)
        .await
        .unwrap_or_else(|_| panic!("not everything arrived: {} messages", server.state().total_messages));
    let state = server.state();
    for a in &agents {
        let rec = state.agent(a.uid().as_bytes()).expect("known");
        assert_eq!(rec.out_of_order, 0, "in order");
        assert_eq!(rec.disconnected, 0, "no agent was closed");
    }
    assert_eq!(state.total_disconnects, 0);
    // Still open: one more message each gets through.
    for a in &mut agents {
        a.send(AgentToServer::default()).await.expect("agent still connected");
    }
    server
        .wait_until(T, |s| s.agents.values().all(|a| a.messages == want + 1))
        .await
        .expect("the agents are still connected");
    let budget = g.inspect();
    let deadline = tokio::time::Instant::now() + T;
    while budget.buffered_bytes() != 0 || !budget.is_buffer_open() {
        assert!(tokio::time::Instant::now() < deadline, "the budget drains and reopens");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
