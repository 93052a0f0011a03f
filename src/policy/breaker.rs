//! [`Breaker`]: the circuit breaker of one policy.
//!
//! - **Closed** (normal): every call goes to the policy. `after` consecutive
//!   failures, or a failed share of at least `rate` among the calls of a
//!   `window` (once it holds [`MIN_CALLS`]), trip it.
//! - **Open** (quarantined): no call reaches the policy; the chain applies
//!   its `on_error` as if the call had failed, at no Wasm cost.
//! - After `backoff`, **half-open**: exactly one caller gets a trial call.
//!   Success closes the breaker; failure reopens it for twice as long, up to
//!   `max_backoff`.
//!
//! Transitions are logged once each (warn when quarantined, info when
//! recovered) and exported as `opampgateway_policy_quarantined{policy}` (1/0)
//! and `opampgateway_policy_quarantines_total{policy}`.
//!
//! The closed path costs one atomic load before the call and one increment
//! after it; the clock is read only on failures and while quarantined.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::{BreakerConfig, MIN_CALLS};
use crate::telemetry::metrics as m;

/// Where the breaker reads the time (injected by tests).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// tokio's `Instant::now()`: paused time in tests; outside a runtime (policy
/// threads), the system clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What the breaker allows for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: call the policy.
    Call,
    /// Half-open: call it; the outcome decides the quarantine.
    Trial,
    /// Open: do not call it.
    Quarantined,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const TRIAL: u8 = 2;

pub(crate) struct Breaker {
    policy: Arc<str>,
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    /// Origin of `reopen_at`.
    epoch: Instant,
    state: AtomicU8,
    /// When an open breaker admits its trial, in ns since `epoch`.
    reopen_at: AtomicU64,
    /// Calls admitted as `Call` that finished (the rate's denominator).
    calls: AtomicU64,
    consecutive: AtomicU32,
    /// Set once the policy left the serving set: no more metrics or logs.
    retired: AtomicBool,
    slow: Mutex<Slow>,
}

/// Failure-side bookkeeping (rare, so under a lock).
struct Slow {
    window_start: Option<Instant>,
    /// `calls` when the window started.
    window_base: u64,
    window_failures: u64,
    backoff: Duration,
    since: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(policy: Arc<str>, cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        Self {
            policy,
            cfg,
            clock,
            epoch,
            state: AtomicU8::new(CLOSED),
            reopen_at: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            slow: Mutex::new(Slow {
                window_start: None,
                window_base: 0,
                window_failures: 0,
                backoff: cfg.backoff,
                since: None,
            }),
        }
    }

    /// True while quarantined (open or running its trial).
    pub(crate) fn is_quarantined(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Asks before a call. Every `Call` or `Trial` must be followed by
    /// [`Breaker::record`].
    pub(crate) fn admit(&self) -> Admit {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admit::Call,
            OPEN => {
                let due = self.nanos(self.clock.now()) >= self.reopen_at.load(Ordering::Acquire);
                if due && self.state.compare_exchange(OPEN, TRIAL, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    Admit::Trial
                } else {
                    Admit::Quarantined
                }
            }
            _ => Admit::Quarantined, // another caller runs the trial
        }
    }

