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

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::set::{Policies, PolicySet};
use super::wasm::{hook_list, DirWatcher, Loader, PolicyEngine, PolicyError, WasmPolicy};
use super::{FailureMode, Hooks, PoliciesConfig, Policy};
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
    loader: Mutex<Loader>,
    status: watch::Sender<ReloadStatus>,
}

/// The policy set of a gateway and its hot-reloader. Dropping it stops the
/// watcher; sets already handed out keep working (their deadlines too).
pub struct PolicyRuntime {
    shared: Arc<Shared>,
    status: watch::Receiver<ReloadStatus>,
    _watcher: Option<DirWatcher>,
}

impl PolicyRuntime {
    /// Loads `cfg.directory` and, if `cfg.watch`, starts watching it. Fails
    /// if the engine cannot start or a policy in the directory does not load.
    pub fn start(cfg: &PoliciesConfig) -> Result<Self, PolicyError> {
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
        let policies = Arc::new(Policies::new(to_set(&set)));
        announce(&[], &set);
        metrics::counter!(m::POLICY_RELOADS, "outcome" => "initial").increment(1);
        loader.commit(set);

        let initial = ReloadStatus { generation: 0, outcome: ReloadOutcome::Applied(loaded) };
        let (tx, rx) = watch::channel(initial);
        let shared = Arc::new(Shared { policies, loader: Mutex::new(loader), status: tx });
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

    /// The policy chain the relay consults.
    pub fn policies(&self) -> Arc<Policies> {
        self.shared.policies.clone()
    }

    /// Reload statuses, latest first; `changed()` wakes on each attempt.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// Reloads now, on the calling thread (it may compile: from async code,
    /// use `spawn_blocking`). For SIGHUP and deployments without `watch`.
    pub fn reload(&self) -> ReloadStatus {
        self.shared.reload()
    }

    /// The serving policy called `name` (diagnostics, tests).
    pub fn policy(&self, name: &str) -> Option<Arc<WasmPolicy>> {
        let loader = self.shared.loader.lock().unwrap_or_else(|e| e.into_inner());
        loader.current().iter().find(|p| p.name() == name).cloned()
    }

    /// The set serving now.
    pub fn loaded(&self) -> Vec<LoadedPolicy> {
        let loader = self.shared.loader.lock().unwrap_or_else(|e| e.into_inner());
        loader.current().iter().map(|p| LoadedPolicy::of(p)).collect()
    }
}

impl Shared {
    fn reload(&self) -> ReloadStatus {
        // One reload at a time (watcher thread and manual calls).
        let mut loader = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match loader.load() {
            Ok(set) if loader.unchanged(&set) => {
                tracing::debug!(dir = %loader.directory().display(), "policy directory changed; set unchanged");
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "unchanged").increment(1);
                ReloadOutcome::Unchanged
            }
            Ok(set) => {
                self.policies.replace(to_set(&set));
                announce(loader.current(), &set);
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "applied").increment(1);
                let loaded = set.iter().map(|p| LoadedPolicy::of(p)).collect();
                loader.commit(set);
                ReloadOutcome::Applied(loaded)
            }
            Err(e) => {
                tracing::error!(
                    file = %e.path().map(|p| p.display().to_string()).unwrap_or_default(),
                    kind = e.kind(),
                    "policy reload refused, the previous set keeps serving: {e}"
                );
                metrics::counter!(m::POLICY_RELOADS, "outcome" => "refused").increment(1);
                ReloadOutcome::Refused { file: e.path().map(Into::into), reason: e.to_string() }
            }
        };
        let generation = self.status.borrow().generation + 1;
        let status = ReloadStatus { generation, outcome };
        self.status.send_replace(status.clone());
        status
    }
}

fn to_set(set: &[Arc<WasmPolicy>]) -> PolicySet {
    PolicySet::new(set.iter().map(|p| p.clone() as Arc<dyn Policy>).collect())
}

/// Logs the new set and moves the `loaded` gauge from `old` to `new`.
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
            file = %p.wasm_path().display(),
            reused,
            "policy loaded"
        );
    }
    let names: Vec<String> = new.iter().map(|p| LoadedPolicy::of(p).to_string()).collect();
    tracing::info!(count = new.len(), "policy set serving: [{}]", names.join(", "));
}
