//! `--soak DURATION` (issue 14): churn against one gateway process for a long
//! time and record whether its memory, fds and tasks stay flat.
//!
//! Groups of agents, half WebSocket and half plain HTTP, connect, exchange
//! [`MESSAGES`] round trips and leave; one group in three vanishes without a
//! goodbye (HTTP agents just stop polling, so the gateway must forget them
//! after `listener.http.idle_timeout`). Two example policies are loaded and
//! rewritten every [`SWAP_EVERY`]. Samples are taken between groups, when no
//! WebSocket session is open, so the in-flight group does not add noise.
//!
//! Writes only the section between [`BEGIN`] and [`END`] of the report (the
//! rest of the file is untouched), `soak.svg` next to it, and the raw samples
//! as CSV and JSON under `target/`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_gateway::protocol::proto::{AgentDisconnect, AgentToServer};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::telemetry::metrics as m;
use prost::Message;
use serde_json::json;

use crate::gateway_proc::GatewayProc;
use crate::suite::{machine, wait_links, LINKS};

pub(crate) const BEGIN: &str = "<!-- soak:begin -->";
pub(crate) const END: &str = "<!-- soak:end -->";

/// Agents per group: half WebSocket, half HTTP.
const GROUP: usize = 300;
/// Round trips each agent makes (the first is a full status report).
const MESSAGES: usize = 5;
/// Sessions started per second (`SOAK_RATE` overrides). Paced, not flat
/// out: the vanished HTTP agents the gateway still remembers (rate × idle
/// timeout / 6) then stay the same all run, and so does their memory.
const RATE: f64 = 300.0;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SWAP_EVERY: Duration = Duration::from_secs(30);
/// `listener.http.idle_timeout` for the soak: short, so that forgetting
/// vanished HTTP agents happens many times over a run.
const HTTP_IDLE: Duration = Duration::from_secs(10);
/// The bar: RSS growth per 100,000 sessions after warm-up.
const BAR_KIB: f64 = 2048.0;
/// Rows in the Markdown table (the raw files keep every sample).
const TABLE_ROWS: usize = 16;
const POLICIES: [&str; 2] = ["header_allowlist", "block_packages"];

/// One sample of the gateway, taken between groups.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Sample {
    pub secs: f64,
    pub ws_sessions: u64,
    pub http_sessions: u64,
    pub rss_kib: u64,
    pub fds: u64,
    /// `opampgateway_runtime_alive_tasks`, if the gateway exports it.
    pub tasks: Option<f64>,
    pub ws_open: f64,
    pub http_open: f64,
    pub upstream_links: f64,
    pub synthesized_disconnects: f64,
    pub policy_reloads_applied: f64,
    /// Size of the `/metrics` text (a label leak would grow it).
    pub metrics_bytes: usize,
    pub errors: u64,
}

impl Sample {
    fn sessions(&self) -> u64 {
        self.ws_sessions + self.http_sessions
    }
}

