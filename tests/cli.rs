//! The real binary: `check`, `/metrics`, and SIGTERM.

use std::time::Duration;

use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use tokio::process::Command;

const T: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");

#[path = "support/gateway_process.rs"]
mod gateway_process;
use gateway_process::GatewayProcess;

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let p = dir.path().join("gateway.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[tokio::test]
async fn check_accepts_good_and_explains_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        &dir,
        "extensions:\n  opampgateway:\n    server:\n      endpoint: wss://opamp.example.com/v1/opamp\n",
    );
    let out = Command::new(BIN).args(["check", "--config"]).arg(&good).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = write_config(&dir, "server:\n  endpoint: ws://h/v1/opamp\n  connections: 100\n");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.connections: must be between 1 and 64"), "{err}");

    let zero = write_config(&dir, "server:\n  endpoint: ws://h/v1/opamp\nruntime:\n  worker_threads: 0\n");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&zero).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtime.worker_threads: expected a number of threads from 1 to 1024, got 0"), "{err}");

    let out = Command::new(BIN).arg("check").env_remove("OPAMP_GATEWAY_CONFIG").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

impl GatewayProcess {
    fn agent_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.listener)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        opamp_gateway::sim::http_get(self.metrics, path).await.expect("admin server answers")
    }

    /// Until `/healthz` reports the 3 default links up: the gateway's own
    /// readiness signal, polled (bounded).
    async fn wait_links(&self) {
        let deadline = tokio::time::Instant::now() + T;
        while self.get("/healthz").await.1.trim() != "3/3 upstream links connected" {
            assert!(tokio::time::Instant::now() < deadline, "links never came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }
}

/// The value of the first sample of `name` carrying all `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then(|| value.parse().ok())?
    })
}

async fn round_trip(a: &mut SimAgent) {
    let report = a.status_report();
    a.send(report).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_then_graceful_sigterm() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let gw = GatewayProcess::spawn(&format!(
        "server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n",
        server.url()
    ))
    .await;
    gw.wait_links().await;
    let mut agents = Vec::new();
    for _ in 0..3 {
        let mut a = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
        round_trip(&mut a).await;
        agents.push(a);
    }
    let mut bad = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
    bad.send_raw(tokio_tungstenite::tungstenite::Message::Text("hi".into())).await.unwrap();
    assert_eq!(bad.recv_close(T).await.unwrap().code, Some(1003));
    let vanished = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
    let mut vanished = vanished;
    round_trip(&mut vanished).await;
    let uid = vanished.uid().as_bytes().clone();
    vanished.drop_abruptly();
    server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.disconnected == 1)).await.unwrap();

    // Counters are updated as sessions end; poll the endpoint (no other signal).
    let deadline = tokio::time::Instant::now() + T;
    let body = loop {
        let body = gw.metrics().await;
        if sample(&body, "opampgateway_synthesized_disconnects_total", &[]) == Some(1.0)
            && sample(&body, "opampgateway_agents_closed_total", &[("reason", "text_frame")]) == Some(1.0)
        {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics never settled:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let s = |name, labels: &[(&str, &str)]| {
        sample(&body, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{body}"))
    };
    assert_eq!(s("opampgateway_connections", &[("direction", "downstream")]), 3.0);
    assert_eq!(s("opampgateway_connections", &[("direction", "upstream")]), 3.0);
    assert!(s("opampgateway_messages_total", &[("direction", "upstream")]) >= 4.0);
    assert!(s("opampgateway_messages_total", &[("direction", "downstream")]) >= 4.0);
    assert!(s("opampgateway_message_bytes_total", &[("direction", "upstream")]) > 0.0);
    assert!(s("opampgateway_message_latency_seconds_count", &[("direction", "downstream")]) >= 4.0);
    assert_eq!(s("opampgateway_handshakes_total", &[("outcome", "accepted"), ("status", "101")]), 5.0);
    assert_eq!(s("opampgateway_upstream_reconnects_total", &[("outcome", "success")]), 3.0);
    let per_link: f64 = (0..3).map(|i| s("opampgateway_link_agents", &[("link", &format!("upstream-{i}"))])).sum();
    assert_eq!(per_link, 3.0);
    assert_eq!(gw.get("/healthz").await.0, 200);

    // SIGTERM: agents are told to go elsewhere (1001), links close, exit 0.
    let pid = gw.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    for a in &mut agents {
        match a.recv_close(T).await {
            Ok(seen) if seen.code == Some(1001) => {}
            other => panic!("expected 1001 going away, got {other:?}"),
        }
    }
    let mut gw = gw;
    let status =
        tokio::time::timeout(Duration::from_secs(15), gw.child.wait()).await.expect("exits in bounded time").unwrap();
    assert!(status.success(), "exit status {status}");
    server.wait_until(T, |s| s.open_connections == 0).await.expect("links closed");
}

/// Issue 9.5: SIGTERM turns `/readyz` 503 at once while agents are still
/// accepted for `listener.drain_delay`; a second SIGTERM cuts the delay
/// short and the gateway drains and exits as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_then_drains_after_the_delay() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let gw = GatewayProcess::spawn(&format!(
        "server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\n  drain_delay: 1h\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n",
        server.url()
    ))
    .await;
    // Readiness is the signal polled here (bounded).
    let poll = |want: u16| {
        let gw = &gw;
        async move {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let (code, body) = gw.get("/readyz").await;
                if code == want {
                    return body;
                }
                assert!(tokio::time::Instant::now() < deadline, "/readyz never {want}: {body}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    poll(200).await;
    let mut before = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
    round_trip(&mut before).await;

    let pid = gw.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    assert!(poll(503).await.starts_with("draining"));
    assert_eq!(gw.get("/livez").await.0, 200);
    let mut during = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
    round_trip(&mut during).await;

    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    for mut a in [before, during] {
        assert_eq!(a.recv_close(T).await.unwrap().code, Some(1001));
    }
    let mut gw = gw;
    let status =
        tokio::time::timeout(Duration::from_secs(15), gw.child.wait()).await.expect("exits in bounded time").unwrap();
    assert!(status.success(), "exit status {status}");
}

/// `runtime.worker_threads` sizes the binary's runtime, and one worker relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sizes_the_runtime() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let yaml = |workers: &str| {
        format!(
            "server:\n  endpoint: {}\nlistener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n\
             policies:\n  directory: /nonexistent/policies\n{workers}",
            server.url()
        )
    };
    for (workers, want) in [("runtime:\n  worker_threads: 1\n", 1), ("runtime:\n  worker_threads: 3\n", 3)] {
        let gw = GatewayProcess::spawn(&yaml(workers)).await;
        assert_eq!(gw.workers, want, "{workers}");
        gw.wait_links().await;
        let mut a = SimAgent::connect(AgentOptions::new(gw.agent_url())).await.unwrap();
        round_trip(&mut a).await;
    }
}
