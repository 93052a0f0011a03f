//! Harness: a reference server in a chosen JSON encoding and a gateway wired
//! to it (the pattern of tests/relay/common.rs), plus the macro that runs a
//! scenario in both encodings.

use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{AgentToServer, ServerToAgent};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{JsonEncoding, ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

/// Generous bound for anything that should happen "promptly" on loopback.
pub(crate) const T: Duration = Duration::from_secs(10);

/// Runs `async fn $name(JsonEncoding)` once per server encoding, as the
/// tests `$name::rust` and `$name::go`.
macro_rules! both_encodings {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust() {
                super::$name(opamp_gateway::sim::server::JsonEncoding::Rust).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn go() {
                super::$name(opamp_gateway::sim::server::JsonEncoding::Go).await
            }
        }
    )*};
}
pub(crate) use both_encodings;

/// Like the reference's test server: no automatic replies (tests push what
/// they want), no custom capabilities unless a test sets them.
pub(crate) fn server_config(json: JsonEncoding) -> ReferenceServerConfig {
    ReferenceServerConfig { json, reply_to_messages: false, custom_capabilities: Vec::new(), ..Default::default() }
}

/// A config pointing at `server_url`, with a loopback listener and short
/// reconnect timers.
pub(crate) fn config(server_url: &str) -> Config {
    let mut c = Config::from_yaml(&format!(
        "server:\n  endpoint: {server_url}\n  reconnect: {{ initial_interval: 50ms, max_interval: 500ms }}\nlistener:\n  endpoint: 127.0.0.1:0\n"
    ))
    .expect("test config is valid");
    c.policies.directory = "/nonexistent/opamp-gateway-conformance-policies".into();
    c
}

pub(crate) struct Harness {
    pub server: ReferenceServer,
    pub gateway: Gateway,
}

impl Harness {
    /// The reference tests' harness: a server and a gateway with `links`
    /// upstream connections, all of them connected.
    pub(crate) async fn start(json: JsonEncoding, links: usize) -> Self {
        Self::with(server_config(json), |c| c.server.connections = links).await
    }

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

    /// A connected agent that has spoken once, so the server knows it.
    pub(crate) async fn agent(&self) -> SimAgent {
        let mut a = SimAgent::connect(self.agent_options()).await.expect("agent connects");
        self.announce(&mut a).await;
        a
    }

    /// Sends a message from `a` and waits until the server has it.
    pub(crate) async fn announce(&self, a: &mut SimAgent) {
        self.send(a, a.status_report()).await;
    }

    pub(crate) async fn send(&self, a: &mut SimAgent, msg: AgentToServer) {
        let uid = a.uid().as_bytes().clone();
        let before = self.server.state().agent(&uid).map_or(0, |r| r.messages);
        a.send(msg).await.expect("send");
        self.server
            .wait_until(T, |s| s.agent(&uid).is_some_and(|r| r.messages > before))
            .await
            .expect("the server got the agent's message");
    }

    /// The server sends `msg` to `a` (on the link `a` last spoke on); returns
    /// what `a` receives.
    pub(crate) async fn push(&self, a: &mut SimAgent, msg: ServerToAgent) -> ServerToAgent {
        assert!(self.server.push(a.uid().as_bytes(), msg), "the server knows the agent");
        let got = a.recv(T).await.expect("the agent receives the server's message");
        assert_eq!(&got.instance_uid, a.uid().as_bytes(), "addressed to this agent");
        got
    }

    /// The server connection `a`'s messages arrive on.
    pub(crate) fn conn_of(&self, a: &SimAgent) -> u64 {
        self.server.state().agent(a.uid().as_bytes()).expect("the server knows the agent").conn_id
    }

    pub(crate) fn loads(&self) -> Vec<u32> {
        self.gateway.inspect().loads()
    }
}

/// For internal state that has no change signal: poll it, bounded.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// First value of header `name` in a refused upgrade's headers.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}