pub(crate) async fn run(duration: Duration, out: &Path) -> anyhow::Result<()> {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await?;
    let policies = PolicyDir::new()?;
    let yaml = format!(
        "server:\n  endpoint: {}\n  connections: {LINKS}\n  queue_size: 16384\n\
         listener:\n  endpoint: 127.0.0.1:0\n  queue_size: 256\n  http:\n    idle_timeout: {}s\n    response_wait: 500ms\n\
         policies:\n  directory: {}\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n",
        server.url(),
        HTTP_IDLE.as_secs(),
        policies.dir().display()
    );
    let gw = GatewayProc::start_yaml(&yaml).await?;
    wait_links(&server, LINKS).await;
    let ws_url = gw.url();
    let http_addr = gw.listener;
    eprintln!(
        "[soak] {} of churn: groups of {GROUP}, {MESSAGES} round trips each, policies {:?} swapped every {}s \
         (gateway pid {}, MALLOC_ARENA_MAX={})",
        humantime::format_duration(duration),
        POLICIES,
        SWAP_EVERY.as_secs(),
        gw.pid(),
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into())
    );

    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let swaps = swaps.clone();
        let dir = policies.dir().to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWAP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let g = swaps.fetch_add(1, Ordering::Relaxed) + 1;
                if let Err(e) = PolicyDir::install(&dir, g) {
                    eprintln!("[soak] policy swap {g} failed: {e}");
                }
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut ws, mut http, mut errors) = (0u64, 0u64, 0u64);
    let mut next_sample = started;
    let mut next_group = started;
    let mut group = 0usize;
    let rate = std::env::var("SOAK_RATE").ok().and_then(|r| r.parse::<f64>().ok()).unwrap_or(RATE);
    let every = Duration::from_secs_f64(GROUP as f64 / rate);
    loop {
        // A group that ran late is followed at once, with no catching up.
        tokio::time::sleep_until(tokio::time::Instant::from_std(next_group)).await;
        next_group = (next_group + every).max(Instant::now());
        let now = Instant::now();
        if now >= next_sample {
            let s = sample(&gw, started, ws, http, errors).await;
            eprintln!(
                "[soak] {:>5.0}s  sessions {:>7} (ws {} http {})  rss {:.1} MiB  fds {}  tasks {}  open ws {} http {}  /metrics {} B",
                s.secs,
                s.sessions(),
                s.ws_sessions,
                s.http_sessions,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.tasks.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                s.ws_open,
                s.http_open,
                s.metrics_bytes
            );
            samples.push(s);
            next_sample = now + SAMPLE_EVERY;
        }
        if now.duration_since(started) >= duration {
            break;
        }
        let vanish = group % 3 == 2;
        let (w, h, e) = churn_group(&ws_url, http_addr, group, vanish).await;
        ws += w;
        http += h;
        errors += e;
        group += 1;
    }
    swapper.abort();
    // Past the idle timeout, every HTTP agent is forgotten: a last sample
    // with nothing open.
    tokio::time::sleep(HTTP_IDLE + Duration::from_secs(3)).await;
    let last = sample(&gw, started, ws, http, errors).await;
    let server_state = server.state();
    gw.stop().await;
    server.shutdown().await;

    let summary = Summary::new(&samples, &last, swaps.load(Ordering::Relaxed), server_state.total_disconnects);
    eprintln!("[soak] {}", summary.headline());
    write_raw(out, &samples, &last, &summary)?;
    let svg_path = out.with_file_name("soak.svg");
    std::fs::write(&svg_path, svg(&samples))?;
    let section = markdown(&samples, &last, &summary, duration, rate);
    let old = std::fs::read_to_string(out).unwrap_or_default();
    std::fs::write(out, splice(&old, &section))?;
    println!("wrote the soak section of {} and {}", out.display(), svg_path.display());
    Ok(())
}

