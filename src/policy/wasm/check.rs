//! `opamp-gateway policy check <file.wasm> [--config file.yaml] [--calls N]`:
//! everything a reload would do to one policy (read, digest, compile,
//! type-check, instantiate, `init` with the config), then a few thousand
//! calls of each hook it announces, on synthetic traffic, under the limits
//! the gateway would apply, without touching a running gateway.
//!
//! The calls go through a [`PolicySet`] (the relay's entry point), so the
//! answer caps (`policies.limits`, `max_message_size`) apply as in the
//! relay; the policy's breaker is off, so every call reaches the guest.
//! A component that loads but fails its calls (traps, overruns
//! `call_timeout`, runs out of `memory_limit` after a while) fails the check.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;

use super::bindings::{WitVersion, PACKAGE_PREFIX};
use super::engine::PolicyEngine;
use super::error::PolicyError;
use super::loader::{compile, valid_policy_name, PolicyFiles, Source};
use super::policy::WasmPolicy;
use crate::policy::config::{BreakerConfig, PoliciesConfig};
use crate::policy::set::Containment;
use crate::policy::visible_headers::VisibleHeaders;
use crate::policy::{
    AdmitVerdict, AssignInput, Direction, FailureMode, FilterOutcome, HeaderList, HookError, Hooks, LinkInfo, Policy,
    PolicySet, Route, SessionEvent, Transport, UpstreamInfo, Verdict,
};
use crate::protocol::proto;

/// A hook that failed this many calls in a row is not called further: the
/// verdict is clear, and a looping guest would otherwise cost
/// `calls × call_timeout`.
const GIVE_UP_AFTER: usize = 20;

/// What `check` found out about a policy that loads.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub name: String,
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
    /// Hex sha256 of the module.
    pub digest: String,
    pub size: u64,
    pub hooks: Hooks,
    /// The `opamp-gateway:policy` version the component targets.
    pub wit_version: WitVersion,
    pub on_error: FailureMode,
    /// The agent headers its hooks are shown.
    pub visible_headers: VisibleHeaders,
    /// Compile + type-check + first `init` (compilation may hit the cache).
    pub load_time: Duration,
    /// The limits the calls ran under, and where they were set.
    pub limits: CheckLimits,
    /// One entry per announced hook (a direction of `filter` counts as one),
    /// in WIT order, once [`CheckReport::exercise`] ran.
    pub runs: Vec<HookRun>,
    /// The loaded policy, for [`CheckReport::exercise`].
    policy: Option<Arc<WasmPolicy>>,
}

/// The per-call limits a policy runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    pub call_timeout: Duration,
    pub memory_limit: u64,
    /// Whether the policy's own YAML sets each (else `policies:` does).
    pub call_timeout_in_yaml: bool,
    pub memory_limit_in_yaml: bool,
}

/// The figures of one hook's calls.
#[derive(Debug, Clone, Default)]
pub struct HookRun {
    /// WIT name: `assign`, `forward-headers`, `filter-agent-to-server`, ...
    pub hook: &'static str,
    pub planned: usize,
    pub calls: usize,
    /// Failed calls by [`HookError::kind`], with the first error of each.
    pub failures: BTreeMap<&'static str, (usize, HookError)>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Growth of the process's peak resident memory over the calls (the
    /// instance's linear memory is most of it), when the OS tells.
    pub peak_memory: Option<u64>,
}

impl HookRun {
    pub fn failed(&self) -> usize {
        self.failures.values().map(|(n, _)| n).sum()
    }

    fn gave_up(&self) -> bool {
        self.calls < self.planned
    }
}

impl CheckReport {
    /// True when some call failed.
    pub fn failed(&self) -> bool {
        self.runs.iter().any(|r| r.failed() > 0)
    }

