//! The gateway-wide budget for agent messages in flight: bytes read from an
//! agent and not yet written upstream (`listener.max_buffered_bytes`).
//!
//! A message takes a [`Held`] share when it has been read and gives it back
//! when its link has written it, or dropped it. The budget is *closed* while
//! a message waits for room, or no room is left: sessions then stop reading
//! their sockets (TCP back-pressure) instead of starting new messages, so
//! what sits outside the budget is at most the message each session was
//! already reading. It reopens once a quarter of it is free again, so a
//! budget hovering near full does not wake every session on each release.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Semaphore, SemaphorePermit};

use crate::policy::throttle::Throttle;
use crate::telemetry::metrics as m;

/// Refusals for want of room are logged at most once per this interval.
pub(crate) const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A message waiting for room; resolves to its share.
pub(crate) type Wait = Pin<Box<dyn Future<Output = Held> + Send>>;

pub(crate) struct Budget {
    /// Free bytes. A [`Held`] share keeps its count, not a permit (a permit
    /// would also keep an `Arc` of the semaphore: two more atomic updates
    /// per message on a line every worker shares).
    room: Semaphore,
    capacity: usize,
    /// Free bytes at which a closed budget reopens.
    reopen_at: usize,
    /// Messages read and waiting for room.
    waiting: AtomicUsize,
    /// Mirror of `open`, so the hot path skips the channel's lock.
    is_open: AtomicBool,
    open: watch::Sender<bool>,
    waits: metrics::Counter,
    refusals: Throttle,
}

impl Budget {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            room: Semaphore::new(capacity),
            capacity,
            reopen_at: (capacity / 4).max(1),
            waiting: AtomicUsize::new(0),
            is_open: AtomicBool::new(true),
            open: watch::Sender::new(true),
            waits: metrics::counter!(m::BUFFER_WAITS),
            refusals: Throttle::new(1, REFUSAL_LOG_INTERVAL),
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of agent messages currently held; published as
    /// `opampgateway_buffered_bytes` when `/metrics` is scraped (a gauge
    /// updated by every message cost two atomic float updates per message
    /// on a line every worker shares).
    pub(crate) fn in_flight(&self) -> usize {
        self.capacity - self.room.available_permits()
    }

