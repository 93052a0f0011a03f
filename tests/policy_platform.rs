//! The policy platform of WIT 0.3.0 through a real gateway on loopback,
//! with the real example components: `admit` (an answer the server never
//! hears of), lifecycle events and the shared state store (`tenant_quota`
//! frees slots on disconnect, on both transports, and keeps its counts
//! across a reload unless told to reset), `heartbeat_limiter`, and shadow
//! mode.
//!
//! The tests share one metrics recorder (process-wide): each uses its own
//! policy names. Lifecycle events are delivered after the fact, so a test
//! waits for the `on_disconnect` call to be counted before relying on it.

#[path = "support/observe.rs"]
mod observe;
#[path = "policy_support/mod.rs"]
mod policy_support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{AgentDisconnect, AgentToServer, ComponentHealth};
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use policy_support::{applied, atomic_write, install, wait_for};

const T: Duration = Duration::from_secs(20);
const KEY: (&str, &str) = ("authorization", "Secret-Key k");

fn observed() -> &'static observe::Observed {
    observe::install("warn,opamp_gateway::policy=debug")
}

async fn keyed_server() -> ReferenceServer {
    ReferenceServer::start(ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() }).await.unwrap()
}

async fn start(server: &ReferenceServer, dir: &Path) -> Gateway {
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  reconnect: {{ initial_interval: 50ms }}\nlistener:\n  endpoint: 127.0.0.1:0\n  \
         http:\n    response_wait: 100ms\n",
        server.url()
    ))
    .unwrap();
    cfg.policies = policy_support::config(dir, true);
    let g = Gateway::start(&cfg, Some(observed().metrics.clone())).await.expect("gateway starts with its policies");
    assert!(g.wait_for_links(3, T).await);
    g
}

fn opts(g: &Gateway, headers: &[(&str, &str)]) -> AgentOptions {
    headers.iter().fold(AgentOptions::new(g.agent_url()), |o, (k, v)| o.header(*k, *v))
}

async fn round_trip(a: &mut SimAgent) {
    a.send(AgentToServer::default()).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
}

/// The sum of metric `name` over the series whose labels include `labels`
/// (`key="value"` strings).
fn metric(name: &str, labels: &[&str]) -> f64 {
    observed()
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (bounded) until `metric(name, labels)` reaches `at_least`: the
/// lifecycle worker's calls are counted when they are done.
async fn wait_metric(name: &str, labels: &[&str], at_least: f64) {
    let reached = tokio::time::timeout(T, async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            if metric(name, labels) >= at_least {
                return;
            }
        }
    })
    .await;
    assert!(reached.is_ok(), "{name}{labels:?} stayed at {} (< {at_least})", metric(name, labels));
}

#[path = "support/http_poll.rs"]
mod http_poll;
use http_poll::post;

fn hello(uid: u8) -> AgentToServer {
    AgentToServer { instance_uid: Bytes::from(vec![uid; 16]), capabilities: 1, ..Default::default() }
}

