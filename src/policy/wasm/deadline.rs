//! Call deadlines charged in CPU time, not wall time.
//!
//! A hook's budget (`call_timeout`) bounds what the guest *does*, so it is
//! charged the CPU time of the thread running it. Wall time would also charge
//! it for the scheduler: on a saturated host a relay thread can be preempted
//! for longer than the whole budget in the middle of a 1 µs call, and a
//! fail-closed policy would then drop a message it had no objection to.
//!
//! The epoch ticker still drives the checks, so the common call pays
//! nothing: its deadline is one tick ahead, and a call that ends before the
//! next tick (nearly all of them) never reads a clock. When a tick does land
//! mid-call, [`CallClock::on_tick`] runs on the guest's thread, notes the
//! thread's CPU clock the first time, and from then on traps once the CPU
//! time since that note reaches the budget. The CPU used before the first
//! tick (at most one tick's worth) is not charged, so a runaway guest stops
//! after between one budget and one budget plus two ticks of CPU time.
//!
//! The second tick is always looked at: a call still running then has run
//! for a whole tick, far beyond any normal call, and [`CallClock::overran`]
//! says so once, so the caller can stop holding up its thread's other work.

use std::time::Duration;

use wasmtime::UpdateDeadline;

use super::engine::TICK;

/// Per-store deadline state; reset by [`CallClock::start`] before each call.
#[derive(Debug, Default)]
pub(crate) struct CallClock {
    budget: Duration,
    /// The thread's CPU clock at the first tick of the current call.
    base: Option<Duration>,
    /// Ticks seen during the current call.
    ticks: u32,
    /// The current call is a hook call, on the relay's path.
    hook: bool,
}

impl CallClock {
    /// Arms the clock for one call. The caller sets the epoch deadline to
    /// one tick ahead.
    pub(crate) fn start(&mut self, budget: Duration, hook: bool) {
        self.budget = budget;
        self.base = None;
        self.ticks = 0;
        self.hook = hook;
    }

    pub(crate) fn is_hook_call(&self) -> bool {
        self.hook
    }

    /// Takes `waited`, time the host spent off the guest's business during
    /// the call (handing its worker over), out of the charge. The CPU clock
    /// never counted it; the wall-clock fallback did.
    pub(crate) fn exclude(&mut self, waited: Duration) {
        if cfg!(not(unix)) {
            if let Some(base) = &mut self.base {
                *base += waited;
            }
        }
    }

    /// Whether the tick just seen is the one that finds the current call
    /// still running a whole tick after the first: true once per call.
    pub(crate) fn overran(&self) -> bool {
        self.ticks == 2
    }

    /// The store's epoch-deadline callback: called on the guest's thread
    /// each time the epoch passes the deadline during a call.
    pub(crate) fn on_tick(&mut self) -> UpdateDeadline {
        self.ticks = self.ticks.saturating_add(1);
        let now = thread_cpu_time();
        let used = match self.base {
            None if !self.budget.is_zero() => {
                self.base = Some(now);
                // Look again at the next tick (see `overran`).
                return UpdateDeadline::Continue(1);
            }
            None => Duration::ZERO,
            Some(base) => now.saturating_sub(base),
        };
        match self.budget.checked_sub(used) {
            Some(left) if !left.is_zero() => {
                // The guest cannot use `left` of CPU in less than `left` of
                // wall time: no need to look again before then.
                let ticks = (left.as_nanos() / TICK.as_nanos()).max(1);
                UpdateDeadline::Continue(u64::try_from(ticks).unwrap_or(u64::MAX / 2))
            }
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// CPU time consumed by the calling thread.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Elsewhere (Windows), wall time since first use: the thread CPU clock
/// there (`GetThreadTimes`) needs `unsafe` FFI, which this crate forbids.
/// The budget then also charges preemption, as a wall-clock deadline would.
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupts(u: &UpdateDeadline) -> bool {
        matches!(u, UpdateDeadline::Interrupt)
    }

    /// Burns CPU on this thread for at least `d` of CPU time.
    fn spin(d: Duration) {
        let start = thread_cpu_time();
        while thread_cpu_time().saturating_sub(start) < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    #[cfg(unix)] // the wall-clock fallback charges it by design
    fn time_off_the_cpu_is_not_charged() {
        let mut clock = CallClock::default();
        clock.start(Duration::from_millis(20), true);
        assert!(!interrupts(&clock.on_tick()));
        // Wall time passes, CPU time does not: as for a preempted thread.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!interrupts(&clock.on_tick()));
    }

    #[test]
    fn cpu_time_beyond_the_budget_interrupts() {
        let mut clock = CallClock::default();
        clock.start(Duration::from_millis(20), true);
        assert!(!interrupts(&clock.on_tick()));
        spin(Duration::from_millis(5));
        // 15 ms left at most: the next look is no later than that.
        match clock.on_tick() {
            UpdateDeadline::Continue(ticks) => assert!((1..=15).contains(&ticks), "{ticks}"),
            _ => panic!("interrupted early"),
        }
        spin(Duration::from_millis(16));
        assert!(interrupts(&clock.on_tick()));
    }

    #[test]
    fn a_call_alive_a_tick_after_its_first_is_reported_once() {
        let mut clock = CallClock::default();
        clock.start(Duration::from_secs(10), true);
        assert!(matches!(clock.on_tick(), UpdateDeadline::Continue(1)), "the next tick is looked at");
        assert!(!clock.overran(), "a tick may land in any call");
        assert!(!interrupts(&clock.on_tick()));
        assert!(clock.overran(), "still running a tick later");
        assert!(!interrupts(&clock.on_tick()));
        assert!(!clock.overran(), "reported once");
        clock.start(Duration::from_secs(10), true);
        clock.on_tick();
        assert!(!clock.overran(), "a new call starts afresh");
    }

    #[test]
    fn each_call_starts_afresh() {
        let mut clock = CallClock::default();
        clock.start(Duration::from_millis(5), true);
        clock.on_tick();
        spin(Duration::from_millis(6));
        assert!(interrupts(&clock.on_tick()));
        clock.start(Duration::from_millis(5), true);
        assert!(!interrupts(&clock.on_tick()));
    }
}
