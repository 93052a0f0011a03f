//! Containment (issue 17): a steady fleet, then a hostile policy hot-loaded
//! into the gateway's watched policy folder, then removed.
//!
//! Per hostile policy, on a fresh gateway: 300 agents connect and keep a
//! paced rate of round trips throughout. Three stages of equal length:
//! *before* (no policy), *during* (the policy file dropped into the folder;
//! the stage starts once the gateway reports it loaded) and *after* (the
//! file removed; the stage starts once it reports it unloaded). In each
//! stage 20 new agents connect (connect + first round trip, each bounded
//! by [`NEWCOMER_LIMIT`]), and the gateway's RSS is sampled. A
//! well-behaved filter runs the same way first, as the control.
//!
//! Before them, an idle gateway with an empty compile cache loads and drops
//! the control once ([`FirstCompile`]): the first compile in a process keeps
//! memory of its own (the compiler's code paged in, its threads and heap),
//! once. The cases share the cache it filled, so their *after* shows what a
//! policy left behind, the same on every machine whatever its user cache
//! holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::ReferenceServer;
use opamp_gateway::telemetry::metrics as m;

use crate::gateway_proc::{proc_status_kib, GatewayProc, RssParts};
use crate::load::{self, Run};
use crate::suite::{wait_links, Scale, LINKS};

/// Steady agents, as in the issue.
pub(crate) const STEADY: usize = 300;
/// New agents connecting in each stage, as in the issue.
pub(crate) const NEWCOMERS: usize = 20;
/// Round trips per second the steady fleet offers, in total.
pub(crate) const RATE: f64 = 1000.0;
/// A newcomer that has not completed its first round trip by then counts as
/// not admitted.
pub(crate) const NEWCOMER_LIMIT: Duration = Duration::from_secs(15);
/// The policy's file name in the folder (its metric label).
const NAME: &str = "hostile";

/// One policy: `fixture_misbehave` with a config that makes every `filter`
/// call misbehave (or, for the control, behave).
pub(crate) struct Hostile {
    pub label: &'static str,
    pub what: &'static str,
    pub yaml: &'static str,
}

pub(crate) const HOSTILE: [Hostile; 3] = [
    // The control: what any loaded filter costs the relay, to set the
    // hostile ones' "during" figures against.
    Hostile {
        label: "pass-through (control)",
        what: "a well-behaved filter that forwards everything",
        yaml: "hooks: [filter]\n",
    },
    Hostile {
        label: "loop",
        what: "a filter that loops (`loop {}`), default `on_error: open`",
        yaml: "hooks: [filter]\nfilter: spin\n",
    },
    Hostile {
        label: "memory bomb",
        what: "a filter that allocates until its memory limit",
        yaml: "hooks: [filter]\nfilter: bomb\n",
    },
];

pub(crate) struct Newcomers {
    pub tried: usize,
    pub admitted: usize,
    /// Connect + first round trip of the admitted ones, µs.
    pub latency: Histogram<u64>,
}

/// The policy's counters as `/metrics` shows them at the end of a stage.
#[derive(Default, Clone, Copy)]
pub(crate) struct Counters {
    pub calls: f64,
    pub errors: f64,
    pub quarantines: f64,
    pub skipped: f64,
}

pub(crate) struct Stage {
    pub name: &'static str,
    /// The steady fleet's round trips (agents already handed back).
    pub steady: Run,
    pub newcomers: Newcomers,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    pub cpu_us_per_msg: f64,
    pub counters: Counters,
}

pub(crate) struct Case {
    pub label: &'static str,
    pub what: &'static str,
    pub rss_idle_kib: u64,
    pub connect_errors: usize,
    pub stages: Vec<Stage>,
    /// Whether the gateway reported the policy loaded, then unloaded, in
    /// time (else the stage ran anyway, and the report says so).
    pub loaded: bool,
    pub unloaded: bool,
}

/// The misbehaving fixture, if `policies/` was built.
pub(crate) fn fixture() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/target/wasm32-wasip2/release/fixture_misbehave.wasm");
    p.exists().then_some(p)
}

/// What the first compile in a gateway process keeps: the control policy
/// dropped into a fresh, idle gateway with an empty compile cache, then
/// removed. RSS parts idle, with it loaded, and after it was removed.
pub(crate) struct FirstCompile {
    pub idle: RssParts,
    pub loaded: RssParts,
    pub removed: RssParts,
    pub seen: bool,
}

