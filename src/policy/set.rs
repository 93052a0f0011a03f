//! The policy chain and its atomically swappable holder.
//!
//! Chain rules (first to last, in file-name order):
//! - `assign`: the first policy with a valid opinion wins. An answer naming a
//!   missing upstream, or a missing or disconnected link, counts as no
//!   opinion (and is counted).
//! - `forward-headers`: each policy transforms the previous one's output.
//! - `filter`: each policy that announced the message's direction sees the
//!   previous one's output; `Drop` and `Close` stop the chain.
//! - `admit`: the first rejection wins (an invalid one is a failure).
//! - `on-connect`/`on-disconnect`: see `lifecycle`.
//!
//! A `mode: shadow` policy is called as usual but its verdicts are only
//! counted (`opampgateway_policy_shadow_verdicts_total`) and logged at
//! debug; its failures never block anything (always fail-open).
//!
//! A failing policy is skipped (fail-open) or blocks the traffic it judged
//! (fail-closed), per its [`FailureMode`]. Nothing here can panic the relay.
//!
//! Containment: each policy has a circuit [`Breaker`]; while it is
//! quarantined the chain applies its `on_error` without calling it. The
//! answers are capped ([`PolicyLimits`]): forwarded headers by count and
//! bytes, a replacement by the receiving side's `max_message_size`; over a
//! cap the answer is invalid. Failure warnings are rate-limited per policy
//! (the error counter carries the volume). A policy's breaker and log limit
//! follow it into the next set while it is reused unchanged.
//!
//! Concurrency: [`Policies`] runs the relay's calls through its [`Gate`]
//! (`policies.concurrency` chains at once, gateway-wide; `policies.queue`
//! may wait; a call beyond is shed: each policy fails as `overloaded`).
//! The `PolicySet` methods themselves are synchronous and ungated, for
//! tests, benchmarks and `policy check`.
//!
//! Every call is counted and timed. The metric handles are resolved once per
//! policy and hook, on first use (by then the gateway's recorder is
//! installed), so the per-call cost is two atomic updates rather than a
//! label hash-and-lookup with fresh `String`s.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::breaker::{Admit, Breaker, Clock, SystemClock};
use super::config::{BreakerConfig, PoliciesConfig, PolicyLimits};
use super::filter_fields::{self, FieldSet};
use super::gate::{Gate, Turn};
use super::lifecycle::{AdmitTicket, Job, Lifecycle};
use super::throttle::Throttle;
use super::verdict::check_header;
use super::{
    AdmitVerdict, AssignInput, Direction, FailureMode, HeaderList, HookError, Hooks, Mode, Policy, Rejection, Route,
    SessionEvent, Verdict, MAX_REJECTION_BODY,
};
use crate::telemetry::metrics as m;

/// What a set needs besides its policies: breaker defaults, answer caps,
/// the clock breakers and log limits read, and the [`Gate`]'s size.
#[derive(Clone)]
pub struct Containment {
    pub quarantine: BreakerConfig,
    pub limits: PolicyLimits,
    pub clock: Arc<dyn Clock>,
    /// `policies.concurrency`, resolved.
    pub concurrency: usize,
    /// `policies.queue`.
    pub queue: usize,
}

impl Default for Containment {
    fn default() -> Self {
        let cfg = PoliciesConfig::default();
        Self {
            quarantine: BreakerConfig::default(),
            limits: PolicyLimits::default(),
            clock: Arc::new(SystemClock),
            concurrency: cfg.concurrency(),
            queue: cfg.queue,
        }
    }
}

impl Containment {
    pub fn from_config(cfg: &PoliciesConfig) -> Self {
        Self {
            quarantine: cfg.quarantine,
            limits: cfg.limits.clone(),
            concurrency: cfg.concurrency(),
            queue: cfg.queue,
            ..Self::default()
        }
    }
}

/// An ordered, immutable set of policies. Cheap to share; swapped whole.
pub struct PolicySet {
    policies: Vec<Entry>,
    /// Positions in `policies` of the filters for each direction (indexed by
    /// [`Direction::index`]), so the per-message path visits only those.
    filter_chains: [Vec<usize>; 2],
    /// Per direction, the top-level fields that get some filter in the
    /// chain called (0: no filter), or `None` when one is called for every
    /// message. Asked for every message, so worked out once per set.
    filter_wants: [Option<FieldSet>; 2],
    limits: PolicyLimits,
}

/// One policy of a set, with its metric handles.
struct Entry {
    policy: Arc<dyn Policy>,
    /// `policy.hooks()`, asked once.
    hooks: Hooks,
    guard: Arc<Guard>,
    /// Indexed by [`Hook`].
    instruments: [OnceLock<Instruments>; 6],
    /// `mode: shadow`.
    shadow: bool,
}

/// Per-policy state that outlives a set while the policy is reused.
struct Guard {
    breaker: Breaker,
    /// Limits the `policy call failed` warnings.
    failures: Throttle,
    clock: Arc<dyn Clock>,
}

impl Guard {
    fn new(policy: &dyn Policy, c: &Containment) -> Arc<Self> {
        let cfg = policy.quarantine().unwrap_or(c.quarantine);
        Arc::new(Self {
            breaker: Breaker::new(policy.name().into(), cfg, c.clock.clone()),
            failures: Throttle::new(1, c.limits.log_interval),
            clock: c.clock.clone(),
        })
    }
}

struct Instruments {
    calls: metrics::Counter,
    seconds: metrics::Histogram,
    skipped: metrics::Counter,
}

#[derive(Clone, Copy)]
enum Hook {
    Assign = 0,
    ForwardHeaders = 1,
    Filter = 2,
    Admit = 3,
    OnConnect = 4,
    OnDisconnect = 5,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Hook::Assign => "assign",
            Hook::ForwardHeaders => "forward_headers",
            Hook::Filter => "filter",
            Hook::Admit => "admit",
            Hook::OnConnect => "on_connect",
            Hook::OnDisconnect => "on_disconnect",
        }
    }
}

impl Entry {
    fn new(policy: Arc<dyn Policy>, c: &Containment) -> Self {
        Self {
            hooks: policy.hooks(),
            guard: Guard::new(policy.as_ref(), c),
            shadow: policy.mode() == Mode::Shadow,
            policy,
            instruments: Default::default(),
        }
    }

    /// Counts (and logs at debug) a shadow policy's verdict.
    fn shadowed(&self, hook: Hook, verdict: &'static str) {
        let name = self.policy.name();
        metrics::counter!(m::POLICY_SHADOW_VERDICTS, "policy" => name.to_owned(), "hook" => hook.label(), "verdict" => verdict)
            .increment(1);
        tracing::debug!(policy = name, hook = hook.label(), verdict, "shadow verdict (not applied)");
    }

