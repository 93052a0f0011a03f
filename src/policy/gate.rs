//! [`Gate`]: how many policy calls may run at once, and how many may wait.
//!
//! Policy calls run inline on the relay's tokio workers (a call is about a
//! microsecond; a hop to another thread would cost more than the call). What
//! bounds a misbehaving policy's hold on those workers is this gate: at most
//! `concurrency` chains run at a time, gateway-wide, so a policy that spins
//! to its deadline on every call can occupy at most that many workers, and
//! the others keep moving every agent's bytes. A caller over the limit waits
//! asynchronously (its worker runs other tasks meanwhile); beyond `queue`
//! waiting callers a call is shed, which the chain treats as a failure of
//! each policy it would have called ([`HookError::Overloaded`]).
//!
//! The uncontended path is one compare-and-swap to take a permit and one
//! add to return it: no allocation, no thread hop.
//!
//! [`HookError::Overloaded`]: super::HookError::Overloaded

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::telemetry::metrics as m;

/// The gateway-wide limit on concurrent policy calls.
#[derive(Debug)]
pub struct Gate {
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

/// A turn to call policies, or the decision not to.
#[derive(Debug)]
pub enum Turn<'a> {
    /// Run the chain; the permit is returned when this is dropped.
    Run(SemaphorePermit<'a>),
    /// Too many callers are waiting: do not call, fail each policy.
    Shed,
}

/// Decrements the waiting count even if the waiting future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// `concurrency` is raised to 1.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self { permits: Semaphore::new(concurrency.max(1)), waiting: AtomicUsize::new(0), queue }
    }

    /// Waits for a turn (never blocks the thread).
    pub async fn enter(&self) -> Turn<'_> {
        if let Ok(p) = self.permits.try_acquire() {
            return Turn::Run(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::POLICY_SHED).increment(1);
            return Turn::Shed;
        }
        let _waiting = Waiting(&self.waiting);
        metrics::counter!(m::POLICY_GATE_WAITS).increment(1);
        match self.permits.acquire().await {
            Ok(p) => Turn::Run(p),
            // The semaphore is never closed.
            Err(_) => Turn::Shed,
        }
    }

    /// Callers waiting for a turn now (tests, diagnostics).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Turns free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_limit_waits_and_beyond_the_queue_sheds() {
        let gate = std::sync::Arc::new(Gate::new(1, 1));
        let first = gate.enter().await;
        assert!(matches!(first, Turn::Run(_)));
        // The second waits (in a task), the third finds the queue full.
        let g = gate.clone();
        let second = tokio::spawn(async move { matches!(g.enter().await, Turn::Run(_)) });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(gate.enter().await, Turn::Shed));
        drop(first);
        assert!(second.await.unwrap(), "the waiter got the turn");
        assert_eq!((gate.waiting(), gate.available()), (0, 1));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let gate = Gate::new(1, 1);
        let _held = gate.enter().await;
        let waited = tokio::time::timeout(std::time::Duration::from_millis(1), gate.enter()).await;
        assert!(waited.is_err());
        assert_eq!(gate.waiting(), 0, "a timed-out waiter does not hold a queue place");
    }
}