    /// Messages read and waiting for room.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Whether a session may start reading a new message. Changes are
    /// announced on [`Budget::watch`].
    pub(crate) fn is_open(&self) -> bool {
        self.is_open.load(Ordering::SeqCst)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    /// A share of `bytes` now, or the wait for it (first come, first served:
    /// a message never overtakes one already waiting).
    pub(crate) fn take(self: &Arc<Self>, bytes: usize) -> Result<Held, Wait> {
        let n = self.permits(bytes);
        if let Ok(permit) = self.room.try_acquire_many(n) {
            return Ok(self.held(permit));
        }
        self.waits.increment(1);
        let waiting = WaitingGuard::new(self.clone());
        Err(Box::pin(async move {
            let permit = waiting.0.room.acquire_many(n).await.expect("the budget's semaphore is never closed");
            waiting.0.held(permit)
        }))
    }

    /// A share of `bytes` if there is room now and nobody is waiting.
    pub(crate) fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Held> {
        let permit = self.room.try_acquire_many(self.permits(bytes)).ok()?;
        Some(self.held(permit))
    }

    /// Whether a refusal may be logged now; `Some(n)`: `n` were not logged
    /// since the last one.
    pub(crate) fn log_refusal(&self) -> Option<u64> {
        self.refusals.admit(tokio::time::Instant::now())
    }

    fn permits(&self, bytes: usize) -> u32 {
        // Never more than the whole budget, or the message would wait forever
        // (a policy's replacement may exceed listener.max_message_size).
        u32::try_from(bytes.min(self.capacity)).unwrap_or(u32::MAX)
    }

    fn held(self: &Arc<Self>, permit: SemaphorePermit<'_>) -> Held {
        let n = permit.num_permits();
        permit.forget(); // given back by `Held`'s drop
        self.update();
        Held(Some((n, self.clone())))
    }

    /// Recomputes open/closed (with hysteresis) after any change.
    fn update(&self) {
        let free = self.room.available_permits();
        let waiting = self.waiting.load(Ordering::SeqCst) > 0;
        let was_open = self.is_open.load(Ordering::SeqCst);
        let want = if was_open { !waiting && free > 0 } else { !waiting && free >= self.reopen_at };
        if want != was_open {
            // Under the channel's lock, so racing updates settle on the truth.
            self.open.send_if_modified(|open| {
                let free = self.room.available_permits();
                let waiting = self.waiting.load(Ordering::SeqCst) > 0;
                let now = if *open { !waiting && free > 0 } else { !waiting && free >= self.reopen_at };
                self.is_open.store(now, Ordering::SeqCst);
                std::mem::replace(open, now) != now
            });
        }
    }
}

/// Counts a message as waiting from the failed attempt until it has its
/// share or its wait is dropped.
struct WaitingGuard(Arc<Budget>);

impl WaitingGuard {
    fn new(budget: Arc<Budget>) -> Self {
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        budget.update();
        Self(budget)
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.update();
    }
}

/// A message's share of the budget, given back on drop. `Held::default()`
/// holds nothing (the gateway's own messages, frames re-sent after a link
/// loss).
#[derive(Default)]
pub(crate) struct Held(Option<(usize, Arc<Budget>)>);

impl Held {
    pub(crate) fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |&(n, _)| n)
    }

    /// A share covering `bytes`: this one when it does, else a new one (a
    /// filter's replacement can be larger than what was read). The old
    /// share is given back before waiting, so two growing messages can never
    /// wait on each other's holds. A share of no budget stays one.
    pub(crate) async fn cover(self, bytes: usize) -> Held {
        let Some(budget) = self.0.as_ref().map(|(_, b)| b.clone()) else { return self };
        if self.bytes() >= bytes.min(budget.capacity) {
            return self;
        }
        drop(self);
        match budget.take(bytes) {
            Ok(held) => held,
            Err(wait) => wait.await,
        }
    }

    /// Adds `other`'s share to this one (both from the same budget).
    pub(crate) fn merge(&mut self, mut other: Held) {
        match (&mut self.0, other.0.take()) {
            (Some((mine, _)), Some((theirs, _))) => *mine += theirs,
            (slot @ None, theirs) => *slot = theirs,
            (Some(_), None) => {}
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((n, budget)) = self.0.take() {
            budget.room.add_permits(n);
            budget.update();
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} bytes)", self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(r: Result<Held, Wait>) -> Held {
        r.unwrap_or_else(|_| panic!("expected room now"))
    }

    fn later(r: Result<Held, Wait>) -> Wait {
        match r {
            Ok(_) => panic!("expected to wait"),
            Err(wait) => wait,
        }
    }

    fn ready<T>(f: impl Future<Output = T>) -> Option<T> {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn closes_while_a_message_waits_and_reopens_at_a_quarter() {
        let b = Budget::new(100);
        let a = now(b.take(60));
        let c = now(b.take(30));
        assert_eq!(b.in_flight(), 90);
        assert!(b.is_open(), "room left, nobody waiting");
        let mut wait = later(b.take(50));
        assert!(!b.is_open(), "closed while a message waits");
        assert_eq!(b.waiting(), 1);
        assert!(ready(wait.as_mut()).is_none());
        assert!(b.try_take(1).is_none(), "nobody overtakes a waiting message");
        drop(a);
        let held = ready(wait.as_mut()).expect("room after a release");
        assert_eq!((held.bytes(), b.waiting(), b.in_flight()), (50, 0, 80));
        drop(wait);
        assert!(!b.is_open(), "20 free is under the quarter");
        drop(c);
        assert!(b.is_open(), "50 free reopens it");
        drop(held);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn a_message_larger_than_the_budget_takes_all_of_it() {
        let b = Budget::new(10);
        let mut h = now(b.take(25));
        assert_eq!(h.bytes(), 10);
        assert!(!b.is_open());
        h.merge(Held::default());
        assert_eq!(h.bytes(), 10);
        drop(h);
        assert!(b.is_open());
    }

    #[test]
    fn an_abandoned_wait_stops_counting() {
        let b = Budget::new(10);
        let h = now(b.take(10));
        let wait = later(b.take(5));
        assert_eq!(b.waiting(), 1);
        drop(wait);
        assert_eq!(b.waiting(), 0);
        drop(h);
        assert!(b.is_open());
    }

    #[test]
    fn a_grown_message_gives_its_share_back_before_waiting_for_a_bigger_one() {
        let b = Budget::new(100);
        let small = now(b.take(10));
        let big = ready(small.cover(40)).expect("room for 40");
        assert_eq!((big.bytes(), b.in_flight()), (40, 40), "the 10 went back");
        let same = ready(big.cover(30)).expect("already covered");
        assert_eq!(same.bytes(), 40);
        // Two growing messages, and no room for either: each gave its share
        // back before waiting, so one release lets both through in turn.
        let other = now(b.take(50));
        let a = now(b.take(5));
        let c = now(b.take(5));
        let mut grow_a = std::pin::pin!(a.cover(60));
        assert!(ready(grow_a.as_mut()).is_none());
        let mut grow_c = std::pin::pin!(c.cover(40));
        assert!(ready(grow_c.as_mut()).is_none());
        // (Given back, the 10 bytes are already reserved for the first
        // waiter: tokio's semaphore hands released permits to the head of
        // its queue.)
        drop(same);
        assert!(ready(grow_a.as_mut()).is_none(), "50 free, 60 wanted");
        drop(other);
        let a = ready(grow_a.as_mut()).expect("60 free after the releases");
        let c = ready(grow_c.as_mut()).expect("then 40");
        assert_eq!((a.bytes(), c.bytes(), b.in_flight()), (60, 40, 100));
        assert_eq!(ready(Held::default().cover(10)).unwrap().bytes(), 0, "the gateway's own frames hold nothing");
    }
}
