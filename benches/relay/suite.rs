//! The phases, in the order they run, and what each records.

use std::time::Duration;

use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use serde_json::json;

use crate::containment;
use crate::cpu_rounds;
use crate::gateway_proc::{self, GatewayProc, SyscallCounter};
use crate::load::{self, Run};
use crate::nginx::{self, Nginx};
use crate::policies;
use crate::report::{Report, Row};
use crate::storm_memory;
use crate::tls_storm;

pub(crate) struct Scale {
    pub quick: bool,
    pub memory_points: Vec<usize>,
    pub storm: usize,
    /// Fleet sizes of the all-at-once storm's peak memory (issue 13, bar 1).
    pub storm_memory: Vec<usize>,
    /// Rounds per size of it, each allocator once per round.
    pub storm_memory_rounds: usize,
    /// Agents in each TLS connect storm, and its rounds.
    pub tls_storm: usize,
    pub tls_storm_rounds: usize,
    pub latency_agents: usize,
    pub latency_rate: f64,
    pub saturate_agents: usize,
    pub phase: Duration,
    pub growth: Vec<usize>,
    pub growth_rate: f64,
    pub swaps: usize,
    /// Interleaved none/with rounds in the policy phase.
    pub policy_rounds: usize,
    /// Side-by-side rounds with no policy on either gateway: the method's
    /// own spread, shown beside the policy cost.
    pub policy_control_rounds: usize,
    /// Interleaved rounds of the CPU comparison (nginx and the gateway).
    pub cpu_rounds: usize,
    /// Length of each proxy's paced run within a CPU round.
    pub cpu_window: Duration,
    /// Length of each stage (before, during, after) of the containment phase.
    pub containment_stage: Duration,
    /// Which phases run.
    pub only: Only,
}

/// `--only-…`: one group of phases, for working on one figure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Only {
    /// The whole suite.
    All,
    /// `--only-paths`: direct, nginx and gateway side by side (latency,
    /// throughput, CPU and syscalls per message).
    Paths,
    /// `--only-policies`: the policy throughput phase and hot swaps.
    Policies,
    /// `--only-containment`: hostile policies under load (issue 17).
    Containment,
    /// `--only-cpu`: just the interleaved CPU rounds against nginx (with
    /// `BENCH_BASELINE_BIN`, an A/B of two builds).
    Cpu,
    /// `--only-memory`: the peak memory of all-at-once connect storms, per
    /// allocator.
    Memory,
    /// `--only-tls`: connect storms over TLS, one worker thread beside one
    /// per CPU.
    Tls,
}

impl Only {
    pub(crate) fn from_args(args: &[String]) -> anyhow::Result<Self> {
        let picked: Vec<Self> = args
            .iter()
            .filter_map(|a| match a.as_str() {
                "--only-paths" => Some(Self::Paths),
                "--only-policies" => Some(Self::Policies),
                "--only-containment" => Some(Self::Containment),
                "--only-cpu" => Some(Self::Cpu),
                "--only-memory" => Some(Self::Memory),
                "--only-tls" => Some(Self::Tls),
                _ => None,
            })
            .collect();
        match picked.as_slice() {
            [] => Ok(Self::All),
            [one] => Ok(*one),
            _ => anyhow::bail!(
                "pick at most one of --only-paths, --only-policies, --only-containment, --only-cpu, --only-memory, --only-tls"
            ),
        }
    }

    fn runs(self, phase: Self) -> bool {
        self == Self::All || self == phase
    }
}

