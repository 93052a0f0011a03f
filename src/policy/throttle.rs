//! [`Throttle`]: at most `limit` log lines per `interval`, the rest counted.
//!
//! A misbehaving policy can fail, log or print on every message; the
//! counters carry the volume, the log gets a sample. The first line of each
//! interval passes and reports how many were held back in the previous
//! ones, so the caller can log one "N suppressed" summary.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub(crate) struct Throttle {
    limit: u32,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    /// Start of the current interval; `None` before the first line.
    since: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl Throttle {
    pub(crate) fn new(limit: u32, interval: Duration) -> Self {
        Self { limit, interval, state: Mutex::new(State { since: None, passed: 0, suppressed: 0 }) }
    }

    /// `Some(n)` when this line may be logged, `n` being the lines held
    /// back since the last one that passed; `None` when it is held back.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        if s.since.is_none_or(|t| now.saturating_duration_since(t) >= self.interval) {
            s.since = Some(now);
            s.passed = 0;
        }
        if s.passed < self.limit {
            s.passed += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_limit_per_interval_and_reports_the_rest() {
        let t = Throttle::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(t.admit(t0 + Duration::from_secs(1)), None);
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.admit(later), Some(5), "the next interval's first line carries the count");
        assert_eq!(t.admit(later), Some(0));
        assert_eq!(t.admit(later), None);
    }

    #[test]
    fn zero_limit_holds_everything_back() {
        let t = Throttle::new(0, Duration::from_secs(1));
        assert_eq!(t.admit(Instant::now()), None);
    }
}
