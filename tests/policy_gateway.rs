//! Policies through the real gateway, on loopback: each example changes what
//! the upstream server or the agent observes; the set is swapped under load
//! without losing a message; misbehaving code is contained.

#[path = "policy_support/mod.rs"]
mod policy_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::config::Config;
use opamp_gateway::policy::runtime::{ReloadOutcome, ReloadStatus};
use opamp_gateway::protocol::proto::{
    AgentConfigFile, AgentConfigMap, AgentToServer, EffectiveConfig, PackageAvailable, PackagesAvailable, ServerToAgent,
};
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use policy_support::{applied, atomic_write, install, wait_for};

const T: Duration = Duration::from_secs(20);

fn example_yaml(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("policies/examples/{name}/{name}.yaml"));
    std::fs::read_to_string(p).unwrap()
}

async fn start(server: &ReferenceServer, dir: &Path) -> Gateway {
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  reconnect: {{ initial_interval: 50ms }}\nlistener:\n  endpoint: 127.0.0.1:0\n",
        server.url()
    ))
    .unwrap();
    cfg.policies = policy_support::config(dir, true);
    let g = Gateway::start(&cfg, None).await.expect("gateway starts with its policies");
    assert!(g.wait_for_links(3, T).await);
    g
}

/// A reference server that authenticates agents by `Authorization: Secret-Key k`.
async fn keyed_server() -> ReferenceServer {
    ReferenceServer::start(ReferenceServerConfig { secret_key: Some("k".into()), ..Default::default() }).await.unwrap()
}

async fn round_trip(a: &mut SimAgent) {
    a.send(AgentToServer::default()).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
}

