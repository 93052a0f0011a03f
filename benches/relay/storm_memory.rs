//! Memory per agent as a user sees it (issue 13, bar 1): the gateway's peak
//! RSS while a fleet connects all at once, each agent with an
//! `Authorization` and a `User-Agent` header, one round trip, then idle.
//!
//! A gentle connect (the growth rows, 512 at a time) understates it: what a
//! storm allocates at once, the allocator keeps. So every agent starts at
//! the same moment, and the peak is the kernel's high-water mark (`VmHWM`),
//! which no sampling interval can miss. Each fleet size runs once per
//! allocator per round, the order rotating, on a fresh gateway each time;
//! the figure is the median over rounds.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use opamp_gateway::sim::server::ReferenceServer;
use serde_json::{json, Value};

use crate::cpu_rounds::median;
use crate::gateway_proc::{proc_status_kib, GatewayProc};
use crate::load;
use crate::suite::{wait_links, Scale, LINKS};

/// The bar: KiB per agent at the peak.
pub(crate) const BAR_KIB: f64 = 8.0;

/// Loopback addresses the storm comes from. Real fleets come from many
/// addresses; from a few, an all-at-once storm would meet
/// `listener.max_handshaking_per_source` (1024 sockets not yet admitted per
/// address, 429 beyond), which guards against one source, not a fleet.
const SOURCES: u8 = 64;

/// The effective config a collector reports at connect, in the phase's
/// last row: the session gives back the buffers it grew (not a bar).
const CONFIG_BYTES: usize = 16 * 1024;

/// How long after the storm the settled RSS is read: what the allocator
/// gave back by then, it gives back at all.
const SETTLE: Duration = Duration::from_secs(2);

