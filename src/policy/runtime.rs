//! [`PolicyRuntime`]: the loaded policy set, kept in step with its directory.
//!
//! `start` loads the directory once (a bad policy fails startup: the operator
//! finds out now, not when the first agent connects), publishes the set
//! through [`Policies`], and starts the watcher. Each later change is loaded
//! whole on the watcher thread; the new set is swapped in atomically if every
//! policy in it loads, and refused otherwise, leaving the previous set
//! serving. In-flight calls finish on the set they started with.
//!
//! Every reload attempt ends with a [`ReloadStatus`] published on a `watch`
//! channel ([`PolicyRuntime::subscribe`]), logged, and counted in
//! `opampgateway_policy_reloads_total{outcome}`; the loaded set is exported
//! as `opampgateway_policy_loaded{policy,digest} 1`.
//!
//! Native policies (compiled into an embedding application, given to
//! [`GatewayBuilder::policy`](crate::GatewayBuilder::policy)) head the chain, before the directory's: the
//! application's own rules come first, and the operator's hot-reloaded Wasm
//! sees their output. Every set a reload builds keeps them, as the same
//! objects, so their breakers carry over too.
//!
//! Built without the `wasm` feature, the runtime serves the native policies
//! alone and refuses a directory that holds `.wasm` files (it could not run
//! them).

#[cfg(feature = "wasm")]
use parking_lot::Mutex;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::health::PolicyHealth;
use super::set::{Containment, Policies, PolicySet};
use super::wasm::PolicyError;
#[cfg(feature = "wasm")]
use super::wasm::{hook_list, DirWatcher, Loader, PolicyEngine, WasmPolicy};
use super::Policy;
use super::{FailureMode, Hooks, PoliciesConfig};
use crate::telemetry::metrics as m;

/// A loaded policy, as reported in logs and reload statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPolicy {
    pub name: String,
    /// Hex sha256 of the `.wasm` file.
    pub digest: String,
    pub hooks: Hooks,
    pub on_error: FailureMode,
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
}

#[cfg(feature = "wasm")]
impl LoadedPolicy {
    fn of(p: &WasmPolicy) -> Self {
        Self {
            name: p.name().to_owned(),
            digest: p.digest().to_owned(),
            hooks: p.hooks(),
            on_error: p.failure_mode(),
            wasm: p.wasm_path().to_owned(),
            config: p.config_path().map(Into::into),
        }
    }
}

impl fmt::Display for LoadedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sha256:{})", self.name, &self.digest[..self.digest.len().min(12)])
    }
}

/// How a load attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// This set is now serving (in chain order; empty = no policies).
    Applied(Vec<LoadedPolicy>),
    /// The directory describes the set already serving.
    Unchanged,
    /// The directory's set was refused; the previous set keeps serving.
    Refused { file: Option<PathBuf>, reason: String },
}

/// The latest load attempt. `generation` counts attempts, starting at 0 for
/// the initial load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    pub generation: u64,
    pub outcome: ReloadOutcome,
}

struct Shared {
    policies: Arc<Policies>,
    /// Head of every set, reloads included.
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    native: Vec<Arc<dyn Policy>>,
    health: Arc<PolicyHealth>,
    #[cfg(feature = "wasm")]
    loader: Mutex<Loader>,
    #[cfg(not(feature = "wasm"))]
    directory: PathBuf,
    status: watch::Sender<ReloadStatus>,
}

/// The policy set of a gateway and its hot-reloader. Dropping it stops the
/// watcher; sets already handed out keep working (their deadlines too).
pub struct PolicyRuntime {
    shared: Arc<Shared>,
    status: watch::Receiver<ReloadStatus>,
    #[cfg(feature = "wasm")]
    _watcher: Option<DirWatcher>,
}

#[cfg(feature = "wasm")]
impl PolicyRuntime {
    /// Loads `cfg.directory` and, if `cfg.watch`, starts watching it. Fails
    /// if the engine cannot start or a policy in the directory does not load.
    pub fn start(cfg: &PoliciesConfig) -> Result<Self, PolicyError> {
        Self::start_with(cfg, Vec::new())
    }