impl Scale {
    pub(crate) fn new(quick: bool, only: Only) -> Self {
        if quick {
            Self {
                quick,
                memory_points: vec![200, 1000],
                storm: 1000,
                storm_memory: vec![1000],
                storm_memory_rounds: 1,
                tls_storm: 1000,
                tls_storm_rounds: 1,
                latency_agents: 200,
                latency_rate: 2000.0,
                saturate_agents: 50,
                phase: Duration::from_secs(2),
                growth: vec![200, 500, 1000],
                growth_rate: 1000.0,
                swaps: 5,
                policy_rounds: 1,
                policy_control_rounds: 1,
                cpu_rounds: 3,
                cpu_window: Duration::from_secs(2),
                containment_stage: Duration::from_secs(5),
                only,
            }
        } else {
            Self {
                quick,
                memory_points: vec![1000, 10_000],
                storm: 10_000,
                storm_memory: vec![2000, 10_000],
                storm_memory_rounds: 3,
                tls_storm: 10_000,
                tls_storm_rounds: 3,
                latency_agents: 1000,
                latency_rate: 10_000.0,
                saturate_agents: 200,
                phase: Duration::from_secs(8),
                // The last point is as close to this machine's 20,000 open
                // files as the gateway's default `listener.max_connections`
                // (the limit less 1,024) lets it: issue 13 point 4.
                growth: vec![1000, 5000, 10_000, 18_900],
                growth_rate: 5000.0,
                swaps: 20,
                policy_rounds: 5,
                policy_control_rounds: 3,
                cpu_rounds: 5,
                cpu_window: Duration::from_secs(4),
                containment_stage: Duration::from_secs(10),
                only,
            }
        }
    }
}

pub(crate) const LINKS: usize = 3;

pub(crate) async fn run(scale: Scale) -> anyhow::Result<Report> {
    let mut report = Report::new(&scale);
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;
    let upstream = server.url();

    if scale.only.runs(Only::Paths) {
        relay_phases(&mut report, &server, &scale).await?;
    }
    if scale.only == Only::Cpu {
        anyhow::ensure!(nginx::binary().is_some(), "--only-cpu compares with nginx, which is not installed");
        cpu_against_nginx(&mut report, &server, &scale).await?;
    }

    // 3b. Peak memory of all-at-once storms, per allocator (issue 13).
    if scale.only.runs(Only::Memory) {
        report.storm_memory(storm_memory::run(&server, &scale).await?);
    }
    if scale.only.runs(Only::Tls) {
        report.tls_storm(tls_storm::run(&server, &scale).await?);
    }

    // 4. Policies: throughput with the four examples vs none, and hot swaps.
    let examples = if scale.only.runs(Only::Policies) { Some(policies::prepare()?) } else { None };
    match examples {
        None => {}
        Some(None) => {
            report.note("policy components not built: run scripts/bench (it builds policies/ for wasm32-wasip2)")
        }
        Some(Some(set)) => {
            // Interleaved rounds on fresh gateways, the same agents' headers
            // either way: drift on a shared box hits both sides alike.
            // Each round's cost is kept too: the median of the paired rounds
            // is the figure, as one unlucky round on a 2-core box swings the
            // sums by several percent either way.
            let mut none = FlatOut::default();
            let mut with = FlatOut::default();
            let mut paired = Vec::new();
            for round in 1..=scale.policy_rounds {
                eprintln!("[bench] policies: round {round}/{}, none", scale.policy_rounds);
                let a = flat_out(&server, &upstream, None, &scale).await?;
                eprintln!("[bench] policies: round {round}/{}, with the examples", scale.policy_rounds);
                let b = flat_out(&server, &upstream, Some(set.dir()), &scale).await?;
                paired.push((1.0 - b.rate() / a.rate().max(1.0)) * 100.0);
                none.add(a);
                with.add(b);
            }
            report.policy_throughput(&none, &with, &paired, set.names());

            // Side by side: two gateways driven at once. Control rounds
            // (none beside none) first, to show what the method resolves.
            let mut control = Vec::new();
            for round in 1..=scale.policy_control_rounds {
                eprintln!("[bench] policies side by side: control round {round}/{}", scale.policy_control_rounds);
                control.push(side_by_side(&server, &upstream, None, round % 2 == 0, &scale).await?);
            }
            let mut rounds = Vec::new();
            for round in 1..=scale.policy_rounds {
                eprintln!("[bench] policies side by side: round {round}/{}", scale.policy_rounds);
                rounds.push(side_by_side(&server, &upstream, Some(set.dir()), round % 2 == 0, &scale).await?);
            }
            report.policy_side_by_side(&rounds, &control);

            eprintln!("[bench] hot swap under load");
            let gw = GatewayProc::start(&upstream, LINKS, Some(set.dir())).await?;
            wait_links(&server, LINKS).await;
            let storm = load::storm(&gw.url(), scale.latency_agents, 256, &policies::headers()).await;
            let swapper = set.swap_repeatedly(scale.swaps, scale.phase);
            let (run, swaps) =
                tokio::join!(load::drive(storm.agents, Some(scale.growth_rate / 2.0), scale.phase), swapper);
            report.hot_swap(swaps?, &run, storm.errors);
            gw.stop().await;
        }
    }

    // 5. Containment (issue 17): hostile policies hot-loaded under load.
    if scale.only.runs(Only::Containment) {
        match containment::fixture() {
            Some(fixture) => {
                let containment = containment::run(&server, &scale, &fixture).await?;
                report.containment(&containment);
            }
            None => report.note("fixture_misbehave not built: no containment phase (run scripts/bench)"),
        }
    }
    server.shutdown().await;
    Ok(report)
}

