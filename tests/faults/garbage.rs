//! The server sends garbage on a link.

use bytes::Bytes;
use opamp_gateway::config::ByteSize;
use opamp_gateway::protocol::framing;
use opamp_gateway::protocol::handshake::ConnectResult;
use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::sim::SimAgent;
use opamp_gateway::Gateway;

use crate::support::{agent, gateway, log_lines, metric, round_trip, wait_metric, T};

const DROPPED: &str = "opampgateway_messages_dropped_total";
const LOSSES: &str = "opampgateway_upstream_link_losses_total";

/// One gateway link to a fresh server, and two routed agents on it.
async fn setup(tweak: impl FnOnce(&mut opamp_gateway::config::Config)) -> (ReferenceServer, Gateway, Vec<SimAgent>) {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let g = gateway(&server.url(), |c| {
        c.server.connections = 1;
        tweak(c);
    })
    .await;
    let agents = vec![agent(&g).await, agent(&g).await];
    (server, g, agents)
}

/// The id of the server's one open connection (the gateway's link).
fn link_conn(server: &ReferenceServer) -> u64 {
    let open: Vec<u64> = server.state().connections.iter().filter(|c| c.open).map(|c| c.id).collect();
    assert_eq!(open.len(), 1, "one link, one connection: {open:?}");
    open[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_logged_once_and_misroutes_nothing_on_a_link_that_survives() {
    let (server, g, mut agents) = setup(|_| {}).await;
    let conn = link_conn(&server);
    let answered = server.state().connect_requests[0].1.request_uid.clone();
    let unknown_uid = ServerToAgent { instance_uid: Bytes::from(vec![7u8; 16]), ..Default::default() };
    let result = |json: String| ConnectResult::frame_with(Bytes::from(json));
    let duplicate = format!(r#"{{"request_uid":"{answered}","accept":false,"http_status_code":401}}"#);
    // (expected drop reason, binary payload; `None`: a text frame)
    let cases = [
        ("malformed", Some(Bytes::from_static(b"\x00\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"))),
        ("malformed", Some(Bytes::from_static(b"\xde\xad\xbe\xef"))),
        ("unknown_agent", Some(framing::encode(&unknown_uid))),
        // A connectResult naming no request: no handshake can be told.
        ("malformed", Some(result(r#"{"accept":true,"http_status_code":200}"#.into()))),
        ("stale_handshake", Some(result(r#"{"request_uid":"nobody-asked","accept":true}"#.into()))),
        // A second answer to an agent already admitted, and a refusal at that:
        // it must not reach, close or re-judge that agent.
        ("stale_handshake", Some(result(duplicate))),
        ("text_frame", None),
    ];
    const REPEAT: usize = 5;
    for (reason, payload) in &cases {
        let label = format!("reason=\"{reason}\"");
        let labels = ["direction=\"downstream\"", label.as_str()];
        let before = metric(&g, DROPPED, &labels).await;
        for _ in 0..REPEAT {
            let sent = match payload {
                Some(bytes) => server.push_raw(conn, bytes.clone()),
                None => server.push_text(conn, "not OpAMP"),
            };
            assert!(sent, "the link is still open");
        }
        wait_metric(&g, DROPPED, &labels, before + REPEAT as f64).await;
        for a in &mut agents {
            round_trip(a).await;
        }
        assert_eq!(link_conn(&server), conn, "{reason}: the link survives, no redial");
        let warned = log_lines(&["server message not delivered", reason]);
        // Once per reason per connection; other tests of this process may
        // add their own, never one per frame.
        assert!(!warned.is_empty() && warned.len() < REPEAT, "{reason}: logged once, got {warned:#?}");
    }
    assert_eq!(server.state().open_connections, 1);
    assert!(log_lines(&["WARN", "connectResult without a usable request_uid"]).is_empty(), "not one warning per frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_costs_the_link_which_is_redialed_and_agents_move() {
    const MAX: u64 = 64 * 1024;
    let (server, g, mut agents) = setup(|c| c.server.max_message_size = ByteSize(MAX)).await;
    let conn = link_conn(&server);
    let losses = metric(&g, LOSSES, &[]).await;
    // Past the limit, the frame cannot be read past: the connection is done.
    let mut big = vec![0u8; MAX as usize + 1];
    big[0] = 0;
    assert!(server.push_raw(conn, Bytes::from(big)));
    wait_metric(&g, LOSSES, &[], losses + 1.0).await;
    server
        .wait_until(T, |s| s.connections.len() > 1 && s.open_connections == 1 && !s.connections[conn as usize].open)
        .await
        .expect("the gateway drops the connection and redials");
    for a in &mut agents {
        round_trip(a).await;
    }
    let moved = server.state();
    for a in &agents {
        let rec = moved.agent(a.uid().as_bytes()).expect("agent known to the server");
        assert_ne!(rec.conn_id, conn, "the agent moved to the new connection");
    }
}
