//! A gateway embedded in an application, built in code with
//! `Gateway::builder`: a socket the application bound, a native policy
//! (compiled in) beside a Wasm one, and a shutdown future.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path policies/Cargo.toml -p header-allowlist
//! cargo run --example embedded -- policies/target/wasm32-wasip2/release/header_allowlist.wasm
//! ```
//!
//! Runs on loopback against the simulator's reference server: one agent
//! connects through the gateway with an `X-Debug` header; the server sees
//! the `X-Site` header the native policy stamped, and not `X-Debug`, which
//! the Wasm `header_allowlist` (it runs after the native policies) left
//! out. Then the shutdown future fires and `run` returns once the gateway
//! has drained. Without the `.wasm` argument only the native policy runs.
//! `scripts/test` runs it with the argument.

use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::policy::{HeaderList, HookError, Hooks, Policy};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

/// Tells the server which site this gateway serves, on every agent's
/// connect handshake.
struct StampSite(String);

impl Policy for StampSite {
    fn name(&self) -> &str {
        "stamp-site"
    }

    // Only the hooks announced here are called.
    fn hooks(&self) -> Hooks {
        Hooks { forward_headers: true, ..Hooks::default() }
    }

    fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, HookError> {
        let mut headers = headers.to_vec();
        headers.push(("x-site".into(), self.0.clone()));
        Ok(headers)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const T: Duration = Duration::from_secs(10);
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;

    // Everything a YAML file would say, in code; the rest keeps its default.
    let mut config = Config::new(server.url());
    config.server.connections = 1;
    // The Wasm policies' folder (hot-reloaded under the native policy when
    // `watch` is on): here one policy, copied in with its config.
    let policies = tempfile::tempdir()?;
    let wasm = std::env::args().nth(1);
    let with_wasm = wasm.is_some();
    if let Some(wasm) = wasm {
        std::fs::copy(&wasm, policies.path().join("header_allowlist.wasm"))
            .map_err(|e| anyhow::anyhow!("{wasm}: {e} (build it first: see this file's header)"))?;
        std::fs::write(policies.path().join("header_allowlist.yaml"), "allow: [x-site, user-agent]\n")?;
    }
    config.policies.directory = policies.path().to_owned();
    config.policies.watch = false;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_url = format!("ws://{}/v1/opamp", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = Gateway::builder(config)
        .listener(listener)
        .policy(Arc::new(StampSite("eu-west-1".into())))
        // A real application would wait for its own signal here.
        .run(async {
            let _ = stopped.await;
        });
    let gateway = tokio::spawn(gateway);
    server.wait_until(T, |s| s.open_connections == 1).await?;
    println!("gateway up, agents connect to {agent_url}");

    let mut agent = SimAgent::connect(AgentOptions::new(agent_url).header("X-Debug", "1")).await?;
    agent.send(agent.status_report()).await?;
    agent.recv(T).await?;
    let (_, request) = server.state().connect_requests.last().cloned().expect("one connect handshake");
    let (site, debug) = (request.headers.get("X-Site"), request.headers.get("X-Debug"));
    println!("the server saw X-Site: {site:?}, X-Debug: {debug:?}");
    // `scripts/test` runs this example: a wrong outcome fails it.
    anyhow::ensure!(site.is_some(), "the native policy's header did not reach the server");
    anyhow::ensure!(!with_wasm || debug.is_none(), "the Wasm allowlist did not drop X-Debug");

    stop.send(()).ok();
    let close = agent.recv_close(T).await?;
    println!("agent closed with {:?}; gateway stopping", close.code);
    drop(agent);
    gateway.await??;
    println!("gateway stopped");
    server.shutdown().await;
    Ok(())
}
