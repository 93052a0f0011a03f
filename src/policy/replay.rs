//! `opamp-gateway policy replay POLICY.wasm [--config X.yaml] CAPTURE...`:
//! one policy run offline over what `telemetry.capture` recorded, to see
//! what it would have done to real traffic before deploying it.
//!
//! The policy is loaded by the gateway's own [`Loader`] (same limits,
//! `init` with its YAML). Each `connect` record is shown to `admit`,
//! `assign` and `forward-headers` (those the policy announces) with the
//! recorded headers: values the capture redacted read `<redacted>`. Each
//! `message` record is shown to `filter` in its direction. No lifecycle
//! events are sent (a capture records no disconnects). The answers are the
//! policy's raw verdicts; a failed call is counted as `failed (kind)`,
//! whatever `on_error` would have made of it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::wasm::{Loader, PolicyEngine, PolicyError, WasmPolicy};
use super::{
    AdmitVerdict, AssignInput, Direction, HookError, PoliciesConfig, Policy, Transport, UpstreamInfo, Verdict,
};
use crate::telemetry::capture::{self, CaptureError, CaptureRecord};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: the file name must be <name>.wasm", path.display())]
    Name { path: PathBuf },
}

/// What the policy would have done, by hook.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub policy: String,
    pub files: usize,
    pub connects: usize,
    pub messages: usize,
    /// WIT hook name → verdict → count (`forward`, `drop`, `replace`,
    /// `close`, `allow`, `reject 429`, `default`, `route green`,
    /// `unchanged`, `changed`, `failed (timeout)`...).
    pub verdicts: BTreeMap<&'static str, BTreeMap<String, usize>>,
    /// Messages it would drop, replace or close on, in capture order.
    pub changed: Vec<Changed>,
    /// Connects it would reject.
    pub rejected: Vec<Rejected>,
}

/// A message the policy would not forward unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub ts: String,
    pub direction: String,
    /// Hex.
    pub uid: String,
    pub verdict: String,
    pub size_before: usize,
    /// `None`: nothing is forwarded.
    pub size_after: Option<usize>,
}

/// A connect the policy's `admit` would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub ts: String,
    pub remote: String,
    pub status: u16,
}

/// Loads `wasm` (its config `config`, else `<name>.yaml` beside it) under
/// `cfg`'s limits and replays `captures` in order. `upstreams` is what
/// `assign` and `admit` are shown (the gateway config's upstreams, every
/// link connected and idle).
pub fn replay(
    wasm: &Path,
    config: Option<&Path>,
    cfg: &PoliciesConfig,
    upstreams: &[UpstreamInfo],
    captures: &[PathBuf],
) -> Result<ReplayReport, ReplayError> {
    let (policy, _dir) = load(wasm, config, cfg)?;
    let mut report = ReplayReport { policy: policy.name().to_owned(), ..ReplayReport::default() };
    for path in captures {
        report.files += 1;
        for record in capture::read(path)? {
            report.apply(policy.as_ref(), &record, upstreams);
        }
    }
    Ok(report)
}