    /// One line per failing hook and kind of failure, naming the limit and
    /// the YAML key to raise where there is one. Empty when nothing failed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for run in &self.runs {
            for (kind, (n, first)) in &run.failures {
                let head = format!("{}: {n} of {} calls failed ({kind})", run.hook, run.calls);
                let l = &self.limits;
                let why = match first {
                    HookError::Timeout => {
                        let t = humantime::format_duration(l.call_timeout);
                        let what = format!("exceeded call_timeout ({t} of CPU time per call)");
                        self.raise("call_timeout", l.call_timeout_in_yaml, &what)
                    }
                    HookError::Memory => {
                        let what = format!("exceeded memory_limit ({} bytes of linear memory)", l.memory_limit);
                        self.raise("memory_limit", l.memory_limit_in_yaml, &what)
                    }
                    other => format!("{other}"),
                };
                out.push(format!("{head}: {why}"));
            }
        }
        out
    }

    /// "exceeded X: raise `key` in its YAML (or `policies.key`)".
    fn raise(&self, key: &str, in_yaml: bool, what: &str) -> String {
        let yaml = match &self.config {
            Some(p) => p.display().to_string(),
            None => format!("{}.yaml", self.name),
        };
        if in_yaml {
            format!("{what}; raise `{key}` in {yaml}")
        } else {
            format!("{what}; raise `{key}` in {yaml} (this policy) or `policies.{key}` in the gateway config (all policies)")
        }
    }
}

/// Loads `wasm` (with `config` as its `<name>.yaml`) the way the gateway
/// would, and reports on it; no hook is called yet (see
/// [`CheckReport::exercise`]). The policy name is the file stem.
pub fn check(wasm: &Path, config: Option<&Path>, cfg: &PoliciesConfig) -> Result<CheckReport, PolicyError> {
    let name = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
    if !valid_policy_name(&name) {
        return Err(PolicyError::Name { path: wasm.to_owned() });
    }
    let engine = PolicyEngine::new(cfg)?;
    let files = PolicyFiles { name: name.clone(), wasm: wasm.to_owned(), config: config.map(Path::to_owned) };
    let source = Source::read(files, cfg.limits.max_module_size)?;
    let digest = source.digest.clone();
    let size = source.wasm.len() as u64;
    let limits = CheckLimits {
        call_timeout: source.settings.call_timeout.unwrap_or(cfg.call_timeout),
        memory_limit: source.settings.memory_limit.unwrap_or(cfg.memory_limit),
        call_timeout_in_yaml: source.settings.call_timeout.is_some(),
        memory_limit_in_yaml: source.settings.memory_limit.is_some(),
    };
    let started = Instant::now();
    let policy = Arc::new(compile(&engine, source, cfg, None)?);
    Ok(CheckReport {
        name,
        wasm: wasm.to_owned(),
        config: config.map(Path::to_owned),
        digest,
        size,
        hooks: policy.hooks(),
        wit_version: policy.wit_version(),
        on_error: policy.failure_mode(),
        visible_headers: policy.visible_headers.clone(),
        load_time: started.elapsed(),
        limits,
        runs: Vec::new(),
        policy: Some(policy),
    })
}

impl CheckReport {
    /// Calls per announced hook unless told otherwise: enough to reach a
    /// guest that runs out of memory after a couple of thousand calls.
    pub const DEFAULT_CALLS: usize = 5000;

    /// Calls each hook the policy announced `calls` times on synthetic
    /// traffic (see the module documentation) and records the figures in
    /// [`CheckReport::runs`]. `cfg` is the one given to [`check`]. A failing
    /// call is in the report (see [`CheckReport::failed`]), not an error.
    pub fn exercise(&mut self, cfg: &PoliciesConfig, calls: usize) {
        if let Some(policy) = &self.policy {
            self.runs = exercise(policy, cfg, calls);
        }
    }
}

/// The policy as the check's one-policy chain sees it: fail-closed (so a
/// failure reaches the caller with its reason), no breaker of its own, and
/// the last raw answer kept (a failed `filter` is only a `Drop` to the chain).
struct Probe {
    inner: Arc<WasmPolicy>,
    last: Mutex<Option<Result<Verdict, HookError>>>,
}

