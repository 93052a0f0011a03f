//! Collects figures and writes them as Markdown (for people) and JSON (for
//! tools), with each bar from DESIGN §6 checked next to its figure.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::containment::{self, Containment};
use crate::cpu_rounds::{median, Rounds};
use crate::gateway_proc::RssParts;
use crate::load::{Run, Storm};
use crate::policies::SwapOutcome;
use crate::suite::{self, machine, FlatOut, PathFigures, Scale, ONE_WORKER};

pub(crate) struct Row {
    pub agents: usize,
    pub connected: usize,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub per_agent_kib: f64,
    pub rate: f64,
    pub cpu_us_per_msg: f64,
    /// The connect storm that brought the agents in, seconds.
    pub storm_seconds: f64,
    pub errors: u64,
}

pub(crate) struct Report {
    json: Map<String, Value>,
    paths: Vec<(String, Value)>,
    growth: Vec<Row>,
    bars: Vec<(String, String, String, bool)>,
    notes: Vec<String>,
    memory_points: Vec<usize>,
}

/// A JSON array of numbers as `a, b, c`, each to `decimals` places.
pub(crate) fn joined(v: &Value, decimals: usize) -> String {
    let figures: Vec<String> =
        v.as_array().into_iter().flatten().map(|x| format!("{:.decimals$}", x.as_f64().unwrap_or(0.0))).collect();
    figures.join(", ")
}