/// One group: `GROUP / 2` WebSocket and as many HTTP agents at once.
/// Returns (WebSocket sessions completed, HTTP sessions completed, failures).
async fn churn_group(ws_url: &str, http_addr: SocketAddr, group: usize, vanish: bool) -> (u64, u64, u64) {
    // SOAK_TRANSPORTS=websocket|http narrows the churn, to tell which grows.
    let only = std::env::var("SOAK_TRANSPORTS").ok();
    let (with_ws, with_http) = (only.as_deref() != Some("http"), only.as_deref() != Some("websocket"));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..GROUP / 2 {
        let opts = AgentOptions::new(ws_url)
            .header("x-tenant", format!("tenant-{}", i % 7))
            .header("authorization", "Secret-Key soak")
            .header("x-dropped-by-policy", "1");
        if with_ws {
            set.spawn(async move { (true, ws_session(opts, vanish).await) });
        }
        if with_http {
            set.spawn(async move { (false, http_session(http_addr, group, i, vanish).await) });
        }
    }
    let (mut ws, mut http, mut errors) = (0, 0, 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok((true, Ok(()))) => ws += 1,
            Ok((false, Ok(()))) => http += 1,
            Ok((_, Err(e))) => {
                if errors == 0 {
                    eprintln!("[soak] session failed: {e:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    (ws, http, errors)
}

const T: Duration = Duration::from_secs(10);

async fn ws_session(opts: AgentOptions, vanish: bool) -> anyhow::Result<()> {
    let mut a = SimAgent::connect(opts).await?;
    let report = a.status_report();
    a.send(report).await?;
    a.recv(T).await?;
    for _ in 1..MESSAGES {
        a.send(AgentToServer::default()).await?;
        a.recv(T).await?;
    }
    if vanish {
        a.drop_abruptly();
    } else {
        a.say_goodbye().await?;
    }
    Ok(())
}

/// An HTTP agent: [`MESSAGES`] polls on one keep-alive connection, then a
/// goodbye, or (`vanish`) nothing.
async fn http_session(addr: SocketAddr, group: usize, i: usize, vanish: bool) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let uid = Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let tenant = format!("tenant-{}", (group + i) % 7);
    for n in 0..=MESSAGES {
        let msg = match n {
            0 => AgentToServer { instance_uid: uid.clone(), capabilities: 1, ..Default::default() },
            n if n < MESSAGES => AgentToServer { instance_uid: uid.clone(), ..Default::default() },
            _ if vanish => break,
            _ => AgentToServer {
                instance_uid: uid.clone(),
                agent_disconnect: Some(AgentDisconnect {}),
                ..Default::default()
            },
        };
        let req = http::Request::post("/v1/opamp")
            .header("host", "gateway")
            .header("content-type", "application/x-protobuf")
            .header("x-tenant", &tenant)
            .header("authorization", "Secret-Key soak")
            .body(Full::new(Bytes::from(msg.encode_to_vec())))?;
        let resp = tokio::time::timeout(T, sender.send_request(req)).await.context("poll timed out")??;
        let status = resp.status();
        resp.into_body().collect().await?;
        anyhow::ensure!(status == 200, "poll {n} answered {status}");
    }
    drop(sender);
    let _ = conn.await;
    Ok(())
}

async fn sample(gw: &GatewayProc, started: Instant, ws: u64, http: u64, errors: u64) -> Sample {
    // SOAK_SCRAPE=0: no scrape, as with no Prometheus (histogram samples
    // then wait in the recorder until one comes).
    let scrape = std::env::var("SOAK_SCRAPE").as_deref() != Ok("0");
    let body = if scrape { gw.scrape().await } else { String::new() };
    let pid = gw.pid();
    let tasks = series(&body, m::RUNTIME_ALIVE_TASKS, &[]);
    Sample {
        secs: started.elapsed().as_secs_f64(),
        ws_sessions: ws,
        http_sessions: http,
        rss_kib: gw.rss_kib(),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0),
        tasks,
        ws_open: series(&body, m::CONNECTIONS, &["direction=\"downstream\"", "transport=\"websocket\""]).unwrap_or(0.0),
        http_open: series(&body, m::CONNECTIONS, &["direction=\"downstream\"", "transport=\"http\""]).unwrap_or(0.0),
        upstream_links: series(&body, m::CONNECTIONS, &["direction=\"upstream\""]).unwrap_or(0.0),
        synthesized_disconnects: series(&body, m::SYNTHESIZED_DISCONNECTS, &[]).unwrap_or(0.0),
        policy_reloads_applied: series(&body, m::POLICY_RELOADS, &["outcome=\"applied\""]).unwrap_or(0.0),
        metrics_bytes: body.len(),
        errors,
    }
}

/// Sum of the Prometheus samples of `name` whose labels include every one
/// of `labels`; `None` if there is none.
fn series(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let (n, l) = key.split_once('{').unwrap_or((key, ""));
        if n == name && labels.iter().all(|want| l.contains(want)) {
            if let Ok(v) = value.parse::<f64>() {
                found = Some(found.unwrap_or(0.0) + v);
            }
        }
    }
    found
}

/// What the run comes to: growth after warm-up, against the bar.
pub(crate) struct Summary {
    /// The first sample after warm-up (a fifth of the run, and at least
    /// two HTTP idle timeouts).
    pub warm: Sample,
    pub end: Sample,
    /// Least-squares slope of RSS over sessions after warm-up, KiB per 100k.
    pub slope_kib: f64,
    /// (end − warm) RSS, KiB, per 100k sessions after warm-up.
    pub delta_kib: f64,
    pub swaps: u64,
    pub server_disconnects: u64,
}

impl Summary {
    fn new(samples: &[Sample], last: &Sample, swaps: u64, server_disconnects: u64) -> Self {
        let end_secs = samples.last().map_or(0.0, |s| s.secs);
        let warm_secs = (end_secs / 5.0).max(2.0 * HTTP_IDLE.as_secs_f64());
        let after: Vec<&Sample> = samples.iter().filter(|s| s.secs >= warm_secs).collect();
        let warm = after.first().copied().or(samples.last()).cloned().unwrap_or_else(|| last.clone());
        let end = samples.last().cloned().unwrap_or_else(|| last.clone());
        let points: Vec<(f64, f64)> = after.iter().map(|s| (s.sessions() as f64, s.rss_kib as f64)).collect();
        let slope_kib = slope(&points) * 100_000.0;
        let after_sessions = end.sessions().saturating_sub(warm.sessions()).max(1) as f64;
        let delta_kib = (end.rss_kib as f64 - warm.rss_kib as f64) * 100_000.0 / after_sessions;
        Self { warm, end, slope_kib, delta_kib, swaps, server_disconnects }
    }

    fn after_sessions(&self) -> u64 {
        self.end.sessions().saturating_sub(self.warm.sessions())
    }

    fn met(&self) -> bool {
        self.slope_kib.max(self.delta_kib) <= BAR_KIB
    }

    fn headline(&self) -> String {
        format!(
            "{} sessions after warm-up; RSS {:.1} → {:.1} MiB; growth per 100k sessions: {:.0} KiB (slope), \
             {:.0} KiB (end − warm); bar {} KiB: {}",
            self.after_sessions(),
            self.warm.rss_kib as f64 / 1024.0,
            self.end.rss_kib as f64 / 1024.0,
            self.slope_kib,
            self.delta_kib,
            BAR_KIB,
            if self.met() { "met" } else { "NOT met" }
        )
    }
}

/// Least-squares slope of y over x (0 with fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// `rows` indices spread evenly over `0..len`, first and last included.
fn spread(len: usize, rows: usize) -> Vec<usize> {
    if len <= rows {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..rows).map(|i| i * (len - 1) / (rows - 1)).collect();
    v.dedup();
    v
}

fn markdown(samples: &[Sample], last: &Sample, s: &Summary, duration: Duration, rate: f64) -> String {
    let mib = |k: u64| k as f64 / 1024.0;
    let machine = machine();
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}\n## Soak: memory under churn (issue 14)\n");
    let _ = writeln!(
        md,
        "`scripts/bench --soak {}` on {} ({} cores), MALLOC_ARENA_MAX={}. One gateway process for the whole run; \
         groups of {GROUP} agents ({} WebSocket, {} plain HTTP), {rate:.0} sessions started per second, connect, \
         make {MESSAGES} round trips each and leave, one group in three without a goodbye (its HTTP agents just stop polling and are forgotten after \
         `listener.http.idle_timeout` = {}s). Policies {:?} loaded and rewritten every {}s ({} swaps, {} \
         applied). Sampled between groups, when no WebSocket session is open.\n",
        humantime::format_duration(duration),
        machine["date"].as_str().unwrap_or(""),
        machine["cores"],
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset (glibc default)".into()),
        GROUP / 2,
        GROUP / 2,
        HTTP_IDLE.as_secs(),
        POLICIES,
        SWAP_EVERY.as_secs(),
        s.swaps,
        s.end.policy_reloads_applied
    );
    let _ = writeln!(
        md,
        "**Growth after warm-up: {:.0} KiB per 100,000 sessions** (least-squares slope; end − warm-up: {:.0} KiB), \
         over {} sessions after warm-up (RSS {:.1} MiB at {} sessions → {:.1} MiB at {}). Bar: ≤ 2 MiB per 100,000 \
         sessions: **{}**.\n",
        s.slope_kib,
        s.delta_kib,
        s.after_sessions(),
        mib(s.warm.rss_kib),
        s.warm.sessions(),
        mib(s.end.rss_kib),
        s.end.sessions(),
        if s.met() { "met" } else { "not met" }
    );
    let _ = writeln!(
        md,
        "Failed sessions: {}. The server saw {} goodbyes (real or synthesized) for {} sessions. \
         {RAW_NOTE}\n",
        last.errors,
        s.server_disconnects,
        last.sessions()
    );
    md.push_str("![RSS and open fds against sessions](soak.svg)\n\n");
    md.push_str(
        "| elapsed | sessions (ws + http) | RSS | fds | tasks | open ws / http agents | synthesized goodbyes |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|\n");
    let mut rows: Vec<&Sample> = spread(samples.len(), TABLE_ROWS).into_iter().map(|i| &samples[i]).collect();
    rows.push(last);
    for r in rows {
        let _ = writeln!(
            md,
            "| {:.0} s | {} ({} + {}) | {:.1} MiB | {} | {} | {} / {} | {} |",
            r.secs,
            r.sessions(),
            r.ws_sessions,
            r.http_sessions,
            mib(r.rss_kib),
            r.fds,
            r.tasks.map(|t| t.to_string()).unwrap_or_else(|| "–".into()),
            r.ws_open,
            r.http_open,
            r.synthesized_disconnects
        );
    }
    let _ = writeln!(
        md,
        "\nThe last row is {}s after the churn stopped (past the HTTP idle timeout).",
        HTTP_IDLE.as_secs() + 3
    );
    let _ = writeln!(md, "{END}");
    md
}

