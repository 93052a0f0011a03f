//! The example policies in `policies/examples`, built for wasm32-wasip2 and
//! loaded as real components, driven through the policy chain the relay
//! uses, on real encoded OpAMP messages.

mod policy_support;

use bytes::Bytes;
use opamp_gateway::policy::runtime::PolicyRuntime;
use opamp_gateway::policy::wasm::WitVersion;
use opamp_gateway::policy::{
    AssignDecision, AssignInput, Direction, FilterOutcome, LinkInfo, PolicySet, Transport, UpstreamInfo,
    DEFAULT_UPSTREAM,
};
use opamp_gateway::protocol::proto::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, ComponentHealth, EffectiveConfig,
    PackageAvailable, PackagesAvailable, ServerToAgent,
};
use policy_support::runtime;
use prost::Message;

const UID: [u8; 16] = *b"0123456789abcdef";

fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn upstream(name: &str, connected: &[bool]) -> UpstreamInfo {
    let links = connected.iter().enumerate().map(|(i, c)| LinkInfo { index: i as u32, load: 0, connected: *c });
    UpstreamInfo { name: name.to_owned(), links: links.collect() }
}

/// Only the default upstream, with these links.
fn links(connected: &[bool]) -> Vec<UpstreamInfo> {
    vec![upstream(DEFAULT_UPSTREAM, connected)]
}

fn assign(set: &PolicySet, headers: &[(String, String)], upstreams: &[UpstreamInfo]) -> AssignDecision {
    assign_from(set, "10.0.0.7:5555", headers, upstreams)
}

fn assign_from(
    set: &PolicySet,
    remote_addr: &str,
    headers: &[(String, String)],
    upstreams: &[UpstreamInfo],
) -> AssignDecision {
    let input = AssignInput { headers, remote_addr, transport: Transport::WebSocket, upstreams };
    set.assign(&input).expect("assign")
}

/// 64-bit FNV-1a, the hash tenant_affinity and upstream_router document.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn forwarded(outcome: FilterOutcome) -> Bytes {
    match outcome {
        FilterOutcome::Forward(b) => b,
        other => panic!("expected Forward, got {other:?}"),
    }
}

#[test]
fn header_allowlist_forwards_only_listed_headers() {
    let (_dir, rt) = runtime(&[("header_allowlist", "allow", Some("allow: [Authorization, x-tenant]\n"))]);
    let set = rt.policies().snapshot();
    let out = set
        .forward_headers(&[
            h("authorization", "Secret-Key k"),
            h("cookie", "session=1"),
            h("x-tenant", "acme"),
            h("user-agent", "otelcol"),
        ])
        .unwrap();
    assert_eq!(out, vec![h("authorization", "Secret-Key k"), h("x-tenant", "acme")]);
    // It implements only forward-headers: the other phases are untouched.
    assert!(!set.filters(Direction::AgentToServer) && !set.filters(Direction::ServerToAgent));
    assert_eq!(assign(&set, &[], &links(&[true])), AssignDecision::Default);
}

#[test]
fn tenant_affinity_pins_a_tenant_to_one_connected_link() {
    let (_dir, rt) = runtime(&[("tenant_affinity", "affinity", Some("header: x-tenant\n"))]);
    let set = rt.policies().snapshot();
    let all = links(&[true, true, true]);
    let pick = |tenant: &str, ups: &[UpstreamInfo]| match assign(&set, &[h("x-tenant", tenant)], ups) {
        AssignDecision::Route { upstream: 0, link: Some(i) } => i,
        other => panic!("tenant {tenant}: expected a default link, got {other:?}"),
    };
    // Same tenant, same link, every time (fresh instances included).
    let acme = pick("acme", &all);
    for _ in 0..20 {
        assert_eq!(pick("acme", &all), acme);
    }
    // Tenants spread over the links.
    let used: std::collections::BTreeSet<u32> = (0..60).map(|i| pick(&format!("tenant-{i}"), &all)).collect();
    assert_eq!(used.len(), 3, "60 tenants should use all 3 links: {used:?}");
    // Only connected links are chosen.
    let partial = links(&[true, false, true]);
    for i in 0..30 {
        assert_ne!(pick(&format!("tenant-{i}"), &partial), 1);
    }
    // No header: no opinion (least-connections decides).
    assert_eq!(assign(&set, &[h("authorization", "x")], &all), AssignDecision::Default);
    // No connected link: no opinion either.
    assert_eq!(assign(&set, &[h("x-tenant", "acme")], &links(&[false, false])), AssignDecision::Default);
}