fn us(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

impl Report {
    pub(crate) fn new(scale: &Scale) -> Self {
        let mut json = Map::new();
        json.insert("machine".into(), machine());
        json.insert("command".into(), json!(if scale.quick { "scripts/bench --quick" } else { "scripts/bench" }));
        json.insert(
            "scale".into(),
            json!({"latency_agents": scale.latency_agents, "latency_rate": scale.latency_rate,
                   "saturate_agents": scale.saturate_agents, "phase_seconds": scale.phase.as_secs_f64(),
                   "storm": scale.storm, "growth_rate": scale.growth_rate, "quick": scale.quick}),
        );
        Self {
            json,
            paths: Vec::new(),
            growth: Vec::new(),
            bars: Vec::new(),
            notes: Vec::new(),
            memory_points: scale.memory_points.clone(),
        }
    }

    pub(crate) fn note(&mut self, n: &str) {
        self.notes.push(n.to_owned());
    }

    fn bar(&mut self, what: &str, bar: &str, got: String, ok: bool) {
        self.bars.push((what.into(), bar.into(), got, ok));
    }

    pub(crate) fn path(&mut self, name: &str, f: &PathFigures) {
        let p = &f.paced;
        let s = &f.saturated;
        let v = json!({
            "offered_rate": null,
            "achieved_rate": p.round_trips as f64 / p.elapsed.as_secs_f64(),
            "rtt_us": {"p50": us(&p.rtt, 0.5), "p99": us(&p.rtt, 0.99), "p999": us(&p.rtt, 0.999), "max": p.rtt.max()},
            "paced_errors": p.errors,
            "saturated_round_trips_per_s": s.round_trips as f64 / s.elapsed.as_secs_f64(),
            "saturated_rtt_us": {"p50": us(&s.rtt, 0.5), "p99": us(&s.rtt, 0.99)},
            "saturated_errors": s.errors,
            "connect_errors": f.connect_errors,
            "cpu_us_per_msg": f.cost.as_ref().map(|c| c.cpu_us_per_msg),
            "user_us_per_msg": f.cost.as_ref().map(|c| c.user_us_per_msg),
            "syscalls_per_msg": f.cost.as_ref().and_then(|c| c.syscalls_per_msg),
        });
        self.paths.push((name.into(), v));
    }

    fn path_value(&self, name: &str, pointer: &str) -> Option<f64> {
        self.paths.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.pointer(pointer)?.as_f64())
    }

    pub(crate) fn added_latency(&mut self, direct: &PathFigures, gw: &PathFigures) {
        let d = &direct.paced.rtt;
        let g = &gw.paced.rtt;
        let added99 = us(g, 0.99) as f64 - us(d, 0.99) as f64;
        let added50 = us(g, 0.5) as f64 - us(d, 0.5) as f64;
        self.json.insert("added_latency_us".into(), json!({"p50": added50, "p99": added99}));
        let rate = self.path_value("gateway", "/achieved_rate").unwrap_or(0.0);
        self.bar(
            "added latency p99 (gateway − direct)",
            "≤ 1 ms at 10k msg/s",
            // Both p99s shown: a difference alone reads as nonsense when
            // the direct run's tail is the longer one (noise on a shared VM).
            format!("{:.0} µs at {rate:.0} msg/s (p99 {} vs {} µs direct)", added99, us(g, 0.99), us(d, 0.99)),
            added99 <= 1000.0,
        );
        let tg = gw.saturated.round_trips as f64 / gw.saturated.elapsed.as_secs_f64();
        let td = direct.saturated.round_trips as f64 / direct.saturated.elapsed.as_secs_f64();
        self.bar(
            "throughput vs direct",
            "within 2×",
            format!("{tg:.0} vs {td:.0} round trips/s ({:.2}×)", td / tg.max(1.0)),
            tg * 2.0 >= td,
        );
    }

    /// Issue 13 point 2: the gateway batches its link side, so at the same
    /// paced rate it should spend no more CPU per message than nginx's 1:1.
    /// The CPU bar from interleaved rounds: each gateway row against nginx.
    pub(crate) fn cpu_rounds(&mut self, r: &Rounds) {
        let Some(nginx) = r.index("nginx") else { return };
        let sys = |p: &str| self.path_value(p, "/syscalls_per_msg").map(|v| format!("{v:.1}")).unwrap_or("?".into());
        let mut rows = Vec::new();
        let mut bars = Vec::new();
        for (i, name) in r.names.iter().enumerate() {
            let (ratios, median) = r.ratios(i, nginx);
            rows.push(json!({"proxy": name, "cpu_us_per_msg": r.median_cpu(i), "user_us_per_msg": r.median_user(i),
                             "rounds_cpu_us_per_msg": r.cpu[i], "ratio_to_nginx": median, "round_ratios": ratios}));
            let what = match name.as_str() {
                "gateway" => "gateway as shipped (one worker thread per CPU) vs nginx (`worker_processes 1`)",
                ONE_WORKER => "gateway with `runtime.worker_threads: 1` vs nginx (`worker_processes 1`)",
                _ => continue, // nginx itself, or a baseline build (BENCH_BASELINE_BIN)
            };
            let rounds: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
            bars.push((
                format!("CPU per relayed message, paced: {what}, median of {} interleaved rounds", ratios.len()),
                format!(
                    "{:.2}× nginx: {:.1} µs ({:.1} user) vs {:.1} µs ({:.1} user); rounds {}; {} vs {} syscalls per message",
                    median,
                    r.median_cpu(i),
                    r.median_user(i),
                    r.median_cpu(nginx),
                    r.median_user(nginx),
                    rounds.join(", "),
                    sys(name),
                    sys("nginx")
                ),
                median <= 1.0,
            ));
        }
        self.json.insert(
            "cpu_rounds".into(),
            json!({"window_seconds": r.window.as_secs_f64(), "failed_round_trips": r.errors, "proxies": rows}),
        );
        for (what, got, ok) in bars {
            self.bar(&what, "≤ nginx (aim: half)", got, ok);
        }
    }

    pub(crate) fn storm(&mut self, n: usize, links: usize, concurrency: usize, s: &Storm) {
        let secs = s.elapsed.as_secs_f64();
        self.json.insert(
            "connect_storm".into(),
            json!({"agents": n, "links": links, "concurrency": concurrency, "seconds": secs, "errors": s.errors,
                   "per_agent_ms": {"p50": us(&s.connect, 0.5) as f64 / 1000.0, "p99": us(&s.connect, 0.99) as f64 / 1000.0}}),
        );
        self.bar(
            &format!("connect storm: {n} agents, {links} links"),
            "< 10 s",
            format!("{secs:.2} s, {} errors", s.errors),
            secs < 10.0 && s.errors == 0,
        );
    }

    /// The all-at-once storms' peak memory ([`crate::storm_memory`]).
    pub(crate) fn storm_memory(&mut self, v: Value) {
        for (what, bar, got, ok) in crate::storm_memory::bars(&v) {
            self.bar(&what, &bar, got, ok);
        }
        self.json.insert("storm_memory".into(), v);
    }

    /// TLS connect storms by thread count ([`crate::tls_storm`]): no bar.
    pub(crate) fn tls_storm(&mut self, v: Value) {
        self.json.insert("tls_storm".into(), v);
    }

    pub(crate) fn growth(&mut self, row: Row) {
        if self.memory_points.contains(&row.agents) {
            let ok = row.per_agent_kib <= 16.0;
            self.bar(
                &format!("memory per idle agent at {}", row.agents),
                "≤ 16 KiB",
                format!("{:.1} KiB", row.per_agent_kib),
                ok,
            );
        }
        self.growth.push(row);
    }

    /// `paired`: each round's cost, percent (with vs none, run back to back).
    pub(crate) fn policy_throughput(&mut self, none: &FlatOut, with: &FlatOut, paired: &[f64], names: Vec<String>) {
        let (a, b) = (none.rate(), with.rate());
        let pooled = (1.0 - b / a.max(1.0)) * 100.0;
        let cost = if paired.is_empty() { pooled } else { median(paired.to_vec()) };
        let (cpu_a, cpu_b) = (none.cpu_us_per_msg(), with.cpu_us_per_msg());
        self.json.insert(
            "policies".into(),
            json!({"loaded": names, "rounds": none.rounds, "none_rps": a, "with_rps": b, "cost_percent": cost,
                   "pooled_cost_percent": pooled, "round_costs_percent": paired,
                   "none_cpu_us_per_msg": cpu_a, "with_cpu_us_per_msg": cpu_b,
                   "connect_errors": none.connect_errors + with.connect_errors,
                   "failed_round_trips": none.errors + with.errors}),
        );
    }

    /// The policy-cost bar, from gateways run side by side: per round, the
    /// CPU per relayed message of the gateway with the policies over the
    /// one without. A CPU-bound gateway's throughput is the inverse of its
    /// CPU per message, so this is its throughput cost.
    pub(crate) fn policy_side_by_side(&mut self, rounds: &[(FlatOut, FlatOut)], control: &[(FlatOut, FlatOut)]) {
        let costs = |pairs: &[(FlatOut, FlatOut)]| -> Vec<f64> {
            pairs
                .iter()
                .map(|(a, b)| (b.cpu_us_per_msg() / a.cpu_us_per_msg().max(f64::EPSILON) - 1.0) * 100.0)
                .collect()
        };
        let (cost, ctl) = (costs(rounds), costs(control));
        let list = |v: &[f64]| v.iter().map(|c| format!("{c:+.1}")).collect::<Vec<_>>().join(", ");
        let errors: u64 =
            rounds.iter().chain(control).map(|(a, b)| a.errors + b.errors + a.connect_errors + b.connect_errors).sum();
        let median_cost = median(cost.clone());
        let rate = |pick: fn(&(FlatOut, FlatOut)) -> &FlatOut| {
            rounds.iter().map(|r| pick(r).rate()).sum::<f64>() / rounds.len().max(1) as f64
        };
        let (rate_a, rate_b) = (rate(|r| &r.0), rate(|r| &r.1));
        let cpu = |pick: fn(&(FlatOut, FlatOut)) -> &FlatOut| {
            rounds.iter().map(|r| pick(r).cpu_us_per_msg()).sum::<f64>() / rounds.len().max(1) as f64
        };
        let (cpu_a, cpu_b) = (cpu(|r| &r.0), cpu(|r| &r.1));
        self.json.insert(
            "policies_side_by_side".into(),
            json!({"rounds": rounds.len(), "cost_percent": median_cost, "round_costs_percent": cost,
                   "control_rounds": control.len(), "control_median_percent": median(ctl.clone()), "control_costs_percent": ctl,
                   "none_rps": rate_a, "with_rps": rate_b, "none_cpu_us_per_msg": cpu_a, "with_cpu_us_per_msg": cpu_b,
                   "errors": errors}),
        );
        self.bar(
            "cost of the 4 example policies: CPU per relayed message, gateways side by side (median of rounds)",
            "≤ 5 % of throughput (first round: ≤ 20 %)",
            format!(
                "{median_cost:.1} % ({cpu_b:.2} vs {cpu_a:.2} µs; rounds {}; control, none beside none: {})",
                list(&cost),
                list(&ctl)
            ),
            median_cost <= 5.0 && errors == 0,
        );
    }

    /// Per-call hook costs from `cargo bench --bench policy_hooks -- --json`,
    /// with the bar checked on the worst p99.
    pub(crate) fn hook_costs(&mut self, path: &Path) {
        let doc: Option<Value> = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok());
        let Some(doc) = doc else {
            self.note(&format!("no hook micro-benchmark figures at {}: run scripts/bench", path.display()));
            return;
        };
        let worst = doc["cases"]
            .as_array()
            .into_iter()
            .flatten()
            // Example cases as shipped only: not the baseline, the gate
            // alone, the designs not taken, or the reference rows that show
            // a policy every header its shipped `visible_headers` hides.
            .filter(|c| {
                let case = c["case"].as_str().unwrap_or("");
                !["baseline", "gate:", "not taken", "every header shown"].iter().any(|p| case.starts_with(p))
            })
            .max_by(|a, b| a["p99_us"].as_f64().unwrap_or(0.0).total_cmp(&b["p99_us"].as_f64().unwrap_or(0.0)))
            .cloned();
        if let Some(w) = worst {
            let p99 = w["p99_us"].as_f64().unwrap_or(f64::MAX);
            self.bar(
                "policy hook call, p99 (worst example case)",
                "≤ 2 µs (first round: ≤ 5 µs)",
                format!("{p99:.2} µs ({})", w["case"].as_str().unwrap_or("?")),
                p99 <= 2.0,
            );
        }
        self.json.insert("hook_costs".into(), doc);
    }

    pub(crate) fn hot_swap(&mut self, swaps: SwapOutcome, run: &Run, connect_errors: usize) {
        self.json.insert(
            "hot_swap".into(),
            json!({"swaps": swaps.swaps, "reloads_seen": swaps.reloads_seen, "round_trips": run.round_trips,
                   "failed_round_trips": run.errors, "connect_errors": connect_errors, "agents_left": run.agents.len()}),
        );
        let ok = run.errors == 0 && connect_errors == 0;
        self.bar(
            &format!("hot swap ×{} under load", swaps.swaps),
            "0 dropped, 0 disconnects",
            format!("{} round trips, {} failed", run.round_trips, run.errors),
            ok,
        );
    }

    /// The containment phase: per hostile policy, the three stages, plus
    /// bars for what issue 17 asks of them.
    pub(crate) fn containment(&mut self, containment: &Containment) {
        let cases = &containment.cases;
        let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
        let ms = |h: &Histogram<u64>, q: f64| (us(h, q) as f64 / 100.0).round() / 10.0;
        let mut out = Vec::new();
        for c in cases {
            let stages: Vec<Value> = c
                .stages
                .iter()
                .map(|st| {
                    let r = &st.steady;
                    json!({"stage": st.name,
                           "round_trips_per_s": r.round_trips as f64 / r.elapsed.as_secs_f64(),
                           "rtt_us": {"p50": us(&r.rtt, 0.5), "p99": us(&r.rtt, 0.99)},
                           "failed_round_trips": r.errors,
                           "admitted": st.newcomers.admitted, "tried": st.newcomers.tried,
                           "connect_ms": {"p50": ms(&st.newcomers.latency, 0.5), "p99": ms(&st.newcomers.latency, 0.99)},
                           "rss_mib": mib(st.rss_end_kib), "rss_peak_mib": mib(st.rss_peak_kib),
                           "cpu_us_per_msg": st.cpu_us_per_msg,
                           "policy_calls": st.counters.calls, "policy_errors": st.counters.errors,
                           "quarantines": st.counters.quarantines, "quarantine_skipped": st.counters.skipped})
                })
                .collect();
            out.push(json!({"policy": c.label, "what": c.what, "loaded_seen": c.loaded, "unloaded_seen": c.unloaded,
                            "rss_idle_mib": mib(c.rss_idle_kib), "connect_errors": c.connect_errors, "stages": stages}));
            let stage = |name: &str| c.stages.iter().find(|s| s.name == name);
            if let (Some(before), Some(during), Some(after)) = (stage("before"), stage("during"), stage("after")) {
                let n = &during.newcomers;
                self.bar(
                    &format!("{} policy loaded: new agents admitted", c.label),
                    &format!("{0} of {0}", n.tried),
                    format!(
                        "{} of {} (connect p99 {} ms; {} ms with no policy)",
                        n.admitted,
                        n.tried,
                        ms(&n.latency, 0.99),
                        ms(&before.newcomers.latency, 0.99)
                    ),
                    n.admitted == n.tried,
                );
                let rate = |s: &containment::Stage| s.steady.round_trips as f64 / s.steady.elapsed.as_secs_f64();
                let share = rate(during) / rate(before).max(f64::EPSILON);
                self.bar(
                    &format!("{} policy loaded: steady fleet's round trips", c.label),
                    "≥ 95 % of before",
                    format!(
                        "{:.1} % ({:.0} vs {:.0}/s, {} failed)",
                        share * 100.0,
                        rate(during),
                        rate(before),
                        during.steady.errors
                    ),
                    share >= 0.95 && during.steady.errors == 0,
                );
                let grown = after.rss_end_kib as f64 / 1024.0 - before.rss_end_kib as f64 / 1024.0;
                self.bar(
                    &format!("{} policy removed: gateway RSS vs before", c.label),
                    "within 5 MiB",
                    format!("{:+.1} MiB ({:.1} → {:.1} MiB)", grown, mib(before.rss_end_kib), mib(after.rss_end_kib)),
                    grown <= 5.0,
                );
            }
        }
        let fc = &containment.first_compile;
        let parts = |p: &RssParts| json!({"rss_mib": mib(p.total), "anon_mib": mib(p.anon), "file_mib": mib(p.file)});
        let first_compile = json!({"idle": parts(&fc.idle), "loaded": parts(&fc.loaded), "removed": parts(&fc.removed), "seen": fc.seen});
        self.json.insert(
            "containment".into(),
            json!({"steady_agents": containment::STEADY, "newcomers": containment::NEWCOMERS, "rate": containment::RATE,
                   "newcomer_limit_s": containment::NEWCOMER_LIMIT.as_secs(), "first_compile": first_compile, "cases": out}),
        );
    }

    pub(crate) fn finish(&mut self) {
        let paths: Map<String, Value> = self.paths.iter().cloned().collect();
        self.json.insert("paths".into(), Value::Object(paths));
        let rows: Vec<Value> = self
            .growth
            .iter()
            .map(|r| json!({"agents": r.agents, "connected": r.connected, "rss_before_kib": r.rss_before_kib, "rss_kib": r.rss_kib,
                            "per_agent_kib": r.per_agent_kib, "msg_rate": r.rate, "cpu_us_per_msg": r.cpu_us_per_msg,
                            "storm_seconds": r.storm_seconds, "errors": r.errors}))
            .collect();
        self.json.insert("growth".into(), Value::Array(rows));
        let bars: Vec<Value> =
            self.bars.iter().map(|(w, b, g, ok)| json!({"what": w, "bar": b, "measured": g, "met": ok})).collect();
        self.json.insert("bars".into(), Value::Array(bars));
        self.json.insert("notes".into(), json!(self.notes));
    }

    pub(crate) fn write(&self, md_path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = md_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(md_path.with_file_name("benchmarks.json"), serde_json::to_string_pretty(&self.json)?)?;
        std::fs::write(md_path, self.markdown())?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.json["machine"];
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `{}` on {}. Figures, not assertions: rerun to reproduce.\n",
            self.json["command"].as_str().unwrap_or(""),
            m["date"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            s,
            "Machine: {} ({} cores, {} GiB), Linux {}, {}, {}. The gateway runs as its own process; the reference server and the load generator share one other process on the same 2 cores, so every figure includes that contention.\n",
            m["cpu"].as_str().unwrap_or(""), m["cores"], m["memory_gib"], m["kernel"].as_str().unwrap_or(""), m["rustc"].as_str().unwrap_or(""), m["nginx"].as_str().unwrap_or("no nginx")
        );
        let _ = writeln!(s, "## Bars (DESIGN §6)\n\n| what | bar | measured | met |\n|---|---|---|---|");
        for (w, b, g, ok) in &self.bars {
            let _ = writeln!(s, "| {w} | {b} | {g} | {} |", if *ok { "yes" } else { "**no**" });
        }
        let sc = &self.json["scale"];
        // A phase-filtered run (--only-policies, --only-containment) has none.
        if !self.paths.is_empty() {
            let _ = writeln!(
            s,
            "\n## Latency and throughput, side by side\n\nRound trip = agent sends a heartbeat, the server answers, the agent receives it (one message each way). Paced: {} agents offering {} msg/s for {} s. Flat out: {} agents, each sending as soon as it has its answer. CPU per message: the proxy process's user + system time (nginx: master and worker) over the paced run, per relayed message (a round trip relays two); the direct path has no proxy. System calls per message: `perf stat -e raw_syscalls:sys_enter` on the proxy over a second paced run of up to 4 s.\n",
            sc["latency_agents"], sc["latency_rate"], sc["phase_seconds"], sc["saturate_agents"]
        );
            let _ = writeln!(s, "| path | paced rate | RTT p50 | RTT p99 | RTT p99.9 | CPU per message | syscalls per message | flat-out round trips/s | errors |\n|---|---|---|---|---|---|---|---|---|");
            for (name, v) in &self.paths {
                let _ = writeln!(
                    s,
                    "| {name} | {:.0}/s | {} µs | {} µs | {} µs | {} | {} | {:.0} | {} |",
                    v["achieved_rate"].as_f64().unwrap_or(0.0),
                    v["rtt_us"]["p50"],
                    v["rtt_us"]["p99"],
                    v["rtt_us"]["p999"],
                    v["cpu_us_per_msg"]
                        .as_f64()
                        .map(|c| format!("{c:.1} µs ({:.1} user)", v["user_us_per_msg"].as_f64().unwrap_or(0.0)))
                        .unwrap_or("–".into()),
                    v["syscalls_per_msg"].as_f64().map(|c| format!("{c:.1}")).unwrap_or("–".into()),
                    v["saturated_round_trips_per_s"].as_f64().unwrap_or(0.0),
                    v["paced_errors"].as_u64().unwrap_or(0)
                        + v["saturated_errors"].as_u64().unwrap_or(0)
                        + v["connect_errors"].as_u64().unwrap_or(0)
                );
            }
        }
        if let Some(c) = self.json.get("cpu_rounds") {
            let baseline = c["proxies"].as_array().into_iter().flatten().any(|p| p["proxy"] == suite::BASELINE);
            let _ = writeln!(
                s,
                "\nCPU per relayed message in interleaved rounds (the CPU bars): nginx (`worker_processes 1`), nginx with one worker process per CPU (as its packaged `worker_processes auto`; a row, not a bar), the gateway as shipped and the gateway with one worker thread{} run at once, each with its own {} connected agents; each round drives each fleet in turn for {} s at {} msg/s, the order rotating per round. A round's ratio compares runs seconds apart, so the machine's drift touches both; the bar is the median ratio. {} failed round trips.\n",
                if baseline { ", and the same two of another build (`BENCH_BASELINE_BIN`, rows `baseline`)," } else { "" },
                sc["latency_agents"], c["window_seconds"], sc["latency_rate"], c["failed_round_trips"]
            );
            let _ = writeln!(s, "| proxy | median CPU per message | median user | per round (µs) | median ratio to nginx |\n|---|---|---|---|---|");
            for p in c["proxies"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| {} | {:.1} µs | {:.1} µs | {} | {:.2} |",
                    p["proxy"].as_str().unwrap_or(""),
                    p["cpu_us_per_msg"].as_f64().unwrap_or(0.0),
                    p["user_us_per_msg"].as_f64().unwrap_or(0.0),
                    joined(&p["rounds_cpu_us_per_msg"], 1),
                    p["ratio_to_nginx"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if let Some(st) = self.json.get("connect_storm") {
            let _ = writeln!(s, "\n## Connect storm\n\n{} agents, {} at a time, each completing the WebSocket upgrade, the connect handshake with the server over {} links, and a first status round trip: **{:.2} s** ({} errors; per agent p50 {} ms, p99 {} ms).",
                st["agents"], st["concurrency"], st["links"], st["seconds"].as_f64().unwrap_or(0.0), st["errors"], st["per_agent_ms"]["p50"], st["per_agent_ms"]["p99"]);
        }
        if !self.growth.is_empty() {
            let _ = writeln!(s, "\n## How cost grows\n\nEach row is a fresh gateway: N agents connect (512 at a time, from {} loopback addresses 127.0.0.x), then the fleet offers {} msg/s for {} s. Memory is the gateway's RSS delta over its idle baseline, divided by N. CPU is the gateway's user+system time per relayed message (each round trip relays two).\n", crate::load::SOURCES, sc["growth_rate"], sc["phase_seconds"]);
            let _ = writeln!(s, "| agents | connect storm | RSS idle → connected | per agent | achieved rate | CPU per message | errors |\n|---|---|---|---|---|---|---|");
            for r in &self.growth {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} s | {:.1} → {:.1} MiB | {:.1} KiB | {:.0}/s | {:.1} µs | {} |",
                    r.agents,
                    r.storm_seconds,
                    r.rss_before_kib as f64 / 1024.0,
                    r.rss_kib as f64 / 1024.0,
                    r.per_agent_kib,
                    r.rate,
                    r.cpu_us_per_msg,
                    r.errors
                );
            }
            if let Some((slope, base)) = self.growth_slope() {
                let _ = writeln!(
                    s,
                    "\nLeast-squares fit of RSS against agents over these rows: **{slope:.1} KiB per agent** over a {:.1} MiB base, so 100,000 agents on one gateway would need about **{:.0} MiB** of RSS, and an open-file limit of at least 101,024 (a descriptor per agent plus `listener.max_connections`' reserve of 1,024).",
                    base / 1024.0,
                    (base + slope * 100_000.0) / 1024.0
                );
            }
        }
        if let Some(v) = self.json.get("storm_memory") {
            crate::storm_memory::markdown(&mut s, v);
        }
        if let Some(v) = self.json.get("tls_storm") {
            crate::tls_storm::markdown(&mut s, v);
        }
        if let Some(p) = self.json.get("policies") {
            let _ = writeln!(
                s,
                "\n## Policies\n\nLoaded: {}. Per-call hook costs: next section.\n\nOne gateway at a time (the first round's method, no longer the bar): flat out, {} interleaved rounds on fresh gateways (none, then with, each round), the same agents and headers either way: {:.0} round trips/s with them vs {:.0} without over all rounds; throughput cost per round {} %, median {:.1} %. Gateway CPU per relayed message: {:.1} µs with, {:.1} µs without. Connect errors: {}; failed round trips: {}. On this 2-core box one gateway's flat-out rate swings by ±15 % from one second to the next, so these rounds cannot resolve a 5 % bar.",
                p["loaded"],
                p["rounds"],
                num(&p["with_rps"]),
                num(&p["none_rps"]),
                fmt_list(&p["round_costs_percent"]),
                num(&p["cost_percent"]),
                num(&p["with_cpu_us_per_msg"]),
                num(&p["none_cpu_us_per_msg"]),
                p["connect_errors"],
                p["failed_round_trips"]
            );
        }
        if let Some(p) = self.json.get("policies_side_by_side") {
            let _ = writeln!(
                s,
                "\nSide by side (the bar): in each of {} rounds two fresh gateways, one without policies and one with them, each with its own {} agents, were driven flat out at the same time by one load generator, so whatever the box did meanwhile it did to both; the one with policies was started first in every other round (the first started runs about 2 % dearer). Gateway CPU per relayed message: {:.2} µs with vs {:.2} µs without (means over rounds); per round {} %, **median {:.1} %**. Throughput side by side: {:.0} vs {:.0} round trips/s (both gateways share the one load generator, whose pace sets both rates: not the measure). Control, no policy on either gateway, {} rounds: {} % (median {:.1} %): the method's own spread. Errors: {}.",
                p["rounds"],
                self.json.get("scale").and_then(|s| s["saturate_agents"].as_u64()).unwrap_or(0),
                num(&p["with_cpu_us_per_msg"]),
                num(&p["none_cpu_us_per_msg"]),
                fmt_list(&p["round_costs_percent"]),
                num(&p["cost_percent"]),
                num(&p["with_rps"]),
                num(&p["none_rps"]),
                p["control_rounds"],
                fmt_list(&p["control_costs_percent"]),
                num(&p["control_median_percent"]),
                p["errors"]
            );
        }
        if let Some(h) = self.json.get("hook_costs") {
            let _ = writeln!(
                s,
                "\n## Policy hook cost per call\n\n`cargo bench --bench policy_hooks`: the real example components called through `PolicySet` (the relay's entry point), {} calls per case, each timed on its own, with the Prometheus recorder installed as in the gateway. µs per call.\n\n| case | p50 | p99 | p99.9 | mean |\n|---|---|---|---|---|",
                h["iterations"]
            );
            for c in h["cases"].as_array().into_iter().flatten() {
                let f = |k: &str| c[k].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    c["case"].as_str().unwrap_or("?"),
                    f("p50_us"),
                    f("p99_us"),
                    f("p999_us"),
                    f("mean_us")
                );
            }
        }
        if let Some(h) = self.json.get("hot_swap") {
            let _ = writeln!(s, "\n## Hot swap under load\n\nThe policy set was replaced {} times ({} reloads observed) while {} agents kept a steady rate: {} round trips completed, {} failed, {} agents still connected at the end.", h["swaps"], h["reloads_seen"], h["agents_left"], h["round_trips"], h["failed_round_trips"], h["agents_left"]);
        }
        if let Some(c) = self.json.get("containment") {
            self.containment_markdown(&mut s, c);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// KiB per agent and base KiB, fitted over the growth rows' RSS.
    fn growth_slope(&self) -> Option<(f64, f64)> {
        let pts: Vec<(f64, f64)> = self.growth.iter().map(|r| (r.connected as f64, r.rss_kib as f64)).collect();
        if pts.len() < 2 {
            return None;
        }
        let n = pts.len() as f64;
        let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        (sxx > 0.0).then(|| (sxy / sxx, my - sxy / sxx * mx))
    }

    fn containment_markdown(&self, s: &mut String, c: &Value) {
        let _ = writeln!(
            s,
            "\n## Containment: hostile policies under load (issue 17)\n\nOn a fresh gateway per policy, {} agents connect and keep offering {} round trips/s in total. *before*: no policy. *during*: the policy file was dropped into the watched policy folder (the stage starts once `/metrics` shows it loaded). *after*: the file was removed (the stage starts once it shows it unloaded). In each stage {} new agents connect at once; one counts as admitted when its connect and first round trip finish within {} s. RSS is the gateway process's VmRSS at the end of the stage (peak sampled every 100 ms in brackets). Policy counters are cumulative. The pass-through filter is the control: what any loaded filter costs the relay.\n",
            c["steady_agents"], c["rate"], c["newcomers"], c["newcomer_limit_s"]
        );
        let _ = writeln!(s, "| policy | stage | steady round trips/s | RTT p50 / p99 | failed | new agents admitted | connect p50 / p99 | RSS end (peak) | CPU per message | policy calls / errors / quarantines |\n|---|---|---|---|---|---|---|---|---|---|");
        for case in c["cases"].as_array().into_iter().flatten() {
            for st in case["stages"].as_array().into_iter().flatten() {
                let f = |k: &str| st[k].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {} / {} µs | {} | {} of {} | {} / {} ms | {:.1} ({:.1}) MiB | {:.1} µs | {:.0} / {:.0} / {:.0} |",
                    case["policy"].as_str().unwrap_or("?"),
                    st["stage"].as_str().unwrap_or("?"),
                    f("round_trips_per_s"),
                    st["rtt_us"]["p50"],
                    st["rtt_us"]["p99"],
                    st["failed_round_trips"],
                    st["admitted"],
                    st["tried"],
                    st["connect_ms"]["p50"],
                    st["connect_ms"]["p99"],
                    f("rss_mib"),
                    f("rss_peak_mib"),
                    f("cpu_us_per_msg"),
                    f("policy_calls"),
                    f("policy_errors"),
                    f("quarantines"),
                );
            }
        }
        let fc = &c["first_compile"];
        if fc.is_object() {
            let f = |stage: &str, part: &str| num(&fc[stage][part]);
            let _ = writeln!(
                s,
                "\nThe cases above share one compile cache, filled first by an idle gateway with an empty one: the control loaded and removed, the first compile in that process. It kept **{:+.1} MiB** of RSS ({:.1} idle → {:.1} with the policy → {:.1} MiB after it was removed): {:+.1} MiB anonymous (the compiler's threads and heap) and {:+.1} MiB file-backed (the compiler's own code, paged in from the gateway's binary). That is paid once per process, on its first compile; a gateway whose policies are all in its compile cache (`policies.cache`) never compiles. The cases' *after* rows show what a policy left behind.{}",
                f("removed", "rss_mib") - f("idle", "rss_mib"),
                f("idle", "rss_mib"),
                f("loaded", "rss_mib"),
                f("removed", "rss_mib"),
                f("removed", "anon_mib") - f("idle", "anon_mib"),
                f("removed", "file_mib") - f("idle", "file_mib"),
                if fc["seen"] == json!(true) { "" } else { " (The gateway did not report the policy loaded and unloaded within 30 s; figures taken anyway.)" },
            );
        }
        for case in c["cases"].as_array().into_iter().flatten() {
            if case["loaded_seen"] != json!(true) || case["unloaded_seen"] != json!(true) {
                let _ = writeln!(s, "\n{}: the gateway did not report the policy loaded/unloaded within 30 s (loaded: {}, unloaded: {}); its stages ran anyway.", case["policy"].as_str().unwrap_or("?"), case["loaded_seen"], case["unloaded_seen"]);
            }
        }
    }
}

/// A JSON list of percentages as "1.0, -2.5, …".
fn fmt_list(v: &Value) -> String {
    v.as_array()
        .map(|r| r.iter().map(|c| format!("{:+.1}", c.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// A JSON number, 0 if absent.
fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}