    /// Reports how an admitted call ended.
    pub(crate) fn record(&self, admit: Admit, ok: bool) {
        match (admit, ok) {
            (Admit::Quarantined, _) => {}
            (Admit::Call, true) => {
                self.calls.fetch_add(1, Ordering::Relaxed);
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            (Admit::Call, false) => {
                self.calls.fetch_add(1, Ordering::Relaxed);
                self.failed();
            }
            (Admit::Trial, true) => self.close(),
            (Admit::Trial, false) => self.reopen(),
        }
    }

    fn failed(&self) {
        let mut s = self.slow.lock();
        if self.state.load(Ordering::Acquire) != CLOSED {
            return; // tripped meanwhile by a concurrent call
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.clock.now();
        let calls = self.calls.load(Ordering::Relaxed);
        if s.window_start.is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.window) {
            s.window_start = Some(now);
            s.window_base = calls.saturating_sub(1); // this call belongs to the new window
            s.window_failures = 0;
        }
        s.window_failures += 1;
        let window_calls = calls - s.window_base;
        let reason = if self.cfg.after > 0 && consecutive >= self.cfg.after {
            format!("{consecutive} consecutive failed calls")
        } else if self.cfg.rate > 0.0
            && window_calls >= MIN_CALLS
            && s.window_failures as f64 >= self.cfg.rate * window_calls as f64
        {
            format!(
                "{} of {window_calls} calls failed within {}",
                s.window_failures,
                humantime::format_duration(self.cfg.window)
            )
        } else {
            return;
        };
        s.backoff = self.cfg.backoff;
        s.since = Some(now);
        self.reopen_at.store(self.nanos(now + s.backoff), Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        if !self.retired.load(Ordering::Acquire) {
            let policy = self.policy.to_string();
            metrics::gauge!(m::POLICY_QUARANTINED, "policy" => policy.clone()).set(1.0);
            metrics::counter!(m::POLICY_QUARANTINES, "policy" => policy).increment(1);
            tracing::warn!(
                policy = &*self.policy,
                %reason,
                retry_in = %humantime::format_duration(s.backoff),
                "policy quarantined: it is not called (its on_error applies) until a trial call succeeds"
            );
        }
    }

    fn reopen(&self) {
        let mut s = self.slow.lock();
        let now = self.clock.now();
        s.backoff = (s.backoff * 2).min(self.cfg.max_backoff);
        self.reopen_at.store(self.nanos(now + s.backoff), Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        tracing::debug!(
            policy = &*self.policy,
            retry_in = %humantime::format_duration(s.backoff),
            "quarantined policy failed its trial call"
        );
    }

    fn close(&self) {
        let mut s = self.slow.lock();
        let since = s.since.take();
        s.backoff = self.cfg.backoff;
        s.window_start = None;
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.store(CLOSED, Ordering::Release);
        if !self.retired.load(Ordering::Acquire) {
            metrics::gauge!(m::POLICY_QUARANTINED, "policy" => self.policy.to_string()).set(0.0);
            let after = since.map(|t| self.clock.now().saturating_duration_since(t)).unwrap_or_default();
            tracing::info!(
                policy = &*self.policy,
                quarantined_for = %humantime::format_duration(Duration::from_millis(after.as_millis() as u64)),
                "policy recovered: a trial call succeeded, quarantine lifted"
            );
        }
    }

    /// The policy left the serving set (removed or replaced): a quarantine
    /// it was under ends with it.
    pub(crate) fn retire(&self) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.is_quarantined() {
            metrics::gauge!(m::POLICY_QUARANTINED, "policy" => self.policy.to_string()).set(0.0);
            tracing::info!(policy = &*self.policy, "quarantined policy unloaded; its quarantine ends");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clock the test moves by hand.
    pub(crate) struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(Instant::now())))
        }
        pub(crate) fn advance(&self, d: Duration) {
            *self.0.lock() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock()
        }
    }