/// The policy, through the gateway's loader: it reads a directory, so the
/// component (and config) are copied into a private one, removed on drop.
fn load(wasm: &Path, config: Option<&Path>, cfg: &PoliciesConfig) -> Result<(Arc<WasmPolicy>, TempDir), ReplayError> {
    let name = wasm.file_stem().and_then(|s| s.to_str()).ok_or_else(|| ReplayError::Name { path: wasm.into() })?;
    let config = config.map(Path::to_owned).or_else(|| Some(wasm.with_extension("yaml")).filter(|p| p.exists()));
    let dir = TempDir::new()?;
    let copy = |from: &Path, to: PathBuf| {
        std::fs::copy(from, to).map(drop).map_err(|source| ReplayError::Io { path: from.to_owned(), source })
    };
    copy(wasm, dir.0.join(format!("{name}.wasm")))?;
    if let Some(c) = &config {
        copy(c, dir.0.join(format!("{name}.yaml")))?;
    }
    let cfg = PoliciesConfig { directory: dir.0.clone(), watch: false, ..cfg.clone() };
    let loader = Loader::new(PolicyEngine::new(&cfg)?, cfg);
    let policy = loader.load()?.into_iter().next().ok_or(ReplayError::Name { path: wasm.into() })?;
    Ok((policy, dir))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, ReplayError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("opamp-gateway-replay-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| ReplayError::Io { path: path.clone(), source })?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ReplayReport {
    fn count(&mut self, hook: &'static str, verdict: impl Into<String>) {
        *self.verdicts.entry(hook).or_default().entry(verdict.into()).or_default() += 1;
    }

    fn apply(&mut self, policy: &dyn Policy, record: &CaptureRecord, upstreams: &[UpstreamInfo]) {
        let hooks = policy.hooks();
        match record {
            CaptureRecord::Start { .. } => {}
            CaptureRecord::Connect { ts, transport, remote, headers, .. } => {
                self.connects += 1;
                let transport = if transport == "http" { Transport::Http } else { Transport::WebSocket };
                let input = AssignInput { headers, remote_addr: remote, transport, upstreams };
                if hooks.admit {
                    match policy.admit(&input) {
                        Ok(AdmitVerdict::Allow) => self.count("admit", "allow"),
                        Ok(AdmitVerdict::Reject(r)) => {
                            self.count("admit", format!("reject {}", r.status));
                            self.rejected.push(Rejected { ts: ts.clone(), remote: remote.clone(), status: r.status });
                        }
                        Err(e) => self.count("admit", failed(&e)),
                    }
                }
                if hooks.assign {
                    let verdict = match policy.assign(&input) {
                        Ok(None) => "default".to_owned(),
                        Ok(Some(route)) => {
                            let upstream = route.upstream.unwrap_or_else(|| super::DEFAULT_UPSTREAM.into());
                            match route.link {
                                Some(l) => format!("route {upstream} link {l}"),
                                None => format!("route {upstream}"),
                            }
                        }
                        Err(e) => failed(&e),
                    };
                    self.count("assign", verdict);
                }
                if hooks.forward_headers {
                    let verdict = match policy.forward_headers(headers) {
                        Ok(h) if h == *headers => "unchanged".to_owned(),
                        Ok(_) => "changed".to_owned(),
                        Err(e) => failed(&e),
                    };
                    self.count("forward-headers", verdict);
                }
            }
            CaptureRecord::Message { ts, direction, uid, .. } => {
                self.messages += 1;
                let Some((uid_bytes, payload)) = record.decoded() else { return };
                let (dir, hook) = match direction.as_str() {
                    "server_to_agent" => (Direction::ServerToAgent, "filter-server-to-agent"),
                    _ => (Direction::AgentToServer, "filter-agent-to-server"),
                };
                if !hooks.filters(dir) {
                    return;
                }
                let (verdict, after) = match policy.filter(dir, &uid_bytes, &payload) {
                    Ok(Verdict::Forward) => ("forward".to_owned(), Some(payload.len())),
                    Ok(Verdict::Replace(b)) if b == payload => ("forward".to_owned(), Some(payload.len())),
                    Ok(Verdict::Replace(b)) => ("replace".to_owned(), Some(b.len())),
                    Ok(Verdict::Drop) => ("drop".to_owned(), None),
                    Ok(Verdict::Close) => ("close".to_owned(), None),
                    Err(e) => (failed(&e), Some(payload.len())),
                };
                self.count(hook, verdict.clone());
                if verdict != "forward" {
                    let (direction, uid, size_before) = (direction.clone(), uid.clone(), payload.len());
                    self.changed.push(Changed {
                        ts: ts.clone(),
                        direction,
                        uid,
                        verdict,
                        size_before,
                        size_after: after,
                    });
                }
            }
        }
    }

    /// The report as text, listing at most `show` changed messages.
    pub fn display(&self, show: usize) -> impl fmt::Display + '_ {
        Shown(self, show)
    }
}