const RAW_NOTE: &str = "Every sample: `target/soak-<report file stem>.csv` and `.json` (`target/soak-BENCHMARKS.csv` \
     for docs/BENCHMARKS.md). `/metrics` is scraped at each sample (`SOAK_SCRAPE=0`: never). An unscraped \
     gateway once grew 36 MiB per 100,000 WebSocket sessions, histogram samples piling up in the recorder; \
     its upkeep thread now folds them every 5 s.";

/// `old` with its soak section replaced by `section` (which carries its own
/// markers), or with `section` appended if it has none.
pub(crate) fn splice(old: &str, section: &str) -> String {
    let section = section.trim_end();
    match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ if old.trim().is_empty() => format!("{section}\n"),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    }
}

/// The soak section of `text`, markers included, if it has one.
pub(crate) fn section(text: &str) -> Option<&str> {
    let b = text.find(BEGIN)?;
    let e = text[b..].find(END)? + b;
    Some(&text[b..e + END.len()])
}

fn write_raw(out: &Path, samples: &[Sample], last: &Sample, s: &Summary) -> anyhow::Result<()> {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("report");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(format!("soak-{stem}"));
    let mut csv = String::from(
        "secs,ws_sessions,http_sessions,rss_kib,fds,tasks,ws_open,http_open,upstream_links,synthesized_disconnects,policy_reloads_applied,metrics_bytes,errors\n",
    );
    for r in samples.iter().chain([last]) {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.secs,
            r.ws_sessions,
            r.http_sessions,
            r.rss_kib,
            r.fds,
            r.tasks.map(|t| t.to_string()).unwrap_or_default(),
            r.ws_open,
            r.http_open,
            r.upstream_links,
            r.synthesized_disconnects,
            r.policy_reloads_applied,
            r.metrics_bytes,
            r.errors
        );
    }
    let csv_path: PathBuf = base.with_extension("csv");
    std::fs::write(&csv_path, csv)?;
    let doc = json!({
        "machine": machine(),
        "malloc_arena_max": std::env::var("MALLOC_ARENA_MAX").ok(),
        "group": GROUP, "messages": MESSAGES, "http_idle_timeout_s": HTTP_IDLE.as_secs(),
        "growth_kib_per_100k": {"slope": s.slope_kib, "end_minus_warm": s.delta_kib},
        "sessions_after_warmup": s.after_sessions(),
        "bar_met": s.met(),
        "samples": samples, "after_idle": last,
    });
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(&doc)?)?;
    eprintln!("[soak] raw samples: {}", csv_path.display());
    Ok(())
}