    /// As [`start`](Self::start), with `native` policies ahead of the
    /// directory's in every set (see the module docs).
    pub(crate) fn start_with(cfg: &PoliciesConfig, native: Vec<Arc<dyn Policy>>) -> Result<Self, PolicyError> {
        let engine = PolicyEngine::new(cfg)?;
        let mut loader = Loader::new(engine, cfg.clone());
        let dir = cfg.directory.clone();
        let set = if dir.exists() {
            loader.load()?
        } else {
            tracing::info!(dir = %dir.display(), "policy directory does not exist: no policies loaded");
            Vec::new()
        };
        let loaded: Vec<LoadedPolicy> = set.iter().map(|p| LoadedPolicy::of(p)).collect();
        let policies = Arc::new(Policies::with_containment(to_set(&native, &set), Containment::from_config(cfg)));
        let health = Arc::new(PolicyHealth::new(cfg.required));
        health.set_serving(set.len());
        announce(&[], &set);
        metrics::counter!(m::POLICY_RELOADS, "outcome" => "initial").increment(1);
        loader.commit(set);

        let initial = ReloadStatus { generation: 0, outcome: ReloadOutcome::Applied(loaded) };
        let (tx, rx) = watch::channel(initial);
        let shared = Arc::new(Shared { policies, native, health, loader: Mutex::new(loader), status: tx });
        let watcher = if cfg.watch {
            let s = shared.clone();
            Some(DirWatcher::start(dir, move || {
                s.reload();
            })?)
        } else {
            None
        };
        Ok(Self { shared, status: rx, _watcher: watcher })
    }

    /// Reloads now, on the calling thread (it may compile: from async code,
    /// use `spawn_blocking`). For SIGHUP and deployments without `watch`.
    pub fn reload(&self) -> ReloadStatus {
        self.shared.reload()
    }

    /// The serving policy called `name` (diagnostics, tests).
    pub fn policy(&self, name: &str) -> Option<Arc<WasmPolicy>> {
        let loader = self.shared.loader.lock();
        loader.current().iter().find(|p| p.name() == name).cloned()
    }

    /// The set serving now.
    pub fn loaded(&self) -> Vec<LoadedPolicy> {
        let loader = self.shared.loader.lock();
        loader.current().iter().map(|p| LoadedPolicy::of(p)).collect()
    }
}

impl PolicyRuntime {
    /// The policy chain the relay consults.
    pub fn policies(&self) -> Arc<Policies> {
        self.shared.policies.clone()
    }

    /// Reload statuses, latest first; `changed()` wakes on each attempt.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// Readiness as far as policies go (for `/readyz`).
    pub fn health(&self) -> Arc<PolicyHealth> {
        self.shared.health.clone()
    }
}

#[cfg(not(feature = "wasm"))]
impl PolicyRuntime {
    /// Serves the empty set; refuses a directory holding `.wasm` files.
    pub fn start(cfg: &PoliciesConfig) -> Result<Self, PolicyError> {
        Self::start_with(cfg, Vec::new())
    }

    /// Serves `native` alone; refuses a directory holding `.wasm` files.
    pub(crate) fn start_with(cfg: &PoliciesConfig, native: Vec<Arc<dyn Policy>>) -> Result<Self, PolicyError> {
        without_wasm(&cfg.directory)?;
        metrics::counter!(m::POLICY_RELOADS, "outcome" => "initial").increment(1);
        let (tx, rx) = watch::channel(ReloadStatus { generation: 0, outcome: ReloadOutcome::Applied(Vec::new()) });
        let shared = Shared {
            policies: Arc::new(Policies::with_containment(
                PolicySet::new(native.clone()),
                Containment::from_config(cfg),
            )),
            native,
            health: Arc::new(PolicyHealth::new(cfg.required)),
            directory: cfg.directory.clone(),
            status: tx,
        };
        Ok(Self { shared: Arc::new(shared), status: rx })
    }

    /// Checks the directory again: still nothing this build can load?
    pub fn reload(&self) -> ReloadStatus {
        let outcome = match without_wasm(&self.shared.directory) {
            Ok(()) => ReloadOutcome::Unchanged,
            Err(e) => ReloadOutcome::Refused { file: e.path().map(Into::into), reason: e.to_string() },
        };
        let generation = self.shared.status.borrow().generation + 1;
        let status = ReloadStatus { generation, outcome };
        self.shared.status.send_replace(status.clone());
        status
    }

    /// The set serving now: always empty in this build.
    pub fn loaded(&self) -> Vec<LoadedPolicy> {
        Vec::new()
    }
}

/// The first `.wasm` file in `dir` (chain order), as the error this build
/// gives for it. An absent directory holds none.
#[cfg(not(feature = "wasm"))]
fn without_wasm(dir: &std::path::Path) -> Result<(), PolicyError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let mut modules: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && p.extension().is_some_and(|x| x == "wasm")
        })
        .collect();
    modules.sort();
    match modules.into_iter().next() {
        None => Ok(()),
        Some(path) => Err(PolicyError::Engine(format!(
            "{}: built without Wasm policy support (cargo feature `wasm`)",
            path.display()
        ))),
    }
}

