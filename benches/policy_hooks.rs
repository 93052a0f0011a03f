//! Per-call overhead of the Wasm policy hooks, with the real example
//! components, through the same `PolicySet` calls the relay makes.
//!
//! ```text
//! cargo bench --bench policy_hooks    # POLICY_BENCH_ITERS=20000 by default
//! cargo bench --bench policy_hooks -- --json target/policy_hooks.json
//! cargo bench --bench policy_hooks -- --memory   # RSS around a memory bomb
//! ```
//!
//! The examples run as shipped: the hooks shown an agent's headers (six of
//! them here) see only those their YAML's `visible_headers` grants. The
//! same cases run again with every header shown (`every header shown, …`),
//! the reference the bar does not count.
//!
//! Besides the hooks, it times what a relay call adds around them: a turn
//! of the policy gate (`policies.concurrency`), and, for comparison, the
//! two designs not taken: a hop to a dedicated policy thread and back, and
//! `block_in_place` around the call.
//!
//! Each case is called once per sample and timed individually (the clock
//! costs ~20 ns, included). Reported: p50 / p99 / p99.9 / mean in µs. The
//! design target (DESIGN.md §6) is ≤ 5 µs per call at p99. `--json` writes
//! the figures with the Prometheus recorder installed (as in the gateway);
//! `scripts/bench` runs it first and the relay suite puts them, with the
//! bar, into docs/BENCHMARKS.md.

#[path = "../tests/policy_support/mod.rs"]
mod policy_support;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use opamp_gateway::policy::{
    AssignInput, Direction, LinkInfo, PolicySet, SessionEvent, Transport, UpstreamInfo, DEFAULT_UPSTREAM,
};
use opamp_gateway::protocol::proto::{
    AgentConfigFile, AgentConfigMap, AgentToServer, ComponentHealth, EffectiveConfig, PackageAvailable,
    PackagesAvailable, ServerToAgent,
};
use prost::Message;

const UID: &[u8; 16] = b"0123456789abcdef";