fn opts(g: &Gateway, headers: &[(&str, &str)]) -> AgentOptions {
    let mut o = AgentOptions::new(g.agent_url());
    for (k, v) in headers {
        o = o.header(*k, *v);
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_change_what_the_server_and_agents_see() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["block_packages", "header_allowlist", "redact_secrets", "tenant_affinity"] {
        install(dir.path(), name, name, Some(&example_yaml(name)));
    }
    let g = start(&server, dir.path()).await;

    // header_allowlist: only allowed headers reach the server's connect.
    let key = ("Authorization", "Secret-Key k");
    let mut a = SimAgent::connect(opts(&g, &[key, ("x-tenant", "blue"), ("x-internal-token", "t0p")])).await.unwrap();
    round_trip(&mut a).await;
    let (_, req) = server.state().connect_requests.last().cloned().unwrap();
    assert_eq!(req.headers["Authorization"], ["Secret-Key k"], "allowed, and the server still authenticates");
    assert_eq!(req.headers["X-Tenant"], ["blue"]);
    assert!(!req.headers.contains_key("X-Internal-Token"), "{:?}", req.headers.keys());
    assert!(!req.headers.contains_key("Sec-Websocket-Key"));

    // tenant_affinity: one tenant, one link; the default spreads the others.
    let mut blue = vec![a];
    for _ in 0..3 {
        let mut b = SimAgent::connect(opts(&g, &[key, ("x-tenant", "blue")])).await.unwrap();
        round_trip(&mut b).await;
        blue.push(b);
    }
    let state = server.state();
    let link_of = |a: &SimAgent| state.agent(a.uid().as_bytes()).unwrap().conn_id;
    assert!(blue.iter().all(|b| link_of(b) == link_of(&blue[0])), "same tenant, same link");
    assert_eq!(g.inspect().loads().iter().filter(|&&l| l > 0).count(), 1);
    let mut plain = Vec::new();
    for _ in 0..2 {
        let mut p = SimAgent::connect(opts(&g, &[key])).await.unwrap();
        round_trip(&mut p).await;
        plain.push(p);
    }
    assert_eq!(g.inspect().loads().iter().filter(|&&l| l > 0).count(), 3, "no tenant: least connections");

    // redact_secrets: secrets never leave the segment.
    let mut files = std::collections::HashMap::new();
    let body = "exporters:\n  otlp:\n    headers:\n      api-key: abc123\n    password: hunter2\nservice: {}\n";
    files.insert(String::new(), AgentConfigFile { body: Bytes::from(body), content_type: "text/yaml".into() });
    let a = &mut blue[0];
    a.send(AgentToServer {
        effective_config: Some(EffectiveConfig { config_map: Some(AgentConfigMap { config_map: files }) }),
        ..Default::default()
    })
    .await
    .unwrap();
    a.recv(T).await.unwrap();
    let seen = server.state().agent(a.uid().as_bytes()).unwrap().last.clone();
    let seen =
        String::from_utf8(seen.effective_config.unwrap().config_map.unwrap().config_map[""].body.to_vec()).unwrap();
    assert!(!seen.contains("hunter2") && !seen.contains("abc123"), "{seen}");
    assert!(seen.contains("<redacted>") && seen.contains("service: {}"), "{seen}");

    // block_packages: no package offers into this segment; the rest arrives.
    let mut packages = std::collections::HashMap::new();
    packages.insert("collector".to_owned(), PackageAvailable { version: "9.9".into(), ..Default::default() });
    let offer = ServerToAgent {
        flags: 1,
        packages_available: Some(PackagesAvailable { packages, all_packages_hash: Bytes::from_static(b"h") }),
        ..Default::default()
    };
    assert!(server.push(plain[0].uid().as_bytes(), offer));
    let got = plain[0].recv(T).await.unwrap();
    assert_eq!((got.flags, got.packages_available), (1, None));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visible_headers_keep_an_agents_other_headers_from_a_policy() {
    let server = keyed_server().await;
    let dir = tempfile::tempdir().unwrap();
    // The allowlist is shown two headers and keeps one; the others are not
    // its business, so they reach the server as they came, credentials
    // included. The affinity policy is not shown the tenant at all.
    let allow = "allow: [x-tenant]\nvisible_headers: [x-tenant, x-internal-token]\n";
    install(dir.path(), "header_allowlist", "10-allow", Some(allow));
    install(dir.path(), "tenant_affinity", "20-affinity", Some("header: x-tenant\nvisible_headers: [user-agent]\n"));
    let g = start(&server, dir.path()).await;

    let key = ("Authorization", "Secret-Key k");
    let mut agents = Vec::new();
    for _ in 0..3 {
        let mut a = SimAgent::connect(opts(&g, &[key, ("x-tenant", "blue"), ("x-internal-token", "t0p")]))
            .await
            .expect("authorization reaches the server although the allowlist does not name it");
        round_trip(&mut a).await;
        agents.push(a);
    }
    let (_, req) = server.state().connect_requests.last().cloned().unwrap();
    assert_eq!(req.headers["Authorization"], ["Secret-Key k"]);
    assert_eq!(req.headers["X-Tenant"], ["blue"]);
    assert!(!req.headers.contains_key("X-Internal-Token"), "shown to the allowlist, and dropped by it");
    // Unseen, the tenant pins nothing: least-connections spreads the three
    // (the shipped config, which shows it, pins them: the test above).
    assert_eq!(g.inspect().loads().iter().filter(|&&l| l > 0).count(), 3);
    g.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_load_lose_nothing() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let g = start(&server, dir.path()).await;
    let mut status = g.policies().subscribe();

    // A fleet keeps talking throughout; every message must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let mut fleet = Vec::new();
    for _ in 0..6 {
        let mut a = SimAgent::connect(opts(&g, &[("x-tenant", "red")])).await.unwrap();
        let (stop, trips) = (stop.clone(), trips.clone());
        fleet.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                a.send(AgentToServer::default()).await?;
                let reply = a.recv(T).await?;
                assert_eq!(&reply.instance_uid, a.uid().as_bytes());
                trips.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, AgentError>(a)
        }));
    }
    let expect = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        move |s: &ReloadStatus| applied(s).as_ref() == Some(&names)
    };
    let policy = |s: &ReloadStatus, name: &str| match &s.outcome {
        ReloadOutcome::Applied(set) => set.iter().find(|p| p.name == name).cloned(),
        _ => None,
    };
    // Add, add another, replace a config, replace a module, remove.
    install(dir.path(), "header_allowlist", "a_headers", Some("allow: [x-tenant]\ncall_timeout: 2s\n"));
    wait_for(&mut status, "add", expect(&["a_headers"])).await;
    install(dir.path(), "tenant_affinity", "b_tenant", Some("header: x-tenant\n"));
    let two = wait_for(&mut status, "second policy", expect(&["a_headers", "b_tenant"])).await;
    // (The digest covers the module, so a config change shows as a newer
    // applied generation.)
    atomic_write(&dir.path().join("a_headers.yaml"), b"allow: [x-tenant, authorization]\ncall_timeout: 2s\n");
    wait_for(&mut status, "config replaced", |s| s.generation > two.generation && policy(s, "a_headers").is_some())
        .await;
    // Fail-closed on purpose (the strictest case), with a budget no
    // scheduler hiccup reaches: this test is about swaps, not deadlines.
    install(dir.path(), "block_packages", "a_headers", Some("on_error: closed\ncall_timeout: 2s\n"));
    wait_for(&mut status, "module replaced", |s| {
        policy(s, "a_headers").is_some_and(|p| p.hooks.filter_server_to_agent)
    })
    .await;
    // A broken module is refused; the serving set is untouched.
    atomic_write(&dir.path().join("c_broken.wasm"), b"\0asm garbage");
    let refused = wait_for(&mut status, "refusal", |s| matches!(s.outcome, ReloadOutcome::Refused { .. })).await;
    assert!(format!("{:?}", refused.outcome).contains("c_broken"), "{:?}", refused.outcome);
    assert_eq!(g.policies().loaded().len(), 2);
    std::fs::remove_file(dir.path().join("c_broken.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("b_tenant.wasm")).unwrap();
    wait_for(&mut status, "removal", expect(&["a_headers"])).await;

    let before = trips.load(Ordering::Relaxed);
    tokio::time::timeout(T, async {
        while trips.load(Ordering::Relaxed) < before + 20 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("traffic keeps flowing after the swaps");
    stop.store(true, Ordering::Relaxed);
    for f in fleet {
        f.await.unwrap().expect("no agent was disconnected and no reply was lost");
    }
    assert!(trips.load(Ordering::Relaxed) > 0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_policies_are_contained() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "fixture_misbehave", "m", Some("call_timeout: 200ms\nmemory_limit: 16777216\n"));
    let g = start(&server, dir.path()).await;
    let mut bystander = SimAgent::connect(opts(&g, &[])).await.unwrap();
    round_trip(&mut bystander).await;

    // Fail-open (the default): a trap, a loop, a memory bomb in `assign` and
    // `forward-headers` are skipped; agents are still admitted.
    for mode in ["trap", "spin", "bomb"] {
        let mut a = SimAgent::connect(opts(&g, &[("x-misbehave", mode)])).await.expect(mode);
        round_trip(&mut a).await;
        round_trip(&mut bystander).await;
    }
    // Fail-closed: the same failure refuses the agent with 503.
    let mut status = g.policies().subscribe();
    atomic_write(&dir.path().join("m.yaml"), b"call_timeout: 200ms\non_error: closed\n");
    wait_for(&mut status, "fail-closed config", |s| applied(s).is_some() && s.generation > 0).await;
    match SimAgent::connect(opts(&g, &[("x-misbehave", "spin")])).await {
        Err(AgentError::Rejected { status: 503, .. }) => {}
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let mut fine = SimAgent::connect(opts(&g, &[])).await.unwrap();
    round_trip(&mut fine).await;
    round_trip(&mut bystander).await;
    g.shutdown().await;
}