/// The paths table's row for the gateway with `runtime.worker_threads: 1`.
pub(crate) const ONE_WORKER: &str = "gateway, 1 worker";
/// nginx with one worker process per CPU, in the CPU rounds.
pub(crate) const NGINX_PER_CPU: &str = "nginx, 1 worker per CPU";
/// The CPU rounds' rows for `BENCH_BASELINE_BIN`: reported, never bars.
pub(crate) const BASELINE: &str = "baseline";
pub(crate) const BASELINE_ONE_WORKER: &str = "baseline, 1 worker";

/// Phases 1–3: the relay against its baselines, memory and cost growth.
async fn relay_phases(report: &mut Report, server: &ReferenceServer, scale: &Scale) -> anyhow::Result<()> {
    let upstream = server.url();
    // 1. Direct and nginx baselines: same load generator, same server.
    eprintln!("[bench] direct baseline");
    let direct = path_figures(&upstream, None, scale).await;
    report.path("direct", &direct);
    if nginx::binary().is_some() {
        eprintln!("[bench] nginx baseline");
        let ng = Nginx::start(server.addr().port()).await?;
        let figures = path_figures(&ng.url(), Some(ng.pid()), scale).await;
        report.path("nginx", &figures);
        ng.stop().await;
    } else {
        report.note("nginx not installed: its column is missing (scripts/bench installs it)");
    }

    // 2. Through the gateway: same figures, plus memory and CPU growth.
    eprintln!("[bench] gateway");
    let gw = GatewayProc::start(&upstream, LINKS, None).await?;
    wait_links(server, LINKS).await;
    let gateway = path_figures(&gw.url(), Some(gw.pid()), scale).await;
    report.path("gateway", &gateway);
    report.added_latency(&direct, &gateway);
    gw.stop().await;
    // nginx runs one worker process: the like-for-like gateway has one
    // worker thread (`runtime.worker_threads: 1`).
    eprintln!("[bench] gateway, 1 worker thread");
    let gw = GatewayProc::start_with_workers(&upstream, LINKS, 1).await?;
    wait_links(server, LINKS).await;
    report.path(ONE_WORKER, &path_figures(&gw.url(), Some(gw.pid()), scale).await);
    gw.stop().await;
    if nginx::binary().is_some() {
        cpu_against_nginx(report, server, scale).await?;
    }
    if scale.only == Only::Paths {
        return Ok(());
    }

    // 3. Memory per idle agent, and cost growth, each on a fresh gateway.
    let mut points: Vec<usize> = scale.memory_points.iter().chain(&scale.growth).copied().collect();
    points.sort_unstable();
    points.dedup();
    for n in points {
        eprintln!("[bench] {n} agents: memory and CPU per message");
        let gw = GatewayProc::start(&upstream, LINKS, None).await?;
        wait_links(server, LINKS).await;
        let rss0 = gw.rss_kib();
        let concurrency = 512;
        let storm = load::storm(&gw.url(), n, concurrency, &[]).await;
        let rss = gw.rss_kib();
        let per_agent_kib = (rss.saturating_sub(rss0)) as f64 / storm.agents.len().max(1) as f64;
        if n == scale.storm {
            report.storm(n, LINKS, concurrency, &storm);
        }
        let cpu0 = gw.cpu_seconds();
        let run = load::drive(storm.agents, Some(scale.growth_rate), scale.phase).await;
        let cpu = gw.cpu_seconds() - cpu0;
        report.growth(Row {
            agents: n,
            connected: run.agents.len(),
            rss_before_kib: rss0,
            rss_kib: rss,
            per_agent_kib,
            rate: run.round_trips as f64 / run.elapsed.as_secs_f64(),
            cpu_us_per_msg: cpu * 1e6 / (2 * run.round_trips).max(1) as f64,
            storm_seconds: storm.elapsed.as_secs_f64(),
            errors: storm.errors as u64 + run.errors,
        });
        drop(run.agents);
        gw.stop().await;
    }

    Ok(())
}