    fn cfg(after: u32, rate: f64) -> BreakerConfig {
        BreakerConfig {
            after,
            rate,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    fn call(b: &Breaker, ok: bool) -> Admit {
        let a = b.admit();
        b.record(a, ok);
        a
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_is_tokios() {
        let b = Breaker::new("p".into(), cfg(1, 0.0), Arc::new(SystemClock));
        call(&b, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(), Admit::Trial, "the backoff passed on the paused clock");
        // Policy calls also run on threads outside any runtime.
        std::thread::spawn(|| SystemClock.now()).join().expect("a clock outside the runtime");
    }

    #[test]
    fn consecutive_failures_trip_and_a_success_resets_the_count() {
        let b = Breaker::new("p".into(), cfg(3, 0.0), ManualClock::new());
        call(&b, false);
        call(&b, false);
        call(&b, true);
        call(&b, false);
        call(&b, false);
        assert!(!b.is_quarantined(), "a success in between resets the count");
        call(&b, false);
        assert!(b.is_quarantined());
        assert_eq!(b.admit(), Admit::Quarantined);
    }

    #[test]
    fn trial_after_backoff_then_recovery() {
        let clock = ManualClock::new();
        let b = Breaker::new("p".into(), cfg(1, 0.0), clock.clone());
        call(&b, false);
        assert_eq!(b.admit(), Admit::Quarantined);
        clock.advance(Duration::from_millis(999));
        assert_eq!(b.admit(), Admit::Quarantined);
        clock.advance(Duration::from_millis(1));
        let trial = b.admit();
        assert_eq!(trial, Admit::Trial);
        assert_eq!(b.admit(), Admit::Quarantined, "one trial at a time");
        b.record(trial, true);
        assert!(!b.is_quarantined());
        assert_eq!(b.admit(), Admit::Call);
    }

    #[test]
    fn failed_trials_double_the_backoff_up_to_the_cap() {
        let clock = ManualClock::new();
        let b = Breaker::new("p".into(), cfg(1, 0.0), clock.clone());
        call(&b, false);
        // backoff 1s, then 2s, 4s, 4s (capped).
        for wait in [1, 2, 4, 4] {
            clock.advance(Duration::from_millis(wait * 1000 - 1));
            assert_eq!(b.admit(), Admit::Quarantined, "before {wait}s");
            clock.advance(Duration::from_millis(1));
            assert_eq!(call(&b, false), Admit::Trial, "after {wait}s");
        }
        // A recovery starts the next quarantine from the first backoff again.
        clock.advance(Duration::from_secs(4));
        assert_eq!(call(&b, true), Admit::Trial);
        call(&b, false);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.admit(), Admit::Trial);
    }

    #[test]
    fn a_failure_rate_over_the_window_trips() {
        let clock = ManualClock::new();
        let b = Breaker::new("p".into(), cfg(0, 0.5), clock.clone());
        // Alternating: 50 % failures, never two in a row.
        for i in 0..(MIN_CALLS - 2) {
            call(&b, i % 2 == 1);
        }
        assert!(!b.is_quarantined(), "fewer than MIN_CALLS calls do not count");
        call(&b, true);
        call(&b, false);
        assert!(b.is_quarantined());
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_trip() {
        let clock = ManualClock::new();
        let b = Breaker::new("p".into(), cfg(0, 0.5), clock.clone());
        for _ in 0..100 {
            call(&b, false);
            clock.advance(Duration::from_secs(11)); // each failure opens a new window
            call(&b, true);
        }
        assert!(!b.is_quarantined());
    }

    #[test]
    fn zero_disables_both_triggers() {
        let b = Breaker::new("p".into(), cfg(0, 0.0), ManualClock::new());
        for _ in 0..1000 {
            call(&b, false);
        }
        assert!(!b.is_quarantined());
    }

    #[test]
    fn transitions_are_counted_once() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let clock = ManualClock::new();
        metrics::with_local_recorder(&recorder, || {
            let b = Breaker::new("p".into(), cfg(2, 0.0), clock.clone());
            for _ in 0..10 {
                call(&b, false);
            }
            clock.advance(Duration::from_secs(1));
            call(&b, false); // failed trial: still one quarantine
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let get = |name: &str| snapshot.iter().find(|(k, ..)| k.key().name() == name).map(|(.., v)| v);
        assert_eq!(get(m::POLICY_QUARANTINES), Some(&DebugValue::Counter(1)));
        assert_eq!(get(m::POLICY_QUARANTINED), Some(&DebugValue::Gauge(1.0.into())));
    }
}