#[cfg(feature = "wasm")]
impl Shared {
    fn reload(&self) -> ReloadStatus {
        // One reload at a time (watcher thread and manual calls).
        let mut loader = self.loader.lock();
        // A directory that vanished or became unreadable unloads nothing:
        // the set keeps serving, degraded (only an empty one unloads all).
        let dir = loader.directory().to_owned();
        let loaded = match std::fs::read_dir(&dir) {
            Err(source) if !loader.current().is_empty() => Err(PolicyError::Io { path: dir.clone(), source }),
            Err(_) => Ok(Vec::new()), // nothing serving, nothing to keep
            Ok(_) => loader.load(),
        };
        let degraded = matches!(&loaded, Err(PolicyError::Io { path, .. }) if *path == dir);
        self.health.set_degraded(match &loaded {
            Err(e) if degraded => Some(e.to_string()),
            _ => None,
        });
        let outcome = match loaded {
            Ok(set) if loader.unchanged(&set) => {
                tracing::debug!(dir = %loader.directory().display(), "policy directory changed; set unchanged");
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "unchanged").increment(1);
                ReloadOutcome::Unchanged
            }
            Ok(set) => {
                self.policies.replace(to_set(&self.native, &set));
                self.health.set_serving(set.len());
                announce(loader.current(), &set);
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "applied").increment(1);
                let loaded = set.iter().map(|p| LoadedPolicy::of(p)).collect();
                loader.commit(set);
                ReloadOutcome::Applied(loaded)
            }
            Err(e) => {
                let outcome = ReloadOutcome::Refused { file: e.path().map(Into::into), reason: e.to_string() };
                let file = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                // Logged once per distinct reason, not on every event.
                if self.status.borrow().outcome == outcome {
                    tracing::debug!(file, kind = e.kind(), "policy reload refused again: {e}");
                } else {
                    tracing::error!(
                        file,
                        kind = e.kind(),
                        "policy reload refused, the previous set keeps serving: {e}"
                    );
                }
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "refused").increment(1);
                outcome
            }
        };
        let generation = self.status.borrow().generation + 1;
        let status = ReloadStatus { generation, outcome };
        self.status.send_replace(status.clone());
        status
    }
}

/// The chain: `native` first, then the directory's policies.
#[cfg(feature = "wasm")]
fn to_set(native: &[Arc<dyn Policy>], set: &[Arc<WasmPolicy>]) -> PolicySet {
    let wasm = set.iter().map(|p| p.clone() as Arc<dyn Policy>);
    PolicySet::new(native.iter().cloned().chain(wasm).collect())
}

/// Logs the new set and moves the `loaded` gauge from `old` to `new`.
#[cfg(feature = "wasm")]
fn announce(old: &[Arc<WasmPolicy>], new: &[Arc<WasmPolicy>]) {
    for p in old {
        if !new.iter().any(|q| Arc::ptr_eq(p, q)) {
            metrics::gauge!(m::POLICY_LOADED, "policy" => p.name().to_owned(), "digest" => p.digest().to_owned())
                .set(0.0);
        }
    }
    for (position, p) in new.iter().enumerate() {
        metrics::gauge!(m::POLICY_LOADED, "policy" => p.name().to_owned(), "digest" => p.digest().to_owned()).set(1.0);
        let reused = old.iter().any(|q| Arc::ptr_eq(p, q));
        tracing::info!(
            policy = p.name(),
            position,
            sha256 = p.digest(),
            hooks = %hook_list(p.hooks()),
            on_error = ?p.failure_mode(),
            mode = ?p.mode(),
            headers = %p.visible_headers,
            file = %p.wasm_path().display(),
            reused,
            "policy loaded"
        );
    }
    let names: Vec<String> = new.iter().map(|p| LoadedPolicy::of(p).to_string()).collect();
    tracing::info!(count = new.len(), "policy set serving: [{}]", names.join(", "));
}

#[cfg(all(test, not(feature = "wasm")))]
mod tests {
    use super::*;

    #[test]
    fn without_wasm_only_an_empty_directory_starts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |d: &std::path::Path| PoliciesConfig { directory: d.into(), watch: false, ..Default::default() };
        assert!(PolicyRuntime::start(&cfg(&dir.path().join("absent"))).is_ok());
        std::fs::write(dir.path().join("notes.yaml"), "x: 1").unwrap();
        let rt = PolicyRuntime::start(&cfg(dir.path())).unwrap();
        assert!(rt.loaded().is_empty());

        std::fs::write(dir.path().join("tenant.wasm"), b"\0asm").unwrap();
        let e = PolicyRuntime::start(&cfg(dir.path())).err().expect("refused");
        assert!(e.to_string().contains("built without Wasm policy support"), "{e}");
        assert!(e.to_string().contains("tenant.wasm"), "{e}");
        assert!(matches!(rt.reload().outcome, ReloadOutcome::Refused { .. }));
    }
}
