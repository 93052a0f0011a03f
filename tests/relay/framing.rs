//! Malformed input closes only the offending agent, with the right code.

use bytes::Bytes;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::SimAgent;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, round_trip, Harness, T};

async fn expect_close(a: &mut SimAgent, code: u16) {
    match a.recv_close(T).await {
        Ok(seen) => assert_eq!(seen.code, Some(code), "{seen:?}"),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_agent() {
    let h = Harness::with(Default::default(), |c| {
        c.server.connections = 1;
        c.listener.max_message_size = opamp_gateway::config::ByteSize(1024);
    })
    .await;
    let mut healthy = h.agent().await;
    let good = AgentToServer { instance_uid: Bytes::from_static(&[7; 16]), ..Default::default() }.encode_to_vec();

    let cases: Vec<(&str, Message, u16)> = vec![
        ("text frame", Message::Text("hello".into()), 1003),
        ("non-zero header", Message::Binary([&[0x01u8][..], &good].concat().into()), 1007),
        ("bad protobuf", Message::Binary(Bytes::from_static(&[0x00, 0x0a, 0xff, 0x01])), 1007),
        (
            "bad uid length",
            Message::Binary(framing::encode(&AgentToServer {
                instance_uid: Bytes::from_static(&[1; 5]),
                ..Default::default()
            })),
            1007,
        ),
        (
            "missing uid",
            Message::Binary(framing::encode(&AgentToServer { sequence_num: 3, ..Default::default() })),
            1007,
        ),
        ("oversized", Message::Binary(vec![0u8; 4096].into()), 1009),
    ];
    for (what, msg, code) in cases {
        let mut bad = SimAgent::connect(h.agent_options()).await.unwrap();
        bad.send_raw(msg).await.unwrap();
        expect_close(&mut bad, code).await;
        // The gateway and its other agents carry on.
        round_trip(&mut healthy).await;
        assert_eq!(h.server.state().open_connections, 1, "{what}: the link survived");
    }
    // The agent reads its close frame before the session has let go of it.
    let relay = h.gateway.inspect();
    eventually("closed agents release their link", || relay.loads() == vec![1]).await;
}

/// An agent that closes first gets its close frame echoed (RFC 6455 §5.5.1),
/// so it sees a clean 1000 instead of an abnormal 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_close_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let h = Harness::start().await;
    let mut a = h.agent().await;
    a.send_raw(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    match a.recv_message(T).await {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the close echoed, got {other:?}"),
    }
}