/// Scales `v` from `[lo, hi]` onto `[a, b]` (the middle of the range if flat).
pub(crate) fn scale(v: f64, lo: f64, hi: f64, a: f64, b: f64) -> f64 {
    if hi <= lo {
        (a + b) / 2.0
    } else {
        a + (v - lo) / (hi - lo) * (b - a)
    }
}

/// RSS (MiB, left axis) and open fds (right axis) against sessions, as two
/// polylines. The RSS axis starts at 0 so that flat looks flat.
fn svg(samples: &[Sample]) -> String {
    let (w, h, l, r, t, b) = (720.0, 360.0, 70.0, 650.0, 30.0, 300.0);
    let max_x = samples.iter().map(Sample::sessions).max().unwrap_or(1).max(1) as f64;
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(1) as f64 / 1024.0;
    // Tops that divide into four round ticks.
    let rss_top = (max_rss * 1.25 / 20.0).ceil().max(1.0) * 20.0;
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(1) as f64;
    let fds_top = (max_fds * 1.25 / 4.0).ceil().max(1.0) * 4.0;
    let line = |f: &dyn Fn(&Sample) -> f64, top: f64| -> String {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", scale(s.sessions() as f64, 0.0, max_x, l, r), scale(f(s), 0.0, top, b, t)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(o, r##"<path d="M{l},{t} V{b} H{r} V{t}" fill="none" stroke="#444"/>"##);
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let y = scale(f, 0.0, 1.0, b, t);
        let x = scale(f, 0.0, 1.0, l, r);
        let _ = writeln!(o, r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/>"##);
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#1f77b4">{:.0}</text>"##,
            l - 6.0,
            y + 4.0,
            rss_top * f
        );
        let _ = writeln!(o, r##"<text x="{}" y="{:.1}" fill="#d62728">{:.0}</text>"##, r + 6.0, y + 4.0, fds_top * f);
        let _ =
            writeln!(o, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{:.0}k</text>"#, b + 18.0, max_x * f / 1000.0);
    }
    let _ =
        writeln!(o, r#"<text x="{}" y="{}" text-anchor="middle">sessions completed</text>"#, (l + r) / 2.0, b + 40.0);
    let _ = writeln!(o, r##"<text x="{l}" y="18" fill="#1f77b4">RSS (MiB)</text>"##);
    let _ = writeln!(o, r##"<text x="{r}" y="18" text-anchor="end" fill="#d62728">open fds</text>"##);
    let rss = line(&|s| s.rss_kib as f64 / 1024.0, rss_top);
    let fds = line(&|s| s.fds as f64, fds_top);
    let _ = writeln!(o, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{rss}"/>"##);
    let _ = writeln!(
        o,
        r##"<polyline fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3" points="{fds}"/>"##
    );
    o.push_str("</svg>\n");
    o
}

/// The example policies in a watched folder, rewritten on each swap.
struct PolicyDir {
    dir: tempfile::TempDir,
}

impl PolicyDir {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::install(dir.path(), 0)?;
        Ok(Self { dir })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copies each policy and its example config; `generation` goes into the
    /// config as a comment so each install is a real change.
    fn install(dir: &Path, generation: u64) -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for name in POLICIES {
            let wasm = root.join(format!("target/wasm32-wasip2/release/{name}.wasm"));
            let tmp = dir.join(format!(".{name}.wasm.tmp"));
            std::fs::copy(&wasm, &tmp)
                .with_context(|| format!("{} (run scripts/bench to build it)", wasm.display()))?;
            std::fs::rename(&tmp, dir.join(format!("{name}.wasm")))?;
            let config = root.join(format!("examples/{name}/{name}.yaml"));
            let text = std::fs::read_to_string(config).unwrap_or_default();
            std::fs::write(dir.join(format!("{name}.yaml")), format!("{text}\n# generation {generation}\n"))?;
        }
        Ok(())
    }
}