#[test]
fn upstream_router_routes_by_header_then_canary() {
    let yaml = "header: x-tenant\nroute: [acme=green]\ncanary: green=10\n";
    let (_dir, rt) = runtime(&[("upstream_router", "router", Some(yaml))]);
    assert_eq!(rt.policy("router").unwrap().wit_version(), WitVersion::V0_3);
    let set = rt.policies().snapshot();
    let ups = [upstream(DEFAULT_UPSTREAM, &[true, true]), upstream("green", &[false, true])];
    let green = AssignDecision::Route { upstream: 1, link: None };
    assert_eq!(assign(&set, &[h("x-tenant", "acme")], &ups), green, "an upstream, its least-loaded link");
    // The canary: exactly the tenants whose FNV-1a hash falls under 10 %.
    let mut canaried = 0;
    for i in 0..300 {
        let tenant = format!("tenant-{i}");
        let expected = if fnv1a(tenant.as_bytes()) % 100 < 10 { green } else { AssignDecision::Default };
        assert_eq!(assign(&set, &[h("x-tenant", &tenant)], &ups), expected, "{tenant}");
        canaried += usize::from(expected == green);
    }
    assert!((10..60).contains(&canaried), "about 30 of 300: {canaried}");
    // No header: the IP decides, whatever the port.
    for i in 0..40 {
        let ip = format!("192.0.2.{i}");
        let expected = if fnv1a(ip.as_bytes()) % 100 < 10 { green } else { AssignDecision::Default };
        assert_eq!(assign_from(&set, &format!("{ip}:1000"), &[], &ups), expected, "{ip}");
        assert_eq!(assign_from(&set, &format!("{ip}:2000"), &[], &ups), expected, "{ip}");
    }
    // Green down, or not configured: no opinion (the default upstream).
    let down = [upstream(DEFAULT_UPSTREAM, &[true]), upstream("green", &[false, false])];
    assert_eq!(assign(&set, &[h("x-tenant", "acme")], &down), AssignDecision::Default);
    assert_eq!(assign(&set, &[h("x-tenant", "acme")], &links(&[true])), AssignDecision::Default);
}

/// tests/fixtures/compat/tenant_affinity-0.2.0.wasm: tenant_affinity as
/// built against WIT 0.2.0, before routing existed.
fn compat_fixture() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat/tenant_affinity-0.2.0.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_0_2_0_component_still_loads_and_answers_default_links() {
    let dir = tempfile::tempdir().unwrap();
    // The router first: it takes acme; the 0.2.0 policy hashes the rest.
    policy_support::install(dir.path(), "upstream_router", "10-router", Some("route: [acme=green]\n"));
    policy_support::atomic_write(&dir.path().join("20-old.yaml"), b"header: x-tenant\n");
    policy_support::atomic_write(&dir.path().join("20-old.wasm"), &compat_fixture());
    let rt = PolicyRuntime::start(&policy_support::config(dir.path(), false)).expect("both versions load");
    assert_eq!(rt.policy("10-router").unwrap().wit_version(), WitVersion::V0_3);
    assert_eq!(rt.policy("20-old").unwrap().wit_version(), WitVersion::V0_2);
    let set = rt.policies().snapshot();

    // 3 default links, 5 green ones: the old policy is shown the default's
    // only, so it hashes over 3 and never answers an index of 3 or more.
    let ups = [upstream(DEFAULT_UPSTREAM, &[true, true, true]), upstream("green", &[true; 5])];
    assert_eq!(assign(&set, &[h("x-tenant", "acme")], &ups), AssignDecision::Route { upstream: 1, link: None });
    let mut used = std::collections::BTreeSet::new();
    for i in 0..200 {
        let tenant = format!("tenant-{i}");
        let expected = (fnv1a(tenant.as_bytes()) % 3) as u32;
        assert_eq!(
            assign(&set, &[h("x-tenant", &tenant)], &ups),
            AssignDecision::Route { upstream: 0, link: Some(expected) },
            "{tenant}: a link of the default upstream"
        );
        used.insert(expected);
    }
    assert_eq!(used.len(), 3, "every default link is used: {used:?}");
    // Its other hooks are untouched: it announced assign only.
    assert!(!set.filters(Direction::AgentToServer) && !set.filters(Direction::ServerToAgent));
}

