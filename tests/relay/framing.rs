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

/// An agent may send its first frame in the same TCP write as its upgrade
/// request; hyper reads both, and the session must start from those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_behind_the_upgrade_request_is_relayed() {
    use futures_util::StreamExt;
    use opamp_gateway::protocol::proto::ServerToAgent;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let uid = Bytes::from_static(&[9; 16]);
    let payload = framing::encode(&AgentToServer { instance_uid: uid.clone(), sequence_num: 1, ..Default::default() });
    assert!(payload.len() < 126, "one length byte");
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut bytes = b"GET /v1/opamp HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    bytes.extend([0x82, 0x80 | payload.len() as u8]);
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let mut tcp = tokio::net::TcpStream::connect(h.gateway.listen_addr()).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();
    // The 101, then whatever follows it is WebSocket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tokio::time::timeout(T, tcp.read_exact(&mut byte)).await.expect("the 101 arrives").unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let reply = loop {
        match tokio::time::timeout(T, ws.next()).await.expect("the server's reply arrives") {
            Some(Ok(Message::Binary(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected the reply, got {other:?}"),
        }
    };
    let reply = ServerToAgent::decode(framing::payload(&reply).unwrap()).unwrap();
    assert_eq!(reply.instance_uid, uid, "the server answered the frame sent with the upgrade");
}

/// A link reads at most 16 KiB per system call: a server message many
/// times that size still reaches its agent whole, alongside small ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_message_larger_than_a_links_read_reaches_the_agent_whole() {
    use opamp_gateway::protocol::proto::{AgentConfigFile, AgentConfigMap, AgentRemoteConfig, ServerToAgent};

    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let mut a = h.agent().await;
    round_trip(&mut a).await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let config = AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: [(
                "big.yaml".to_owned(),
                AgentConfigFile { body: body.clone().into(), content_type: "text/yaml".into() },
            )]
            .into_iter()
            .collect(),
        }),
        config_hash: Bytes::from_static(b"h1"),
    };
    let uid = a.uid().as_bytes().clone();
    assert!(h.server.push(&uid, ServerToAgent { remote_config: Some(config), ..Default::default() }));
    let got = loop {
        let msg = a.recv(T).await.expect("the pushed config arrives");
        if msg.remote_config.is_some() {
            break msg;
        }
    };
    let files = got.remote_config.unwrap().config.unwrap().config_map;
    assert_eq!(files["big.yaml"].body.as_ref(), &body[..], "every byte, in order");
    round_trip(&mut a).await; // and the link still relays
}

/// Server messages are written straight to the agent's socket by its link
/// when nothing is ahead of them, and queued for its session otherwise
/// (the socket is full, or the session is writing). A burst far larger than
/// the socket's buffer, to an agent reading as fast as it can, goes through
/// both ways, many times over: every message arrives whole, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order() {
    use opamp_gateway::protocol::proto::{CustomMessage, ServerToAgent};

    const MESSAGES: usize = 400;
    let h = Harness::with(Default::default(), |c| {
        c.server.connections = 1;
        // Room for the whole burst: this is about order, not slow consumers.
        c.listener.queue_size = MESSAGES;
    })
    .await;
    let mut a = h.agent().await;
    round_trip(&mut a).await;
    let uid = a.uid().as_bytes().clone();
    // Sizes vary so frame boundaries fall everywhere in partial writes.
    let message = |i: usize| ServerToAgent {
        custom_message: Some(CustomMessage {
            capability: "io.example.burst".into(),
            r#type: i.to_string(),
            data: Bytes::from(vec![(i % 251) as u8; 1_000 + (i * 7_919) % 60_000]),
        }),
        ..Default::default()
    };
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < MESSAGES {
            let msg = a.recv(T).await.expect("every pushed message arrives");
            if let Some(m) = msg.custom_message {
                seen.push(m);
            }
        }
        (a, seen)
    });
    for i in 0..MESSAGES {
        assert!(h.server.push(&uid, message(i)));
    }
    let (mut a, seen) = reader.await.unwrap();
    for (i, m) in seen.iter().enumerate() {
        let want = message(i).custom_message.unwrap();
        assert_eq!(m.r#type, want.r#type, "message {i} arrived in its place");
        assert_eq!(m.data, want.data, "message {i} arrived whole");
    }
    round_trip(&mut a).await; // and the agent's session is still up
}
