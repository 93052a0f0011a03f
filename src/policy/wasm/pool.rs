//! A small pool of live instances per policy.
//!
//! A wasmtime `Store` is `Send` but not `Sync`: one call at a time. Relay
//! threads take an idle instance, call it and put it back, so two threads
//! calling the same policy do not queue behind one lock.
//!
//! An instance whose call failed in any way (trap, deadline, memory) is
//! dropped, never re-entered: its linear memory may be half-updated, and
//! dropping it returns that memory to the OS (each instance's linear memory
//! is its own mapping, unmapped on drop).
//!
//! Instances are made off the message path: the first at load (so a policy
//! whose `init` fails is refused then), the others, and every replacement
//! for a dropped one, on the engine's refill thread ([`Refiller`]). A call
//! that finds no idle instance waits for one to come back or be made (its
//! tokio worker is handed to another thread meanwhile): it never runs
//! `init` itself. The pool holds `target` instances (`policies.instances`,
//! at least `policies.concurrency`, so the gate's callers rarely wait).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::v3::opamp_gateway::policy::types::Hooks as WitHooks;
use super::engine::{Budget, PolicyEngine};
use super::error::PolicyError;
use super::sandbox::{GuestLog, HostState};
use super::versions::{Bindings, Pre};
use crate::policy::state::StateStore;
use crate::policy::{HookError, Hooks};
use crate::telemetry::metrics as m;

/// One live instance and the store it lives in.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub bindings: Bindings,
}

pub(crate) struct InstancePool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    name: Arc<str>,
    pre: Pre,
    engine: PolicyEngine,
    config_text: String,
    memory_limit: u64,
    /// Instances the pool keeps alive.
    target: usize,
    call_timeout: Duration,
    init_timeout: Duration,
    /// The log budget all instances share.
    guest: Arc<GuestLog>,
    /// The policy's shared state store (WIT 0.3.0 `host.state-*`).
    state: Arc<StateStore>,
    slots: Mutex<Slots>,
    /// Signalled when an instance is returned or made, or a refill failed.
    ready: Condvar,
}

struct Slots {
    idle: Vec<Instance>,
    /// Instances that exist or are being made: idle, in a call, or queued
    /// for the refill thread. At most `target`.
    live: usize,
    /// Refills that failed so far (a waiter gives up on a new one).
    failed_refills: u64,
    last_refill_error: String,
}

/// `init` answered with an error: the policy refuses its config.
#[derive(Debug)]
pub(crate) enum InitFailure {
    Refused(String),
    Failed(HookError),
}

impl std::fmt::Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitFailure::Refused(reason) => write!(f, "the policy refused its config: {reason}"),
            InitFailure::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl InstancePool {
    /// Creates the pool with its first instance (so a policy whose `init`
    /// fails is refused at load) and returns the hooks it announced. The
    /// other instances are made on the refill thread.
    pub(crate) fn new(
        name: Arc<str>,
        pre: Pre,
        engine: PolicyEngine,
        config_text: String,
        budget: Budget,
        state: Arc<StateStore>,
    ) -> Result<(Self, Hooks), InitFailure> {
        let inner = Arc::new(PoolInner {
            name: name.clone(),
            pre,
            engine,
            config_text,
            memory_limit: budget.memory_limit,
            target: budget.instances.max(1),
            call_timeout: budget.call_timeout,
            init_timeout: budget.init_timeout,
            guest: GuestLog::new(name.clone(), budget.log_lines, budget.log_interval),
            state,
            slots: Mutex::new(Slots { idle: Vec::new(), live: 0, failed_refills: 0, last_refill_error: String::new() }),
            ready: Condvar::new(),
        });
        let (first, hooks) = inner.instantiate()?;
        {
            let mut slots = inner.slots.lock();
            slots.idle.push(first);
            slots.live = 1;
        }
        inner.top_up();
        Ok((Self { inner }, hooks))
    }

    /// The compiled, type-checked component (cheap to clone).
    pub(crate) fn pre(&self) -> Pre {
        self.inner.pre.clone()
    }

    /// Idle instances right now (for tests and diagnostics).
    pub(crate) fn idle(&self) -> usize {
        self.inner.slots.lock().idle.len()
    }

    /// Instances alive or being made (at most the pool's target).
    pub(crate) fn live(&self) -> usize {
        self.inner.slots.lock().live
    }

    /// Runs one hook call on an idle instance within the call deadline. A
    /// failed instance is discarded (and replaced off the message path).
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &Bindings) -> wasmtime::Result<R>,
    ) -> Result<R, HookError> {
        // A host function may panic under a guest's control: wasmtime-wasi's
        // synchronous bindings bridge some WASI calls (stdio streams, poll)
        // with `block_on`, which panics on an async runtime's thread. A policy
        // must never take a gateway thread down with it, so such a call is a
        // trap like any other and its instance is discarded.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call_inner(f))) {
            Ok(r) => r,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                Err(HookError::Trap(format!("a host call panicked: {why}")))
            }
        }
    }
}

