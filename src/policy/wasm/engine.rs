//! The shared wasmtime engine, its epoch ticker and the per-call budgets.
//!
//! One [`PolicyEngine`] serves every policy of a runtime across reloads, so
//! compiled code, the linker and the ticker thread are set up once.
//!
//! Deadlines use epoch interruption rather than fuel: the generated code only
//! checks an epoch counter at loop heads and function entries (cheap), and a
//! ticker thread bumps the counter every [`TICK`]. What a call is charged at
//! each tick is its thread's CPU time (see `deadline`), so a runaway guest
//! stops whatever it does, and a preempted one is not blamed for the wait.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Cache, CacheConfig, Config, Engine};

use super::error::{one_line, PolicyError};
use super::pool::Refiller;
use super::sandbox::HostState;
use crate::policy::config::PoliciesConfig;
use crate::policy::state::StateStores;

/// Epoch tick period: the granularity of every deadline.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Budgets applied to each instance and each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// CPU-time budget of one hook call.
    pub call_timeout: Duration,
    /// CPU-time budget of instantiation plus `init`.
    pub init_timeout: Duration,
    /// Linear-memory cap per instance, bytes.
    pub memory_limit: u64,
    /// Instances kept per policy.
    pub instances: usize,
    /// Guest log lines per policy per `log_interval`.
    pub log_lines: u32,
    pub log_interval: Duration,
}

impl Budget {
    pub(crate) fn from_config(cfg: &PoliciesConfig) -> Self {
        Self {
            call_timeout: cfg.call_timeout,
            init_timeout: cfg.init_timeout,
            memory_limit: cfg.memory_limit,
            // The gate lets `concurrency` calls run at once: with fewer
            // instances some of them would wait for one.
            instances: cfg.instances().max(cfg.concurrency()),
            log_lines: cfg.limits.log_lines,
            log_interval: cfg.limits.log_interval,
        }
    }
}

/// The engine, the linker every instance is created through, and the ticker
/// that enforces deadlines. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PolicyEngine {
    pub engine: Engine,
    pub linker: Arc<Linker<HostState>>,
    /// Leased by every instance pool: deadlines must keep firing for as long
    /// as any instance can run, even after the runtime itself is dropped.
    pub ticker: Arc<EpochTicker>,
    /// Makes instances off the message path (see `pool`).
    pub refiller: Arc<Refiller>,
    /// Each policy's shared state store, by name, across reloads.
    pub states: Arc<StateStores>,
}

impl PolicyEngine {
    pub(crate) fn new(cfg: &PoliciesConfig) -> Result<Self, PolicyError> {
        let engine_err = |what: &str, e: wasmtime::Error| PolicyError::Engine(format!("{what}: {e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Policies are small and compiled once (then cached): favour speed of
        // the generated code.
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // OPAMP_GATEWAY_POLICY_PERFMAP=1 names policies' compiled code in
        // `perf` profiles (/tmp/perf-<pid>.map), to see where a slow policy
        // spends its time.
        if std::env::var_os("OPAMP_GATEWAY_POLICY_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if cfg.cache {
            // A cache that cannot be set up (read-only or missing home
            // directory in a container, say) costs start-up time, not
            // correctness: run without it.
            match cache(cfg) {
                Ok(c) => {
                    config.cache(Some(c));
                }
                Err(e) => {
                    tracing::warn!(error = %one_line(&format!("{e:#}")), "policy compile cache unavailable; compiling without it")
                }
            }
        }
        let engine = Engine::new(&config).map_err(|e| engine_err("engine", e))?;

        let mut linker = Linker::new(&engine);
        // The denying WASI context (see `sandbox`) backs these: Rust's std
        // for wasm32-wasip2 imports them even when a policy never uses them.
        super::sandbox::add_wasi_to_linker(&mut linker).map_err(|e| engine_err("wasi", e))?;
        super::versions::add_to_linker(&mut linker).map_err(|e| engine_err("host interface", e))?;

        // Without the ticker no deadline would fire, and without the refill
        // thread no failed instance would be replaced: refuse to start.
        let ticker = Arc::new(EpochTicker::start(engine.clone())?);
        let refiller = Arc::new(Refiller::start()?);
        Ok(Self { engine, linker: Arc::new(linker), ticker, refiller, states: Arc::default() })
    }
}

fn cache(cfg: &PoliciesConfig) -> wasmtime::Result<Cache> {
    let mut c = CacheConfig::new();
    if let Some(dir) = &cfg.cache_dir {
        // wasmtime wants an absolute path.
        let dir = if dir.is_absolute() {
            dir.clone()
        } else {
            std::env::current_dir().map(|cwd| cwd.join(dir)).unwrap_or_else(|_| PathBuf::from(dir))
        };
        // wasmtime's cache fails quietly on write; find out now, so the
        // operator sees one warning instead of silent recompiles.
        probe_writable(&dir).map_err(|e| wasmtime::Error::msg(format!("{}: cannot write: {e}", dir.display())))?;
        c.with_directory(dir);
    }
    Cache::new(c)
}

/// Creates `dir` if needed and writes (then removes) a small file in it.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".opamp-gateway-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

/// A thread that advances the engine's epoch every [`TICK`] while any
/// instance pool exists, and parks otherwise (a gateway without policies
/// pays no wake-ups). Stops when the last holder drops it.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    /// Always `Some` until dropped.
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    stop: AtomicBool,
    /// Live [`TickerLease`]s: pools whose instances may be running.
    leases: AtomicUsize,
}

/// Keeps the ticker ticking; held by each instance pool.
pub(crate) struct TickerLease {
    ticker: Arc<EpochTicker>,
}

impl Drop for TickerLease {
    fn drop(&mut self) {
        self.ticker.shared.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, PolicyError> {
        let shared = Arc::new(TickerShared { stop: AtomicBool::new(false), leases: AtomicUsize::new(0) });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Acquire) {
                    if s.leases.load(Ordering::Acquire) == 0 {
                        // Woken by `lease` or `drop`; the timeout is a backstop.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PolicyError::Engine(format!("could not start the policy epoch ticker thread: {e}")))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Makes the ticker tick until the lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>) -> TickerLease {
        if self.shared.leases.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        TickerLease { ticker: self.clone() }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_parks_wakes_and_stops() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = Arc::new(EpochTicker::start(engine).unwrap());
        std::thread::sleep(Duration::from_millis(5)); // parked: no lease
        let a = ticker.lease();
        let b = ticker.lease();
        assert_eq!(ticker.shared.leases.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(ticker.shared.leases.load(Ordering::Acquire), 0);
        // The deadlines themselves are exercised with real components in
        // tests/policy_sandbox.rs. Dropping the last handle joins the thread.
        drop(Arc::into_inner(ticker).expect("no lease left"));
    }
}
