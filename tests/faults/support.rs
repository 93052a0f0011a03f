//! Shared by the fault cases: one process-wide log capture and metrics
//! recorder, a gateway with its `/metrics` on loopback, and agent helpers.

use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::sim::agent::{is_full_state_request, AgentOptions, SimAgent};
use opamp_gateway::Gateway;

/// Generous bound for anything that should happen "promptly" on loopback.
pub(crate) const T: Duration = Duration::from_secs(15);

/// The process-wide log capture (warn and above) and metrics recorder.
fn observed() -> &'static crate::observe::Observed {
    crate::observe::install("warn")
}

/// Captured warn-or-worse log lines mentioning every one of `words`.
pub(crate) fn log_lines(words: &[&str]) -> Vec<String> {
    observed().log_lines(words)
}

/// A gateway for `server_url` with fast redials and `/metrics` on loopback,
/// adjusted by `tweak`; returns once `connections` links are up.
pub(crate) async fn gateway(server_url: &str, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let handle = observed().metrics.clone();
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {server_url}\n  reconnect: {{ initial_interval: 50ms, max_interval: 500ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n"
    ))
    .expect("test config is valid");
    cfg.policies.directory = "/nonexistent/opamp-gateway-test-policies".into();
    tweak(&mut cfg);
    let g = Gateway::start(&cfg, Some(handle)).await.expect("gateway starts");
    assert!(g.wait_for_links(cfg.server.connections, T).await, "links did not connect");
    g
}

/// The sum of every series of metric `name` whose labels include all of
/// `labels` (`key="value"`), read from the gateway's `/metrics`.
pub(crate) async fn metric(g: &Gateway, name: &str, labels: &[&str]) -> f64 {
    let addr = g.metrics_addr().expect("metrics endpoint configured");
    let (status, body) = opamp_gateway::sim::http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` until `name{labels}` reaches `at_least`.
pub(crate) async fn wait_metric(g: &Gateway, name: &str, labels: &[&str], at_least: f64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let v = metric(g, name, labels).await;
        if v >= at_least {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}{labels:?} stayed at {v}, wanted {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn agent(g: &Gateway) -> SimAgent {
    let mut a = SimAgent::connect(AgentOptions::new(g.agent_url())).await.expect("agent connects");
    round_trip(&mut a).await;
    a
}

/// Sends a status report and reads until the server's reply; every message
/// on the way must be addressed to this agent (none misrouted).
pub(crate) async fn round_trip(a: &mut SimAgent) {
    let report = a.status_report();
    a.send(report).await.expect("send");
    loop {
        let m = a.recv(T).await.expect("agent stays connected and is answered");
        assert_eq!(&m.instance_uid, a.uid().as_bytes(), "a message for another agent arrived");
        if !is_full_state_request(&m) {
            return;
        }
    }
}