/// An instance taken from the pool; dropped without [`Taken::give_back`]
/// (a failed call, a panic) it is discarded and replaced.
struct Taken<'a> {
    pool: &'a Arc<PoolInner>,
    inst: Option<Instance>,
}

impl Taken<'_> {
    fn give_back(mut self) {
        if let Some(i) = self.inst.take() {
            self.pool.slots.lock().idle.push(i);
            self.pool.ready.notify_one();
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.inst.take() {
            drop(i);
            self.pool.slots.lock().live -= 1;
            self.pool.top_up();
        }
    }
}

impl PoolInner {
    /// A new instance, initialised with the policy's config.
    fn instantiate(&self) -> Result<(Instance, Hooks), InitFailure> {
        let mut store =
            Store::new(&self.engine.engine, HostState::new(self.guest.clone(), self.state.clone(), self.memory_limit));
        store.limiter(|s| &mut s.limiter);
        let name = self.name.clone();
        store.epoch_deadline_callback(move |mut s| {
            let clock = &mut s.data_mut().clock;
            let update = clock.on_tick();
            // Not for `init` (never on the relay's path), nor a call this
            // tick ends anyway.
            if clock.overran() && clock.is_hook_call() && !matches!(update, UpdateDeadline::Interrupt) {
                if let Some(waited) = release_worker() {
                    clock.exclude(waited);
                    metrics::counter!(m::POLICY_HANDOFFS, "policy" => name.to_string()).increment(1);
                }
            }
            Ok(update)
        });
        // Deadlines fire only while the ticker knows a call runs.
        let _running = self.engine.ticker.running();
        store.data_mut().begin_call(self.init_timeout, false);
        store.set_epoch_deadline(1);
        let bindings = match self.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return Err(InitFailure::Failed(classify(e, store.data_mut()))),
        };
        let answer = match &bindings {
            Bindings::V2(b) => {
                b.opamp_gateway_policy_policy().call_init(&mut store, &self.config_text).map(|r| r.map(WitHooks::from))
            }
            Bindings::V3(b) => b.opamp_gateway_policy_policy().call_init(&mut store, &self.config_text),
        };
        match answer {
            Ok(Ok(hooks)) => {
                store.data_mut().log_output();
                Ok((Instance { store, bindings }, convert_hooks(hooks)))
            }
            Ok(Err(reason)) => Err(InitFailure::Refused(reason)),
            Err(e) => Err(InitFailure::Failed(classify(e, store.data_mut()))),
        }
    }

    /// Asks the refill thread for the instances missing from the target.
    fn top_up(self: &Arc<Self>) {
        let missing = {
            let mut slots = self.slots.lock();
            let n = self.target.saturating_sub(slots.live);
            slots.live += n;
            n
        };
        for _ in 0..missing {
            self.engine.refiller.request(Arc::downgrade(self));
        }
    }

    /// Makes one instance for the pool (on the refill thread).
    fn refill(&self) {
        let made = self.instantiate();
        let mut slots = self.slots.lock();
        match made {
            Ok((inst, _)) => slots.idle.push(inst),
            Err(e) => {
                slots.live -= 1;
                slots.failed_refills += 1;
                slots.last_refill_error = e.to_string();
                tracing::warn!(policy = &*self.name, error = %e, "could not make a new policy instance");
            }
        }
        drop(slots);
        self.ready.notify_all();
    }

    /// An idle instance, waiting for one if every instance is busy or
    /// being made. Never instantiates on the caller's thread.
    fn take(self: &Arc<Self>) -> Result<Taken<'_>, HookError> {
        let mut slots = self.slots.lock();
        if let Some(i) = slots.idle.pop() {
            return Ok(Taken { pool: self, inst: Some(i) });
        }
        let failures = slots.failed_refills;
        drop(slots);
        // A refill that failed earlier left the pool short: ask again.
        self.top_up();
        off_runtime(|| {
            let mut slots = self.slots.lock();
            loop {
                if let Some(i) = slots.idle.pop() {
                    return Ok(Taken { pool: self, inst: Some(i) });
                }
                if slots.failed_refills != failures {
                    return Err(HookError::Trap(format!("no instance: {}", slots.last_refill_error)));
                }
                self.ready.wait(&mut slots);
            }
        })
    }

    fn call_inner<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store<HostState>, &Bindings) -> wasmtime::Result<R>,
    ) -> Result<R, HookError> {
        let mut taken = self.take()?;
        let inst = taken.inst.as_mut().expect("taken holds its instance until given back");
        let _running = self.engine.ticker.running();
        inst.store.data_mut().begin_call(self.call_timeout, true);
        // One tick ahead: the clock is only read if a tick lands mid-call.
        inst.store.set_epoch_deadline(1);
        match f(&mut inst.store, &inst.bindings) {
            Ok(v) => {
                inst.store.data_mut().log_output();
                taken.give_back();
                Ok(v)
            }
            // `taken` drops the instance: never re-entered.
            Err(e) => Err(classify(e, inst.store.data_mut())),
        }
    }
}