pub(crate) struct Containment {
    pub first_compile: FirstCompile,
    pub cases: Vec<Case>,
}

pub(crate) async fn run(server: &ReferenceServer, scale: &Scale, fixture: &Path) -> anyhow::Result<Containment> {
    // One compile cache for the phase, filled by the first-compile case: the
    // cases below then measure what a policy leaves behind, not what the
    // compiler left once per process, whatever the user's cache holds.
    let cache = tempfile::tempdir()?;
    eprintln!("[bench] containment: first compile, cold cache");
    let first_compile = first_compile(server, fixture, cache.path()).await?;
    let mut cases = Vec::new();
    for hostile in &HOSTILE {
        eprintln!("[bench] containment: {}", hostile.label);
        cases.push(one(server, scale, fixture, cache.path(), hostile).await?);
    }
    Ok(Containment { first_compile, cases })
}

async fn first_compile(server: &ReferenceServer, fixture: &Path, cache: &Path) -> anyhow::Result<FirstCompile> {
    let dir = tempfile::tempdir()?;
    let gw = GatewayProc::start_with(&server.url(), LINKS, Some(dir.path()), Some(cache), true).await?;
    wait_links(server, LINKS).await;
    let idle = gw.rss_parts_kib();
    install(dir.path(), fixture, HOSTILE[0].yaml)?;
    let loaded_seen = wait_loaded(&gw, 1.0).await;
    let loaded = gw.rss_parts_kib();
    uninstall(dir.path())?;
    let unloaded_seen = wait_loaded(&gw, 0.0).await;
    let removed = gw.rss_parts_kib();
    gw.stop().await;
    let mib = |k: u64| k as f64 / 1024.0;
    eprintln!(
        "[bench]   RSS {:.1} → {:.1} → {:.1} MiB (anonymous {:.1} → {:.1}, file-backed {:.1} → {:.1})",
        mib(idle.total),
        mib(loaded.total),
        mib(removed.total),
        mib(idle.anon),
        mib(removed.anon),
        mib(idle.file),
        mib(removed.file)
    );
    Ok(FirstCompile { idle, loaded, removed, seen: loaded_seen && unloaded_seen })
}

/// Drops the fixture into the watched folder as one policy (the module
/// renamed into place, so the watcher never sees half a file).
fn install(dir: &Path, fixture: &Path, yaml: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(format!("{NAME}.yaml")), yaml)?;
    let tmp = dir.join(format!(".{NAME}.wasm.tmp"));
    std::fs::copy(fixture, &tmp)?;
    std::fs::rename(&tmp, dir.join(format!("{NAME}.wasm")))
}

fn uninstall(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(dir.join(format!("{NAME}.wasm")))?;
    std::fs::remove_file(dir.join(format!("{NAME}.yaml")))
}

async fn one(
    server: &ReferenceServer,
    scale: &Scale,
    fixture: &Path,
    cache: &Path,
    hostile: &Hostile,
) -> anyhow::Result<Case> {
    let dir = tempfile::tempdir()?;
    let gw = GatewayProc::start_with(&server.url(), LINKS, Some(dir.path()), Some(cache), true).await?;
    wait_links(server, LINKS).await;
    let rss_idle_kib = gw.rss_kib();
    let storm = load::storm(&gw.url(), STEADY, 256, &[]).await;
    let mut stages = Vec::new();

    let (before, agents) = stage("before", &gw, storm.agents, scale).await;
    stages.push(before);

    install(dir.path(), fixture, hostile.yaml)?;
    let loaded = wait_loaded(&gw, 1.0).await;
    eprintln!("[bench]   policy loaded: {loaded}");
    let (during, agents) = stage("during", &gw, agents, scale).await;
    stages.push(during);

    uninstall(dir.path())?;
    let unloaded = wait_loaded(&gw, 0.0).await;
    eprintln!("[bench]   policy removed: {unloaded}");
    let (after, agents) = stage("after", &gw, agents, scale).await;
    stages.push(after);

    drop(agents);
    gw.stop().await;
    Ok(Case {
        label: hostile.label,
        what: hostile.what,
        rss_idle_kib,
        connect_errors: storm.errors,
        stages,
        loaded,
        unloaded,
    })
}