impl Probe {
    fn take(&self) -> Option<Result<Verdict, HookError>> {
        self.last.lock().take()
    }
}

impl Policy for Probe {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn failure_mode(&self) -> FailureMode {
        FailureMode::Closed
    }
    fn hooks(&self) -> Hooks {
        self.inner.hooks()
    }
    fn assign(&self, input: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        self.inner.assign(input)
    }
    fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, HookError> {
        self.inner.forward_headers(headers)
    }
    fn filter(&self, dir: Direction, uid: &[u8], message: &Bytes) -> Result<Verdict, HookError> {
        let out = self.inner.filter(dir, uid, message);
        *self.last.lock() = Some(out.clone());
        out
    }
    fn admit(&self, input: &AssignInput<'_>) -> Result<AdmitVerdict, HookError> {
        self.inner.admit(input)
    }
    fn on_connect(&self, event: &SessionEvent) -> Result<(), HookError> {
        let out = self.inner.on_connect(event);
        *self.last.lock() = Some(out.clone().map(|()| Verdict::Forward));
        out
    }
    fn on_disconnect(&self, event: &SessionEvent, reason: &str) -> Result<(), HookError> {
        let out = self.inner.on_disconnect(event, reason);
        *self.last.lock() = Some(out.clone().map(|()| Verdict::Forward));
        out
    }
}

