//! Exponential backoff with jitter, so links that fail together (server
//! restart) do not all redial in the same instant.

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffConfig;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    cfg: BackoffConfig,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(cfg: BackoffConfig) -> Self {
        Self { next: cfg.initial_interval, cfg }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.cfg.initial_interval;
    }

    /// The delay before the next attempt; grows the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(self.cfg.multiplier).min(self.cfg.max_interval);
        let j = self.cfg.jitter;
        let factor = if j > 0.0 { rand::rng().random_range(1.0 - j..=1.0 + j) } else { 1.0 };
        base.mul_f64(factor).min(self.cfg.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let cfg = BackoffConfig {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter: 0.2,
        };
        let mut b = Backoff::new(cfg);
        let bases = [100, 200, 400, 800, 1000, 1000];
        for base in bases {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= base * 8 / 10 && d <= (base * 12 / 10).min(1000), "{d} vs {base}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
