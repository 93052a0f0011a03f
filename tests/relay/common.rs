//! Test harness: a reference server and a gateway wired to it.

use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{AgentToServer, ServerToAgent};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

/// Generous bound for anything that should happen "promptly" on loopback.
pub(crate) const T: Duration = Duration::from_secs(10);

pub(crate) struct Harness {
    pub server: ReferenceServer,
    pub gateway: Gateway,
}

/// A config pointing at `server_url`, with loopback listener and short
/// timers so failure paths are quick to exercise.
pub(crate) fn config(server_url: &str) -> Config {
    let mut c = Config::from_yaml(&format!(
        "server:\n  endpoint: {server_url}\n  reconnect: {{ initial_interval: 50ms, max_interval: 500ms }}\nlistener:\n  endpoint: 127.0.0.1:0\n"
    ))
    .expect("test config is valid");
    c.policies.directory = "/nonexistent/opamp-gateway-test-policies".into();
    c
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::with(ReferenceServerConfig::default(), |_| {}).await
    }

    /// Starts a server with `server_cfg`, then a gateway whose config is
    /// adjusted by `tweak`, and waits until every link is connected.
    pub(crate) async fn with(server_cfg: ReferenceServerConfig, tweak: impl FnOnce(&mut Config)) -> Self {
        let server = ReferenceServer::start(server_cfg).await.expect("reference server starts");
        let mut cfg = config(&server.url());
        tweak(&mut cfg);
        let gateway = Gateway::start(&cfg, None).await.expect("gateway starts");
        assert!(gateway.wait_for_links(cfg.server.connections, T).await, "links did not connect");
        // The gateway sees a link up when it reads the 101, a moment before
        // the server has filed the connection: wait for both sides.
        let n = cfg.server.connections;
        server.wait_until(T, |s| s.open_connections >= n).await.expect("the server filed every link");
        Self { server, gateway }
    }

    pub(crate) fn agent_options(&self) -> AgentOptions {
        AgentOptions::new(self.gateway.agent_url())
    }

    /// A connected agent that has sent its status report and received the
    /// server's reply, so its uid is routed.
    pub(crate) async fn agent(&self) -> SimAgent {
        self.agent_with(self.agent_options()).await
    }

    pub(crate) async fn agent_with(&self, opts: AgentOptions) -> SimAgent {
        let mut a = SimAgent::connect(opts).await.expect("agent connects");
        round_trip(&mut a).await;
        a
    }

    pub(crate) fn loads(&self) -> Vec<u32> {
        self.gateway.inspect().loads()
    }
}

/// Sends a status report and waits for the reply addressed to this agent.
pub(crate) async fn round_trip(a: &mut SimAgent) -> ServerToAgent {
    let report = a.status_report();
    a.send(report).await.expect("send");
    let reply = a.recv(T).await.expect("reply");
    assert_eq!(&reply.instance_uid, a.uid().as_bytes(), "reply must be addressed to this agent");
    reply
}

/// Like [`round_trip`], for an agent that may have moved: reads past the
/// gateway's full-state requests, every message addressed to this agent.
pub(crate) async fn round_trip_past_moves(a: &mut SimAgent) {
    let reply = a.answered(T).await.expect("agent stays connected and is answered");
    assert_eq!(&reply.instance_uid, a.uid().as_bytes());
}

pub(crate) async fn heartbeat(a: &mut SimAgent) {
    a.send(AgentToServer::default()).await.expect("send heartbeat");
}

/// Lets `d` pass at once on tokio's clock, which every gateway timer and
/// timestamp reads: the timers it covers fire now, and their tasks run
/// before this returns, while sockets keep real time. Needs a current-thread
/// runtime. Not `start_paused`: a paused clock also jumps whenever the
/// runtime idles, including while loopback bytes are in flight, which can
/// fire a timeout early.
pub(crate) async fn skip(d: Duration) {
    tokio::time::pause();
    tokio::time::advance(d).await;
    // Idle once more, with the clock still held, so the woken tasks run.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::resume();
}

/// For internal state that has no change signal: poll it, bounded.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
