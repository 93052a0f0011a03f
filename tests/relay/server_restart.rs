//! A server restart is not a fleet reconnect (issue 9.1): with default
//! settings, agents stay connected through a long outage, their sessions
//! keep reading them, and what they sent meanwhile reaches the server once
//! it is back.

use std::time::Duration;

use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::SimAgent;

use crate::common::{eventually, heartbeat, skip, Harness, T};

/// The size of a heartbeat as the gateway reads it (uid, small sequence).
fn heartbeat_len(a: &SimAgent) -> usize {
    framing::encode(&AgentToServer { instance_uid: a.uid().as_bytes().clone(), sequence_num: 9, ..Default::default() })
        .len()
}

#[tokio::test]
async fn a_long_server_outage_is_not_a_fleet_reconnect() {
    let h = Harness::with(Default::default(), |c| {
        assert!(c.server.failover_wait >= Duration::from_secs(60), "the default rides out a minute-long restart");
    })
    .await;
    let mut agents = Vec::new();
    for _ in 0..6 {
        agents.push(h.agent().await);
    }
    let view = h.gateway.inspect();
    let before = h.server.state();

    h.server.set_accepting(false);
    h.server.drop_connections();
    eventually("every link is down", || view.connected_links() == 0).await;
    const SENT: usize = 3;
    for a in &mut agents {
        for _ in 0..SENT {
            heartbeat(a).await;
        }
    }
    // The sessions keep reading: the heartbeats wait in the gateway, each
    // with its share of the buffer budget, not in the agents' sockets.
    let expected = agents.len() * SENT * heartbeat_len(&agents[0]);
    eventually("the heartbeats were read", || view.buffered_bytes() == expected).await;

    // 50 s on the gateway's clock: ten times the old `failover_wait`.
    skip(Duration::from_secs(50)).await;
    h.server.set_accepting(true);
    assert!(h.gateway.wait_for_links(3, T).await);

    for a in &mut agents {
        // Every heartbeat is answered (a frame replayed from before the
        // outage may add a reply), and the gateway asks for full state.
        let last_seq = {
            let mut replies = 0;
            while replies < SENT {
                let reply = a.recv(T).await.expect("the agent stayed connected and is answered");
                assert_eq!(&reply.instance_uid, a.uid().as_bytes());
                if reply.flags & 1 == 0 {
                    replies += 1;
                }
            }
            h.server.state().agent(a.uid().as_bytes()).map(|r| r.last.sequence_num)
        };
        let first = before.agent(a.uid().as_bytes()).unwrap().last.sequence_num;
        assert_eq!(last_seq, Some(first + SENT as u64), "the newest heartbeat arrived last");
    }
    let after = h.server.state();
    assert_eq!(after.total_disconnects, before.total_disconnects, "no agent left");
    assert_eq!(view.buffered_bytes(), 0, "every share came back");
    assert_eq!(view.loads().iter().sum::<u32>(), 6);
}
