//! A gateway embedded in an application, built in code with
//! `Gateway::builder`: a socket the application bound, a native policy
//! (compiled in, beside any Wasm ones) and a shutdown future.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! Runs on loopback against the simulator's reference server: one agent
//! connects through the gateway, the server shows the header the native
//! policy stamped, then the shutdown future fires and `run` returns once
//! the gateway has drained.

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

    fn forward_headers(&self, mut headers: HeaderList) -> Result<HeaderList, HookError> {
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
    // No Wasm policies in this example (a directory of `.wasm` files would
    // run after the native policy, and could be reloaded under it).
    config.policies.directory = std::env::temp_dir().join("opamp-gateway-embedded-example-no-policies");
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

    let mut agent = SimAgent::connect(AgentOptions::new(agent_url)).await?;
    agent.send(agent.status_report()).await?;
    agent.recv(T).await?;
    let (_, request) = server.state().connect_requests.last().cloned().expect("one connect handshake");
    println!("the server saw X-Site: {:?}", request.headers.get("X-Site"));

    stop.send(()).ok();
    let close = agent.recv_close(T).await?;
    println!("agent closed with {:?}; gateway stopping", close.code);
    drop(agent);
    gateway.await??;
    println!("gateway stopped");
    server.shutdown().await;
    Ok(())
}