fn rejected_with(e: Result<SimAgent, AgentError>) -> (u16, Vec<(String, String)>) {
    match e {
        Err(AgentError::Rejected { status, headers }) => (status, headers),
        other => panic!("expected an HTTP rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admit_answers_as_the_policy_says_and_the_server_never_hears_of_the_agent() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "source_allowlist", "a_allowlist", Some("allow: [10.0.0.0/8, \"fd00::/8\"]\n"));
    let g = start(&server, dir.path()).await;

    // WebSocket: 403 before any handshake; the server saw no connect request.
    let (status, _) = rejected_with(SimAgent::connect(opts(&g, &[KEY])).await);
    assert_eq!(status, 403);
    // HTTP: the policy's status and body, as text.
    let reply = post(g.listen_addr(), &[KEY], &hello(1)).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(&reply.body[..], b"this network may not connect to the OpAMP gateway");
    assert!(server.state().connect_requests.is_empty(), "a rejected agent costs the server nothing");
    let labels = ["policy=\"a_allowlist\"", "verdict=\"reject\"", "status=\"403\""];
    assert_eq!(metric("opampgateway_policy_admissions_total", &labels), 2.0);

    // The same policy allowing loopback: agents connect as before.
    let mut status = g.policies().subscribe();
    let generation = status.borrow().generation;
    atomic_write(&dir.path().join("a_allowlist.yaml"), b"allow: [127.0.0.0/8, \"::1\"]\n");
    wait_for(&mut status, "allowlist reloaded", |s| s.generation > generation && applied(s).is_some()).await;
    let mut a = SimAgent::connect(opts(&g, &[KEY])).await.unwrap();
    round_trip(&mut a).await;
    assert_eq!(server.state().connect_requests.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rejection_is_a_policy_failure_and_a_valid_one_keeps_its_headers() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "fixture_misbehave", "b_admit_misbehave", Some("hooks: [admit]\non_error: open\n"));
    let g = start(&server, dir.path()).await;

    // A 401 is the server's to give: refused, counted, the agent let in.
    let mut a = SimAgent::connect(opts(&g, &[KEY, ("x-misbehave", "bad")])).await.unwrap();
    round_trip(&mut a).await;
    let labels = ["policy=\"b_admit_misbehave\"", "hook=\"admit\"", "kind=\"invalid\""];
    assert_eq!(metric("opampgateway_policy_errors_total", &labels), 1.0);
    // A trap is a failure too (fail-open here).
    let mut b = SimAgent::connect(opts(&g, &[KEY, ("x-misbehave", "trap")])).await.unwrap();
    round_trip(&mut b).await;
    // A valid rejection: its status and its own headers.
    let (status, headers) = rejected_with(SimAgent::connect(opts(&g, &[KEY, ("x-misbehave", "reject")])).await);
    assert_eq!(status, 403);
    assert!(headers.contains(&("x-why".to_owned(), "misbehave".to_owned())), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quota_caps_each_tenant_and_frees_slots_on_disconnect() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "tenant_quota", "c_quota", Some("header: x-tenant\nmax_agents: 2\n"));
    let g = start(&server, dir.path()).await;
    let disconnects =
        |n: f64| wait_metric("opampgateway_policy_calls_total", &["policy=\"c_quota\"", "hook=\"on_disconnect\""], n);

    // WebSocket: two of tenant acme, then 429; other tenants are apart.
    let mut acme = Vec::new();
    for _ in 0..2 {
        let mut a = SimAgent::connect(opts(&g, &[KEY, ("x-tenant", "acme")])).await.unwrap();
        round_trip(&mut a).await;
        acme.push(a);
    }
    let (status, _) = rejected_with(SimAgent::connect(opts(&g, &[KEY, ("x-tenant", "acme")])).await);
    assert_eq!(status, 429);
    let mut other = SimAgent::connect(opts(&g, &[KEY, ("x-tenant", "globex")])).await.unwrap();
    round_trip(&mut other).await;
    // One leaves: its slot frees once `on-disconnect` ran.
    acme.pop().unwrap().say_goodbye().await.unwrap();
    disconnects(1.0).await;
    let mut again = SimAgent::connect(opts(&g, &[KEY, ("x-tenant", "acme")])).await.unwrap();
    round_trip(&mut again).await;

    // An agent the quota counted but the server refused gives its slot back
    // (`not-admitted`): two refusals, then both slots are still free.
    for _ in 0..2 {
        let (status, _) = rejected_with(SimAgent::connect(opts(&g, &[("x-tenant", "initech")])).await);
        assert_eq!(status, 401, "the server's refusal");
    }
    disconnects(3.0).await;
    for _ in 0..2 {
        let mut a = SimAgent::connect(opts(&g, &[KEY, ("x-tenant", "initech")])).await.unwrap();
        round_trip(&mut a).await;
        acme.push(a);
    }

    // HTTP agents count once (not per poll) and free the slot on goodbye.
    let addr = g.listen_addr();
    let web = [KEY, ("x-tenant", "web")];
    for uid in [1, 2] {
        assert_eq!(post(addr, &web, &hello(uid)).await.status, 200);
        assert_eq!(post(addr, &web, &hello(uid)).await.status, 200, "a poll is not a new agent");
    }
    let refused = post(addr, &web, &hello(3)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(String::from_utf8_lossy(&refused.body), "tenant web has its 2 agents connected");
    let bye = AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..hello(1) };
    assert_eq!(post(addr, &web, &bye).await.status, 200);
    disconnects(4.0).await;
    assert_eq!(post(addr, &web, &hello(3)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_state_survives_a_reload_unless_the_yaml_resets_it() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "tenant_quota", "d_quota", Some("max_agents: 1\n"));
    let g = start(&server, dir.path()).await;
    let mut status = g.policies().subscribe();
    let generation = status.borrow().generation;
    let tenant = [KEY, ("x-tenant", "t")];
    let mut first = SimAgent::connect(opts(&g, &tenant)).await.unwrap();
    round_trip(&mut first).await;
    assert_eq!(rejected_with(SimAgent::connect(opts(&g, &tenant)).await).0, 429);

    // A new config, same name: the count is kept.
    atomic_write(&dir.path().join("d_quota.yaml"), b"max_agents: 1\nslot_ttl: 12h\n");
    let kept = wait_for(&mut status, "reload", |s| s.generation > generation && applied(s).is_some()).await;
    assert_eq!(rejected_with(SimAgent::connect(opts(&g, &tenant)).await).0, 429, "state kept across the reload");

    // `state: reset`: a fresh store.
    atomic_write(&dir.path().join("d_quota.yaml"), b"max_agents: 1\nstate: reset\n");
    wait_for(&mut status, "reset", |s| s.generation > kept.generation && applied(s).is_some()).await;
    let mut second = SimAgent::connect(opts(&g, &tenant)).await.unwrap();
    round_trip(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_limiter_drops_heartbeats_but_never_state_and_keeps_the_sequence() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "heartbeat_limiter", "e_heartbeats", Some("min_interval: 1h\n"));
    let g = start(&server, dir.path()).await;
    let mut a = SimAgent::connect(opts(&g, &[KEY])).await.unwrap();
    round_trip(&mut a).await; // seq 0: the first message passes
    for _ in 0..3 {
        a.send(AgentToServer::default()).await.unwrap(); // seq 1-3: heartbeats, dropped
    }
    let status =
        AgentToServer { health: Some(ComponentHealth { healthy: true, ..Default::default() }), ..Default::default() };
    a.send(status).await.unwrap(); // seq 4: a status, always passes
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
    let seen = server.state().agent(a.uid().as_bytes()).unwrap().clone();
    assert_eq!(seen.messages, 2, "three heartbeats dropped");
    assert!(seen.last.health.is_some());
    assert_eq!(seen.last.sequence_num, 1, "renumbered: the server sees no gap");
    assert_eq!(seen.out_of_order, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_are_called_and_counted_but_never_applied() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "source_allowlist", "f_shadow_allowlist", Some("allow: [10.0.0.0/8]\nmode: shadow\n"));
    install(dir.path(), "fixture_misbehave", "f_shadow_filter", Some("filter: drop\nmode: shadow\non_error: closed\n"));
    let g = start(&server, dir.path()).await;

    let mut a = SimAgent::connect(opts(&g, &[KEY])).await.expect("a shadow rejection is not applied");
    round_trip(&mut a).await; // and a shadow `drop` neither
    round_trip(&mut a).await;
    assert_eq!(server.state().agent(a.uid().as_bytes()).unwrap().messages, 2);
    let shadow = "opampgateway_policy_shadow_verdicts_total";
    assert_eq!(metric(shadow, &["policy=\"f_shadow_allowlist\"", "hook=\"admit\"", "verdict=\"reject\""]), 1.0);
    assert!(metric(shadow, &["policy=\"f_shadow_filter\"", "hook=\"filter\"", "verdict=\"drop\""]) >= 2.0);
    assert_eq!(metric("opampgateway_policy_admissions_total", &["policy=\"f_shadow_allowlist\""]), 0.0);
    let logged = observed().log_lines(&["f_shadow_allowlist", "shadow verdict"]);
    assert!(!logged.is_empty(), "logged at debug");
}