/// Calls each announced hook `calls` times; see [`HookRun`].
fn exercise(policy: &Arc<WasmPolicy>, cfg: &PoliciesConfig, calls: usize) -> Vec<HookRun> {
    let probe = Arc::new(Probe { inner: policy.clone(), last: Mutex::new(None) });
    let containment = Containment {
        // Off: every call reaches the guest, and every failure is counted.
        quarantine: BreakerConfig { after: 0, rate: 0.0, ..BreakerConfig::default() },
        ..Containment::from_config(cfg)
    };
    let set = PolicySet::with_containment(vec![probe.clone() as Arc<dyn Policy>], &containment);
    let inputs = Inputs::new(cfg);
    let hooks = policy.hooks();
    let mut runs = Vec::new();
    if hooks.assign {
        runs.push(run("assign", calls, |i| {
            let (headers, transport, upstreams) = &inputs.assign[i % inputs.assign.len()];
            let input = AssignInput { headers, remote_addr: "192.0.2.17:53124", transport: *transport, upstreams };
            set.assign(&input).map(drop).map_err(|r| r.error)
        }));
    }
    if hooks.admit {
        runs.push(run("admit", calls, |i| {
            let (headers, transport, upstreams) = &inputs.assign[i % inputs.assign.len()];
            let input = AssignInput { headers, remote_addr: "192.0.2.17:53124", transport: *transport, upstreams };
            set.admit(&input).map(drop).map_err(|r| r.error)
        }));
    }
    if hooks.lifecycle {
        // One session per call: on-connect, then on-disconnect. Failures
        // are only counted by the chain; the probe keeps the last answer.
        let admitted: Vec<Arc<str>> = hooks.admit.then(|| Arc::from(policy.name())).into_iter().collect();
        runs.push(run("lifecycle", calls, |i| {
            let (headers, transport, _) = &inputs.assign[i % inputs.assign.len()];
            let event = SessionEvent {
                session: i as u64 + 1,
                uid: Some(Bytes::from_static(&[0x42; 16])),
                headers: headers.clone(),
                remote_addr: "192.0.2.17:53124".into(),
                transport: *transport,
                upstream: crate::policy::DEFAULT_UPSTREAM.into(),
            };
            set.lifecycle(&event, None, &admitted);
            if let Some(Err(e)) = probe.take() {
                return Err(e);
            }
            set.lifecycle(&event, Some("peer"), &admitted);
            match probe.take() {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        }));
    }
    if hooks.forward_headers {
        runs.push(run("forward-headers", calls, |i| {
            set.forward_headers(&inputs.headers[i % inputs.headers.len()]).map(drop).map_err(|r| r.error)
        }));
    }
    for (dir, hook, messages) in [
        (Direction::AgentToServer, "filter-agent-to-server", &inputs.to_server),
        (Direction::ServerToAgent, "filter-server-to-agent", &inputs.to_agent),
    ] {
        if !hooks.filters(dir) {
            continue;
        }
        let max = match dir {
            Direction::AgentToServer => cfg.limits.max_replacement[0],
            Direction::ServerToAgent => cfg.limits.max_replacement[1],
        };
        runs.push(run(hook, calls, |i| {
            let (uid, message) = &messages[i % messages.len()];
            match set.filter(dir, uid, message.clone()) {
                FilterOutcome::Drop => match probe.take() {
                    Some(Err(e)) => Err(e),
                    // The chain refused a replacement the guest made: too big.
                    Some(Ok(Verdict::Replace(b))) => Err(HookError::Invalid(format!(
                        "a {}-byte replacement exceeds the receiving side's max_message_size ({max})",
                        b.len()
                    ))),
                    _ => Ok(()),
                },
                _ => Ok(()),
            }
        }));
    }
    runs
}

/// `calls` calls of one hook, timed one by one.
fn run(hook: &'static str, calls: usize, mut call: impl FnMut(usize) -> Result<(), HookError>) -> HookRun {
    let mut out = HookRun { hook, planned: calls, ..HookRun::default() };
    let mut times = Vec::with_capacity(calls);
    let memory = PeakMemory::start();
    let mut in_a_row = 0;
    for i in 0..calls {
        let t = Instant::now();
        let result = call(i);
        times.push(t.elapsed());
        out.calls += 1;
        match result {
            Ok(()) => in_a_row = 0,
            Err(e) => {
                out.failures.entry(e.kind()).or_insert((0, e)).0 += 1;
                in_a_row += 1;
                if in_a_row >= GIVE_UP_AFTER {
                    break;
                }
            }
        }
    }
    out.peak_memory = memory.growth();
    times.sort_unstable();
    let at = |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1))).copied();
    out.p50 = at(0.5).unwrap_or_default();
    out.p99 = at(0.99).unwrap_or_default();
    out.max = times.last().copied().unwrap_or_default();
    out
}

/// The process's peak resident set over a span (Linux: `VmHWM`, reset
/// through `clear_refs` at the start).
struct PeakMemory {
    base: Option<u64>,
}

impl PeakMemory {
    fn start() -> Self {
        // "5" resets the peak to the current RSS; without it (old kernel,
        // no procfs) there is no honest figure to give.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Self { base: if reset { status_kib("VmRSS:") } else { None } }
    }