    fn instruments(&self, hook: Hook) -> &Instruments {
        self.instruments[hook as usize].get_or_init(|| {
            let name = self.policy.name().to_owned();
            Instruments {
                calls: metrics::counter!(m::POLICY_CALLS, "policy" => name.clone(), "hook" => hook.label()),
                seconds: metrics::histogram!(m::POLICY_CALL_SECONDS, "policy" => name.clone(), "hook" => hook.label()),
                skipped: metrics::counter!(m::POLICY_SKIPPED, "policy" => name, "hook" => hook.label()),
            }
        })
    }

    /// Runs one hook call (the call and the check of its answer) through
    /// the breaker, counted and timed. A quarantined policy is not called,
    /// nor is any when the call was shed.
    fn call<T>(
        &self,
        hook: Hook,
        shed: bool,
        call: impl FnOnce(&dyn Policy) -> Result<T, HookError>,
    ) -> Result<T, HookError> {
        if shed {
            // Not the policy's doing: its breaker does not hear of it.
            return Err(HookError::Overloaded);
        }
        let admit = self.guard.breaker.admit();
        if admit == Admit::Quarantined {
            self.instruments(hook).skipped.increment(1);
            return Err(HookError::Quarantined);
        }
        let start = Instant::now();
        let out = call(self.policy.as_ref());
        let i = self.instruments(hook);
        i.calls.increment(1);
        i.seconds.record(start.elapsed().as_secs_f64());
        self.guard.breaker.record(admit, out.is_ok());
        out
    }
}

/// The relay's view of the current [`PolicySet`]. A caller takes a snapshot
/// for the duration of one decision, so a swap never changes the rules under
/// an in-flight call.
pub struct Policies {
    current: Arc<ArcSwap<PolicySet>>,
    containment: Containment,
    gate: Gate,
    lifecycle: Arc<Lifecycle>,
}

/// Outcome of the `admit` phase.
#[derive(Debug)]
pub struct AdmitOutcome {
    /// Hand it to the session (or drop it: the agent got none).
    pub ticket: AdmitTicket,
    /// A policy refused the agent with this answer.
    pub rejection: Option<Rejection>,
}

/// Outcome of the `assign` phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignDecision {
    /// `upstream` indexes [`AssignInput::upstreams`]; `link` is a connected
    /// link of it, or `None` for its least-loaded one.
    Route { upstream: usize, link: Option<u32> },
    /// No policy had an opinion: the default upstream, least-connections.
    Default,
}

/// Why an `assign` answer cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unusable {
    NoSuchUpstream,
    NoSuchLink,
    Down,
}

/// Checks a policy's route against what it was shown. An upstream with no
/// connected link is still a valid choice: the policy saw that, and the
/// relay answers 503 (or keeps a moving agent where it is).
fn resolve(input: &AssignInput<'_>, route: &Route) -> Result<AssignDecision, Unusable> {
    let upstream = match &route.upstream {
        None => 0,
        Some(name) => input.upstreams.iter().position(|u| u.name == *name).ok_or(Unusable::NoSuchUpstream)?,
    };
    let links = input.upstreams.get(upstream).map_or(&[][..], |u| &u.links);
    match route.link {
        None => Ok(AssignDecision::Route { upstream, link: None }),
        Some(index) => match links.iter().find(|l| l.index == index) {
            None => Err(Unusable::NoSuchLink),
            Some(l) if !l.connected => Err(Unusable::Down),
            Some(_) => Ok(AssignDecision::Route { upstream, link: Some(index) }),
        },
    }
}

/// Outcome of the `filter` phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOutcome {
    /// Forward these bytes (the original unless a policy replaced them).
    Forward(Bytes),
    Drop,
    Close,
}

/// A fail-closed policy failed: the agent is refused (503).
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy} failed closed in {hook}: {error}")]
pub struct Refused {
    pub policy: String,
    pub hook: &'static str,
    pub error: HookError,
}

/// No policy: the plain relay.
impl Default for PolicySet {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            filter_chains: Default::default(),
            filter_wants: [Some(0); 2],
            limits: Default::default(),
        }
    }
}

impl PolicySet {
    /// A set with the default [`Containment`].
    pub fn new(policies: Vec<Arc<dyn Policy>>) -> Self {
        Self::with_containment(policies, &Containment::default())
    }

    pub fn with_containment(policies: Vec<Arc<dyn Policy>>, c: &Containment) -> Self {
        let policies: Vec<Entry> = policies.into_iter().map(|p| Entry::new(p, c)).collect();
        let chain = |dir| policies.iter().enumerate().filter(|(_, e)| e.hooks.filters(dir)).map(|(i, _)| i).collect();
        let filter_chains: [Vec<usize>; 2] = [chain(Direction::AgentToServer), chain(Direction::ServerToAgent)];
        let wants = |dir: Direction| {
            filter_chains[dir.index()].iter().try_fold(0, |all, &i| Some(all | policies[i].policy.filter_fields(dir)?))
        };
        let filter_wants = [wants(Direction::AgentToServer), wants(Direction::ServerToAgent)];
        Self { policies, filter_chains, filter_wants, limits: c.limits.clone() }
    }

