//! The gateway under test, as its own process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct GatewayProc {
    child: Child,
    pub listener: SocketAddr,
    /// The `/metrics` endpoint, when started with one.
    pub metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl GatewayProc {
    pub(crate) async fn start(upstream: &str, connections: usize, policy_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_with(upstream, connections, policy_dir, None, false).await
    }

    /// `start` with `runtime.worker_threads: n` (nginx here runs one worker
    /// process; this is the gateway's like-for-like).
    pub(crate) async fn start_with_workers(upstream: &str, connections: usize, n: usize) -> anyhow::Result<Self> {
        Self::start_build(&this_build(), upstream, connections, Some(n)).await
    }

    /// The gateway binary at `bin`, with no policies and `workers` threads
    /// (its default when `None`): an A/B run's other build.
    pub(crate) async fn start_build(
        bin: &str,
        upstream: &str,
        connections: usize,
        workers: Option<usize>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut yaml = base_yaml(upstream, connections, &dir.path().join("none").display().to_string());
        if let Some(n) = workers {
            yaml.push_str(&format!("runtime:\n  worker_threads: {n}\n"));
        }
        Self::spawn_bin(bin, dir, &yaml, &[]).await
    }

    /// The gateway as a new user runs it: every setting at its default but
    /// the two endpoints and the link count (no deep queues), no policies,
    /// and these variables in its environment (an allocator by
    /// `LD_PRELOAD`, `MALLOC_ARENA_MAX`).
    pub(crate) async fn start_shipped(
        upstream: &str,
        connections: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "server:\n  endpoint: {upstream}\n  connections: {connections}\nlistener:\n  endpoint: 127.0.0.1:0\n\
             policies:\n  directory: {}\n",
            dir.path().join("none").display()
        );
        Self::spawn_bin(&this_build(), dir, &yaml, env).await
    }

    /// `start`, with a `/metrics` endpoint when `metrics` (the containment
    /// phase reads the policy gauges from it) and the compile cache in
    /// `cache_dir` when given (else the user's, whatever it holds).
    pub(crate) async fn start_with(
        upstream: &str,
        connections: usize,
        policy_dir: Option<&Path>,
        cache_dir: Option<&Path>,
        metrics: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let policies = policy_dir
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| dir.path().join("none").display().to_string());
        let mut yaml = base_yaml(upstream, connections, &policies);
        if let Some(cache) = cache_dir {
            yaml.push_str(&format!("  cache_dir: {}\n", cache.display()));
        }
        // BENCH_POLICY_CONCURRENCY=N tries another `policies.concurrency`.
        if let Ok(n) = std::env::var("BENCH_POLICY_CONCURRENCY") {
            yaml.push_str(&format!("  concurrency: {n}\n"));
        }
        if metrics {
            yaml.push_str("telemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n");
        }
        Self::spawn(dir, &yaml).await
    }

    /// A gateway with this whole config file (the soak phase sets timeouts).
    pub(crate) async fn start_yaml(yaml: &str) -> anyhow::Result<Self> {
        Self::spawn(tempfile::tempdir()?, yaml).await
    }

    async fn spawn(dir: tempfile::TempDir, yaml: &str) -> anyhow::Result<Self> {
        Self::spawn_bin(&this_build(), dir, yaml, &[]).await
    }

    async fn spawn_bin(bin: &str, dir: tempfile::TempDir, yaml: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml)?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            // BENCH_GATEWAY_LOG=warn shows what the gateway complains about.
            .env("OPAMP_GATEWAY_LOG", std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "error".into()))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the gateway")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("gateway did not get ready")??
            .context("gateway exited")?;
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k));
        let listener = field("listener=").context("no listener in the ready line")?.parse()?;
        let metrics = field("metrics=").and_then(|a| a.parse().ok());
        Ok(Self { child, listener, metrics, _dir: dir })
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/opamp", self.listener)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The text of `/metrics` (empty without an endpoint or on error).
    pub(crate) async fn scrape(&self) -> String {
        let Some(addr) = self.metrics else { return String::new() };
        let get = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await?;
            Ok::<_, std::io::Error>(buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
        };
        tokio::time::timeout(Duration::from_secs(10), get).await.ok().and_then(Result::ok).unwrap_or_default()
    }

    /// Resident memory, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// RSS and its two parts: anonymous (heap, stacks) and file-backed
    /// (the binary's own pages, mapped files), KiB, from one reading.
    pub(crate) fn rss_parts_kib(&self) -> RssParts {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        RssParts {
            total: status_kib(&status, "VmRSS:"),
            anon: status_kib(&status, "RssAnon:"),
            file: status_kib(&status, "RssFile:"),
        }
    }

    /// User + system CPU time consumed so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

pub(crate) struct RssParts {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> u64 {
    status_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(), key)
}

/// The KiB figure on `key`'s line of a `/proc/<pid>/status` text, 0 if absent.
fn status_kib(status: &str, key: &str) -> u64 {
    status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// `pid` and its descendants (nginx's master and its worker).
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten();
        for t in tasks {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    out
}

/// User and system CPU seconds of `pid` and its descendants.
pub(crate) fn tree_cpu_split(pid: u32) -> (f64, f64) {
    process_tree(pid).into_iter().map(cpu_split).fold((0.0, 0.0), |(u, s), (u1, s1)| (u + u1, s + s1))
}

/// System calls made by a process tree while it runs, counted by
/// `perf stat` on the `raw_syscalls:sys_enter` tracepoint (a counter, not a
/// trace: it costs the process little). `None` without perf or permission.
pub(crate) struct SyscallCounter {
    child: Child,
}

impl SyscallCounter {
    pub(crate) async fn start(pid: u32) -> Option<Self> {
        let pids: Vec<String> = process_tree(pid).iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", &pids.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        // perf attaches in a few milliseconds; give it that before the run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some(Self { child })
    }

    /// Stops counting (SIGINT, as perf expects) and returns the count.
    pub(crate) async fn stop(mut self) -> Option<u64> {
        let pid = self.child.id()?;
        let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status().await;
        let mut err = String::new();
        self.child.stderr.take()?.read_to_string(&mut err).await.ok()?;
        let _ = self.child.wait().await;
        err.lines().find(|l| l.contains("raw_syscalls:sys_enter"))?.split(',').next()?.trim().parse().ok()
    }
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// User and system CPU seconds consumed so far.
pub(crate) fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let hz = clock_ticks_per_second();
    (ticks(11) / hz, ticks(12) / hz)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The benchmark's gateway config: deep queues, so back-pressure is not
/// what is measured.
fn base_yaml(upstream: &str, connections: usize, policies: &str) -> String {
    format!(
        "server:\n  endpoint: {upstream}\n  connections: {connections}\n  queue_size: 16384\n\
         listener:\n  endpoint: 127.0.0.1:0\n  queue_size: 256\npolicies:\n  directory: {policies}\n"
    )
}

/// The build under test: this one, or BENCH_GATEWAY_BIN (e.g. with another
/// allocator).
fn this_build() -> String {
    std::env::var("BENCH_GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_opamp-gateway").into())
}
