//! A small pool of live instances per policy.
//!
//! A wasmtime `Store` is `Send` but not `Sync`: one call at a time. Relay
//! threads take an idle instance, call it and put it back, so two threads
//! calling the same policy do not queue behind one lock. When none is idle a
//! fresh instance is made (instantiate + `init`, tens of microseconds) and
//! kept afterwards if the pool has room.
//!
//! An instance whose call failed in any way (trap, deadline, memory) is
//! dropped, never re-entered: its linear memory may be half-updated. The
//! next call gets a fresh one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::{Store, Trap};

use super::bindings::opamp_gateway::policy::types::Hooks as WitHooks;
use super::bindings::{GatewayPolicy, GatewayPolicyPre};
use super::engine::{Budget, PolicyEngine, TickerLease};
use super::sandbox::{GuestLog, HostState};
use crate::policy::{HookError, Hooks};

/// One live instance and the store it lives in.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub bindings: GatewayPolicy,
}

pub(crate) struct InstancePool {
    name: Arc<str>,
    pre: GatewayPolicyPre<HostState>,
    engine: PolicyEngine,
    config_text: String,
    memory_limit: u64,
    max_idle: usize,
    call_timeout: Duration,
    init_timeout: Duration,
    /// The log budget all instances share.
    guest: Arc<GuestLog>,
    idle: Mutex<Vec<Instance>>,
    /// Keeps deadlines firing while this pool's instances may run.
    _lease: TickerLease,
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
    /// fails is refused at load) and returns the hooks it announced.
    pub fn new(
        name: Arc<str>,
        pre: GatewayPolicyPre<HostState>,
        engine: PolicyEngine,
        config_text: String,
        budget: Budget,
    ) -> Result<(Self, Hooks), InitFailure> {
        let pool = Self {
            name: name.clone(),
            pre,
            _lease: engine.ticker.lease(),
            engine,
            config_text,
            memory_limit: budget.memory_limit,
            max_idle: budget.instances.max(1),
            call_timeout: budget.call_timeout,
            init_timeout: budget.init_timeout,
            guest: GuestLog::new(name.clone(), budget.log_lines, budget.log_interval),
            idle: Mutex::new(Vec::new()),
        };
        let (first, hooks) = pool.instantiate()?;
        pool.lock().push(first);
        Ok((pool, hooks))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Instance>> {
        // A panic while holding this lock can only come from Vec::push/pop;
        // the Vec is still consistent, so poisoning is ignored.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled, type-checked component (cheap to clone).
    pub fn pre(&self) -> GatewayPolicyPre<HostState> {
        self.pre.clone()
    }

    /// Idle instances right now (for tests and diagnostics).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// A new instance, initialised with the policy's config.
    fn instantiate(&self) -> Result<(Instance, Hooks), InitFailure> {
        let mut store = Store::new(&self.engine.engine, HostState::new(self.guest.clone(), self.memory_limit));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut s| Ok(s.data_mut().clock.on_tick()));
        store.data_mut().begin_call(self.init_timeout);
        store.set_epoch_deadline(1);
        let bindings = match self.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return Err(InitFailure::Failed(classify(e, store.data_mut()))),
        };
        let answer = bindings.opamp_gateway_policy_policy().call_init(&mut store, &self.config_text);
        match answer {
            Ok(Ok(hooks)) => {
                log_output(&self.name, store.data_mut());
                Ok((Instance { store, bindings }, convert_hooks(hooks)))
            }
            Ok(Err(reason)) => Err(InitFailure::Refused(reason)),
            Err(e) => Err(InitFailure::Failed(classify(e, store.data_mut()))),
        }
    }

    /// Runs one hook call on an idle (or fresh) instance within the call
    /// deadline. A failed instance is discarded.
    pub fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &GatewayPolicy) -> wasmtime::Result<R>,
    ) -> Result<R, HookError> {
        // A host function may panic under a guest's control: wasmtime-wasi's
        // synchronous bindings bridge some WASI calls (stdio streams, poll)
        // with `block_on`, which panics on an async runtime's thread. A policy
        // must never take a gateway thread down with it, so such a call is a
        // trap like any other and its instance is discarded.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.call_inner(f))) {
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

    fn call_inner<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &GatewayPolicy) -> wasmtime::Result<R>,
    ) -> Result<R, HookError> {
        let idle = self.lock().pop();
        let mut inst = match idle {
            Some(i) => i,
            None => match self.instantiate() {
                Ok((i, _)) => i,
                Err(InitFailure::Failed(e)) => return Err(e),
                Err(InitFailure::Refused(r)) => {
                    return Err(HookError::Trap(format!("init of a new instance failed: {r}")))
                }
            },
        };
        inst.store.data_mut().begin_call(self.call_timeout);
        // One tick ahead: the clock is only read if a tick lands mid-call.
        inst.store.set_epoch_deadline(1);
        match f(&mut inst.store, &inst.bindings) {
            Ok(v) => {
                log_output(&self.name, inst.store.data_mut());
                let mut idle = self.lock();
                if idle.len() < self.max_idle {
                    idle.push(inst);
                }
                Ok(v)
            }
            // `inst` is dropped here: never re-entered.
            Err(e) => Err(classify(e, inst.store.data_mut())),
        }
    }
}

fn convert_hooks(h: WitHooks) -> Hooks {
    Hooks {
        assign: h.contains(WitHooks::ASSIGN),
        forward_headers: h.contains(WitHooks::FORWARD_HEADERS),
        filter_agent_to_server: h.contains(WitHooks::FILTER_AGENT_TO_SERVER),
        filter_server_to_agent: h.contains(WitHooks::FILTER_SERVER_TO_AGENT),
    }
}

/// Logs what a healthy call printed (policies should use `host.log`, but a
/// stray `println!` should not vanish).
fn log_output(_name: &str, state: &mut HostState) {
    state.log_output();
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
