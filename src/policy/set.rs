//! The policy chain and its atomically swappable holder.
//!
//! Chain rules (first to last, in file-name order):
//! - `assign`: the first policy with a valid opinion wins. An answer naming a
//!   missing or disconnected link counts as no opinion (and is counted).
//! - `forward-headers`: each policy transforms the previous one's output.
//! - `filter`: each policy that announced the message's direction sees the
//!   previous one's output; `Drop` and `Close` stop the chain.
//!
//! A failing policy is skipped (fail-open) or blocks the traffic it judged
//! (fail-closed), per its [`FailureMode`]. Nothing here can panic the relay.
//!
//! Every call is counted and timed. The metric handles are resolved once per
//! policy and hook, on first use (by then the gateway's recorder is
//! installed), so the per-call cost is two atomic updates rather than a
//! label hash-and-lookup with fresh `String`s.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::{AssignInput, Direction, FailureMode, HeaderList, HookError, Hooks, Policy, Verdict};
use crate::telemetry::metrics as m;

/// An ordered, immutable set of policies. Cheap to share; swapped whole.
#[derive(Default)]
pub struct PolicySet {
    policies: Vec<Entry>,
    /// Positions in `policies` of the filters for each direction (indexed by
    /// [`dir_index`]), so the per-message path visits only those.
    filter_chains: [Vec<usize>; 2],
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::AgentToServer => 0,
        Direction::ServerToAgent => 1,
    }
}

/// One policy of a set, with its metric handles.
struct Entry {
    policy: Arc<dyn Policy>,
    /// `policy.hooks()`, asked once.
    hooks: Hooks,
    /// Indexed by [`Hook`].
    instruments: [OnceLock<Instruments>; 3],
}

struct Instruments {
    calls: metrics::Counter,
    seconds: metrics::Histogram,
}

#[derive(Clone, Copy)]
enum Hook {
    Assign = 0,
    ForwardHeaders = 1,
    Filter = 2,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Hook::Assign => "assign",
            Hook::ForwardHeaders => "forward_headers",
            Hook::Filter => "filter",
        }
    }
}

impl Entry {
    fn new(policy: Arc<dyn Policy>) -> Self {
        Self { hooks: policy.hooks(), policy, instruments: Default::default() }
    }

    /// Runs one hook call, counted and timed.
    fn timed<T>(&self, hook: Hook, call: impl FnOnce(&dyn Policy) -> T) -> T {
        let start = Instant::now();
        let out = call(self.policy.as_ref());
        let i = self.instruments[hook as usize].get_or_init(|| {
            let name = self.policy.name().to_owned();
            Instruments {
                calls: metrics::counter!(m::POLICY_CALLS, "policy" => name.clone(), "hook" => hook.label()),
                seconds: metrics::histogram!(m::POLICY_CALL_SECONDS, "policy" => name, "hook" => hook.label()),
            }
        });
        i.calls.increment(1);
        i.seconds.record(start.elapsed().as_secs_f64());
        out
    }
}

/// The relay's view of the current [`PolicySet`]. A caller takes a snapshot
/// for the duration of one decision, so a swap never changes the rules under
/// an in-flight call.
pub struct Policies {
    current: ArcSwap<PolicySet>,
}

/// Outcome of the `assign` phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignDecision {
    /// Use this link.
    Link(u32),
    /// No policy had an opinion: use the default (least-connections).
    Default,
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

impl PolicySet {
    pub fn new(policies: Vec<Arc<dyn Policy>>) -> Self {
        let policies: Vec<Entry> = policies.into_iter().map(Entry::new).collect();
        let chain = |dir| policies.iter().enumerate().filter(|(_, e)| e.hooks.filters(dir)).map(|(i, _)| i).collect();
        let filter_chains = [chain(Direction::AgentToServer), chain(Direction::ServerToAgent)];
        Self { policies, filter_chains }
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
        !self.filter_chains[dir_index(dir)].is_empty()
    }

    pub fn assign(&self, input: &AssignInput<'_>) -> Result<AssignDecision, Refused> {
        for e in self.policies.iter().filter(|e| e.hooks.assign) {
            let p = e.policy.as_ref();
            match e.timed(Hook::Assign, |p| p.assign(input)) {
                Ok(None) => {}
                Ok(Some(index)) => {
                    let usable = input.links.iter().any(|l| l.index == index && l.connected);
                    if usable {
                        return Ok(AssignDecision::Link(index));
                    }
                    metrics::counter!(m::POLICY_INVALID_ASSIGN, "policy" => p.name().to_owned()).increment(1);
                    tracing::debug!(policy = p.name(), index, "assign named an unusable link; ignored");
                }
                Err(error) => fail(p, Hook::Assign.label(), error)?,
            }
        }
        Ok(AssignDecision::Default)
    }