    /// Takes `c`'s limits, and for each policy `old` also serves (the same
    /// object), its breaker and log limit; the others get fresh ones. The
    /// breakers of `old`'s policies that leave are retired.
    fn adopt(mut self, c: &Containment, old: &PolicySet) -> Self {
        self.limits = c.limits.clone();
        let same = |a: &Arc<dyn Policy>, b: &Arc<dyn Policy>| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b));
        for e in &mut self.policies {
            e.guard = match old.policies.iter().find(|o| same(&o.policy, &e.policy)) {
                Some(o) => o.guard.clone(),
                None => Guard::new(e.policy.as_ref(), c),
            };
        }
        for o in &old.policies {
            if !self.policies.iter().any(|e| Arc::ptr_eq(&e.guard, &o.guard)) {
                o.guard.breaker.retire();
            }
        }
        self
    }

    /// Names of the policies whose breaker has them quarantined now.
    pub fn quarantined(&self) -> Vec<&str> {
        self.policies.iter().filter(|e| e.guard.breaker.is_quarantined()).map(|e| e.policy.name()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|e| e.policy.name())
    }

    /// True when some policy filters messages travelling `dir`; the relay
    /// skips the phase (and any copying for it) otherwise.
    pub fn filters(&self, dir: Direction) -> bool {
        !self.filter_chains[dir.index()].is_empty()
    }

    /// Whether the `dir` filter phase would call a policy for `message`,
    /// or for it with the fields in `added` set too (fields the relay
    /// splices in after asking). False with no `dir` filter at all.
    pub(crate) fn filters_message(&self, dir: Direction, message: &[u8], added: FieldSet) -> bool {
        self.wants(dir, || added | filter_fields::present(message))
    }

    /// Whether the `dir` chain calls some filter for a message with the
    /// fields `present` gives (asked only if some filter declared fields).
    fn wants(&self, dir: Direction, present: impl FnOnce() -> FieldSet) -> bool {
        match self.filter_wants[dir.index()] {
            None => true,
            Some(0) => false,
            Some(wanted) => present() & wanted != 0,
        }
    }

    pub fn assign(&self, input: &AssignInput<'_>) -> Result<AssignDecision, Refused> {
        self.assign_in(input, false)
    }

    fn assign_in(&self, input: &AssignInput<'_>, shed: bool) -> Result<AssignDecision, Refused> {
        for e in self.policies.iter().filter(|e| e.hooks.assign) {
            let answer = e.call(Hook::Assign, shed, |p| p.assign(input));
            if e.shadow {
                match answer {
                    Ok(answer) => e.shadowed(Hook::Assign, if answer.is_some() { "route" } else { "none" }),
                    Err(error) => fail(e, Hook::Assign.label(), error)?,
                }
                continue;
            }
            match answer {
                Ok(None) => {}
                Ok(Some(route)) => match resolve(input, &route) {
                    Ok(decision) => return Ok(decision),
                    Err(why) => {
                        let p = e.policy.as_ref();
                        metrics::counter!(m::POLICY_INVALID_ASSIGN, "policy" => p.name().to_owned()).increment(1);
                        // A link that is down is routine; a name or index
                        // that does not exist is a bug in the policy, worth
                        // a (limited) warning.
                        if why == Unusable::Down {
                            tracing::debug!(policy = p.name(), ?route, "assign named a link that is down; ignored");
                        } else if e.guard.failures.admit(e.guard.clock.now()).is_some() {
                            tracing::warn!(
                                policy = p.name(),
                                ?route,
                                upstreams = ?input.upstreams.iter().map(|u| (&u.name, u.links.len())).collect::<Vec<_>>(),
                                "assign named an upstream or link that does not exist; the next policy or the \
                                 default choice applies (see opampgateway_policy_invalid_assign_total)"
                            );
                        }
                    }
                },
                Err(error) => fail(e, Hook::Assign.label(), error)?,
            }
        }
        Ok(AssignDecision::Default)
    }

    pub fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, Refused> {
        self.forward_headers_in(headers, false)
    }

    /// Each policy is shown what the one before it answered. Nothing is
    /// copied for a policy: only its answer is new, and the agent's own
    /// list once at the end if no policy changed it.
    fn forward_headers_in(&self, agent: &[(String, String)], shed: bool) -> Result<HeaderList, Refused> {
        let mut answered: Option<HeaderList> = None;
        for e in self.policies.iter().filter(|e| e.hooks.forward_headers) {
            let input = answered.as_deref().unwrap_or(agent);
            let limits = &self.limits;
            let call = |p: &dyn Policy| p.forward_headers(input).and_then(|h| check_headers(h, limits));
            match e.call(Hook::ForwardHeaders, shed, call) {
                Ok(out) if e.shadow => {
                    e.shadowed(Hook::ForwardHeaders, if out == input { "unchanged" } else { "changed" })
                }
                Ok(out) => answered = Some(out),
                Err(error) => fail(e, Hook::ForwardHeaders.label(), error)?,
            }
        }
        Ok(answered.unwrap_or_else(|| agent.to_vec()))
    }

    /// `message` is the bare protobuf. Only the policies that announced a
    /// filter for `dir` are called.
    pub fn filter(&self, dir: Direction, uid: &[u8], message: Bytes) -> FilterOutcome {
        self.filter_in(dir, uid, message, false, None)
    }

    /// Whether some policy's `filter` would be called for `message`: one
    /// without `filter_fields`, or wanting one of its fields. If none
    /// would, none replaces it either, so the answer holds for the chain.
    /// `present` keeps the field scan, if one was needed, for `filter_in`.
    fn calls_filter_for(&self, dir: Direction, message: &[u8], present: &mut Option<FieldSet>) -> bool {
        self.wants(dir, || *present.get_or_insert_with(|| filter_fields::present(message)))
    }

    /// `present`: the message's top-level fields, if already scanned.
    fn filter_in(
        &self,
        dir: Direction,
        uid: &[u8],
        message: Bytes,
        shed: bool,
        mut present: Option<FieldSet>,
    ) -> FilterOutcome {
        let mut current = message;
        let max = self.limits.max_replacement[dir.index()];
        // The fields are scanned at most once per message (again after a
        // replacement), and only if some policy declared `filter_fields`.
        for e in self.filter_chains[dir.index()].iter().map(|&i| &self.policies[i]) {
            if let Some(wanted) = e.policy.filter_fields(dir) {
                if *present.get_or_insert_with(|| filter_fields::present(&current)) & wanted == 0 {
                    continue;
                }
            }
            match e.call(Hook::Filter, shed, |p| p.filter(dir, uid, &current).and_then(|v| check_size(v, max, dir))) {
                Ok(v) if e.shadow => e.shadowed(Hook::Filter, verdict_label(&v)),
                Ok(Verdict::Forward) => {}
                Ok(Verdict::Replace(bytes)) => {
                    current = bytes;
                    present = None;
                }
                Ok(Verdict::Drop) => return FilterOutcome::Drop,
                Ok(Verdict::Close) => return FilterOutcome::Close,
                Err(error) => {
                    if fail(e, Hook::Filter.label(), error).is_err() {
                        return FilterOutcome::Drop;
                    }
                }
            }
        }
        FilterOutcome::Forward(current)
    }

    /// The `admit` phase: the first valid rejection wins. Returns the names
    /// of the `admit` + `lifecycle` policies that allowed the agent (they
    /// will hear of its session), and the rejection, if any.
    pub fn admit(&self, input: &AssignInput<'_>) -> Result<(Vec<Arc<str>>, Option<Rejection>), Refused> {
        self.admit_in(input, false)
    }

    fn admit_in(&self, input: &AssignInput<'_>, shed: bool) -> Result<(Vec<Arc<str>>, Option<Rejection>), Refused> {
        let mut admitted = Vec::new();
        for e in self.policies.iter().filter(|e| e.hooks.admit) {
            let answer = e.call(Hook::Admit, shed, |p| p.admit(input).and_then(check_admit));
            let name = e.policy.name();
            match answer {
                Ok(AdmitVerdict::Allow) => {
                    if e.shadow {
                        e.shadowed(Hook::Admit, "allow");
                    } else {
                        metrics::counter!(m::POLICY_ADMISSIONS, "policy" => name.to_owned(), "verdict" => "allow", "status" => "")
                            .increment(1);
                    }
                    if e.hooks.lifecycle {
                        admitted.push(Arc::from(name));
                    }
                }
                Ok(AdmitVerdict::Reject(r)) if e.shadow => {
                    e.shadowed(Hook::Admit, "reject");
                    tracing::debug!(
                        policy = name,
                        status = r.status,
                        remote = input.remote_addr,
                        "shadow admit rejection"
                    );
                }
                Ok(AdmitVerdict::Reject(r)) => {
                    metrics::counter!(m::POLICY_ADMISSIONS, "policy" => name.to_owned(), "verdict" => "reject", "status" => r.status.to_string())
                        .increment(1);
                    return Ok((admitted, Some(r)));
                }
                Err(error) => fail(e, Hook::Admit.label(), error)?,
            }
        }
        Ok((admitted, None))
    }

    /// Whether some policy wants lifecycle events.
    pub fn has_lifecycle(&self) -> bool {
        self.policies.iter().any(|e| e.hooks.lifecycle)
    }

    /// Calls `on-connect`/`on-disconnect` of the policies `job` is for (on
    /// the lifecycle worker).
    pub(crate) fn deliver(&self, job: &Job) {
        self.lifecycle(&job.event, job.reason.as_deref(), &job.admitted);
    }

    /// `on-connect` (`reason` `None`) or `on-disconnect` for `event`, to
    /// the `lifecycle` policies: those that announce `admit` only when named
    /// in `admitted` (the names [`PolicySet::admit`] returned). Failures are
    /// counted and logged, nothing more.
    pub fn lifecycle(&self, event: &SessionEvent, reason: Option<&str>, admitted: &[Arc<str>]) {
        for e in self.policies.iter().filter(|e| e.hooks.lifecycle) {
            let name = e.policy.name();
            let allowed = admitted.iter().any(|a| &**a == name);
            let not_admitted = reason == Some(super::NOT_ADMITTED);
            if (e.hooks.admit || not_admitted) && !allowed {
                continue;
            }
            let (hook, out) = match reason {
                None => (Hook::OnConnect, e.call(Hook::OnConnect, false, |p| p.on_connect(event))),
                Some(r) => (Hook::OnDisconnect, e.call(Hook::OnDisconnect, false, |p| p.on_disconnect(event, r))),
            };
            if let Err(error) = out {
                // Nothing to block: a closed policy's `Err` is moot here.
                let _ = fail(e, hook.label(), error);
            }
        }
    }
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Forward => "forward",
        Verdict::Drop => "drop",
        Verdict::Replace(_) => "replace",
        Verdict::Close => "close",
    }
}