#[test]
fn a_0_2_0_component_gets_every_hook_and_host_import() {
    // policies/fixtures/wit_0_2: built straight from wit/v0.2.0/policy.wit.
    let (_dir, rt) = runtime(&[("fixture_wit_0_2", "old", None)]);
    assert_eq!(rt.policy("old").unwrap().wit_version(), WitVersion::V0_2);
    let set = rt.policies().snapshot();
    // assign: the last connected link of the default upstream, never green's.
    let ups = [upstream(DEFAULT_UPSTREAM, &[true, true, false]), upstream("green", &[true; 6])];
    assert_eq!(assign(&set, &[], &ups), AssignDecision::Route { upstream: 0, link: Some(1) });
    let headers = set.forward_headers(&[h("x-tenant", "acme")]).unwrap();
    assert_eq!(headers, vec![h("x-tenant", "acme"), h("x-links-wit", "0.2.0")]);
    // filter, agent→server: a set-field built from len, has, field, fields.
    let msg = AgentToServer { instance_uid: Bytes::from_static(&UID), sequence_num: 42, ..Default::default() };
    let encoded = Bytes::from(msg.encode_to_vec());
    let out = AgentToServer::decode(forwarded(set.filter(Direction::AgentToServer, &UID, encoded.clone()))).unwrap();
    assert_eq!(out.sequence_num, encoded.len() as u64 * 1000 + 100 + 10 + 2);
    assert_eq!(out.instance_uid, msg.instance_uid);
    // filter, server→agent: `bytes` gave the whole message, so it drops it.
    let down = Bytes::from(server_message(false).encode_to_vec());
    assert_eq!(set.filter(Direction::ServerToAgent, &UID, down), FilterOutcome::Drop);
}

fn agent_message(body: &str) -> AgentToServer {
    let mut files = std::collections::HashMap::new();
    files.insert(
        "collector.yaml".to_owned(),
        AgentConfigFile { body: Bytes::from(body.to_owned()), content_type: "text/yaml".into() },
    );
    files.insert(
        "clean.yaml".to_owned(),
        AgentConfigFile { body: Bytes::from_static(b"exporters:\n  debug: {}\n"), content_type: "text/yaml".into() },
    );
    AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: 42,
        health: Some(ComponentHealth { healthy: true, status: "ok".into(), ..Default::default() }),
        effective_config: Some(EffectiveConfig { config_map: Some(AgentConfigMap { config_map: files }) }),
        capabilities: 0x3f,
        ..Default::default()
    }
}