/// An allocator the gateway can run with, and the environment that picks it.
struct Allocator {
    name: &'static str,
    env: Vec<(&'static str, String)>,
}

/// The gateway as built (glibc's malloc), glibc with two arenas, and
/// jemalloc and mimalloc by `LD_PRELOAD` where installed (`scripts/bench`
/// installs them); a missing one is named in the report.
fn allocators() -> (Vec<Allocator>, Vec<&'static str>) {
    let mut found = vec![
        Allocator { name: "glibc (as shipped)", env: Vec::new() },
        Allocator { name: "glibc, MALLOC_ARENA_MAX=2", env: vec![("MALLOC_ARENA_MAX", "2".into())] },
    ];
    let mut missing = Vec::new();
    for (name, file) in [("jemalloc", "libjemalloc.so.2"), ("mimalloc", "libmimalloc.so.2")] {
        let lib = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
            .iter()
            .map(|dir| Path::new(dir).join(file))
            .find(|p| p.exists());
        match lib {
            Some(lib) => found.push(Allocator { name, env: vec![("LD_PRELOAD", lib.display().to_string())] }),
            None => missing.push(name),
        }
    }
    (found, missing)
}

/// The headers each agent sends, as the storm had them (`{i}`
/// becomes the agent's index: every credential differs).
fn headers() -> Vec<(String, String)> {
    vec![
        ("Authorization".into(), "Secret-Key agent-{i}-0123456789abcdef0123456789abcdef".into()),
        ("User-Agent".into(), "OpenTelemetry Collector Contrib/0.112.0 (linux/amd64)".into()),
    ]
}

/// One storm on a fresh gateway.
struct Sample {
    idle_kib: u64,
    peak_kib: u64,
    settled_kib: u64,
    connected: usize,
    errors: usize,
    seconds: f64,
}

impl Sample {
    fn per_agent(&self, kib: u64) -> f64 {
        kib.saturating_sub(self.idle_kib) as f64 / self.connected.max(1) as f64
    }
}

/// Runs the phase; its figures and bars, as JSON for [`crate::report`].
pub(crate) async fn run(server: &ReferenceServer, scale: &Scale) -> anyhow::Result<Value> {
    let (allocs, missing) = allocators();
    let mut sizes = Vec::new();
    for &n in &scale.storm_memory {
        // samples[allocator][round]
        let mut samples: Vec<Vec<Sample>> = allocs.iter().map(|_| Vec::new()).collect();
        for round in 0..scale.storm_memory_rounds {
            for k in 0..allocs.len() {
                let i = (k + round) % allocs.len();
                eprintln!(
                    "[bench] storm memory: {n} agents at once, {}, round {}/{}",
                    allocs[i].name,
                    round + 1,
                    scale.storm_memory_rounds
                );
                samples[i].push(one(server, n, &allocs[i], 0).await?);
            }
        }
        let rows: Vec<Value> = allocs.iter().zip(&samples).map(|(a, runs)| row(a.name, runs)).collect();
        sizes.push(json!({"agents": n, "allocators": rows}));
    }
    // The same storm with a collector's config in each first report, on
    // the gateway as shipped: what stays once the session gave back the
    // buffers that message grew.
    // At the largest size, where what agents keep outweighs what was in
    // flight during the storm.
    let n = scale.storm_memory.iter().copied().max().unwrap_or(1000);
    let mut runs = Vec::new();
    for round in 0..scale.storm_memory_rounds {
        eprintln!(
            "[bench] storm memory: {n} agents at once, {} KiB configs, round {}/{}",
            CONFIG_BYTES / 1024,
            round + 1,
            scale.storm_memory_rounds
        );
        runs.push(one(server, n, &allocs[0], CONFIG_BYTES).await?);
    }
    let mut with_config = row(allocs[0].name, &runs);
    with_config["agents"] = json!(n);
    with_config["config_kib"] = json!(CONFIG_BYTES / 1024);
    Ok(json!({
        "with_config": with_config,
        "rounds": scale.storm_memory_rounds,
        "sources": SOURCES,
        "settle_seconds": SETTLE.as_secs_f64(),
        "sizes": sizes,
        "missing_allocators": missing,
    }))
}

/// One allocator's runs, and their medians.
fn row(allocator: &str, runs: &[Sample]) -> Value {
    json!({
        "allocator": allocator,
        "peak_kib_per_agent": median(runs.iter().map(|s| s.per_agent(s.peak_kib)).collect()),
        "settled_kib_per_agent": median(runs.iter().map(|s| s.per_agent(s.settled_kib)).collect()),
        "storm_seconds": median(runs.iter().map(|s| s.seconds).collect()),
        "runs": runs.iter().map(|s| json!({
            "idle_kib": s.idle_kib, "peak_kib": s.peak_kib, "settled_kib": s.settled_kib,
            "connected": s.connected, "errors": s.errors, "seconds": s.seconds,
        })).collect::<Vec<_>>(),
    })
}

async fn one(server: &ReferenceServer, n: usize, alloc: &Allocator, config_bytes: usize) -> anyhow::Result<Sample> {
    let gw = GatewayProc::start_shipped(&server.url(), LINKS, &alloc.env).await?;
    wait_links(server, LINKS).await;
    // A first agent in and out before the idle reading, so that what the
    // first session allocates once (and keeps) is not counted per agent.
    drop(load::storm_from(&gw.url(), 1, 1, &headers(), SOURCES, config_bytes, None).await.agents);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = gw.rss_kib();
    let storm = load::storm_from(&gw.url(), n, n, &headers(), SOURCES, config_bytes, None).await;
    // The high-water mark covers the whole life of the process, but the
    // gateway was never larger before than at idle.
    let peak_kib = proc_status_kib(gw.pid(), "VmHWM:").max(gw.rss_kib());
    tokio::time::sleep(SETTLE).await;
    let settled_kib = gw.rss_kib();
    let sample = Sample {
        idle_kib,
        peak_kib,
        settled_kib,
        connected: storm.agents.len(),
        errors: storm.errors,
        seconds: storm.elapsed.as_secs_f64(),
    };
    drop(storm.agents);
    gw.stop().await;
    Ok(sample)
}

/// The bars: the allocator as shipped, at each size.
pub(crate) fn bars(v: &Value) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for size in v["sizes"].as_array().into_iter().flatten() {
        let Some(shipped) = size["allocators"].as_array().and_then(|a| a.first()) else { continue };
        let kib = shipped["peak_kib_per_agent"].as_f64().unwrap_or(f64::MAX);
        let errors: u64 =
            shipped["runs"].as_array().into_iter().flatten().map(|r| r["errors"].as_u64().unwrap_or(0)).sum();
        out.push((
            format!("memory per agent at the peak of a storm: {} agents connecting at once", size["agents"]),
            format!("≤ {BAR_KIB} KiB"),
            format!(
                "{kib:.1} KiB (median of {}; settled {:.1} KiB), {errors} errors",
                v["rounds"],
                shipped["settled_kib_per_agent"].as_f64().unwrap_or(0.0)
            ),
            kib <= BAR_KIB && errors == 0,
        ));
    }
    out
}

