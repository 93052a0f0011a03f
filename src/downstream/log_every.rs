//! At most one log line per kind of event per interval. Refusals come in
//! floods (an auth storm, a port scan): the metrics carry the volume, the
//! log keeps one line per kind, with how many were left out since.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The interval both the listener's and the handshake's refusals use.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct LogEvery<K> {
    every: Duration,
    last: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Eq + Hash> LogEvery<K> {
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last: Mutex::default() }
    }

    pub(crate) fn every(&self) -> Duration {
        self.every
    }

    /// `Some(n)` when this event is to be logged, `n` being how many of its
    /// kind were not since the last line; `None` when it is only counted.
    pub(crate) fn check(&self, kind: K) -> Option<u64> {
        self.check_at(kind, Instant::now())
    }

    fn check_at(&self, kind: K, now: Instant) -> Option<u64> {
        let mut last = self.last.lock();
        match last.get_mut(&kind) {
            Some((at, n)) if now.duration_since(*at) < self.every => {
                *n += 1;
                None
            }
            Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_left_out() {
        let log = LogEvery::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.check_at("a", t0), Some(0), "the first is logged");
        assert_eq!(log.check_at("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.check_at("a", t0 + Duration::from_secs(9)), None);
        assert_eq!(log.check_at("b", t0 + Duration::from_secs(9)), Some(0), "another kind has its own interval");
        assert_eq!(log.check_at("a", t0 + Duration::from_secs(10)), Some(2), "then one line saying 2 were left out");
        assert_eq!(log.check_at("a", t0 + Duration::from_secs(11)), None);
    }
}