    fn growth(&self) -> Option<u64> {
        Some(status_kib("VmHWM:")?.saturating_sub(self.base?) * 1024)
    }
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// Synthetic traffic: a few shapes and sizes of each input, all within the
/// configured caps (the gateway would refuse bigger ones before a policy
/// sees them).
struct Inputs {
    assign: Vec<(HeaderList, Transport, Vec<UpstreamInfo>)>,
    headers: Vec<HeaderList>,
    to_server: Vec<(Vec<u8>, Bytes)>,
    to_agent: Vec<(Vec<u8>, Bytes)>,
}

impl Inputs {
    fn new(cfg: &PoliciesConfig) -> Self {
        let limits = &cfg.limits;
        let headers: Vec<HeaderList> = [3, 12, 40]
            .into_iter()
            .map(header_list)
            .map(|mut h| {
                // Within the forwarded-header caps, so a pass-through is valid.
                h.truncate(limits.max_forwarded_headers);
                while h.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() > limits.max_forwarded_header_bytes {
                    h.pop();
                }
                h
            })
            .collect();
        let upstream = |name: &str, n: u32| {
            let links = (0..n).map(|i| LinkInfo { index: i, load: 40 * i + 7, connected: i % 4 != 3 }).collect();
            UpstreamInfo { name: name.into(), links }
        };
        let default = crate::policy::DEFAULT_UPSTREAM;
        // The default alone, then beside other upstreams (one of them down),
        // as with `upstreams:` in the gateway config.
        let assign = vec![
            (headers[0].clone(), Transport::WebSocket, vec![upstream(default, 1)]),
            (headers[1].clone(), Transport::Http, vec![upstream(default, 3), upstream("green", 2)]),
            (
                headers[2].clone(),
                Transport::WebSocket,
                vec![upstream(default, 8), upstream("green", 2), upstream("canary", 0)],
            ),
        ];
        let fits = |max: usize| move |(_, m): &(Vec<u8>, Bytes)| m.len() <= max;
        let (to_server_max, to_agent_max) = (limits.max_replacement[0], limits.max_replacement[1]);
        let uids: Vec<Vec<u8>> = (0..4u8).map(uid).collect();
        let mut to_server: Vec<_> = uids.iter().enumerate().flat_map(|(i, u)| agent_messages(u, i)).collect();
        let mut to_agent: Vec<_> = uids.iter().enumerate().flat_map(|(i, u)| server_messages(u, i)).collect();
        to_server.retain(fits(to_server_max));
        to_agent.retain(fits(to_agent_max));
        // The smallest shape always fits a sane limit; keep one regardless.
        if to_server.is_empty() {
            to_server = agent_messages(&uids[0], 0).into_iter().take(1).collect();
        }
        if to_agent.is_empty() {
            to_agent = server_messages(&uids[0], 0).into_iter().take(1).collect();
        }
        Self { assign, headers, to_server, to_agent }
    }
}

/// A 16-byte uid, UUIDv7-like (not text, so no guest mistakes it for a word).
fn uid(n: u8) -> Vec<u8> {
    let mut u = vec![0x01, 0x93, 0x7a, 0x2c, 0xd4, 0x11, 0x7e, 0x80, 0x9f, 0xe2, 0x4b, 0x0c, 0xa6, 0x35, 0xc8, 0];
    u[15] = n;
    u
}

fn header_list(n: usize) -> HeaderList {
    let mut h: HeaderList = vec![
        ("authorization".into(), "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl".into()),
        ("user-agent".into(), "OpenTelemetry Collector Contrib/0.112.0 (linux/amd64)".into()),
        ("x-tenant".into(), "tenant-17".into()),
    ];
    for i in h.len()..n {
        h.push((format!("x-attr-{i}"), format!("value-{i}-{}", "v".repeat(i % 24))));
    }
    if n > 20 {
        h.push(("cookie".into(), format!("session={}", "c".repeat(4000))));
    }
    h
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue { value: Some(proto::any_value::Value::StringValue(value.into())) }),
    }
}

fn config_map(body_len: usize) -> proto::AgentConfigMap {
    let line = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nexporters:\n  debug: {}\n";
    let body: String = line.chars().cycle().take(body_len).collect();
    let file = proto::AgentConfigFile { body: body.into(), content_type: "text/yaml".into() };
    proto::AgentConfigMap { config_map: [(String::new(), file)].into_iter().collect() }
}

