//! Named upstreams (`upstreams:`): an `assign` policy routes agents to one
//! of several OpAMP servers, and after a policy reload connected agents
//! follow their new route live. Here the policy is native (a switch the test
//! flips); `tests/routing.rs` does the same with the Wasm router example.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use opamp_gateway::config::{Config, ServerConfig};
use opamp_gateway::policy::{AssignInput, HookError, Hooks, Policy, Route};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ConnectMode, ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

use crate::common::{config, eventually, round_trip, round_trip_past_moves, T};

/// Sends `x-tenant: acme` to the `green` upstream while switched on and
/// green has a link up (as the router example does); no opinion otherwise
/// (the default upstream).
struct TenantRoute {
    on: AtomicBool,
}

impl Policy for TenantRoute {
    fn name(&self) -> &str {
        "tenant-route"
    }
    fn hooks(&self) -> Hooks {
        Hooks { assign: true, ..Hooks::default() }
    }
    fn assign(&self, input: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        let acme = input.headers.iter().any(|(n, v)| n == "x-tenant" && v == "acme");
        let green_up = input.upstreams.iter().any(|u| u.name == "green" && u.links.iter().any(|l| l.connected));
        Ok((acme && green_up && self.on.load(Ordering::Relaxed)).then(|| Route::upstream("green")))
    }
}

struct Setup {
    blue: ReferenceServer,
    green: ReferenceServer,
    gateway: Gateway,
    route: Arc<TenantRoute>,
}

/// Blue is `server` (3 links), green a named upstream (2 links).
async fn setup(routing: bool) -> Setup {
    let blue = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("blue starts");
    let green = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("green starts");
    let mut cfg = config(&blue.url());
    cfg.upstreams.insert("green".into(), green_config(&green.url()));
    let route = Arc::new(TenantRoute { on: AtomicBool::new(routing) });
    let gateway = Gateway::builder(cfg).policy(route.clone()).start().await.expect("gateway starts");
    assert!(gateway.wait_for_links(5, T).await, "links did not connect");
    blue.wait_until(T, |s| s.open_connections == 3).await.expect("blue filed its links");
    green.wait_until(T, |s| s.open_connections == 2).await.expect("green filed its links");
    Setup { blue, green, gateway, route }
}

fn green_config(url: &str) -> ServerConfig {
    let mut s = ServerConfig { endpoint: url.into(), connections: 2, ..ServerConfig::default() };
    s.reconnect.initial_interval = std::time::Duration::from_millis(50);
    s.reconnect.max_interval = std::time::Duration::from_millis(500);
    s
}

async fn agents(g: &Gateway, tenant: &str, n: usize) -> Vec<SimAgent> {
    let mut out = Vec::new();
    for _ in 0..n {
        let opts = AgentOptions::new(g.agent_url()).header("x-tenant", tenant);
        let mut a = SimAgent::connect(opts).await.expect("agent connects");
        round_trip(&mut a).await;
        out.push(a);
    }
    out
}

fn knows(server: &ReferenceServer, a: &SimAgent) -> bool {
    server.state().agent(a.uid().as_bytes()).is_some()
}

fn goodbyes(server: &ReferenceServer, a: &SimAgent) -> u32 {
    server.state().agent(a.uid().as_bytes()).map_or(0, |r| r.disconnected)
}