#[test]
fn redact_secrets_rewrites_effective_config_bodies() {
    let (_dir, rt) = runtime(&[("redact_secrets", "redact", Some("keys: [api-key, password, token]\n"))]);
    let set = rt.policies().snapshot();
    // It announces agent→server only: the relay never calls it for the rest.
    assert!(set.filters(Direction::AgentToServer));
    assert!(!set.filters(Direction::ServerToAgent));

    let body = "receivers:\n  otlp:\n    auth:\n      password: hunter2\n      api_key: 'abc def'\n    token_file: /var/run/t\nexporters:\n  otlphttp: {endpoint: x, token: s3cr3t}\n";
    let original = agent_message(body);
    let encoded = Bytes::from(original.encode_to_vec());
    let out = forwarded(set.filter(Direction::AgentToServer, &UID, encoded.clone()));
    assert_ne!(out, encoded);
    let got = AgentToServer::decode(out).unwrap();
    let files = &got.effective_config.as_ref().unwrap().config_map.as_ref().unwrap().config_map;
    let redacted = std::str::from_utf8(&files["collector.yaml"].body).unwrap();
    assert_eq!(
        redacted,
        "receivers:\n  otlp:\n    auth:\n      password: <redacted>\n      api_key: '<redacted>'\n    token_file: /var/run/t\nexporters:\n  otlphttp: {endpoint: x, token: <redacted>}\n"
    );
    assert!(!redacted.contains("hunter2") && !redacted.contains("s3cr3t"));
    assert_eq!(
        files["clean.yaml"],
        original.effective_config.as_ref().unwrap().config_map.as_ref().unwrap().config_map["clean.yaml"]
    );
    // Everything outside the effective config is as it was.
    assert_eq!(got.instance_uid, original.instance_uid);
    assert_eq!(got.sequence_num, 42);
    assert_eq!(got.health, original.health);
    assert_eq!(got.capabilities, 0x3f);

    // Nothing to redact, no effective config, or the other direction: the
    // original bytes go through untouched.
    let clean = Bytes::from(agent_message("a: 1\n").encode_to_vec());
    assert_eq!(forwarded(set.filter(Direction::AgentToServer, &UID, clean.clone())), clean);
    let status_only = Bytes::from(
        AgentToServer { instance_uid: Bytes::from_static(&UID), sequence_num: 1, ..Default::default() }.encode_to_vec(),
    );
    assert_eq!(forwarded(set.filter(Direction::AgentToServer, &UID, status_only.clone())), status_only);
    let from_server = Bytes::from(
        ServerToAgent { instance_uid: Bytes::from_static(&UID), flags: 1, ..Default::default() }.encode_to_vec(),
    );
    assert_eq!(forwarded(set.filter(Direction::ServerToAgent, &UID, from_server.clone())), from_server);
}

fn server_message(with_packages: bool) -> ServerToAgent {
    let mut packages = std::collections::HashMap::new();
    packages.insert(
        "otelcol-contrib".to_owned(),
        PackageAvailable { version: "0.120.0".into(), hash: Bytes::from_static(b"h"), ..Default::default() },
    );
    let mut files = std::collections::HashMap::new();
    files.insert(
        "".to_owned(),
        AgentConfigFile { body: Bytes::from_static(b"receivers: {}\n"), content_type: "text/yaml".into() },
    );
    ServerToAgent {
        instance_uid: Bytes::from_static(&UID),
        remote_config: Some(AgentRemoteConfig {
            config: Some(AgentConfigMap { config_map: files }),
            config_hash: Bytes::from_static(b"cfg-hash"),
        }),
        packages_available: with_packages
            .then(|| PackagesAvailable { packages, all_packages_hash: Bytes::from_static(b"all") }),
        capabilities: 7,
        ..Default::default()
    }
}

#[test]
fn block_packages_strips_package_offers_only() {
    let (_dir, rt) = runtime(&[("block_packages", "block", None)]);
    let set = rt.policies().snapshot();
    assert!(set.filters(Direction::ServerToAgent));
    assert!(!set.filters(Direction::AgentToServer));

    let original = server_message(true);
    let out = forwarded(set.filter(Direction::ServerToAgent, &UID, Bytes::from(original.encode_to_vec())));
    let got = ServerToAgent::decode(out.clone()).unwrap();
    assert_eq!(got.packages_available, None);
    assert_eq!(got, ServerToAgent { packages_available: None, ..original });
    // Byte-for-byte: the result is the original minus field 5.
    assert_eq!(out, Bytes::from(server_message(false).encode_to_vec()));

    let plain = Bytes::from(server_message(false).encode_to_vec());
    assert_eq!(forwarded(set.filter(Direction::ServerToAgent, &UID, plain.clone())), plain);
    // Agent→server traffic is not its business.
    let a2s = Bytes::from(agent_message("password: x\n").encode_to_vec());
    assert_eq!(forwarded(set.filter(Direction::AgentToServer, &UID, a2s.clone())), a2s);
}

