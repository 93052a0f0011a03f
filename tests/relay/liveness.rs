//! Vanished agents, slow agents, dead peers on both sides.

use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::sim::agent::AgentError;
use opamp_gateway::sim::server::ReferenceServerConfig;
use opamp_gateway::Gateway;
use tokio::net::TcpListener;

use crate::common::{config, eventually, round_trip, skip, Harness, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_agents_are_reported_upstream_once() {
    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let polite = h.agent().await;
    let polite_uid = polite.uid().as_bytes().clone();
    polite.say_goodbye().await.unwrap();
    let relay = h.gateway.inspect();
    let uid = polite_uid.clone();
    eventually("the polite agent's route is released", || !relay.is_routed(&uid)).await;

    let rude = h.agent().await;
    let rude_uid = rude.uid().as_bytes().clone();
    eventually("the rude agent is routed over the one link", || relay.route_link(&rude_uid) == Some(0)).await;
    assert_eq!(relay.routed_uids(), 1);
    rude.drop_abruptly();
    h.server
        .wait_until(T, |s| s.agent(&rude_uid).is_some_and(|a| a.disconnected == 1))
        .await
        .expect("the gateway reports the vanished agent");
    // Messages on one link are ordered: had the gateway also synthesized a
    // goodbye for the polite agent, it would have arrived before this one.
    assert_eq!(h.server.state().agent(&polite_uid).unwrap().disconnected, 1, "no duplicate goodbye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_agent_only_hurts_itself() {
    let h = Harness::with(ReferenceServerConfig::default(), |c| {
        c.server.connections = 1;
        c.listener.queue_size = 4;
        c.listener.write_timeout = Duration::from_millis(300);
    })
    .await;
    let mut fast = h.agent().await;
    let mut slow = h.agent().await; // stops reading from here on
    let big = ServerToAgent {
        custom_message: Some(opamp_gateway::protocol::proto::CustomMessage {
            capability: "io.example.bulk".into(),
            r#type: "blob".into(),
            data: Bytes::from(vec![7u8; 256 * 1024]),
        }),
        ..Default::default()
    };
    for i in 0..64 {
        assert!(h.server.push(slow.uid().as_bytes(), big.clone()));
        // The fast agent on the same link keeps flowing throughout.
        if i % 8 == 0 {
            h.server.push(fast.uid().as_bytes(), ServerToAgent { flags: 1, ..Default::default() });
            assert_eq!(fast.recv(T).await.unwrap().flags, 1);
        }
    }
    let relay = h.gateway.inspect();
    let uid = slow.uid().as_bytes().clone();
    eventually("the slow agent is closed", || !relay.is_routed(&uid)).await;
    // Reading now yields what got through, then the end.
    loop {
        match slow.recv(T).await {
            Ok(_) => continue,
            Err(AgentError::Closed { .. }) => break,
            Err(e) => panic!("expected the slow agent closed, got {e}"),
        }
    }
    round_trip(&mut fast).await;
}

#[tokio::test]
async fn silent_agent_is_closed_by_keepalive() {
    // Longer than `T`: only tokio's clock, skipped below, can reach it. The
    // links keep 30 s: the skip stays under their 60 s of silence.
    let h = Harness::with(Default::default(), |c| c.listener.keepalive = Duration::from_secs(20)).await;
    let mut quiet = h.agent().await;
    let relay = h.gateway.inspect();
    let uid = quiet.uid().as_bytes().clone();
    // Not polling the socket means not answering pings.
    skip(Duration::from_secs(45)).await; // past two keepalive intervals
    eventually("the silent agent is detected", || !relay.is_routed(&uid)).await;
    loop {
        match quiet.recv(T).await {
            Ok(_) => continue,
            Err(AgentError::Closed { code, .. }) => {
                assert_eq!(code, Some(1011));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // It is reported upstream like any vanished agent.
    h.server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.disconnected == 1)).await.unwrap();
}

#[tokio::test]
async fn dead_upstream_is_detected_and_redialed() {
    // A "server" that completes the WebSocket handshake and then never reads:
    // it will never answer a ping.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
                let _ = tx.send(());
            }
        }
    });
    let mut cfg = config(&format!("ws://{addr}/v1/opamp"));
    cfg.server.connections = 1;
    cfg.server.keepalive = Duration::from_secs(20); // longer than `T`: reached by the skip only
    let g = Gateway::start(&cfg, None).await.unwrap();
    tokio::time::timeout(T, accepted.recv()).await.expect("the link dials");
    assert!(g.wait_for_links(1, T).await, "and is up, its keepalive running");
    skip(Duration::from_secs(45)).await; // past two keepalive intervals
    tokio::time::timeout(T, accepted.recv()).await.expect("the dead link is redialed");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_unknown_agents_do_not_disturb_the_link() {
    let h = Harness::with(Default::default(), |c| c.server.connections = 1).await;
    let mut a = h.agent().await;
    h.server.push_raw(
        h.server.state().agent(a.uid().as_bytes()).unwrap().conn_id,
        opamp_gateway::protocol::framing::encode(&ServerToAgent {
            instance_uid: Bytes::from_static(&[9; 16]),
            ..Default::default()
        }),
    );
    round_trip(&mut a).await;
}
