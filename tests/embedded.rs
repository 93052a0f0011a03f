//! A gateway embedded in an application (`Gateway::builder`): config built
//! in code, a socket the application bound, a native policy ahead of the
//! Wasm ones (kept through a reload), and a shutdown future.

#[path = "policy_support/mod.rs"]
mod policy_support;

use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::policy::{HeaderList, HookError, Hooks, Policy};
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use policy_support::{applied, install, wait_for};

const T: Duration = Duration::from_secs(20);

/// Stamps `x-embedded: <value>` on every connect handshake.
struct Stamp(&'static str);

impl Policy for Stamp {
    fn name(&self) -> &str {
        "stamp"
    }
    fn hooks(&self) -> Hooks {
        Hooks { forward_headers: true, ..Hooks::default() }
    }
    fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, HookError> {
        let mut headers = headers.to_vec();
        headers.push(("x-embedded".into(), self.0.into()));
        Ok(headers)
    }
}

fn config(server: &ReferenceServer, dir: &std::path::Path) -> Config {
    let mut c = Config::new(server.url());
    c.server.reconnect.initial_interval = Duration::from_millis(50);
    c.listener.endpoint = "127.0.0.1:1".into(); // never bound: the builder gets a socket
    c.policies = policy_support::config(dir, true);
    c
}

/// The `x-embedded` values the server saw on its latest connect request.
fn stamped(server: &ReferenceServer) -> Vec<String> {
    let (_, req) = server.state().connect_requests.last().cloned().expect("a connect request");
    req.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("x-embedded")).flat_map(|(_, v)| v.clone()).collect()
}

async fn agent(url: &str) -> SimAgent {
    let mut a = SimAgent::connect(AgentOptions::new(url)).await.expect("agent connects");
    a.send(AgentToServer::default()).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_policy_on_a_pre_bound_listener_survives_a_wasm_reload() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = tcp.local_addr().unwrap();
    let g = Gateway::builder(config(&server, dir.path()))
        .listener(tcp)
        .policy(Arc::new(Stamp("yes")))
        .start()
        .await
        .expect("gateway starts");
    assert_eq!(g.listen_addr(), bound, "serves the socket it was given");
    assert!(g.wait_for_links(3, T).await);
    assert!(g.policies().loaded().is_empty(), "native policies are not the directory's");

    let _a = agent(&g.agent_url()).await;
    assert_eq!(stamped(&server), ["yes"]);

    // A Wasm policy arrives; the native one stays, ahead of it.
    let mut status = g.policies().subscribe();
    install(dir.path(), "redact_secrets", "redact", None);
    wait_for(&mut status, "reload", |s| applied(s).is_some_and(|names| names == ["redact"])).await;
    let chain: Vec<String> = g.policies().policies().snapshot().names().map(str::to_owned).collect();
    assert_eq!(chain, ["stamp", "redact"]);
    let _b = agent(&g.agent_url()).await;
    assert_eq!(stamped(&server), ["yes"], "still applied after the reload");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_the_shutdown_future_resolves() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = Gateway::builder(config(&server, dir.path())).listener(tcp).policy(Arc::new(Stamp("run"))).run(async {
        let _ = stopped.await;
    });
    let run = tokio::spawn(run);
    server.wait_until(T, |s| s.open_connections == 3).await.expect("links up");

    let mut a = agent(&format!("ws://{addr}/v1/opamp")).await;
    assert_eq!(stamped(&server), ["run"]);
    stop.send(()).unwrap();
    assert_eq!(a.recv_close(T).await.unwrap().code, Some(1001), "closed as at any shutdown");
    drop(a);
    tokio::time::timeout(T, run).await.expect("run returns").unwrap().expect("ran cleanly");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
    server.wait_until(T, |s| s.open_connections == 0).await.expect("links closed");
}
