//! During a server outage an agent's messages wait in its failover queue
//! (`server.failover_queue`); beyond it the oldest are dropped, counted and
//! logged once for that agent (issue 9.1).

use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

use crate::support::{self, log_lines, metric, wait_metric, T};

const DROPPED: &str = "opampgateway_messages_dropped_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_failover_queue_drops_the_oldest_counted_and_logged_once() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let g = support::gateway(&server.url(), |c| c.server.failover_queue = 3).await;
    let mut loud = support::agent(&g).await;
    let mut quiet = support::agent(&g).await;
    let uid = loud.uid().as_bytes().clone();
    let before = server.state().agent(&uid).unwrap().messages;
    let labels = ["direction=\"upstream\"", "reason=\"failover_queue_full\""];
    let dropped_before = metric(&g, DROPPED, &labels).await;

    server.set_accepting(false);
    server.drop_connections();
    let view = g.inspect();
    let deadline = tokio::time::Instant::now() + T;
    while view.connected_links() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "links did not go down");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let seq_before = server.state().agent(&uid).unwrap().last.sequence_num;
    for _ in 0..10 {
        loud.send(AgentToServer::default()).await.unwrap();
    }
    // Ten waiting and three kept: seven dropped (eight when the frame
    // replayed from before the outage was waiting too, the oldest of all).
    wait_metric(&g, DROPPED, &labels, dropped_before + 7.0).await;
    assert_eq!(log_lines(&["WARN", "exceed server.failover_queue"]).len(), 1, "logged once for the agent");

    server.set_accepting(true);
    assert!(g.wait_for_links(3, T).await);
    // The newest arrives, last and in order; nothing else is missing: what
    // did not arrive was counted.
    server
        .wait_until(T, |s| s.agent(&uid).is_some_and(|r| r.last.sequence_num == seq_before + 10))
        .await
        .expect("the newest message arrives");
    let record = server.state().agent(&uid).cloned().unwrap();
    let dropped = metric(&g, DROPPED, &labels).await - dropped_before;
    // Delivery is at least once: the frame from before the outage, replayed,
    // may reach the server again. The links do not all fail at the same
    // instant, so the agent can move to a second link that dies a moment
    // later, having delivered the copy, and be handed it back once more.
    // The server counts such a copy out of order (its sequence number is
    // not new); the ten new messages come in order.
    let copies = record.out_of_order;
    assert!(copies <= 3, "only copies of the replayed frame are out of order ({copies}; 3 links)");
    let arrived = record.messages - before - copies;
    assert!(arrived >= 3, "the three kept arrived ({arrived})");
    // Ten new ones, each arrived or counted, plus the replayed copy when the
    // queue dropped it.
    assert!(
        (10.0..=11.0).contains(&(arrived as f64 + dropped)),
        "{arrived} new arrived, {dropped} dropped, {copies} copies"
    );
    support::round_trip(&mut quiet).await;
    support::round_trip(&mut loud).await;
    g.shutdown().await;
}
