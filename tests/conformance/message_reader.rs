//! Reading WebSocket messages, both directions (reference:
//! internal/gateway/message_reader_test.go, and the framing its
//! encode/decodeWSMessage implement: a varint header, 0, then the protobuf;
//! old agents send no header).
//!
//! The reference tests its reader loop in isolation (message numbering,
//! callbacks); we restate each case as what it means at the gateway's edges.

use bytes::Bytes;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::{AgentToServer, ServerToAgent};
use opamp_gateway::sim::agent::{AgentError, SimAgent};
use opamp_gateway::sim::server::JsonEncoding;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{both_encodings, Harness, T};

both_encodings!(
    server_messages_reach_the_agent_in_order,
    idle_links_stop_promptly_on_shutdown,
    a_clean_close_from_the_server_is_not_an_error,
    a_bad_agent_message_ends_that_agent_and_nothing_after_it_is_relayed,
    frames_with_and_without_the_header_byte_are_relayed,
    a_non_zero_header_is_malformed_in_both_directions,
);

fn caps(n: u64) -> ServerToAgent {
    ServerToAgent { capabilities: n, ..Default::default() }
}

/// Restates TestMessageReaderLoopReceivesMessages and
/// TestMessageReaderLoopStartingMessageNumber: messages are delivered one by
/// one, in order. (The reference's message numbers are internal; order is
/// what an agent can see.)
async fn server_messages_reach_the_agent_in_order(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    for n in 1..=3 {
        assert!(h.server.push(a.uid().as_bytes(), caps(n)));
    }
    for n in 1..=3 {
        assert_eq!(a.recv(T).await.unwrap().capabilities, n);
    }
}

/// Restates TestMessageReaderLoopContextCancelled: with nothing to read,
/// cancelling (our shutdown) stops the link readers promptly and cleanly.
async fn idle_links_stop_promptly_on_shutdown(json: JsonEncoding) {
    let h = Harness::start(json, 2).await;
    let Harness { server, gateway } = h;
    tokio::time::timeout(T, gateway.shutdown()).await.expect("shutdown is bounded");
    server.wait_until(T, |s| s.open_connections == 0).await.expect("links closed");
    assert_eq!(server.state().connections.len(), 2, "and not redialed");
}

/// Restates TestMessageReaderLoopConnectionClosed: a close frame from the
/// server ends the link's reader without an error. Difference: the
/// reference then closes the link's agents; ours redials and the agents
/// carry on over the new link.
async fn a_clean_close_from_the_server_is_not_an_error(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    h.server.close_connections(1000);
    h.server.wait_until(T, |s| s.connections.len() == 2 && s.open_connections == 1).await.expect("redialed");
    crate::gateway::assert_full_state_requested(&mut a).await;
    h.announce(&mut a).await;
    assert_eq!(h.conn_of(&a), 1);
    assert_eq!(h.push(&mut a, caps(3)).await.capabilities, 3);
}

/// Restates TestMessageReaderLoopOnMessageError and
/// TestMessageReaderLoopStopsAfterOnMessageError: a message the gateway
/// cannot handle ends that agent's reader (here: a close with 1007), nothing
/// it sent after is relayed, and the other agents are unaffected.
async fn a_bad_agent_message_ends_that_agent_and_nothing_after_it_is_relayed(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut healthy = h.agent().await;
    let mut bad = SimAgent::connect(h.agent_options()).await.unwrap();
    bad.send_raw(Message::Binary(Bytes::from_static(&[0x00, 0x0a, 0xff, 0x01]))).await.unwrap();
    // May fail if the gateway already closed: either way it must not arrive.
    let _ = bad.send(bad.status_report()).await;
    match bad.recv(T).await {
        Err(AgentError::Closed { code: Some(1007), .. }) => {}
        other => panic!("expected close 1007, got {other:?}"),
    }
    // Same link, in order: once the healthy agent's message is through, the
    // bad agent's later one would have been too.
    h.announce(&mut healthy).await;
    assert!(h.server.state().agent(bad.uid().as_bytes()).is_none(), "nothing after the bad message was relayed");
    assert_eq!(h.push(&mut healthy, caps(4)).await.capabilities, 4);
}

/// The framing of decodeWSMessage: an agent's frame with the `0x00` header
/// and an old agent's frame without one are both relayed, and a server frame
/// without the header reaches the agent.
async fn frames_with_and_without_the_header_byte_are_relayed(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut modern = h.agent().await;
    let mut opts = h.agent_options();
    opts.legacy_frames = true;
    let mut legacy = SimAgent::connect(opts).await.unwrap();
    h.announce(&mut legacy).await;
    assert_eq!(h.push(&mut legacy, caps(5)).await.capabilities, 5);

    let bare = ServerToAgent { instance_uid: modern.uid().as_bytes().clone(), capabilities: 6, ..Default::default() };
    assert!(h.server.push_raw(h.conn_of(&modern), bare.encode_to_vec().into()));
    assert_eq!(modern.recv(T).await.unwrap().capabilities, 6);
}

/// The header is a varint that must be 0: a non-zero one is malformed. From
/// an agent, that closes the agent (1007); from the server, the message is
/// dropped and the link survives.
async fn a_non_zero_header_is_malformed_in_both_directions(json: JsonEncoding) {
    let h = Harness::start(json, 1).await;
    let mut a = h.agent().await;
    let to_agent = ServerToAgent { instance_uid: a.uid().as_bytes().clone(), capabilities: 9, ..Default::default() };
    let bad_down = [&[0x01u8][..], &to_agent.encode_to_vec()].concat();
    assert!(h.server.push_raw(h.conn_of(&a), bad_down.into()));
    assert!(h.server.push_raw(h.conn_of(&a), framing::encode(&caps_for(&a, 10))));
    assert_eq!(a.recv(T).await.unwrap().capabilities, 10, "the bad server frame was dropped");

    let mut b = SimAgent::connect(h.agent_options()).await.unwrap();
    let to_server = AgentToServer { instance_uid: b.uid().as_bytes().clone(), ..Default::default() }.encode_to_vec();
    b.send_raw(Message::Binary([&[0x01u8][..], &to_server].concat().into())).await.unwrap();
    match b.recv(T).await {
        Err(AgentError::Closed { code: Some(1007), .. }) => {}
        other => panic!("expected close 1007, got {other:?}"),
    }
    assert_eq!(h.server.state().open_connections, 1);
}

fn caps_for(a: &SimAgent, n: u64) -> ServerToAgent {
    ServerToAgent { instance_uid: a.uid().as_bytes().clone(), capabilities: n, ..Default::default() }
}