/// The section of docs/BENCHMARKS.md.
pub(crate) fn markdown(s: &mut String, v: &Value) {
    let _ = writeln!(
        s,
        "\n## Memory at the peak of a connect storm\n\nEvery agent connects at the same moment (from {} loopback addresses), with an `Authorization` header (a different secret each) and a `User-Agent`, makes one status round trip, then stays idle. The gateway runs with its default settings (no deeper queues than shipped), as a new user would run it. Each row's runs are on fresh gateways, one per allocator in turn, the order rotating per round; {} rounds, medians shown. KiB per agent = (RSS − idle RSS) / agents connected, where idle is read after a first agent came and went; at the peak (the kernel's high-water mark, `VmHWM`) and {} s after the storm (settled). The first allocator is the gateway as built; the others are the same binary with `MALLOC_ARENA_MAX=2` or with jemalloc or mimalloc by `LD_PRELOAD`. The last row is not a bar: each agent's first status report carries a 16 KiB effective config, as a collector's does at connect; the WebSocket's buffers grow to hold it, and the session swaps them for 1 KiB ones once nothing in them is unread (`opampgateway_agent_buffers_released_total`).\n",
        v["sources"],
        v["rounds"],
        v["settle_seconds"]
    );
    let _ = writeln!(
        s,
        "| agents | allocator | peak per agent | settled per agent | idle → peak RSS (last run) | storm | errors |\n|---|---|---|---|---|---|---|"
    );
    let with_config = v.get("with_config").map(|w| (w["agents"].clone(), w.clone()));
    let sizes = v["sizes"].as_array().into_iter().flatten().flat_map(|size| {
        size["allocators"].as_array().into_iter().flatten().map(move |a| (size["agents"].clone(), a.clone()))
    });
    for (agents, a) in sizes.chain(with_config) {
        let runs = a["runs"].as_array().cloned().unwrap_or_default();
        let last = runs.last().cloned().unwrap_or(Value::Null);
        let errors: u64 = runs.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum();
        let mib = |k: &str| last[k].as_f64().unwrap_or(0.0) / 1024.0;
        let _ = writeln!(
            s,
            "| {agents} | {}{} | {:.1} KiB | {:.1} KiB | {:.1} → {:.1} MiB | {:.2} s | {errors} |",
            a["allocator"].as_str().unwrap_or(""),
            a["config_kib"].as_u64().map(|k| format!(", each first report with a {k} KiB config")).unwrap_or_default(),
            a["peak_kib_per_agent"].as_f64().unwrap_or(0.0),
            a["settled_kib_per_agent"].as_f64().unwrap_or(0.0),
            mib("idle_kib"),
            mib("peak_kib"),
            a["storm_seconds"].as_f64().unwrap_or(0.0),
        );
    }
    let missing: Vec<&str> =
        v["missing_allocators"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !missing.is_empty() {
        let _ = writeln!(s, "\nNot installed, so not compared: {}.", missing.join(", "));
    }
}