/// Response headers a rejection may not set: the gateway frames the answer.
const FRAMING_HEADERS: [&str; 7] =
    ["connection", "content-length", "content-type", "transfer-encoding", "upgrade", "keep-alive", "te"];

/// A rejection the gateway can send: 4xx/5xx but not 401, valid headers
/// that do not touch framing, a short body.
fn check_admit(v: AdmitVerdict) -> Result<AdmitVerdict, HookError> {
    let AdmitVerdict::Reject(r) = v else { return Ok(v) };
    if !(400..=599).contains(&r.status) || r.status == 401 {
        return Err(HookError::Invalid(format!(
            "admit rejected with status {}: expected 400-599, not 401 (authentication is the server's)",
            r.status
        )));
    }
    if r.body.len() > MAX_REJECTION_BODY {
        return Err(HookError::Invalid(format!(
            "a {}-byte rejection body, more than {MAX_REJECTION_BODY}",
            r.body.len()
        )));
    }
    let mut headers = Vec::with_capacity(r.headers.len());
    for h in r.headers {
        let (name, value) = check_header(h)?;
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(HookError::Invalid(format!("a rejection may not set the `{name}` header")));
        }
        headers.push((name, value));
    }
    Ok(AdmitVerdict::Reject(Rejection { headers, ..r }))
}