#[test]
fn the_examples_chain_in_file_name_order() {
    let (_dir, rt) = runtime(&[
        ("header_allowlist", "10-allow", Some("allow: [authorization, x-tenant]\n")),
        ("tenant_affinity", "20-affinity", None),
        ("redact_secrets", "30-redact", None),
        ("block_packages", "40-block", None),
    ]);
    let loaded: Vec<String> = rt.loaded().into_iter().map(|p| p.name).collect();
    assert_eq!(loaded, ["10-allow", "20-affinity", "30-redact", "40-block"]);
    let set = rt.policies().snapshot();
    assert_eq!(set.names().collect::<Vec<_>>(), ["10-allow", "20-affinity", "30-redact", "40-block"]);

    let headers = set.forward_headers(&[h("cookie", "c"), h("x-tenant", "acme")]).unwrap();
    assert_eq!(headers, vec![h("x-tenant", "acme")]);
    assert!(matches!(
        assign(&set, &headers, &links(&[true, true])),
        AssignDecision::Route { upstream: 0, link: Some(_) }
    ));

    let up =
        forwarded(set.filter(Direction::AgentToServer, &UID, Bytes::from(agent_message("token: t\n").encode_to_vec())));
    let body = AgentToServer::decode(up).unwrap().effective_config.unwrap().config_map.unwrap().config_map
        ["collector.yaml"]
        .body
        .clone();
    assert_eq!(&body[..], b"token: <redacted>\n");
    let down = forwarded(set.filter(Direction::ServerToAgent, &UID, Bytes::from(server_message(true).encode_to_vec())));
    assert_eq!(ServerToAgent::decode(down).unwrap().packages_available, None);
}

#[test]
fn examples_refuse_bad_config_at_load() {
    let dir = tempfile::tempdir().unwrap();
    policy_support::install(dir.path(), "header_allowlist", "allow", Some("alow: [authorization]\n"));
    let err = opamp_gateway::policy::runtime::PolicyRuntime::start(&policy_support::config(dir.path(), false))
        .err()
        .expect("a typo in the config refuses the policy");
    let msg = err.to_string();
    assert!(msg.contains("allow.wasm") && msg.contains("unknown key `alow`"), "{msg}");
}

#[test]
fn the_example_configs_load_and_every_example_skips_the_gateway_keys() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    let shipped = |name: &str| std::fs::read_to_string(root.join(name).join(format!("{name}.yaml"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in EXAMPLES {
        policy_support::install(dir.path(), name, name, Some(&shipped(name)));
    }
    let rt = opamp_gateway::policy::runtime::PolicyRuntime::start(&policy_support::config(dir.path(), false)).unwrap();
    let modes: Vec<_> = rt.loaded().into_iter().map(|p| (p.name, p.on_error)).collect();
    use opamp_gateway::policy::FailureMode::{Closed, Open};
    assert_eq!(
        modes,
        [
            ("block_packages".to_owned(), Closed),
            ("header_allowlist".to_owned(), Open),
            ("heartbeat_limiter".to_owned(), Open),
            ("redact_secrets".to_owned(), Closed),
            ("source_allowlist".to_owned(), Closed),
            ("tenant_affinity".to_owned(), Open),
            ("tenant_quota".to_owned(), Open),
            ("upstream_router".to_owned(), Open),
        ]
    );
    // Every key the gateway reads, added to each shipped config: the
    // policies' own config readers must skip them all.
    let dir = tempfile::tempdir().unwrap();
    for name in EXAMPLES {
        let yaml = policy_support::with_every_reserved_key(&shipped(name));
        policy_support::install(dir.path(), name, name, Some(&yaml));
    }
    let rt = opamp_gateway::policy::runtime::PolicyRuntime::start(&policy_support::config(dir.path(), false))
        .expect("every example skips the gateway's keys");
    assert_eq!(rt.loaded().len(), EXAMPLES.len());
}

const EXAMPLES: [&str; 8] = [
    "block_packages",
    "header_allowlist",
    "heartbeat_limiter",
    "redact_secrets",
    "source_allowlist",
    "tenant_affinity",
    "tenant_quota",
    "upstream_router",
];