/// Heartbeat, status report with a description, effective config of a few
/// KiB, and a 64 KiB one.
fn agent_messages(uid: &[u8], i: usize) -> Vec<(Vec<u8>, Bytes)> {
    let uid_bytes = Bytes::copy_from_slice(uid);
    let base = proto::AgentToServer { instance_uid: uid_bytes, sequence_num: i as u64 + 1, ..Default::default() };
    let status = proto::AgentToServer {
        agent_description: Some(proto::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "io.opentelemetry.collector"),
                kv("service.version", "0.112.0"),
            ],
            non_identifying_attributes: vec![kv("os.type", "linux"), kv("host.name", "check-host")],
        }),
        capabilities: 0x3f,
        health: Some(proto::ComponentHealth { healthy: true, status: "StatusOK".into(), ..Default::default() }),
        ..base.clone()
    };
    let config = |len| proto::AgentToServer {
        effective_config: Some(proto::EffectiveConfig { config_map: Some(config_map(len)) }),
        ..base.clone()
    };
    [base.clone(), status, config(4 << 10), config(64 << 10)]
        .into_iter()
        .map(|m| (uid.to_vec(), Bytes::from(m.encode_to_vec())))
        .collect()
}

/// Empty reply, a flags request, a remote config of a few KiB, and a
/// 64 KiB one.
fn server_messages(uid: &[u8], _i: usize) -> Vec<(Vec<u8>, Bytes)> {
    let base = proto::ServerToAgent { instance_uid: Bytes::copy_from_slice(uid), ..Default::default() };
    let flags = proto::ServerToAgent { flags: proto::ServerToAgentFlags::ReportFullState as u64, ..base.clone() };
    let remote = |len| proto::ServerToAgent {
        remote_config: Some(proto::AgentRemoteConfig {
            config: Some(config_map(len)),
            config_hash: Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
        }),
        ..base.clone()
    };
    [base.clone(), flags, remote(4 << 10), remote(64 << 10)]
        .into_iter()
        .map(|m| (uid.to_vec(), Bytes::from(m.encode_to_vec())))
        .collect()
}

