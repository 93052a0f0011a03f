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

/// A thread that advances the engine's epoch every [`TICK`] while hook
/// calls (or `init`s) run, and sleeps once none has started for
/// [`QUIET_TICKS`] ticks: a gateway whose policies are not being called
/// (no policy, or filters that skip the messages going by) pays no
/// wake-ups. Stops when the last holder drops it.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    /// Always `Some` until dropped.
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    stop: AtomicBool,
    /// Calls in flight, each counted by a [`Running`].
    active: AtomicUsize,
    /// A call started since the ticker last looked: most calls end between
    /// two ticks, so `active` alone would miss them.
    started: AtomicBool,
    /// The ticker is asleep, or about to be: a starting call wakes it.
    sleeping: AtomicBool,
}

/// Ticks without a call before the ticker sleeps. Long enough that a steady
/// trickle of calls does not pay a wake-up each.
const QUIET_TICKS: u32 = 100;

/// How long the sleeping ticker waits before it looks again on its own. A
/// starting call always wakes it; this only bounds the damage of a missed
/// wake, and is long enough that a test would see one.
const SLEEP_BACKSTOP: Duration = Duration::from_secs(5);

/// Held for the length of one call into a guest, so its deadline can fire.
pub(crate) struct Running<'a> {
    ticker: &'a EpochTicker,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.ticker.shared.active.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, PolicyError> {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                let mut quiet = 0u32;
                while !s.stop.load(Ordering::Acquire) {
                    let busy = s.active.load(Ordering::SeqCst) > 0 || s.started.swap(false, Ordering::AcqRel);
                    quiet = if busy { 0 } else { quiet.saturating_add(1) };
                    if quiet > QUIET_TICKS {
                        // Paired with `running`: either it sees `sleeping`
                        // and wakes this thread, or this sees its call.
                        s.sleeping.store(true, Ordering::SeqCst);
                        if s.active.load(Ordering::SeqCst) == 0 {
                            std::thread::park_timeout(SLEEP_BACKSTOP);
                        }
                        s.sleeping.store(false, Ordering::SeqCst);
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PolicyError::Engine(format!("could not start the policy epoch ticker thread: {e}")))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Marks a call into a guest as running until the guard drops, waking
    /// the ticker if it sleeps: the call's deadline is one tick ahead.
    pub(crate) fn running(&self) -> Running<'_> {
        let s = &self.shared;
        s.active.fetch_add(1, Ordering::SeqCst);
        // A plain load first: under load the flag is already set, and the
        // line stays shared instead of bouncing between relay threads.
        if !s.started.load(Ordering::Relaxed) {
            s.started.store(true, Ordering::Release);
        }
        if s.sleeping.load(Ordering::SeqCst) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        Running { ticker: self }
    }

    /// The ticker is asleep (for tests).
    #[cfg(test)]
    fn is_asleep(&self) -> bool {
        self.shared.sleeping.load(Ordering::SeqCst)
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
    fn the_ticker_sleeps_when_no_call_runs_and_wakes_for_one() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = Arc::new(EpochTicker::start(engine).unwrap());
        let asleep = |t: &EpochTicker| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !t.is_asleep() {
                assert!(std::time::Instant::now() < deadline, "the ticker never went to sleep");
                std::thread::sleep(TICK);
            }
        };
        asleep(&ticker);
        // A call in flight wakes it and keeps it ticking past the quiet
        // period, so the call's deadline can fire.
        let call = ticker.running();
        // Well inside the backstop: only the call's own wake-up counts.
        let deadline = std::time::Instant::now() + SLEEP_BACKSTOP / 2;
        while ticker.is_asleep() {
            assert!(std::time::Instant::now() < deadline, "a starting call did not wake the ticker");
            std::thread::sleep(TICK);
        }
        let woke = std::time::Instant::now();
        while woke.elapsed() < TICK * (QUIET_TICKS + 50) {
            assert!(!ticker.is_asleep(), "asleep with a call in flight");
            std::thread::sleep(TICK);
        }
        drop(call);
        asleep(&ticker);
        // Dropping the last handle joins the thread, asleep or not. The
        // deadlines themselves are exercised with real components in
        // tests/policy_sandbox.rs.
        drop(Arc::into_inner(ticker).expect("no other handle"));
    }
}