/// A `forward-headers` answer within `policies.limits`.
fn check_headers(headers: HeaderList, limits: &PolicyLimits) -> Result<HeaderList, HookError> {
    if headers.len() > limits.max_forwarded_headers {
        return Err(HookError::Invalid(format!(
            "{} headers, more than policies.limits.max_forwarded_headers ({})",
            headers.len(),
            limits.max_forwarded_headers
        )));
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > limits.max_forwarded_header_bytes {
        return Err(HookError::Invalid(format!(
            "{bytes} bytes of headers, more than policies.limits.max_forwarded_header_bytes ({})",
            limits.max_forwarded_header_bytes
        )));
    }
    Ok(headers)
}

/// A replacement no larger than the receiving side accepts.
fn check_size(verdict: Verdict, max: usize, dir: Direction) -> Result<Verdict, HookError> {
    match &verdict {
        Verdict::Replace(b) if b.len() > max => {
            let side = match dir {
                Direction::AgentToServer => "server",
                Direction::ServerToAgent => "listener",
            };
            Err(HookError::Invalid(format!("a {}-byte replacement exceeds {side}.max_message_size ({max})", b.len())))
        }
        _ => Ok(verdict),
    }
}

/// Records a failure; `Err` when the policy fails closed. A quarantined
/// policy's skipped call is neither counted as an error nor logged.
fn fail(e: &Entry, hook: &'static str, error: HookError) -> Result<(), Refused> {
    let p = e.policy.as_ref();
    if !matches!(error, HookError::Quarantined) {
        metrics::counter!(m::POLICY_ERRORS, "policy" => p.name().to_owned(), "hook" => hook, "kind" => error.kind())
            .increment(1);
        if let Some(suppressed) = e.guard.failures.admit(e.guard.clock.now()) {
            let mode = p.failure_mode();
            if suppressed > 0 {
                tracing::warn!(policy = p.name(), hook, %error, ?mode, suppressed, "policy call failed ({suppressed} more failures not logged since the last line; see opampgateway_policy_errors_total)");
            } else {
                tracing::warn!(policy = p.name(), hook, %error, ?mode, "policy call failed");
            }
        }
    }
    match p.failure_mode() {
        FailureMode::Closed if !e.shadow => Err(Refused { policy: p.name().to_owned(), hook, error }),
        _ => Ok(()),
    }
}

impl Policies {
    pub fn new(set: PolicySet) -> Self {
        Self::with_containment(set, Containment::default())
    }

    pub fn with_containment(set: PolicySet, containment: Containment) -> Self {
        let set = set.adopt(&containment, &PolicySet::default());
        let gate = Gate::new(containment.concurrency, containment.queue);
        let current = Arc::new(ArcSwap::from_pointee(set));
        let lifecycle = Lifecycle::new(&current);
        Self { current, containment, gate, lifecycle }
    }

    /// The limit the relay's calls go through.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// [`PolicySet::filter`] in a turn of the [`Gate`] (the relay's path).
    /// A message no policy would be called for (see [`filter_fields`])
    /// passes without taking a turn.
    pub async fn filter(&self, set: &PolicySet, dir: Direction, uid: &[u8], message: Bytes) -> FilterOutcome {
        let mut present = None;
        if !set.calls_filter_for(dir, &message, &mut present) {
            return FilterOutcome::Forward(message);
        }
        let turn = self.gate.enter().await;
        set.filter_in(dir, uid, message, matches!(turn, Turn::Shed), present)
    }

    /// The connect phases, `assign` then `forward-headers`, in one turn of
    /// the [`Gate`].
    pub async fn admit(
        &self,
        set: &PolicySet,
        input: &AssignInput<'_>,
        headers: &[(String, String)],
    ) -> Result<(AssignDecision, HeaderList), Refused> {
        let turn = self.gate.enter().await;
        let shed = matches!(turn, Turn::Shed);
        let decision = set.assign_in(input, shed)?;
        Ok((decision, set.forward_headers_in(headers, shed)?))
    }

    /// The `admit` phase in a turn of the [`Gate`]. `headers`: the agent's,
    /// kept for the lifecycle events.
    pub async fn admission(&self, set: &PolicySet, input: &AssignInput<'_>) -> Result<AdmitOutcome, Refused> {
        if !set.policies.iter().any(|e| e.hooks.admit || e.hooks.lifecycle) {
            return Ok(AdmitOutcome { ticket: AdmitTicket::none(), rejection: None });
        }
        let (admitted, rejection) = if set.policies.iter().any(|e| e.hooks.admit) {
            let turn = self.gate.enter().await;
            set.admit_in(input, matches!(turn, Turn::Shed))?
        } else {
            (Vec::new(), None)
        };
        let ticket = if set.has_lifecycle() {
            AdmitTicket::new(
                self.lifecycle.clone(),
                admitted,
                input.headers.to_vec(),
                input.remote_addr.to_owned(),
                input.transport,
            )
        } else {
            AdmitTicket::none()
        };
        Ok(AdmitOutcome { ticket, rejection })
    }

    /// No policies: the plain relay.
    pub fn none() -> Self {
        Self::new(PolicySet::default())
    }

    /// The set to use for one decision.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Installs a new set; in-flight snapshots keep the old one until
    /// dropped. Policies the old set also served keep their breaker state.
    /// Swaps are expected from one thread at a time (the reloader).
    pub fn replace(&self, set: PolicySet) {
        let set = set.adopt(&self.containment, &self.current.load());
        self.current.store(Arc::new(set));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LinkInfo, Transport, UpstreamInfo};

    struct Fixed {
        name: &'static str,
        assign: Option<Route>,
        verdict: Result<Verdict, HookError>,
        mode: FailureMode,
    }

    impl Policy for Fixed {
        fn name(&self) -> &str {
            self.name
        }
        fn failure_mode(&self) -> FailureMode {
            self.mode
        }
        fn hooks(&self) -> Hooks {
            Hooks { assign: true, forward_headers: true, ..Hooks::FILTER }
        }
        fn assign(&self, _: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
            Ok(self.assign.clone())
        }
        fn forward_headers(&self, h: &[(String, String)]) -> Result<HeaderList, HookError> {
            let mut h = h.to_vec();
            h.push(("x-seen-by".into(), self.name.into()));
            Ok(h)
        }
        fn filter(&self, _: Direction, _: &[u8], _: &Bytes) -> Result<Verdict, HookError> {
            self.verdict.clone()
        }
    }

    fn fixed(
        name: &'static str,
        assign: Option<Route>,
        verdict: Result<Verdict, HookError>,
        mode: FailureMode,
    ) -> Arc<dyn Policy> {
        Arc::new(Fixed { name, assign, verdict, mode })
    }

    fn input(upstreams: &[UpstreamInfo]) -> AssignInput<'_> {
        AssignInput { headers: &[], remote_addr: "127.0.0.1:1", transport: Transport::WebSocket, upstreams }
    }

    fn upstream(name: &str, connected: &[bool]) -> UpstreamInfo {
        let links = connected.iter().enumerate().map(|(i, &c)| LinkInfo { index: i as u32, load: 0, connected: c });
        UpstreamInfo { name: name.into(), links: links.collect() }
    }

    #[test]
    fn first_usable_opinion_wins() {
        let ups = [upstream("default", &[true, false, true])];
        let set = PolicySet::new(vec![
            fixed("a", None, Ok(Verdict::Forward), FailureMode::Open),
            fixed("b", Some(Route::default_link(1)), Ok(Verdict::Forward), FailureMode::Open), // disconnected
            fixed("c", Some(Route::default_link(9)), Ok(Verdict::Forward), FailureMode::Open), // missing
            fixed("d", Some(Route::default_link(2)), Ok(Verdict::Forward), FailureMode::Open),
        ]);
        assert_eq!(set.assign(&input(&ups)).unwrap(), AssignDecision::Route { upstream: 0, link: Some(2) });
        assert_eq!(PolicySet::default().assign(&input(&ups)).unwrap(), AssignDecision::Default);
    }

    #[test]
    fn routes_name_upstreams_and_links_within_them() {
        let ups = [upstream("default", &[true]), upstream("green", &[false, true]), upstream("blue", &[false])];
        let one = |route: Route| {
            PolicySet::new(vec![fixed("p", Some(route), Ok(Verdict::Forward), FailureMode::Open)])
                .assign(&input(&ups))
                .unwrap()
        };
        assert_eq!(one(Route::upstream("green")), AssignDecision::Route { upstream: 1, link: None });
        assert_eq!(one(Route::upstream("green").with_link(1)), AssignDecision::Route { upstream: 1, link: Some(1) });
        assert_eq!(one(Route::upstream("green").with_link(0)), AssignDecision::Default, "a link that is down");
        assert_eq!(one(Route::upstream("green").with_link(2)), AssignDecision::Default, "no such link");
        assert_eq!(one(Route::upstream("red")), AssignDecision::Default, "no such upstream");
        assert_eq!(
            one(Route::upstream("blue")),
            AssignDecision::Route { upstream: 2, link: None },
            "an upstream with nothing connected is still the policy's choice"
        );
        assert_eq!(one(Route::upstream("default")), AssignDecision::Route { upstream: 0, link: None });
    }

    #[test]
    fn headers_are_chained_in_order() {
        let set = PolicySet::new(vec![
            fixed("a", None, Ok(Verdict::Forward), FailureMode::Open),
            fixed("b", None, Ok(Verdict::Forward), FailureMode::Open),
        ]);
        let out = set.forward_headers(&[]).unwrap();
        assert_eq!(out, vec![("x-seen-by".into(), "a".into()), ("x-seen-by".into(), "b".into())]);
    }

    /// Adds `x-seen-by: <name>` to what it is shown, or fails.
    struct Stamp {
        name: &'static str,
        mode: Mode,
        fails: bool,
    }

    impl Policy for Stamp {
        fn name(&self) -> &str {
            self.name
        }
        fn mode(&self) -> Mode {
            self.mode
        }
        fn hooks(&self) -> Hooks {
            Hooks { forward_headers: true, ..Hooks::default() }
        }
        fn forward_headers(&self, h: &[(String, String)]) -> Result<HeaderList, HookError> {
            if self.fails {
                return Err(HookError::Trap("stamp".into()));
            }
            Ok(h.iter().cloned().chain([("x-seen-by".into(), self.name.into())]).collect())
        }
    }

    #[test]
    fn each_policy_is_shown_the_last_applied_answer() {
        let stamp = |name, mode, fails| Arc::new(Stamp { name, mode, fails }) as Arc<dyn Policy>;
        let agent = vec![("x-tenant".to_owned(), "acme".to_owned())];
        let seen = |names: &[&str]| {
            agent
                .iter()
                .cloned()
                .chain(names.iter().map(|n| ("x-seen-by".to_owned(), n.to_string())))
                .collect::<Vec<_>>()
        };
        // A shadow answer is not applied, and a failing (open) policy
        // leaves the list as it was: `b` and `d` see what `a` answered.
        let set = PolicySet::new(vec![
            stamp("a", Mode::Enforce, false),
            stamp("s", Mode::Shadow, false),
            stamp("b", Mode::Enforce, false),
            stamp("f", Mode::Enforce, true),
            stamp("d", Mode::Enforce, false),
        ]);
        assert_eq!(set.forward_headers(&agent).unwrap(), seen(&["a", "b", "d"]));
        // No policy answered: the agent's own list.
        let set = PolicySet::new(vec![stamp("s", Mode::Shadow, false), stamp("f", Mode::Enforce, true)]);
        assert_eq!(set.forward_headers(&agent).unwrap(), agent);
    }

    #[test]
    fn filter_chain_replaces_then_stops_on_drop() {
        let set = PolicySet::new(vec![
            fixed("r", None, Ok(Verdict::Replace(Bytes::from_static(b"new"))), FailureMode::Open),
            fixed("d", None, Ok(Verdict::Drop), FailureMode::Open),
            fixed("c", None, Ok(Verdict::Close), FailureMode::Open),
        ]);
        assert_eq!(set.filter(Direction::AgentToServer, &[], Bytes::from_static(b"old")), FilterOutcome::Drop);
        let set =
            PolicySet::new(vec![fixed("r", None, Ok(Verdict::Replace(Bytes::from_static(b"new"))), FailureMode::Open)]);
        assert_eq!(
            set.filter(Direction::AgentToServer, &[], Bytes::from_static(b"old")),
            FilterOutcome::Forward(Bytes::from_static(b"new"))
        );
    }

    /// Counts its filter calls; announces one direction only.
    struct OneWay {
        dir: Direction,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Policy for OneWay {
        fn name(&self) -> &str {
            "one-way"
        }
        fn hooks(&self) -> Hooks {
            Hooks {
                filter_agent_to_server: self.dir == Direction::AgentToServer,
                filter_server_to_agent: self.dir == Direction::ServerToAgent,
                ..Hooks::default()
            }
        }
        fn filter(&self, dir: Direction, _: &[u8], _: &Bytes) -> Result<Verdict, HookError> {
            assert_eq!(dir, self.dir, "called for a direction it did not announce");
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Verdict::Drop)
        }
    }

    #[test]
    fn filters_run_only_for_their_announced_direction() {
        let up = Arc::new(OneWay { dir: Direction::AgentToServer, calls: 0.into() });
        let set = PolicySet::new(vec![up.clone()]);
        assert!(set.filters(Direction::AgentToServer));
        assert!(!set.filters(Direction::ServerToAgent));
        let m = Bytes::from_static(b"m");
        assert_eq!(set.filter(Direction::ServerToAgent, &[], m.clone()), FilterOutcome::Forward(m.clone()));
        assert_eq!(set.filter(Direction::AgentToServer, &[], m), FilterOutcome::Drop);
        assert_eq!(up.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!PolicySet::default().filters(Direction::AgentToServer));
    }

    /// A server→agent filter that reads only `packages_available` (5).
    struct Packages;

    impl Policy for Packages {
        fn name(&self) -> &str {
            "packages"
        }
        fn hooks(&self) -> Hooks {
            Hooks { filter_server_to_agent: true, ..Hooks::default() }
        }
        fn filter_fields(&self, dir: Direction) -> Option<FieldSet> {
            (dir == Direction::ServerToAgent).then_some(1 << 5)
        }
        fn filter(&self, _: Direction, _: &[u8], _: &Bytes) -> Result<Verdict, HookError> {
            Ok(Verdict::Forward)
        }
    }

    /// What the express lane asks before writing a server message itself.
    #[test]
    fn filters_message_asks_about_the_fields_present_and_those_to_be_added() {
        let set = PolicySet::new(vec![Arc::new(Packages)]);
        let s2a = Direction::ServerToAgent;
        let heartbeat_reply = [0x0a, 0x01, 0x07]; // instance_uid only
        let with_packages = [0x0a, 0x01, 0x07, 0x2a, 0x00]; // + packages_available
        assert!(!set.filters_message(s2a, &heartbeat_reply, 0));
        assert!(set.filters_message(s2a, &with_packages, 0));
        assert!(set.filters_message(s2a, &heartbeat_reply, 1 << 5), "a field to be added counts");
        assert!(!set.filters_message(Direction::AgentToServer, &with_packages, 0), "no filter that way");
        assert!(!PolicySet::default().filters_message(s2a, &with_packages, u64::MAX));
        // A filter without `filter_fields` beside it is called for every
        // message, even one with no field at all.
        let every = Arc::new(OneWay { dir: s2a, calls: 0.into() });
        let set = PolicySet::new(vec![Arc::new(Packages), every]);
        assert!(set.filters_message(s2a, &[], 0));
        assert!(set.filters_message(s2a, &heartbeat_reply, 0));
    }

    #[test]
    fn failure_modes() {
        let open = PolicySet::new(vec![fixed("o", None, Err(HookError::Timeout), FailureMode::Open)]);
        assert_eq!(
            open.filter(Direction::ServerToAgent, &[], Bytes::from_static(b"m")),
            FilterOutcome::Forward(Bytes::from_static(b"m"))
        );
        let closed = PolicySet::new(vec![fixed("c", None, Err(HookError::Timeout), FailureMode::Closed)]);
        assert_eq!(closed.filter(Direction::ServerToAgent, &[], Bytes::from_static(b"m")), FilterOutcome::Drop);
    }

    #[test]
    fn calls_and_failures_are_counted_per_policy_and_hook() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let set = PolicySet::new(vec![
                fixed("a", None, Ok(Verdict::Forward), FailureMode::Open),
                fixed("b", None, Err(HookError::Timeout), FailureMode::Open),
            ]);
            for _ in 0..3 {
                set.filter(Direction::AgentToServer, &[], Bytes::from_static(b"m"));
            }
        });
        // One snapshot: taking one resets the recorder's counters.
        let snapshot = snapshotter.snapshot().into_vec();
        let value = |name: &str, labels: &[(&str, &str)]| {
            snapshot.iter().find_map(|(k, _, _, v)| {
                let key = k.key();
                let matches = key.name() == name
                    && labels.iter().all(|(lk, lv)| key.labels().any(|l| l.key() == *lk && l.value() == *lv));
                matches.then_some(v)
            })
        };
        assert_eq!(value(m::POLICY_CALLS, &[("policy", "a"), ("hook", "filter")]), Some(&DebugValue::Counter(3)));
        assert_eq!(value(m::POLICY_CALLS, &[("policy", "b"), ("hook", "filter")]), Some(&DebugValue::Counter(3)));
        assert_eq!(
            value(m::POLICY_ERRORS, &[("policy", "b"), ("hook", "filter"), ("kind", "timeout")]),
            Some(&DebugValue::Counter(3))
        );
        assert!(matches!(
            value(m::POLICY_CALL_SECONDS, &[("policy", "a")]),
            Some(DebugValue::Histogram(h)) if h.len() == 3
        ));
    }

    #[test]
    fn swap_keeps_inflight_snapshot() {
        let p = Policies::none();
        let before = p.snapshot();
        p.replace(PolicySet::new(vec![fixed("a", None, Ok(Verdict::Drop), FailureMode::Open)]));
        assert!(before.is_empty());
        assert!(!p.snapshot().is_empty());
    }

    /// Fails while `failing` is set; counts the calls that reach it.
    struct Flaky {
        name: &'static str,
        mode: FailureMode,
        failing: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
        headers: usize,
    }

    impl Flaky {
        fn new(name: &'static str, mode: FailureMode) -> Arc<Self> {
            Arc::new(Flaky { name, mode, failing: true.into(), calls: 0.into(), headers: 0 })
        }
        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl Policy for Flaky {
        fn name(&self) -> &str {
            self.name
        }
        fn failure_mode(&self) -> FailureMode {
            self.mode
        }
        fn hooks(&self) -> Hooks {
            Hooks { assign: true, forward_headers: true, ..Hooks::FILTER }
        }
        fn forward_headers(&self, h: &[(String, String)]) -> Result<HeaderList, HookError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((0..self.headers).map(|i| (format!("x-{i}"), "v".into())).chain(h.iter().cloned()).collect())
        }
        fn filter(&self, _: Direction, _: &[u8], m: &Bytes) -> Result<Verdict, HookError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                Err(HookError::Timeout)
            } else {
                Ok(Verdict::Replace(m.clone()))
            }
        }
    }

    fn containment(clock: Arc<crate::policy::breaker::tests::ManualClock>) -> Containment {
        let quarantine = BreakerConfig { after: 3, backoff: std::time::Duration::from_secs(1), ..Default::default() };
        Containment { quarantine, clock, ..Containment::default() }
    }

    #[test]
    fn a_quarantined_policy_is_not_called_and_recovers_after_a_trial() {
        let clock = crate::policy::breaker::tests::ManualClock::new();
        let open = Flaky::new("open", FailureMode::Open);
        let closed = Flaky::new("closed", FailureMode::Closed);
        let policies =
            Policies::with_containment(PolicySet::new(vec![open.clone(), closed.clone()]), containment(clock.clone()));
        let set = policies.snapshot();
        let m = Bytes::from_static(b"m");
        for _ in 0..3 {
            assert_eq!(set.filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Drop);
        }
        assert_eq!(set.quarantined(), ["open", "closed"]);
        // Quarantined: no call; open skips, closed refuses.
        for _ in 0..100 {
            assert_eq!(set.filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Drop);
        }
        let refused = set.forward_headers(&[]).unwrap_err();
        assert!(matches!(refused.error, HookError::Quarantined) && refused.policy == "closed", "{refused}");
        assert_eq!((open.calls(), closed.calls()), (3, 3));

        // After the backoff, one trial each; the fixed policy recovers.
        open.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(set.filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Drop);
        assert_eq!((open.calls(), closed.calls()), (4, 4));
        assert_eq!(set.quarantined(), ["closed"]);
        assert_eq!(set.filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Drop);
        assert_eq!((open.calls(), closed.calls()), (5, 4), "closed waits twice as long now");
    }

    #[test]
    fn breaker_state_follows_a_reused_policy_into_the_next_set() {
        let clock = crate::policy::breaker::tests::ManualClock::new();
        let bad = Flaky::new("bad", FailureMode::Open);
        let policies = Policies::with_containment(PolicySet::new(vec![bad.clone()]), containment(clock));
        for _ in 0..3 {
            policies.snapshot().filter(Direction::AgentToServer, &[], Bytes::from_static(b"m"));
        }
        // Another policy is added: `bad` is the same object, still quarantined.
        let other = Flaky::new("other", FailureMode::Open);
        policies.replace(PolicySet::new(vec![bad.clone(), other.clone()]));
        assert_eq!(policies.snapshot().quarantined(), ["bad"]);
        // Replaced by a new object under the same name: a fresh breaker.
        policies.replace(PolicySet::new(vec![Flaky::new("bad", FailureMode::Open), other]));
        assert!(policies.snapshot().quarantined().is_empty());
    }

    #[tokio::test]
    async fn a_shed_chain_applies_each_on_error_without_calling() {
        let open = Flaky::new("open", FailureMode::Open);
        let closed = Flaky::new("closed", FailureMode::Closed);
        for f in [&open, &closed] {
            f.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let c = Containment { concurrency: 1, queue: 0, ..Containment::default() };
        let policies = Policies::with_containment(PolicySet::new(vec![open.clone()]), c.clone());
        let set = policies.snapshot();
        let m = Bytes::from_static(b"m");
        // A free turn: called.
        assert_eq!(
            policies.filter(&set, Direction::AgentToServer, &[], m.clone()).await,
            FilterOutcome::Forward(m.clone())
        );
        assert_eq!(open.calls(), 1);
        // The only turn taken and no queue: shed, not called, not counted
        // against the breaker however often it happens.
        let held = policies.gate().enter().await;
        for _ in 0..10 {
            let out = policies.filter(&set, Direction::AgentToServer, &[], m.clone()).await;
            assert_eq!(out, FilterOutcome::Forward(m.clone()), "open: skipped");
        }
        assert_eq!(open.calls(), 1);
        assert!(set.quarantined().is_empty());
        let policies = Policies::with_containment(PolicySet::new(vec![closed.clone()]), c);
        let set = policies.snapshot();
        let _held2 = policies.gate().enter().await;
        assert_eq!(policies.filter(&set, Direction::AgentToServer, &[], m.clone()).await, FilterOutcome::Drop);
        let input = input(&[]);
        let refused = policies.admit(&set, &input, &[]).await.unwrap_err();
        assert!(matches!(refused.error, HookError::Overloaded), "{refused}");
        assert_eq!(closed.calls(), 0);
        drop(held);
    }

    #[test]
    fn answers_over_the_limits_are_invalid() {
        let mut many = Flaky::new("many", FailureMode::Closed);
        Arc::get_mut(&mut many).unwrap().headers = 101;
        let set = PolicySet::new(vec![many]);
        let e = set.forward_headers(&[]).unwrap_err();
        assert!(e.to_string().contains("101 headers, more than policies.limits.max_forwarded_headers (100)"), "{e}");

        let limits = PolicyLimits { max_forwarded_header_bytes: 10, max_replacement: [4, 3], ..Default::default() };
        let c = Containment { limits, ..Containment::default() };
        let mut big = Flaky::new("big", FailureMode::Closed);
        Arc::get_mut(&mut big).unwrap().headers = 2; // 2 × "x-N" + "v" = 8 bytes, + ours
        big.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        let fixed = Flaky::new("fixed", FailureMode::Closed);
        fixed.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        let set = Policies::with_containment(PolicySet::new(vec![big, fixed]), c).snapshot();
        assert!(set.forward_headers(&[]).is_ok());
        let e = set.forward_headers(&[("abc".into(), "".into())]).unwrap_err();
        assert!(e.to_string().contains("11 bytes of headers"), "{e}");
        // Replacements: 4 bytes may go to the server, 3 to an agent.
        let m = Bytes::from_static(b"1234");
        assert_eq!(set.filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Forward(m.clone()));
        assert_eq!(set.filter(Direction::ServerToAgent, &[], m), FilterOutcome::Drop);
    }

    /// Admits (or rejects with `reject`), records its lifecycle events, and
    /// drops every message; `shadow` in shadow mode.
    struct Gatekeeper {
        name: &'static str,
        reject: Option<u16>,
        admit: bool,
        shadow: bool,
        seen: parking_lot::Mutex<std::sync::mpsc::Sender<String>>,
    }

    impl Policy for Gatekeeper {
        fn name(&self) -> &str {
            self.name
        }
        fn hooks(&self) -> Hooks {
            Hooks { admit: self.admit, lifecycle: true, ..Hooks::FILTER }
        }
        fn mode(&self) -> Mode {
            if self.shadow {
                Mode::Shadow
            } else {
                Mode::Enforce
            }
        }
        fn admit(&self, _: &AssignInput<'_>) -> Result<AdmitVerdict, HookError> {
            Ok(match self.reject {
                None => AdmitVerdict::Allow,
                Some(status) => AdmitVerdict::Reject(Rejection { status, headers: vec![], body: "no".into() }),
            })
        }
        fn filter(&self, _: Direction, _: &[u8], _: &Bytes) -> Result<Verdict, HookError> {
            Ok(Verdict::Drop)
        }
        fn on_connect(&self, e: &SessionEvent) -> Result<(), HookError> {
            let _ = self.seen.lock().send(format!("{} connect {} {}", self.name, e.session, e.upstream));
            Ok(())
        }
        fn on_disconnect(&self, e: &SessionEvent, reason: &str) -> Result<(), HookError> {
            let uid = e.uid.as_ref().map_or(0, |u| u[0]);
            let _ = self.seen.lock().send(format!("{} disconnect {} {reason} {uid}", self.name, e.session));
            Ok(())
        }
    }

    type Seen = std::sync::mpsc::Receiver<String>;

    fn gatekeepers(specs: &[(&'static str, bool, Option<u16>, bool)]) -> (Policies, Seen) {
        let (tx, rx) = std::sync::mpsc::channel();
        let policies = specs
            .iter()
            .map(|&(name, admit, reject, shadow)| {
                Arc::new(Gatekeeper { name, admit, reject, shadow, seen: parking_lot::Mutex::new(tx.clone()) })
                    as Arc<dyn Policy>
            })
            .collect();
        (Policies::new(PolicySet::new(policies)), rx)
    }

    /// The next `n` events, in delivery order.
    fn events(rx: &Seen, n: usize) -> Vec<String> {
        (0..n).map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).expect("an event")).collect()
    }

    fn no_upstreams() -> AssignInput<'static> {
        AssignInput { headers: &[], remote_addr: "192.0.2.1:1", transport: Transport::WebSocket, upstreams: &[] }
    }

    #[tokio::test]
    async fn lifecycle_events_pair_with_admit() {
        // a: admits; b: lifecycle only; c: rejects 429 (d is never asked).
        let (p, rx) = gatekeepers(&[
            ("a", true, None, false),
            ("b", false, None, false),
            ("c", true, Some(429), false),
            ("d", true, None, false),
        ]);
        let out = p.admission(&p.snapshot(), &no_upstreams()).await.unwrap();
        assert_eq!(out.rejection.map(|r| r.status), Some(429));
        drop(out.ticket);
        // Only `a` allowed it, so only `a` hears it never got a session.
        assert_eq!(events(&rx, 1), ["a disconnect 0 not-admitted 0"]);

        let (p, rx) = gatekeepers(&[("a", true, None, false), ("b", false, None, false)]);
        let out = p.admission(&p.snapshot(), &no_upstreams()).await.unwrap();
        assert!(out.rejection.is_none());
        let session = out.ticket.start(7, None, "default".into());
        session.end("peer", Some(Bytes::from_static(&[9; 16])), Some("green".into()));
        assert_eq!(
            events(&rx, 4),
            ["a connect 7 default", "b connect 7 default", "a disconnect 7 peer 9", "b disconnect 7 peer 9"]
        );
    }

    #[tokio::test]
    async fn shadow_verdicts_are_not_applied() {
        // A shadow rejection lets the agent in and, having rejected it, the
        // shadow policy is told nothing of its session.
        let (p, rx) = gatekeepers(&[("s", true, Some(403), true), ("a", true, None, false)]);
        let set = p.snapshot();
        let out = p.admission(&set, &no_upstreams()).await.unwrap();
        assert!(out.rejection.is_none());
        out.ticket.start(1, None, "default".into()).end("peer", None, None);
        assert_eq!(events(&rx, 2), ["a connect 1 default", "a disconnect 1 peer 0"]);
        // Its `drop` is counted, not applied; the enforcing one's is.
        let (p, _rx) = gatekeepers(&[("s", false, None, true)]);
        let m = Bytes::from_static(b"12");
        assert_eq!(p.snapshot().filter(Direction::AgentToServer, &[], m.clone()), FilterOutcome::Forward(m.clone()));
        let (p, _rx) = gatekeepers(&[("e", false, None, false)]);
        assert_eq!(p.snapshot().filter(Direction::AgentToServer, &[], m), FilterOutcome::Drop);
    }

    #[test]
    fn rejections_are_checked() {
        let reject = |status, headers: &[(&str, &str)], body: &str| {
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            check_admit(AdmitVerdict::Reject(Rejection { status, headers, body: body.into() }))
        };
        assert!(reject(429, &[("Retry-After", "5")], "slow down").is_ok());
        assert_eq!(
            reject(403, &[("X-Why", "net")], "").unwrap(),
            AdmitVerdict::Reject(Rejection {
                status: 403,
                headers: vec![("x-why".into(), "net".into())],
                body: "".into()
            }),
            "names are lower-cased"
        );
        for bad in [reject(401, &[], ""), reject(200, &[], ""), reject(302, &[], ""), reject(600, &[], "")] {
            assert!(matches!(bad, Err(HookError::Invalid(_))), "{bad:?}");
        }
        assert!(reject(400, &[], &"x".repeat(MAX_REJECTION_BODY)).is_ok());
        assert!(reject(400, &[], &"x".repeat(MAX_REJECTION_BODY + 1)).is_err());
        assert!(reject(400, &[("Content-Length", "1")], "").is_err());
        assert!(reject(400, &[("bad name", "1")], "").is_err());
        assert!(check_admit(AdmitVerdict::Allow).is_ok());
    }
}
