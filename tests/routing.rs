//! Routing across OpAMP servers, end to end: two reference servers ("blue",
//! the gateway's `server`, and "green", a named upstream), a gateway with a
//! watched policy folder, and the real `upstream_router` component dropped
//! into it while agents are connected. Beside it, the 0.2.0 build of
//! `tenant_affinity` keeps loading and answering links of the default
//! upstream.

mod policy_support;

use std::path::Path;
use std::time::Duration;

use opamp_gateway::config::{Config, ServerConfig};
use opamp_gateway::policy::runtime::ReloadOutcome;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ConnectMode, ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use policy_support::{applied, atomic_write, install, wait_for};

#[path = "support/gateway_process.rs"]
mod gateway_process;

const T: Duration = Duration::from_secs(10);

fn compat_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat/tenant_affinity-0.2.0.wasm")
}

struct Setup {
    blue: ReferenceServer,
    green: ReferenceServer,
    gateway: Gateway,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let blue = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let green = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Named to come after the router in the chain (file-name order): it
    // decides for the agents the router has no opinion on.
    atomic_write(&dir.path().join("zz_affinity.wasm"), &std::fs::read(compat_fixture()).unwrap());
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  reconnect: {{ initial_interval: 50ms, max_interval: 500ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\n",
        blue.url()
    ))
    .unwrap();
    cfg.upstreams.insert("green".into(), ServerConfig { endpoint: green.url(), connections: 2, ..Default::default() });
    cfg.policies = policy_support::config(dir.path(), true);
    let gateway = Gateway::start(&cfg, None).await.expect("gateway starts");
    assert!(gateway.wait_for_links(5, T).await);
    blue.wait_until(T, |s| s.open_connections == 3).await.unwrap();
    green.wait_until(T, |s| s.open_connections == 2).await.unwrap();
    Setup { blue, green, gateway, dir }
}

async fn agent(g: &Gateway, tenant: &str) -> SimAgent {
    let mut a = SimAgent::connect(AgentOptions::new(g.agent_url()).header("X-Tenant", tenant)).await.unwrap();
    round_trip(&mut a).await;
    a
}

/// A status report and its reply, past any full-state request a move sent.
async fn round_trip(a: &mut SimAgent) {
    let reply = a.answered(T).await.expect("the agent is still connected and answered");
    assert_eq!(&reply.instance_uid, a.uid().as_bytes());
}

fn upstream_loads(g: &Gateway) -> Vec<u32> {
    g.inspect().upstream_loads().into_iter().map(|(_, n)| n).collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn goodbyes(server: &ReferenceServer, a: &SimAgent) -> u32 {
    server.state().agent(a.uid().as_bytes()).map_or(0, |r| r.disconnected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_router_in_moves_a_tenant_live_and_a_0_2_component_keeps_working() {
    let s = setup().await;
    let names: Vec<_> = s.gateway.policies().loaded().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["zz_affinity"], "the 0.2.0 component loads");

    let mut acme = Vec::new();
    let mut globex = Vec::new();
    for _ in 0..4 {
        acme.push(agent(&s.gateway, "acme").await);
        globex.push(agent(&s.gateway, "globex").await);
    }
    assert_eq!(upstream_loads(&s.gateway), [8, 0], "no router yet: everyone on blue");
    // The 0.2.0 policy's answer is a link of the default upstream: one
    // tenant, one link.
    let view = s.gateway.inspect();
    let acme_links: Vec<_> = acme.iter().map(|a| view.route_link(a.uid().as_bytes()).unwrap()).collect();
    assert!(acme_links.iter().all(|&l| l == acme_links[0] && l < 3), "{acme_links:?}");

    let mut reloads = s.gateway.policies().subscribe();
    install(s.dir.path(), "upstream_router", "router", Some("header: x-tenant\nroute: [acme=green]\n"));
    wait_for(&mut reloads, "the router is applied", |st| {
        applied(st).is_some_and(|names| names == ["router", "zz_affinity"])
    })
    .await;

    eventually("acme moved to green", || upstream_loads(&s.gateway) == [4, 4]).await;
    for a in &mut acme {
        round_trip(a).await; // the same connection: no agent was disconnected
        assert!(s.green.state().agent(a.uid().as_bytes()).is_some(), "green learned the agent");
        assert_eq!(view.route_upstream(a.uid().as_bytes()).as_deref(), Some("green"));
    }
    s.blue
        .wait_until(T, |st| acme.iter().all(|a| st.agent(a.uid().as_bytes()).is_some_and(|r| r.disconnected == 1)))
        .await
        .expect("blue is told each acme agent left, without waiting for a timeout");
    for a in &mut globex {
        round_trip(a).await;
        assert_eq!(goodbyes(&s.blue, a), 0, "globex's route did not change: it stays, untouched");
    }

    // Routing at connect time.
    let late = agent(&s.gateway, "acme").await;
    assert_eq!(view.route_upstream(late.uid().as_bytes()).as_deref(), Some("green"));
    assert!(s.blue.state().agent(late.uid().as_bytes()).is_none(), "blue never hears of it");

    // Green now refuses; the router sends globex there too: they stay.
    s.green.set_connect_mode(ConnectMode::Reject { status: 403, headers: Default::default() });
    let rejected_before = s.green.state().connects_rejected;
    let generation = reloads.borrow().generation;
    install(s.dir.path(), "upstream_router", "router", Some("header: x-tenant\nroute: [acme=green, globex=green]\n"));
    wait_for(&mut reloads, "the new route is applied", |st| {
        st.generation > generation && matches!(st.outcome, ReloadOutcome::Applied(_))
    })
    .await;
    eventually("each globex agent was refused by green and stayed", || view.agents_staying() >= 4).await;
    assert!(s.green.state().connects_rejected >= rejected_before + 4);
    assert_eq!(upstream_loads(&s.gateway), [4, 5]);
    for a in &mut globex {
        round_trip(a).await;
        assert_eq!(goodbyes(&s.blue, a), 0, "a refused move leaves the agent where it was");
    }
}

/// The value of the sample of `name` whose labels include every `labels` pair.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (rest.starts_with('{') && all).then(|| value.parse().ok()).flatten()
    })
}