/// Flat-out runs summed over rounds: throughput and the gateway's CPU.
#[derive(Default)]
pub(crate) struct FlatOut {
    pub round_trips: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub connect_errors: u64,
    pub errors: u64,
    pub rounds: usize,
}

impl FlatOut {
    fn add(&mut self, other: FlatOut) {
        self.round_trips += other.round_trips;
        self.seconds += other.seconds;
        self.cpu_seconds += other.cpu_seconds;
        self.errors += other.errors;
        self.connect_errors += other.connect_errors;
        self.rounds += other.rounds;
    }

    pub(crate) fn rate(&self) -> f64 {
        self.round_trips as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Gateway CPU per relayed message (a round trip relays two).
    pub(crate) fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_seconds * 1e6 / (2 * self.round_trips).max(1) as f64
    }
}

/// Two fresh gateways on the same server, one without policies and one
/// with those in `policy_dir`, driven flat out at the same time by one load
/// generator, each with its own agents. Whatever the box does meanwhile (a
/// noisy neighbour, a frequency change, the scheduler's mood) it does to
/// both, so their CPU per message differs by what the policies cost; run
/// one after the other, the same gateway's rate swings by more than that
/// from one second to the next here. The gateway started first runs a
/// little dearer (about 2 % in control rounds), so `with_first` alternates
/// per round. Returns (without, with).
async fn side_by_side(
    server: &ReferenceServer,
    upstream: &str,
    policy_dir: Option<&std::path::Path>,
    with_first: bool,
    scale: &Scale,
) -> anyhow::Result<(FlatOut, FlatOut)> {
    let dirs = if with_first { [policy_dir, None] } else { [None, policy_dir] };
    let a = GatewayProc::start(upstream, LINKS, dirs[0]).await?;
    let b = GatewayProc::start(upstream, LINKS, dirs[1]).await?;
    wait_links(server, 2 * LINKS).await;
    let sa = load::storm(&a.url(), scale.saturate_agents, 256, &policies::headers()).await;
    let sb = load::storm(&b.url(), scale.saturate_agents, 256, &policies::headers()).await;
    let warm = Duration::from_secs(1);
    let (wa, wb) = tokio::join!(load::drive(sa.agents, None, warm), load::drive(sb.agents, None, warm));
    let (ca, cb) = (a.cpu_seconds(), b.cpu_seconds());
    let (warm_errors, storm_errors) = ([wa.errors, wb.errors], [sa.errors, sb.errors]);
    let (ra, rb) = tokio::join!(load::drive(wa.agents, None, scale.phase), load::drive(wb.agents, None, scale.phase));
    let cpu = [a.cpu_seconds() - ca, b.cpu_seconds() - cb];
    let [run_a, run_b] = [ra, rb].map(|run| (run.round_trips, run.elapsed.as_secs_f64(), run.errors));
    a.stop().await;
    b.stop().await;
    let out = |i: usize, (round_trips, seconds, errors): (u64, f64, u64)| FlatOut {
        round_trips,
        seconds,
        cpu_seconds: cpu[i],
        connect_errors: storm_errors[i] as u64,
        errors: warm_errors[i] + errors,
        rounds: 1,
    };
    let (first, second) = (out(0, run_a), out(1, run_b));
    let (without, with) = if with_first { (second, first) } else { (first, second) };
    eprintln!(
        "[bench]   without: {:.0} round trips/s, {:.2} µs CPU per message; with: {:.0}/s, {:.2} µs ({:+.1} %)",
        without.rate(),
        without.cpu_us_per_msg(),
        with.rate(),
        with.cpu_us_per_msg(),
        (with.cpu_us_per_msg() / without.cpu_us_per_msg().max(f64::EPSILON) - 1.0) * 100.0
    );
    Ok((without, with))
}