fn upstream_loads(g: &Gateway) -> Vec<u32> {
    g.inspect().upstream_loads().into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_picks_the_upstream_at_connect_time() {
    let s = setup(true).await;
    let acme = agents(&s.gateway, "acme", 4).await;
    let other = agents(&s.gateway, "globex", 3).await;
    let view = s.gateway.inspect();
    assert_eq!(view.upstream_loads(), vec![("default".to_owned(), 3), ("green".to_owned(), 4)]);
    for a in &acme {
        assert!(knows(&s.green, a) && !knows(&s.blue, a), "acme goes to green only");
        assert_eq!(view.route_upstream(a.uid().as_bytes()).as_deref(), Some("green"));
    }
    for a in &other {
        assert!(knows(&s.blue, a) && !knows(&s.green, a), "no opinion: the default upstream");
    }
    // Least connections within green: its two links share the four.
    assert_eq!(&view.loads()[3..], [2, 2]);
    // Green sees the pool's own connection ids, as blue does.
    let ids: Vec<_> = s
        .green
        .state()
        .connections
        .iter()
        .filter_map(|c| c.header("x-opamp-gateway-connection-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.starts_with("upstream-")), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_rerouted_agents_live_and_back() {
    let s = setup(false).await;
    let mut acme = agents(&s.gateway, "acme", 4).await;
    let mut other = agents(&s.gateway, "globex", 2).await;
    assert_eq!(upstream_loads(&s.gateway), [6, 0], "no route yet: all on the default upstream");

    s.route.on.store(true, Ordering::Relaxed);
    s.gateway.reroute();
    eventually("acme moved to green", || upstream_loads(&s.gateway) == [2, 4]).await;
    for a in &mut acme {
        round_trip_past_moves(a).await; // the same connection, answered by green now
        assert!(knows(&s.green, a));
    }
    s.blue
        .wait_until(T, |st| acme.iter().all(|a| st.agent(a.uid().as_bytes()).is_some_and(|r| r.disconnected == 1)))
        .await
        .expect("blue was told each acme agent left");
    for a in &mut other {
        round_trip(a).await;
        assert_eq!(goodbyes(&s.blue, a), 0, "agents whose route did not change are left alone");
        assert!(!knows(&s.green, a));
    }

    // The route goes away: no opinion means the default upstream again.
    s.route.on.store(false, Ordering::Relaxed);
    s.gateway.reroute();
    eventually("acme moved back", || upstream_loads(&s.gateway) == [6, 0]).await;
    for a in &mut acme {
        round_trip_past_moves(a).await;
    }
    s.green
        .wait_until(T, |st| acme.iter().all(|a| st.agent(a.uid().as_bytes()).is_some_and(|r| r.disconnected == 1)))
        .await
        .expect("green was told each acme agent left");
    assert_eq!(s.blue.state().connections.iter().filter(|c| c.open).count(), 3, "no link was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_by_the_new_server_leaves_the_agent_where_it_was() {
    let s = setup(false).await;
    let mut acme = agents(&s.gateway, "acme", 3).await;
    s.green.set_connect_mode(ConnectMode::Reject { status: 403, headers: Default::default() });
    s.route.on.store(true, Ordering::Relaxed);
    s.gateway.reroute();
    let view = s.gateway.inspect();
    eventually("every move was tried and refused", || view.agents_staying() == 3).await;
    assert_eq!(s.green.state().connects_rejected, 3);
    assert_eq!(upstream_loads(&s.gateway), [3, 0]);
    for a in &mut acme {
        round_trip(a).await;
        assert_eq!(goodbyes(&s.blue, a), 0, "it never left blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sent_home_while_their_upstream_was_away_return_when_it_is_back() {
    let s = setup(true).await;
    let mut acme = agents(&s.gateway, "acme", 3).await;
    assert_eq!(upstream_loads(&s.gateway), [0, 3]);
    s.green.set_accepting(false);
    s.green.drop_connections();
    eventually("acme failed over to the default upstream", || upstream_loads(&s.gateway) == [3, 0]).await;
    for a in &mut acme {
        round_trip_past_moves(a).await;
    }
    s.green.set_accepting(true);
    eventually("acme is back on green", || upstream_loads(&s.gateway) == [0, 3]).await;
    for a in &mut acme {
        round_trip_past_moves(a).await;
        assert_eq!(s.gateway.inspect().route_upstream(a.uid().as_bytes()).as_deref(), Some("green"));
    }
    s.blue
        .wait_until(T, |st| acme.iter().all(|a| st.agent(a.uid().as_bytes()).is_some_and(|r| r.disconnected == 1)))
        .await
        .expect("blue was told each agent went home");
}

/// Sends every agent to green, up or not.
struct AllToGreen;

impl Policy for AllToGreen {
    fn name(&self) -> &str {
        "all-to-green"
    }
    fn hooks(&self) -> Hooks {
        Hooks { assign: true, ..Hooks::default() }
    }
    fn assign(&self, _: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        Ok(Some(Route::upstream("green")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_no_link_up_refuses_what_is_routed_to_it() {
    let blue = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("blue starts");
    let mut cfg = config(&blue.url());
    // Nothing listens there: green never connects.
    cfg.upstreams.insert("green".into(), green_config("ws://127.0.0.1:9/v1/opamp"));
    let gateway = Gateway::builder(cfg).policy(Arc::new(AllToGreen)).start().await.expect("gateway starts");
    assert!(gateway.wait_for_links(3, T).await);
    let refused = SimAgent::connect(AgentOptions::new(gateway.agent_url())).await;
    match refused {
        Err(e) => assert!(e.to_string().contains("503"), "{e}"),
        Ok(_) => panic!("an agent routed to a down upstream must not go elsewhere"),
    }
    assert!(blue.state().connect_requests.is_empty(), "the default upstream was not asked");
}

#[test]
fn named_upstreams_are_validated_with_their_path() {
    let base = "server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\nupstreams:\n";
    let ok =
        Config::from_yaml(&format!("{base}  green:\n    endpoint: ws://127.0.0.1:2/v1/opamp\n    connections: 2\n"))
            .unwrap();
    assert_eq!(ok.upstreams["green"].connections, 2);
    for (bad, field) in [
        ("  default:\n    endpoint: ws://h/v1/opamp\n", "upstreams.default"),
        ("  \"a b\":\n    endpoint: ws://h/v1/opamp\n", "upstreams.a b"),
        ("  green:\n    connections: 2\n", "upstreams.green.endpoint"),
        ("  green:\n    endpoint: http://h/\n", "upstreams.green.endpoint"),
        ("  green:\n    endpoint: ws://h/\n    connections: 0\n", "upstreams.green.connections"),
        ("  green:\n    endpoint: ws://h/\n    bogus: 1\n", "upstreams.green"),
        ("  green:\n    endpoint: ws://h/\n    failover_wait: 5s\n", "upstreams.green.failover_wait"),
        ("  green:\n    endpoint: ws://h/\n    rebalance: { enabled: false }\n", "upstreams.green.rebalance"),
        ("  green:\n    endpoint: ws://h/\n    headers: { \"bad name\": x }\n", "upstreams.green.headers.bad name"),
    ] {
        let err = Config::from_yaml(&format!("{base}{bad}")).unwrap_err().to_string();
        assert!(err.contains(field), "{bad:?}: {err}");
    }
    let err = Config::from_yaml(&format!("{base}  green:\n    endpoint: ws://h/\n    failover_wait: 5s\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.failover_wait"), "the fix is named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_agent_follows_its_route_at_its_next_authentication() {
    use opamp_gateway::protocol::proto::AgentToServer;
    use prost::Message;

    let blue = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("blue starts");
    let green = ReferenceServer::start(ReferenceServerConfig::default()).await.expect("green starts");
    let mut cfg = config(&blue.url());
    cfg.upstreams.insert("green".into(), green_config(&green.url()));
    cfg.listener.http.auth_cache_ttl = std::time::Duration::ZERO; // every poll authenticates
    let route = Arc::new(TenantRoute { on: AtomicBool::new(false) });
    let gateway = Gateway::builder(cfg).policy(route.clone()).start().await.expect("gateway starts");
    assert!(gateway.wait_for_links(5, T).await);
    let uid = b"http-agent-00001".to_vec();
    let poll = || {
        let body = AgentToServer { instance_uid: uid.clone().into(), sequence_num: 1, ..Default::default() };
        crate::http::post(gateway.listen_addr(), &[("x-tenant", "acme")], body.encode_to_vec())
    };
    assert_eq!(poll().await.message().instance_uid, uid);
    assert!(blue.state().agent(&uid).is_some());
    route.on.store(true, Ordering::Relaxed);
    poll().await.message();
    assert!(green.state().agent(&uid).is_some(), "the poll went to green");
    blue.wait_until(T, |s| s.agent(&uid).is_some_and(|r| r.disconnected == 1))
        .await
        .expect("blue was told the agent left");
}
