//! Hostile policies beyond the containment suite's (issue 14.3), through a
//! real gateway and the real `misbehave` component: each is contained,
//! counted and logged, and an ordinary agent beside them is never affected.
//! The breaker is off so that every case reaches the policy.

use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

use crate::policy_support::{self, install, mode_agent};
use crate::support::{self, log_lines, metric, wait_metric, T};

/// Sends one message and waits for the server's reply to it: fail-open
/// forwarded the original, whatever the policy did.
async fn forwarded(a: &mut SimAgent) {
    a.send(AgentToServer::default()).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
}

const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Lets the policy's failure-log window pass, so the next failure's line is
/// written rather than counted as held back. The window is time itself:
/// there is no other signal to wait for. Without it, a release build (a
/// connect well under a millisecond) put the `assign` case's warning in the
/// same window as the previous case's second failure.
async fn next_log_window() {
    tokio::time::sleep(2 * LOG_INTERVAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_contained_counted_and_logged() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Memory enough for `huge` to build its 50 MiB answer: the host's size
    // check is what must stop it, not the guest's limit.
    install(
        dir.path(),
        "fixture_misbehave",
        "hostile",
        Some("memory_limit: 268435456\ncall_timeout: 5s\nquarantine_after: 0\nquarantine_rate: 0\n"),
    );
    let g = support::gateway(&server.url(), |c| {
        c.policies = policy_support::config(dir.path(), false);
        c.server.max_message_size = opamp_gateway::config::ByteSize::mib(16);
        c.listener.max_message_size = opamp_gateway::config::ByteSize::mib(16);
        // One line per millisecond, not per 10 s: each case shows its line
        // (after `next_log_window`).
        c.policies.limits.log_interval = LOG_INTERVAL;
    })
    .await;
    let gateway = &g;
    let errors = move |kind: &'static str| async move {
        let kind = format!("kind=\"{kind}\"");
        metric(gateway, "opampgateway_policy_errors_total", &["policy=\"hostile\"", &kind]).await
    };
    let mut bystander = support::agent(&g).await;

    // The filter judges both directions, so each round trip below is two
    // calls: the agent's message and the server's reply.

    // Deep recursion: the engine's stack limit traps the call.
    let mut a = mode_agent(&g, "recurse", 1).await;
    forwarded(&mut a).await;
    assert_eq!(errors("trap").await, 2.0);
    let trap = log_lines(&["policy call failed", "hostile"]);
    assert!(trap.iter().any(|l| l.contains("stack")), "the trap names the stack: {trap:?}");
    support::round_trip(&mut bystander).await;
    forwarded(&mut a).await; // a fresh instance answers the next call
    assert_eq!(errors("trap").await, 4.0);

    // A 50 MiB replacement, over the receiving side's max_message_size
    // (16 MiB): invalid, the original goes instead.
    next_log_window().await;
    let mut a = mode_agent(&g, "huge", 1).await;
    forwarded(&mut a).await;
    assert_eq!(errors("invalid").await, 2.0);
    assert!(!log_lines(&["hostile", "exceeds server.max_message_size"]).is_empty());
    support::round_trip(&mut bystander).await;

    // A replacement speaking for another uid: invalid; the server only ever
    // sees the agent's own uid.
    let mut a = mode_agent(&g, "olduid", 1).await;
    forwarded(&mut a).await;
    assert_eq!(errors("invalid").await, 4.0);
    let state = server.state();
    assert!(state.agent(b"x").is_none(), "no message reached the server under the forged uid");
    assert!(state.agent(a.uid().as_bytes()).is_some());

    // `assign` answering link u32::MAX: the default choice applies.
    next_log_window().await;
    let o = AgentOptions::new(g.agent_url()).header("x-misbehave", "max");
    let mut a = SimAgent::connect(o).await.expect("admitted by the default choice");
    support::round_trip(&mut a).await;
    wait_metric(&g, "opampgateway_policy_invalid_assign_total", &["policy=\"hostile\""], 1.0).await;
    assert!(!log_lines(&["WARN", "hostile", "assign named an upstream or link that does not exist"]).is_empty());

    support::round_trip(&mut bystander).await;
    assert_eq!(metric(&g, "opampgateway_policy_quarantines_total", &["policy=\"hostile\""]).await, 0.0);
    g.shutdown().await;
}

/// Megabytes of log per call: lines are cut to 1 KiB, at most 16 per call
/// and `policies.limits.log_lines` (50) per interval reach the log; the rest
/// is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loud_policy_is_cut_to_size() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "fixture_misbehave", "loud_p", Some("quarantine_after: 0\nquarantine_rate: 0\n"));
    let g = support::gateway(&server.url(), |c| c.policies = policy_support::config(dir.path(), false)).await;
    let mut a = mode_agent(&g, "loud", 1).await;
    for _ in 0..10 {
        forwarded(&mut a).await;
    }
    let logged = log_lines(&["loud_p", "xxxxxxxx"]);
    assert!(!logged.is_empty() && logged.len() <= 50, "{} guest lines logged", logged.len());
    assert!(logged.iter().all(|l| l.len() < 2048), "lines are truncated");
    let suppressed = metric(&g, "opampgateway_policy_log_lines_suppressed_total", &["policy=\"loud_p\""]).await;
    assert!(suppressed >= (20 * 32 - 50) as f64, "{suppressed} lines counted as suppressed");
    assert_eq!(log_lines(&["loud_p", "in one call dropped"]).len(), 1, "warned once");
    let mut bystander = support::agent(&g).await;
    support::round_trip(&mut bystander).await;
    g.shutdown().await;
}