/// One flat-out run on a fresh gateway, with the policy agents' headers.
async fn flat_out(
    server: &ReferenceServer,
    upstream: &str,
    policy_dir: Option<&std::path::Path>,
    scale: &Scale,
) -> anyhow::Result<FlatOut> {
    let gw = GatewayProc::start(upstream, LINKS, policy_dir).await?;
    wait_links(server, LINKS).await;
    let storm = load::storm(&gw.url(), scale.saturate_agents, 256, &policies::headers()).await;
    let warm = load::drive(storm.agents, None, Duration::from_secs(1)).await;
    let cpu0 = gw.cpu_seconds();
    let run = load::drive(warm.agents, None, scale.phase).await;
    let cpu = gw.cpu_seconds() - cpu0;
    drop(run.agents);
    gw.stop().await;
    let out = FlatOut {
        round_trips: run.round_trips,
        seconds: run.elapsed.as_secs_f64(),
        cpu_seconds: cpu,
        connect_errors: storm.errors as u64,
        errors: warm.errors + run.errors,
        rounds: 1,
    };
    eprintln!(
        "[bench]   {:.0} round trips/s, {:.1} µs CPU per message, {} connect errors, {} failed round trips",
        out.rate(),
        out.cpu_us_per_msg(),
        out.connect_errors,
        out.errors
    );
    Ok(out)
}

/// Latency at a fixed rate, and throughput flat out, over one path; with the
/// proxy's process, its CPU and system calls per relayed message at that rate.
pub(crate) struct PathFigures {
    pub paced: Run,
    pub saturated: Run,
    pub connect_errors: usize,
    pub cost: Option<PacedCost>,
}

/// What a proxy process spends per relayed message (a round trip relays
/// two) at the paced rate: CPU (utime + stime of the whole process tree) over
/// the paced run, and system calls over a second paced run with `perf stat`
/// attached (kept apart so the counter does not weigh on the CPU figure).
pub(crate) struct PacedCost {
    pub cpu_us_per_msg: f64,
    /// The part of it spent in user space (the rest is the kernel's).
    pub user_us_per_msg: f64,
    pub syscalls_per_msg: Option<f64>,
}