    pub fn forward_headers(&self, mut headers: HeaderList) -> Result<HeaderList, Refused> {
        for e in self.policies.iter().filter(|e| e.hooks.forward_headers) {
            let input = headers.clone();
            match e.timed(Hook::ForwardHeaders, |p| p.forward_headers(input)) {
                Ok(out) => headers = out,
                Err(error) => fail(e.policy.as_ref(), Hook::ForwardHeaders.label(), error)?,
            }
        }
        Ok(headers)
    }

    /// `message` is the bare protobuf. Only the policies that announced a
    /// filter for `dir` are called.
    pub fn filter(&self, dir: Direction, uid: &[u8], message: Bytes) -> FilterOutcome {
        let mut current = message;
        for e in self.filter_chains[dir_index(dir)].iter().map(|&i| &self.policies[i]) {
            match e.timed(Hook::Filter, |p| p.filter(dir, uid, &current)) {
                Ok(Verdict::Forward) => {}
                Ok(Verdict::Replace(bytes)) => current = bytes,
                Ok(Verdict::Drop) => return FilterOutcome::Drop,
                Ok(Verdict::Close) => return FilterOutcome::Close,
                Err(error) => {
                    if fail(e.policy.as_ref(), Hook::Filter.label(), error).is_err() {
                        return FilterOutcome::Drop;
                    }
                }
            }
        }
        FilterOutcome::Forward(current)
    }
}

/// Records a failure; `Err` when the policy fails closed.
fn fail(p: &dyn Policy, hook: &'static str, error: HookError) -> Result<(), Refused> {
    metrics::counter!(m::POLICY_ERRORS, "policy" => p.name().to_owned(), "hook" => hook, "kind" => error.kind())
        .increment(1);
    tracing::warn!(policy = p.name(), hook, %error, mode = ?p.failure_mode(), "policy call failed");
    match p.failure_mode() {
        FailureMode::Open => Ok(()),
        FailureMode::Closed => Err(Refused { policy: p.name().to_owned(), hook, error }),
    }
}

impl Policies {
    pub fn new(set: PolicySet) -> Self {
        Self { current: ArcSwap::from_pointee(set) }
    }

    /// No policies: the plain relay.
    pub fn none() -> Self {
        Self::new(PolicySet::default())
    }

    /// The set to use for one decision.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Installs a new set; in-flight snapshots keep the old one until dropped.
    pub fn replace(&self, set: PolicySet) {
        self.current.store(Arc::new(set));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LinkInfo, Transport};

    struct Fixed {
        name: &'static str,
        assign: Option<u32>,
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
        fn assign(&self, _: &AssignInput<'_>) -> Result<Option<u32>, HookError> {
            Ok(self.assign)
        }
        fn forward_headers(&self, mut h: HeaderList) -> Result<HeaderList, HookError> {
            h.push(("x-seen-by".into(), self.name.into()));
            Ok(h)
        }
        fn filter(&self, _: Direction, _: &[u8], _: &Bytes) -> Result<Verdict, HookError> {
            self.verdict.clone()
        }
    }

    fn fixed(
        name: &'static str,
        assign: Option<u32>,
        verdict: Result<Verdict, HookError>,
        mode: FailureMode,
    ) -> Arc<dyn Policy> {
        Arc::new(Fixed { name, assign, verdict, mode })
    }

    fn input(links: &[LinkInfo]) -> AssignInput<'_> {
        AssignInput { headers: &[], remote_addr: "127.0.0.1:1", transport: Transport::WebSocket, links }
    }

    #[test]
    fn first_usable_opinion_wins() {
        let links = [
            LinkInfo { index: 0, load: 0, connected: true },
            LinkInfo { index: 1, load: 0, connected: false },
            LinkInfo { index: 2, load: 5, connected: true },
        ];
        let set = PolicySet::new(vec![
            fixed("a", None, Ok(Verdict::Forward), FailureMode::Open),
            fixed("b", Some(1), Ok(Verdict::Forward), FailureMode::Open), // disconnected: ignored
            fixed("c", Some(9), Ok(Verdict::Forward), FailureMode::Open), // missing: ignored
            fixed("d", Some(2), Ok(Verdict::Forward), FailureMode::Open),
        ]);
        assert_eq!(set.assign(&input(&links)).unwrap(), AssignDecision::Link(2));
        assert_eq!(PolicySet::default().assign(&input(&links)).unwrap(), AssignDecision::Default);
    }

    #[test]
    fn headers_are_chained_in_order() {
        let set = PolicySet::new(vec![
            fixed("a", None, Ok(Verdict::Forward), FailureMode::Open),
            fixed("b", None, Ok(Verdict::Forward), FailureMode::Open),
        ]);
        let out = set.forward_headers(vec![]).unwrap();
        assert_eq!(out, vec![("x-seen-by".into(), "a".into()), ("x-seen-by".into(), "b".into())]);
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
}
