//! The real binary honours HTTP_PROXY / NO_PROXY from its environment.
//!
//! The upstream is `ws://opamp.test:PORT`, a name that does not resolve here:
//! through the proxy fixture (which sends every target to 127.0.0.1) the links
//! connect; bypassing it, they cannot.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use opamp_gateway::sim::proxy::{ConnectProxy, ConnectProxyConfig};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous: these wait on a whole process starting and dialing.
const T: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");

/// Every variable the proxy choice reads, so the host's own cannot leak in.
const PROXY_VARS: [&str; 7] =
    ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "REQUEST_METHOD"];

struct GatewayProcess {
    _child: Child,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts the binary for `endpoint` with exactly `env` as proxy settings.
    async fn spawn(endpoint: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let yaml = format!(
            "server:\n  endpoint: {endpoint}\n  reconnect: {{ initial_interval: 50ms, max_interval: 200ms }}\nlistener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n"
        );
        std::fs::write(&path, yaml).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&path).env("OPAMP_GATEWAY_LOG", "warn");
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(T, lines.next_line()).await.unwrap().unwrap().expect("a ready line");
        let metrics = line.split_whitespace().find_map(|w| w.strip_prefix("metrics=")).unwrap().parse().unwrap();
        Self { _child: child, metrics, _dir: dir }
    }

    async fn get(&self, path: &str) -> String {
        opamp_gateway::sim::http_get(self.metrics, path).await.expect("admin server answers").1
    }

    /// Polls `path` (the process has no other signal) until `done` holds.
    async fn poll(&self, path: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let body = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last {path}:\n{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of `name{labels}` in a Prometheus text body.
fn sample(body: &str, name: &str, label: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_from_the_environment_carries_ws_links() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let proxy = ConnectProxy::start(ConnectProxyConfig::default()).await.unwrap();
    let port = server.addr().port();
    // HTTPS_PROXY points nowhere: a ws:// endpoint must not use it.
    let gw = GatewayProcess::spawn(
        &format!("ws://opamp.test:{port}/v1/opamp"),
        &[("HTTP_PROXY", &proxy.addr().to_string()), ("HTTPS_PROXY", "http://127.0.0.1:9"), ("NO_PROXY", "other.test")],
    )
    .await;
    let target = format!("opamp.test:{port}");
    proxy.wait_until(T, |s| s.open_tunnels == 3).await.expect("three links tunnel through HTTP_PROXY");
    assert!(proxy.state().requests.iter().all(|r| r.target == target), "{:?}", proxy.state());
    server.wait_until(T, |s| s.open_connections == 3).await.expect("the server sees the links");
    gw.poll("/healthz", "links up", |b| b.trim() == "3/3 upstream links connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_sends_the_links_direct() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let proxy = ConnectProxy::start(ConnectProxyConfig::default()).await.unwrap();
    let port = server.addr().port();
    let gw = GatewayProcess::spawn(
        &format!("ws://opamp.test:{port}/v1/opamp"),
        &[("HTTP_PROXY", &proxy.url()), ("no_proxy", "example.com, opamp.test")],
    )
    .await;
    // Direct, `opamp.test` does not resolve: dials fail and are counted.
    let failures = r#"outcome="failure""#;
    let body = gw
        .poll("/metrics", "failed direct dials", |b| {
            sample(b, "opampgateway_upstream_reconnects_total", failures).is_some_and(|n| n >= 3.0)
        })
        .await;
    assert_eq!(sample(&body, "opampgateway_upstream_reconnects_total", r#"outcome="success""#).unwrap_or(0.0), 0.0);
    assert!(proxy.state().requests.is_empty(), "NO_PROXY must bypass the proxy: {:?}", proxy.state());
    assert!(server.state().connections.is_empty());
    assert_ne!(gw.get("/healthz").await.trim(), "3/3 upstream links connected");
}