async fn path_figures(url: &str, proxy_pid: Option<u32>, scale: &Scale) -> PathFigures {
    let storm = load::storm(url, scale.latency_agents, 256, &[]).await;
    let connect_errors = storm.errors;
    let mut agents = storm.agents;
    let rest: Vec<SimAgent> = agents.split_off(scale.saturate_agents.min(agents.len()));
    let warm = load::drive(rest, Some(scale.latency_rate), Duration::from_secs(1)).await;
    let mut everyone = agents;
    everyone.extend(warm.agents);
    let cpu0 = proxy_pid.map(gateway_proc::tree_cpu_split);
    let paced = load::drive(everyone, Some(scale.latency_rate), scale.phase).await;
    let per_msg = |n: f64, run: &Run| n / (2 * run.round_trips).max(1) as f64;
    let mut cost = proxy_pid.zip(cpu0).map(|(pid, (user0, sys0))| {
        let (user, sys) = gateway_proc::tree_cpu_split(pid);
        PacedCost {
            cpu_us_per_msg: per_msg((user - user0 + sys - sys0) * 1e6, &paced),
            user_us_per_msg: per_msg((user - user0) * 1e6, &paced),
            syscalls_per_msg: None,
        }
    });
    let mut all = paced.agents;
    if let (Some(pid), Some(cost)) = (proxy_pid, cost.as_mut()) {
        if let Some(counter) = SyscallCounter::start(pid).await {
            let counted = load::drive(all, Some(scale.latency_rate), scale.phase.min(Duration::from_secs(4))).await;
            cost.syscalls_per_msg = counter.stop().await.map(|n| per_msg(n as f64, &counted));
            all = counted.agents;
        }
    }
    let rest = all.split_off(scale.saturate_agents.min(all.len()));
    drop(rest);
    let saturated = load::drive(all, None, scale.phase).await;
    PathFigures { paced: Run { agents: Vec::new(), ..paced }, saturated, connect_errors, cost }
}

/// The CPU bar: nginx, the gateway as shipped, and the gateway with one
/// worker, all running at once, measured in interleaved rounds. With
/// `BENCH_BASELINE_BIN=<an opamp-gateway binary>`, that build runs beside
/// them the same two ways (rows `baseline` and `baseline, 1 worker`): a
/// change's before and after, measured seconds apart.
async fn cpu_against_nginx(report: &mut Report, server: &ReferenceServer, scale: &Scale) -> anyhow::Result<()> {
    eprintln!("[bench] CPU per message: nginx and the gateway in {} interleaved rounds", scale.cpu_rounds);
    let upstream = server.url();
    let ng = Nginx::start(server.addr().port()).await?;
    let mut gateways = vec![
        ("gateway", GatewayProc::start(&upstream, LINKS, None).await?),
        (ONE_WORKER, GatewayProc::start_with_workers(&upstream, LINKS, 1).await?),
    ];
    if let Ok(bin) = std::env::var("BENCH_BASELINE_BIN") {
        gateways.push((BASELINE, GatewayProc::start_build(&bin, &upstream, LINKS, None).await?));
        gateways.push((BASELINE_ONE_WORKER, GatewayProc::start_build(&bin, &upstream, LINKS, Some(1)).await?));
    }
    wait_links(server, gateways.len() * LINKS).await;
    // nginx as packaged (`worker_processes auto`: one per CPU), beside the
    // gateway as shipped: reported, not a bar.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ng_per_cpu = Nginx::start_with_workers(server.addr().port(), cpus).await?;
    let mut proxies = vec![
        cpu_rounds::Proxy { name: "nginx".into(), url: ng.url(), pid: ng.pid() },
        cpu_rounds::Proxy { name: NGINX_PER_CPU.into(), url: ng_per_cpu.url(), pid: ng_per_cpu.pid() },
    ];
    proxies.extend(gateways.iter().map(|(name, g)| cpu_rounds::Proxy {
        name: (*name).into(),
        url: g.url(),
        pid: g.pid(),
    }));
    let rounds =
        cpu_rounds::measure(&proxies, scale.latency_agents, scale.latency_rate, scale.cpu_window, scale.cpu_rounds)
            .await;
    report.cpu_rounds(&rounds);
    for (_, g) in gateways {
        g.stop().await;
    }
    ng.stop().await;
    ng_per_cpu.stop().await;
    Ok(())
}

pub(crate) async fn wait_links(server: &ReferenceServer, n: usize) {
    let _ = server.wait_until(Duration::from_secs(30), |s| s.open_connections >= n).await;
    // The server counts a link a moment before the gateway marks it up.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

pub(crate) fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": cmd("uname", &["-r"]),
        "rustc": cmd("rustc", &["--version"]),
        "nginx": nginx::binary().map(|b| cmd(&b.display().to_string(), &["-v"])).unwrap_or_default(),
        "gateway": env!("CARGO_PKG_VERSION"),
        "date": cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    })
}