/// Runs `f`, which may block, without holding up a tokio worker: on a
/// multi-threaded runtime's worker the worker's other tasks move to
/// another thread first. Elsewhere (plain threads, a current-thread
/// runtime in tests) it just runs.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    if on_multi_thread_runtime() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn on_multi_thread_runtime() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Called from inside a hook call still running a tick after its first
/// (a normal call takes microseconds), which may spin on to its deadline.
/// Calls run inline on a tokio worker, and some of that worker's tasks
/// cannot be taken by the others while it is busy: the one in its LIFO slot
/// (woken last, often the link writer a session just handed a frame) and
/// those whose wake-up it deferred (a link writer that yielded to batch its
/// writes). Left there, every agent on that link would wait out the call.
/// `block_in_place` wakes the deferred, queues the LIFO task where it can
/// be stolen, and offers the worker to another thread; the call finishes
/// on this one. A probe task, spawned from here, wakes an idle worker; the
/// wait for it to run gives the thread time to take the worker over (with
/// one worker, the only way the relay keeps moving), up to [`HANDOFF_WAIT`]
/// on a runtime too busy to answer, whose workers are looking for work
/// anyway. Returns how long it waited, or `None` where there is no relay
/// worker to release (the `policy check` command, a current-thread runtime)
/// or tokio refused (a `LocalSet` on a runtime's `block_on` thread).
fn release_worker() -> Option<Duration> {
    if !on_multi_thread_runtime() {
        return None;
    }
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Handle::current();
    // With one worker the probe runs only once the new thread has taken the
    // worker over; given up on sooner, this thread takes the worker back and
    // the relay stands still for the rest of the call. Starting a thread
    // can take longer than `HANDOFF_WAIT` in a busy process (a test binary
    // making instances beside it was seen to).
    let wait = if runtime.metrics().num_workers() == 1 { HANDOFF_WAIT_ONE_WORKER } else { HANDOFF_WAIT };
    let handed = std::panic::catch_unwind(|| {
        tokio::task::block_in_place(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(wait);
        })
    });
    handed.ok().map(|()| started.elapsed())
}

/// The longest [`release_worker`] waits for a worker to be awake.
const HANDOFF_WAIT: Duration = Duration::from_millis(5);

/// The same with one worker, the only one the relay has: the wait ends as
/// soon as the hand-over does, and until then nothing else runs anyway.
const HANDOFF_WAIT_ONE_WORKER: Duration = Duration::from_millis(100);

/// The thread that makes instances for every pool of an engine, so no
/// `init` runs on a message's path. Stops when the engine is dropped.
pub(crate) struct Refiller {
    tx: Sender<Weak<PoolInner>>,
}

impl Refiller {
    pub(crate) fn start() -> Result<Self, PolicyError> {
        let (tx, rx): (Sender<Weak<PoolInner>>, Receiver<Weak<PoolInner>>) = mpsc::channel();
        std::thread::Builder::new()
            .name("policy-refill".into())
            .spawn(move || {
                // A pool dropped meanwhile (its policy unloaded) is skipped.
                while let Ok(pool) = rx.recv() {
                    if let Some(pool) = pool.upgrade() {
                        pool.refill();
                    }
                }
            })
            .map_err(|e| PolicyError::Engine(format!("could not start the policy refill thread: {e}")))?;
        Ok(Self { tx })
    }

    fn request(&self, pool: Weak<PoolInner>) {
        // The thread only ends when this sender is dropped.
        let _ = self.tx.send(pool);
    }
}

fn convert_hooks(h: WitHooks) -> Hooks {
    Hooks {
        assign: h.contains(WitHooks::ASSIGN),
        forward_headers: h.contains(WitHooks::FORWARD_HEADERS),
        filter_agent_to_server: h.contains(WitHooks::FILTER_AGENT_TO_SERVER),
        filter_server_to_agent: h.contains(WitHooks::FILTER_SERVER_TO_AGENT),
        admit: h.contains(WitHooks::ADMIT),
        lifecycle: h.contains(WitHooks::LIFECYCLE),
    }
}

/// Turns a failed call into a [`HookError`], with what the guest printed
/// (a Rust panic message, typically) appended to a trap.
pub(crate) fn classify(err: wasmtime::Error, state: &mut HostState) -> HookError {
    let output = state.take_output();
    let trap = err.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return HookError::Timeout;
    }
    if state.limiter.hit {
        return HookError::Memory;
    }
    let mut msg = match trap {
        Some(t) => t.to_string(),
        None => format!("{err:#}"),
    };
    if let Some(out) = output {
        let text: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note:")).collect();
        if !text.is_empty() {
            msg.push_str(" (guest output: ");
            msg.push_str(&text.join(" "));
            msg.push(')');
        }
    }
    super::sandbox::truncate(&mut msg, 1024);
    HookError::Trap(msg)
}