fn failed(e: &HookError) -> String {
    format!("failed ({})", e.kind())
}

struct Shown<'a>(&'a ReplayReport, usize);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, show) = (self.0, self.1);
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        writeln!(
            f,
            "policy {}: replayed {} connect{} and {} message{} from {} file{}",
            r.policy,
            r.connects,
            plural(r.connects),
            r.messages,
            plural(r.messages),
            r.files,
            plural(r.files)
        )?;
        for (hook, verdicts) in &r.verdicts {
            let calls: usize = verdicts.values().sum();
            let list: Vec<String> = verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
            writeln!(f, "  {hook}: {calls} call{}: {}", plural(calls), list.join(", "))?;
        }
        if r.verdicts.is_empty() {
            writeln!(f, "  no hook of this policy was called (it announces none for what the capture holds)")?;
        }
        for rej in &r.rejected {
            writeln!(f, "  would reject {} at {} with {}", rej.remote, rej.ts, rej.status)?;
        }
        let n = r.changed.len();
        writeln!(f, "would change {n} message{}{}", plural(n), if n > 0 { ":" } else { "" })?;
        for c in r.changed.iter().take(show) {
            let after = c.size_after.map_or_else(|| "-".to_owned(), |s| s.to_string());
            let uid = if c.uid.is_empty() { "-" } else { &c.uid };
            writeln!(f, "  {} {} uid={uid} {} {} -> {after} bytes", c.ts, c.direction, c.verdict, c.size_before)?;
        }
        if n > show {
            writeln!(f, "  ... and {} more (--show)", n - show)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    struct DropsEven;
    impl Policy for DropsEven {
        fn name(&self) -> &str {
            "drops_even"
        }
        fn hooks(&self) -> super::super::Hooks {
            super::super::Hooks { assign: true, ..super::super::Hooks::FILTER }
        }
        fn filter(&self, _dir: Direction, _uid: &[u8], message: &Bytes) -> Result<Verdict, HookError> {
            Ok(if message.len() % 2 == 0 { Verdict::Drop } else { Verdict::Forward })
        }
    }

    fn message(direction: &str, payload: &[u8]) -> CaptureRecord {
        use base64::Engine as _;
        CaptureRecord::Message {
            ts: "2026-11-30T08:00:00.000Z".into(),
            direction: direction.into(),
            transport: "websocket".into(),
            uid: "ab".repeat(16),
            size: payload.len(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
        }
    }

    #[test]
    fn counts_verdicts_and_lists_what_changes() {
        let mut r = ReplayReport { policy: "drops_even".into(), files: 1, ..ReplayReport::default() };
        let connect = CaptureRecord::Connect {
            ts: "2026-11-30T08:00:00.000Z".into(),
            transport: "websocket".into(),
            remote: "127.0.0.1:9".into(),
            accepted: true,
            headers: vec![("authorization".into(), capture::REDACTED.into())],
        };
        for record in [connect, message("agent_to_server", b"\x0a\x01"), message("server_to_agent", b"\x0a")] {
            r.apply(&DropsEven, &record, &[]);
        }
        let text = r.display(10).to_string();
        assert!(text.starts_with("policy drops_even: replayed 1 connect and 2 messages from 1 file\n"), "{text}");
        assert!(text.contains("  assign: 1 call: 1 default\n"), "{text}");
        assert!(text.contains("  filter-agent-to-server: 1 call: 1 drop\n"), "{text}");
        assert!(text.contains("  filter-server-to-agent: 1 call: 1 forward\n"), "{text}");
        let uid = "ab".repeat(16);
        assert!(
            text.contains(&format!(
                "would change 1 message:\n  2026-11-30T08:00:00.000Z agent_to_server uid={uid} drop 2 -> - bytes\n"
            )),
            "{text}"
        );
    }
}