/// The binary, as operators run it: named upstreams in `/healthz`, agents
/// per upstream and migrations in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_upstreams_in_health_and_metrics() {
    let blue = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let green = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "upstream_router", "router", Some("header: x-tenant\nroute: [acme=green]\n"));
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let yaml = format!(
        "server:\n  endpoint: {}\n  connections: 1\nupstreams:\n  green:\n    endpoint: {}\n    connections: 2\n\
         listener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n\
         policies:\n  directory: {}\n  watch: true\n  cache_dir: {}\n",
        blue.url(),
        green.url(),
        dir.path().display(),
        cache.display()
    );
    let gw = gateway_process::GatewayProcess::spawn(&yaml).await;
    let get = |path: &'static str| async move { opamp_gateway::sim::http_get(gw.metrics, path).await.unwrap().1 };
    let healthy = "1/1 upstream links connected\nupstream green: 2/2 links connected\n";
    let deadline = tokio::time::Instant::now() + T;
    while get("/healthz").await != healthy {
        assert!(tokio::time::Instant::now() < deadline, "links never came up: {:?}", get("/healthz").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("ws://{}/v1/opamp", gw.listener);
    let mut a = SimAgent::connect(AgentOptions::new(url).header("X-Tenant", "acme")).await.unwrap();
    round_trip(&mut a).await;
    assert!(green.state().agent(a.uid().as_bytes()).is_some());
    let body = get("/metrics").await;
    assert_eq!(sample(&body, "opampgateway_upstream_agents", &[("upstream", "green")]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "opampgateway_upstream_agents", &[("upstream", "default")]), Some(0.0));
    assert_eq!(
        sample(&body, "opampgateway_link_agents", &[("upstream", "green"), ("link", "upstream-1")]),
        Some(0.0),
        "links are numbered within their upstream"
    );
    assert!(sample(&body, "opampgateway_upstream_reconnects_total", &[("upstream", "green"), ("outcome", "success")])
        .is_some_and(|n| n >= 2.0));

    // The route is removed: the agent goes back to the default upstream.
    atomic_write(&dir.path().join("router.yaml"), b"header: x-tenant\nroute: [initech=green]\n");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let body = get("/metrics").await;
        let moved =
            sample(&body, "opampgateway_upstream_migrations_total", &[("upstream", "default"), ("outcome", "moved")]);
        if moved == Some(1.0) {
            assert_eq!(sample(&body, "opampgateway_upstream_agents", &[("upstream", "default")]), Some(1.0));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no migration counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_trip(&mut a).await;
}
