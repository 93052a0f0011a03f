//! An agent's WebSocket buffers grow to hold a large message; the session
//! gives them back once nothing in them is unread, and loses no byte doing
//! it (around pipelined, fragmented and interleaved control frames).

use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::{AgentConfigFile, AgentConfigMap, AgentToServer, EffectiveConfig};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, Harness, T};

const RELEASED: &str = "opampgateway_agent_buffers_released_total";

/// The process's metrics (one recorder per test binary).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| opamp_gateway::telemetry::install_recorder().expect("the first install in this binary"))
}

fn released() -> f64 {
    let text = recorder().render();
    text.lines().filter(|l| l.starts_with(RELEASED)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A status message from `uid` carrying a config body of `size` bytes.
fn message(uid: &[u8; 16], seq: u64, size: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    framing::encode(&AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid),
        sequence_num: seq,
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(String::new(), AgentConfigFile { body: body.into(), content_type: "text/yaml".into() })]
                    .into_iter()
                    .collect(),
            }),
        }),
        ..Default::default()
    })
    .to_vec()
}

/// One masked client frame, as an agent writes it.
fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader { is_final: fin, opcode, mask: Some([9, 8, 7, 6]), ..FrameHeader::default() };
    let mut out = Vec::new();
    Frame::from_payload(header, payload.to_vec().into()).format(&mut out).expect("formats into a Vec");
    out
}

/// `payload` as three fragments, with a ping after the first.
fn fragmented_with_ping(payload: &[u8]) -> Vec<u8> {
    let third = payload.len() / 3;
    let mut out = frame(OpCode::Data(Data::Binary), false, &payload[..third]);
    out.extend(frame(OpCode::Control(Control::Ping), true, b"still there?"));
    out.extend(frame(OpCode::Data(Data::Continue), false, &payload[third..2 * third]));
    out.extend(frame(OpCode::Data(Data::Continue), true, &payload[2 * third..]));
    out
}

fn config_len(m: &AgentToServer) -> usize {
    m.effective_config.as_ref().and_then(|c| c.config_map.as_ref()).map_or(0, |m| m.config_map[""].body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_relayed_whole_and_its_buffers_given_back() {
    let _ = recorder();
    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let mut a = h.agent().await;
    let before = released();
    let mut report = a.status_report();
    let big = Bytes::from(message(a.uid().as_bytes().as_ref().try_into().unwrap(), 2, 16 * 1024));
    report.effective_config = AgentToServer::decode(framing::payload(&big).unwrap()).unwrap().effective_config;
    a.send(report).await.unwrap();
    a.recv(T).await.expect("the server answers the large message");
    let uid = a.uid().as_bytes().to_vec();
    assert_eq!(config_len(&h.server.state().agents[&uid].last), 16 * 1024, "relayed whole");
    eventually("the session gives the grown buffers back", || released() > before).await;
    // The fresh WebSocket carries on.
    a.send(AgentToServer::default()).await.unwrap();
    a.recv(T).await.expect("a round trip after the release");
}

/// Bytes of the next message read with a large one keep the buffers until
/// they are consumed; a fragmented message with a ping inside is never cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_around_a_release_arrive_whole_and_in_order() {
    let _ = recorder();
    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let uid = [0x42u8; 16];
    let (mut ws, _) = tokio_tungstenite::client_async(h.gateway.agent_url(), {
        let url = h.gateway.agent_url();
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
        tokio::net::TcpStream::connect(addr).await.unwrap()
    })
    .await
    .expect("the upgrade");
    let before = released();

    // One write: a large fragmented message with a ping inside, a small
    // message right behind it, then a large one alone.
    let mut bytes = fragmented_with_ping(&message(&uid, 1, 20_000));
    bytes.extend(frame(OpCode::Data(Data::Binary), true, &message(&uid, 2, 10)));
    bytes.extend(frame(OpCode::Data(Data::Binary), true, &message(&uid, 3, 5000)));
    ws.get_mut().write_all(&bytes).await.unwrap();

    let (mut replies, mut pongs) = (0, 0);
    while replies < 3 || pongs < 1 {
        match tokio::time::timeout(T, ws.next()).await.expect("replies and the pong arrive") {
            Some(Ok(Message::Binary(_))) => replies += 1,
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"still there?");
                pongs += 1;
            }
            other => panic!("expected replies and a pong, got {other:?}"),
        }
    }
    let state = h.server.state();
    let agent = &state.agents[&uid.to_vec()];
    assert_eq!((agent.messages, agent.out_of_order), (3, 0), "all three, in order");
    assert_eq!(config_len(&agent.last), 5000, "the last one whole");
    eventually("the buffers are given back", || released() > before).await;

    // Another large message after the release, sent slowly: one byte at a time.
    for byte in frame(OpCode::Data(Data::Binary), true, &message(&uid, 4, 3000)) {
        ws.get_mut().write_all(&[byte]).await.unwrap();
    }
    match tokio::time::timeout(T, ws.next()).await.expect("the reply arrives") {
        Some(Ok(Message::Binary(_))) => {}
        other => panic!("expected a reply, got {other:?}"),
    }
    let state = h.server.state();
    let agent = &state.agents[&uid.to_vec()];
    assert_eq!((agent.messages, config_len(&agent.last)), (4, 3000));
}