/// One stage: the steady fleet at [`RATE`], [`NEWCOMERS`] new agents
/// connecting from its start, RSS sampled every 100 ms.
async fn stage(name: &'static str, gw: &GatewayProc, agents: Vec<SimAgent>, scale: &Scale) -> (Stage, Vec<SimAgent>) {
    let duration = scale.containment_stage;
    let cpu0 = gw.cpu_seconds();
    let url = gw.url();
    let (run, newcomers, rss_peak_kib) = tokio::join!(
        load::drive(agents, Some(RATE), duration),
        newcomers(&url, NEWCOMERS),
        peak_rss(gw.pid(), duration)
    );
    let cpu = gw.cpu_seconds() - cpu0;
    let counters = counters(&gw.scrape().await);
    let rss_end_kib = gw.rss_kib();
    let Run { agents, rtt, round_trips, errors, elapsed } = run;
    let stage = Stage {
        name,
        steady: Run { agents: Vec::new(), rtt, round_trips, errors, elapsed },
        newcomers,
        rss_end_kib,
        rss_peak_kib: rss_peak_kib.max(rss_end_kib),
        cpu_us_per_msg: cpu * 1e6 / (2 * round_trips).max(1) as f64,
        counters,
    };
    eprintln!(
        "[bench]   {name}: {:.0} round trips/s (p99 {} µs, {} failed), new agents {}/{} (p99 {} ms), RSS {:.1} MiB",
        stage.steady.round_trips as f64 / stage.steady.elapsed.as_secs_f64(),
        stage.steady.rtt.value_at_quantile(0.99),
        stage.steady.errors,
        stage.newcomers.admitted,
        stage.newcomers.tried,
        stage.newcomers.latency.value_at_quantile(0.99) / 1000,
        rss_end_kib as f64 / 1024.0
    );
    (stage, agents)
}

/// `n` agents connect at once; each must finish its first round trip
/// within [`NEWCOMER_LIMIT`]. They leave afterwards.
async fn newcomers(url: &str, n: usize) -> Newcomers {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let opts = AgentOptions::new(url);
            tokio::spawn(async move {
                let t = Instant::now();
                let first = async {
                    let mut a = SimAgent::connect(opts).await.ok()?;
                    let report = a.status_report();
                    a.send(report).await.ok()?;
                    a.recv(NEWCOMER_LIMIT).await.ok()?;
                    Some(a)
                };
                let agent = tokio::time::timeout(NEWCOMER_LIMIT, first).await.ok().flatten();
                agent.map(|_| t.elapsed())
            })
        })
        .collect();
    let mut out = Newcomers { tried: n, admitted: 0, latency: load::histogram() };
    for t in tasks {
        if let Ok(Some(d)) = t.await {
            out.admitted += 1;
            out.latency.saturating_record(d.as_micros() as u64);
        }
    }
    out
}

/// Highest VmRSS seen over `duration`, KiB.
async fn peak_rss(pid: u32, duration: Duration) -> u64 {
    let end = Instant::now() + duration;
    let mut peak = 0;
    while Instant::now() < end {
        peak = peak.max(proc_status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// Waits (up to 30 s) until `/metrics` shows the policy's `loaded` gauge at
/// `value`; false if it never did.
async fn wait_loaded(gw: &GatewayProc, value: f64) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let body = gw.scrape().await;
        let now = sum(&body, m::POLICY_LOADED);
        // Absent counts as 0: a gauge only appears once the policy loaded.
        if now == value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn counters(body: &str) -> Counters {
    Counters {
        calls: sum(body, m::POLICY_CALLS),
        errors: sum(body, m::POLICY_ERRORS),
        quarantines: sum(body, m::POLICY_QUARANTINES),
        skipped: sum(body, m::POLICY_SKIPPED),
    }
}

/// Sum of the samples of `name` labelled with the hostile policy.
fn sum(body: &str, name: &str) -> f64 {
    let label = format!("policy=\"{NAME}\"");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{')?;
            (n == name && labels.contains(&label)).then(|| value.parse::<f64>().ok())?
        })
        // Not `sum()`: an empty float sum is -0.
        .fold(0.0, |a, b| a + b)
}