/// `assign, forward-headers` style list of hooks, or `none`.
pub(crate) fn hook_list(h: Hooks) -> String {
    let names = h.names();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let world = format!("{PACKAGE_PREFIX}gateway-policy@{}", self.wit_version);
        if self.failed() {
            writeln!(f, "policy {} FAILED: it loads, but some hook calls fail (below)", self.name)?;
        } else if self.runs.is_empty() {
            writeln!(f, "policy {} ok: compiles, implements {world}, init accepted its config", self.name)?;
        } else {
            writeln!(
                f,
                "policy {} ok: compiles, implements {world}, init accepted its config, every hook call succeeded",
                self.name
            )?;
        }
        writeln!(f, "  module    {} ({} bytes)", self.wasm.display(), self.size)?;
        match &self.config {
            Some(c) => writeln!(f, "  config    {}", c.display())?,
            None => writeln!(f, "  config    (none: init gets an empty string)")?,
        }
        writeln!(f, "  sha256    {}", self.digest)?;
        writeln!(f, "  hooks     {}", hook_list(self.hooks))?;
        match self.wit_version {
            WitVersion::V0_3 => writeln!(f, "  wit       {}", self.wit_version)?,
            WitVersion::V0_2 => writeln!(
                f,
                "  wit       {} (older: its assign sees only the default upstream's links and answers one of \
                 them; rebuild with a current opamp-policy crate to route across upstreams)",
                self.wit_version
            )?,
        }
        let mode = match self.on_error {
            FailureMode::Open => "open (a failing call is skipped)",
            FailureMode::Closed => "closed (a failing call drops the message / refuses the agent)",
        };
        writeln!(f, "  on_error  {mode}")?;
        writeln!(f, "  headers   {}", self.visible_headers)?;
        let from = |yaml: bool| if yaml { "policy yaml" } else { "policies:" };
        writeln!(
            f,
            "  limits    call_timeout {} ({}), memory_limit {} bytes ({})",
            humantime::format_duration(self.limits.call_timeout),
            from(self.limits.call_timeout_in_yaml),
            self.limits.memory_limit,
            from(self.limits.memory_limit_in_yaml)
        )?;
        write!(f, "  loaded in {:.1} ms", self.load_time.as_secs_f64() * 1e3)?;
        if self.runs.is_empty() {
            return Ok(());
        }
        write!(
            f,
            "\n  calls on synthetic messages, headers and upstream snapshots (time per call; peak memory: growth of the process's peak RSS):\n  {:<24} {:>6} {:>6} {:>10} {:>10} {:>10} {:>11}",
            "hook", "calls", "failed", "p50", "p99", "max", "peak memory"
        )?;
        for r in &self.runs {
            let mem = r.peak_memory.map(|b| format!("+{:.1} MiB", b as f64 / (1 << 20) as f64));
            write!(
                f,
                "\n  {:<24} {:>6} {:>6} {:>10} {:>10} {:>10} {:>11}",
                r.hook,
                r.calls,
                r.failed(),
                micros(r.p50),
                micros(r.p99),
                micros(r.max),
                mem.as_deref().unwrap_or("n/a")
            )?;
            if r.gave_up() {
                write!(f, " (stopped after {GIVE_UP_AFTER} failures in a row)")?;
            }
        }
        for line in self.failures() {
            write!(f, "\n  FAILED    {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_lists() {
        assert_eq!(hook_list(Hooks::default()), "none");
        let h = Hooks { assign: true, filter_server_to_agent: true, ..Hooks::default() };
        assert_eq!(hook_list(h), "assign, filter-server-to-agent");
        assert_eq!(hook_list(Hooks::FILTER), "filter-agent-to-server, filter-server-to-agent");
    }

    #[test]
    fn synthetic_inputs_stay_within_the_caps() {
        let mut cfg = PoliciesConfig::default();
        cfg.limits.max_forwarded_headers = 10;
        cfg.limits.max_forwarded_header_bytes = 2000;
        let cfg = cfg.for_relay(1 << 20, 10_000);
        let inputs = Inputs::new(&cfg);
        for h in &inputs.headers {
            assert!(h.len() <= 10 && h.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= 2000);
        }
        assert!(inputs.to_server.iter().any(|(_, m)| m.len() > 60_000), "the big shape fits 1 MiB");
        assert!(inputs.assign.iter().all(|(_, _, u)| u[0].name == crate::policy::DEFAULT_UPSTREAM), "default first");
        assert!(inputs.assign.iter().any(|(_, _, u)| u.len() > 1), "a policy is shown more than one upstream");
        assert!(!inputs.to_agent.is_empty() && inputs.to_agent.iter().all(|(_, m)| m.len() <= 10_000));
        for (uid, m) in &inputs.to_server {
            let decoded = proto::AgentToServer::decode(m.clone()).unwrap();
            assert_eq!(&decoded.instance_uid[..], &uid[..]);
        }
    }

    #[test]
    fn failures_name_the_limit_and_the_key() {
        let mut run = HookRun { hook: "filter-agent-to-server", planned: 10, calls: 10, ..HookRun::default() };
        run.failures.insert("memory", (2, HookError::Memory));
        run.failures.insert("timeout", (1, HookError::Timeout));
        let report = CheckReport {
            name: "p".into(),
            wasm: "p.wasm".into(),
            config: None,
            digest: String::new(),
            size: 0,
            hooks: Hooks::FILTER,
            wit_version: WitVersion::V0_3,
            on_error: FailureMode::Open,
            visible_headers: VisibleHeaders::default(),
            load_time: Duration::ZERO,
            limits: CheckLimits {
                call_timeout: Duration::from_millis(5),
                memory_limit: 1 << 20,
                call_timeout_in_yaml: true,
                memory_limit_in_yaml: false,
            },
            runs: vec![run],
            policy: None,
        };
        assert!(report.failed());
        let lines = report.failures();
        assert!(lines[0].contains("2 of 10") && lines[0].contains("`memory_limit` in p.yaml"), "{lines:?}");
        assert!(lines[0].contains("`policies.memory_limit`"), "{lines:?}");
        assert!(lines[1].contains("`call_timeout` in p.yaml") && !lines[1].contains("policies."), "{lines:?}");
    }
}