fn heartbeat() -> Bytes {
    Bytes::from(
        AgentToServer {
            instance_uid: Bytes::from_static(UID),
            sequence_num: 7,
            health: Some(ComponentHealth { healthy: true, status: "StatusOK".into(), ..Default::default() }),
            capabilities: 0x3f,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn with_config() -> Bytes {
    let body = "receivers:\n  otlp:\n    protocols: {grpc: {}, http: {}}\nexporters:\n  otlphttp:\n    endpoint: https://example\n    headers:\n      api-key: abcdef0123456789\nservice:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [otlphttp]}\n";
    let mut files = std::collections::HashMap::new();
    files.insert("".to_owned(), AgentConfigFile { body: Bytes::from(body), content_type: "text/yaml".into() });
    Bytes::from(
        AgentToServer {
            instance_uid: Bytes::from_static(UID),
            sequence_num: 8,
            effective_config: Some(EffectiveConfig { config_map: Some(AgentConfigMap { config_map: files }) }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn server(packages: bool) -> Bytes {
    let mut p = std::collections::HashMap::new();
    p.insert("otelcol".to_owned(), PackageAvailable { version: "1.2.3".into(), ..Default::default() });
    Bytes::from(
        ServerToAgent {
            instance_uid: Bytes::from_static(UID),
            flags: 1,
            capabilities: 0x1f,
            packages_available: packages.then(|| PackagesAvailable { packages: p, ..Default::default() }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn headers() -> Vec<(String, String)> {
    [
        ("authorization", "Secret-Key 0123456789abcdef"),
        ("user-agent", "otelcol-contrib/0.120.0"),
        ("x-tenant", "acme"),
        ("cookie", "session=abc"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("accept-encoding", "gzip"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect()
}

/// The `visible_headers` line of an example's shipped YAML: the bench's
/// header cases run with it (as shipped) and without it (every header
/// shown, the reference rows).
fn shipped_visible_headers(example: &str) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("policies/examples/{example}/{example}.yaml"));
    let yaml = std::fs::read_to_string(&path).expect("the example config");
    let line = yaml.lines().find(|l| l.starts_with("visible_headers:"));
    format!("{}\n", line.unwrap_or_else(|| panic!("{} sets visible_headers", path.display())))
}

/// One case's figures, µs per call.
struct Case {
    name: String,
    p50: f64,
    p99: f64,
    p999: f64,
    mean: f64,
}

/// POLICY_BENCH_ONLY=<substring> runs only the matching cases (profiling).
fn skipped(name: &str) -> bool {
    std::env::var("POLICY_BENCH_ONLY").is_ok_and(|only| !name.contains(&only))
}

/// Times `iters` calls (after `iters / 10` warm-up calls), one per sample.
/// A histogram of call times in ns, 1 ns to 10 s.
fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap()
}

fn sample(iters: u64, mut call: impl FnMut()) -> (Histogram<u64>, Duration) {
    for _ in 0..iters / 10 {
        call();
    }
    let mut h = histogram();
    let all = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        call();
        h.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
    }
    (h, all.elapsed())
}

fn measure(cases: &mut Vec<Case>, name: &str, iters: u64, call: impl FnMut()) {
    if skipped(name) {
        return;
    }
    let (h, total) = sample(iters, call);
    report(cases, name, iters, &h, total);
}

/// Two calls that must alternate (one undoes the other's state), each timed
/// on its own: two cases, one per call.
fn measure_pair(
    cases: &mut Vec<Case>,
    names: [&str; 2],
    iters: u64,
    mut first: impl FnMut(),
    mut second: impl FnMut(),
) {
    if names.iter().all(|n| skipped(n)) {
        return;
    }
    for _ in 0..iters / 10 {
        first();
        second();
    }
    let (mut h, mut total) = ([histogram(), histogram()], [Duration::ZERO; 2]);
    for _ in 0..iters {
        for (i, call) in [&mut first as &mut dyn FnMut(), &mut second].into_iter().enumerate() {
            let t = Instant::now();
            call();
            let took = t.elapsed();
            h[i].record(took.as_nanos().max(1) as u64).unwrap();
            total[i] += took;
        }
    }
    for i in 0..2 {
        report(cases, names[i], iters, &h[i], total[i]);
    }
}

fn report(cases: &mut Vec<Case>, name: &str, iters: u64, h: &Histogram<u64>, total: Duration) {
    let us = |ns: u64| ns as f64 / 1000.0;
    let case = Case {
        name: name.to_owned(),
        p50: us(h.value_at_quantile(0.5)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        mean: h.mean() / 1000.0,
    };
    println!(
        "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12.0}",
        case.p50,
        case.p99,
        case.p999,
        case.mean,
        iters as f64 / total.as_secs_f64()
    );
    cases.push(case);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, as a quick smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let default_iters = if benching { 20_000 } else { 200 };
    let iters: u64 = std::env::var("POLICY_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_iters);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--memory") {
        return memory(args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)));
    }
    let json_out = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let (_d1, allow) =
        policy_support::runtime(&[("header_allowlist", "allow", Some("allow: [authorization, x-tenant]\n"))]);
    let (_d3, redact) = policy_support::runtime(&[("redact_secrets", "redact", None)]);
    // With its example YAML: `filter_agent_to_server: [effective_config]`.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/redact_secrets/redact_secrets.yaml"),
    )
    .expect("the example config");
    let (_d10, redact_fields) = policy_support::runtime(&[("redact_secrets", "redact", Some(&example))]);
    let (_d4, block) = policy_support::runtime(&[("block_packages", "block", None)]);
    // The hooks shown an agent's headers run twice: with the examples'
    // shipped `visible_headers` and with every header shown (reference).
    let header_hooks = |shown: bool| {
        let visible = |example: &str| if shown { shipped_visible_headers(example) } else { String::new() };
        let affinity = policy_support::runtime(&[("tenant_affinity", "affinity", Some(&visible("tenant_affinity")))]);
        let router_yaml = format!("route: [acme=green]\ncanary: green=10\n{}", visible("upstream_router"));
        let router = policy_support::runtime(&[("upstream_router", "router", Some(&router_yaml))]);
        // WIT 0.3.0's admit, lifecycle and shared state.
        let sources_yaml = format!("allow: [10.0.0.0/8]\n{}", visible("source_allowlist"));
        let sources = policy_support::runtime(&[("source_allowlist", "sources", Some(&sources_yaml))]);
        let quota_yaml = format!("max_agents: 1000000\n{}", visible("tenant_quota"));
        let quota = policy_support::runtime(&[("tenant_quota", "quota", Some(&quota_yaml))]);
        [affinity, router, sources, quota]
    };
    let header_runtimes = [("", header_hooks(true)), ("every header shown, ", header_hooks(false))];
    let (_d9, beats) = policy_support::runtime(&[("heartbeat_limiter", "beats", Some("min_interval: 1h\n"))]);
    let (_d5, chain) = policy_support::runtime(&[
        ("header_allowlist", "1-allow", Some("allow: [authorization, x-tenant]\n")),
        ("redact_secrets", "2-redact", None),
        ("block_packages", "3-block", None),
    ]);
    let everything = [&allow, &redact, &redact_fields, &block, &beats, &chain];
    settle(header_runtimes.iter().flat_map(|(_, rts)| rts.iter().map(|(_, rt)| rt)).chain(everything));
    // The relay's entry point for `block`: its runtime's `Policies`.
    let gated = block.policies();
    let hop = policy_thread();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let none = PolicySet::default();
    let (allow, redact, block, chain, beats) = (
        allow.policies().snapshot(),
        redact.policies().snapshot(),
        block.policies().snapshot(),
        chain.policies().snapshot(),
        beats.policies().snapshot(),
    );
    let header_sets: Vec<(&str, [Arc<PolicySet>; 4])> = header_runtimes
        .iter()
        .map(|(prefix, rts)| (*prefix, [0, 1, 2, 3].map(|i| rts[i].1.policies().snapshot())))
        .collect();
    let redact_fields = redact_fields.policies().snapshot();
    let links: Vec<LinkInfo> = (0..3).map(|i| LinkInfo { index: i, load: 10 * i, connected: true }).collect();
    let green: Vec<LinkInfo> = (0..2).map(|i| LinkInfo { index: i, load: 5 * i, connected: true }).collect();
    let upstreams = [UpstreamInfo { name: DEFAULT_UPSTREAM.into(), links }];
    let two_upstreams = [upstreams[0].clone(), UpstreamInfo { name: "green".into(), links: green }];
    let hs = headers();
    let (hb, cfg, s_plain, s_pkgs) = (heartbeat(), with_config(), server(false), server(true));
    // Only uid, sequence number and capabilities: what heartbeat_limiter drops.
    let beat = Bytes::from(
        AgentToServer {
            instance_uid: Bytes::from_static(UID),
            sequence_num: 8,
            capabilities: 0x3f,
            ..Default::default()
        }
        .encode_to_vec(),
    );

    for pass in ["no metrics recorder", "Prometheus recorder installed (as in the gateway)"] {
        if pass.starts_with("Prometheus") {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            metrics::set_global_recorder(recorder).expect("first recorder");
        }
        let cases = &mut Vec::new();
        println!("\npolicy hook overhead, {pass}, {iters} calls per case (µs per call)");
        println!("{:<44} {:>8} {:>8} {:>8} {:>8} {:>12}", "case", "p50", "p99", "p99.9", "mean", "calls/s");
        measure(cases, "baseline: no policy, filter", iters, || {
            std::hint::black_box(none.filter(Direction::AgentToServer, UID, hb.clone()));
        });
        measure(cases, "header_allowlist: forward-headers (6 hdrs)", iters, || {
            std::hint::black_box(allow.forward_headers(&hs).unwrap());
        });
        for (prefix, [affinity, router, allowlist, quota]) in &header_sets {
            let name = |case: &str| format!("{prefix}{case}");
            let on = |remote, upstreams| AssignInput {
                headers: &hs,
                remote_addr: remote,
                transport: Transport::WebSocket,
                upstreams,
            };
            let input = |remote| on(remote, &upstreams[..]);
            measure(cases, &name("tenant_affinity: assign (3 links)"), iters, || {
                std::hint::black_box(affinity.assign(&input("10.1.2.3:4567")).unwrap());
            });
            measure(cases, &name("upstream_router: assign (2 upstreams)"), iters, || {
                std::hint::black_box(router.assign(&on("10.1.2.3:4567", &two_upstreams)).unwrap());
            });
            measure(cases, &name("source_allowlist: admit, allowed"), iters, || {
                std::hint::black_box(allowlist.admit(&input("10.1.2.3:4567")).unwrap());
            });
            measure(cases, &name("source_allowlist: admit, rejected (403)"), iters, || {
                std::hint::black_box(allowlist.admit(&input("192.0.2.1:4567")).unwrap());
            });
            let event = SessionEvent {
                session: 1,
                uid: None,
                headers: hs.clone(),
                remote_addr: "10.1.2.3:4567".into(),
                transport: Transport::WebSocket,
                upstream: DEFAULT_UPSTREAM.into(),
            };
            // One agent in and out: state-add up in admit, down in on-disconnect.
            let admitted = std::cell::RefCell::new(None);
            measure_pair(
                cases,
                [&name("tenant_quota: admit (state-add)"), &name("tenant_quota: on-disconnect (state-add)")],
                iters,
                || *admitted.borrow_mut() = Some(quota.admit(&input("10.1.2.3:4567")).unwrap().0),
                || quota.lifecycle(&event, Some("peer"), &admitted.borrow_mut().take().unwrap()),
            );
        }
        measure(cases, "heartbeat_limiter: filter, status passes", iters, || {
            std::hint::black_box(beats.filter(Direction::AgentToServer, UID, cfg.clone()));
        });
        measure(cases, "heartbeat_limiter: filter, heartbeat dropped", iters, || {
            std::hint::black_box(beats.filter(Direction::AgentToServer, UID, beat.clone()));
        });
        measure(cases, "redact_secrets: filter, heartbeat", iters, || {
            std::hint::black_box(redact.filter(Direction::AgentToServer, UID, hb.clone()));
        });
        measure(cases, "redact_secrets + filter_agent_to_server: heartbeat (not called)", iters, || {
            std::hint::black_box(redact_fields.filter(Direction::AgentToServer, UID, hb.clone()));
        });
        measure(cases, "redact_secrets: filter, effective config", iters, || {
            std::hint::black_box(redact.filter(Direction::AgentToServer, UID, cfg.clone()));
        });
        measure(cases, "block_packages: filter, no packages", iters, || {
            std::hint::black_box(block.filter(Direction::ServerToAgent, UID, s_plain.clone()));
        });
        measure(cases, "block_packages: filter, strips packages", iters, || {
            std::hint::black_box(block.filter(Direction::ServerToAgent, UID, s_pkgs.clone()));
        });
        measure(cases, "chain of 3: filter a2s heartbeat", iters, || {
            std::hint::black_box(chain.filter(Direction::AgentToServer, UID, hb.clone()));
        });
        measure(cases, "chain of 3: filter s2a plain", iters, || {
            std::hint::black_box(chain.filter(Direction::ServerToAgent, UID, s_plain.clone()));
        });
        // What the relay adds around the chain: a turn of the gate.
        measure(cases, "gate: one turn, uncontended", iters, || {
            std::hint::black_box(ready(gated.gate().enter()));
        });
        measure(cases, "block_packages: filter, gated (relay path)", iters, || {
            std::hint::black_box(ready(gated.filter(&block, Direction::ServerToAgent, UID, s_plain.clone())));
        });
        // The designs not taken, around the same call.
        measure(cases, "not taken: hop to a policy thread and back", iters, || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (set, msg) = (block.clone(), s_plain.clone());
            let job: Job = Box::new(move || {
                let _ = tx.send(set.filter(Direction::ServerToAgent, UID, msg));
            });
            hop.send(job).unwrap();
            std::hint::black_box(rx.blocking_recv().unwrap());
        });
        let name = "not taken: block_in_place around the call";
        if !skipped(name) {
            let (set, msg) = (block.clone(), s_plain.clone());
            let (h, total) = runtime
                .block_on(runtime.spawn(async move {
                    sample(iters, || {
                        tokio::task::block_in_place(|| {
                            std::hint::black_box(set.filter(Direction::ServerToAgent, UID, msg.clone()));
                        })
                    })
                }))
                .unwrap();
            report(cases, name, iters, &h, total);
        }
        if let (Some(path), true) = (&json_out, pass.starts_with("Prometheus")) {
            let rows: Vec<serde_json::Value> = cases
                .iter()
                .map(|c| {
                    serde_json::json!({"case": c.name, "p50_us": c.p50, "p99_us": c.p99, "p999_us": c.p999, "mean_us": c.mean})
                })
                .collect();
            let doc = serde_json::json!({"iterations": iters, "recorder": "prometheus", "cases": rows});
            std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json")).expect("writing --json");
            println!("wrote {path}");
        }
    }
}

/// Waits until every pool has made its instances: the refill thread
/// instantiating them would otherwise share the CPU with the first cases.
fn settle<'a>(runtimes: impl IntoIterator<Item = &'a opamp_gateway::policy::runtime::PolicyRuntime>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for rt in runtimes {
        for loaded in rt.loaded() {
            let p = rt.policy(&loaded.name).expect("loaded");
            while p.idle_instances() < p.live_instances() {
                assert!(Instant::now() < deadline, "{}: instances still being made after 60 s", loaded.name);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Polls a future that must be ready at once (an uncontended gate).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an uncontended gate never waits"),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A dedicated thread running jobs, as a policy thread pool would.
fn policy_thread() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::spawn(move || {
        while let Ok(job) = rx.recv() {
            job();
        }
    });
    tx
}

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// RSS before a memory-bomb policy is loaded, while it is hammered from
/// four threads, and after it is removed. The bomb is the `misbehave`
/// fixture's `leak` mode: each call keeps 1 MiB more of touched memory, so
/// an instance fills its 32 MiB limit in about 30 calls, fails, and is
/// dropped and replaced.
fn memory(json: Option<&String>) {
    use opamp_gateway::policy::runtime::PolicyRuntime;
    let calls: usize = std::env::var("POLICY_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = policy_support::config(dir.path(), false);
    let msg = heartbeat();
    // Warm-up: the same load and hammering with a harmless policy, so that
    // the figures below are the bomb's, not the first use of the engine.
    policy_support::install(dir.path(), "fixture_misbehave", "warm", None);
    let warm = PolicyRuntime::start(&cfg).expect("loads");
    let set = warm.policies().snapshot();
    for _ in 0..calls {
        set.filter(Direction::AgentToServer, b"fine", msg.clone());
    }
    drop((set, warm));
    std::fs::remove_file(dir.path().join("warm.wasm")).unwrap();

    let before = rss_kib();
    let yaml = "quarantine_after: 0\nquarantine_rate: 0\nleak_bytes: 1048576\n";
    policy_support::install(dir.path(), "fixture_misbehave", "bomb", Some(yaml));
    let rt = PolicyRuntime::start(&cfg).expect("loads");
    let loaded = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(loaded));
    let set = rt.policies().snapshot();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (set, msg, peak) = (&set, msg.clone(), peak.clone());
            s.spawn(move || {
                for i in 0..calls / 4 {
                    set.filter(Direction::AgentToServer, b"leak", msg.clone());
                    if i % 16 == 0 {
                        peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let hammered = started.elapsed();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let bomb = rt.policy("bomb").unwrap();
    let instances = bomb.live_instances();
    drop((bomb, set));
    // Removed the way an operator would: the file goes, the set reloads.
    std::fs::remove_file(dir.path().join("bomb.wasm")).unwrap();
    let status = rt.reload();
    assert!(rt.loaded().is_empty(), "{status:?}");
    // The refill thread may still be finishing an instance for the old pool.
    std::thread::sleep(Duration::from_millis(200));
    let removed = rss_kib();
    drop(rt);
    std::thread::sleep(Duration::from_millis(200));
    let dropped = rss_kib();
    let mib = |k: u64| k as f64 / 1024.0;
    let failed = calls.div_ceil(32);
    println!("\npolicy memory: a memory bomb (1 MiB kept per call, 32 MiB limit per instance), {calls} calls from 4 threads (~{failed} hit the limit)");
    println!("{:<44} {:>10}", "phase", "RSS MiB");
    for (phase, k) in [
        ("before load (engine warm)", before),
        ("bomb loaded", loaded),
        ("peak while hammered", peak),
        ("bomb removed (reload)", removed),
        ("runtime dropped", dropped),
    ] {
        println!("{phase:<44} {:>10.1}", mib(k));
    }
    println!("live instances after hammering: {instances}; {:.0} calls/s", calls as f64 / hammered.as_secs_f64());
    if let Some(path) = json {
        let doc = serde_json::json!({
            "calls": calls, "rss_mib": {"before": mib(before), "loaded": mib(loaded), "peak": mib(peak),
            "removed": mib(removed), "dropped": mib(dropped)}, "instances_after": instances,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json")).expect("writing --json");
        println!("wrote {path}");
    }
}
