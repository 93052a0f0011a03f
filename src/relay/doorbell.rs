//! One wake-up signal per agent session (and per upstream link), with a
//! bit per reason.
//!
//! A session used to wait on six separate signals (its queue, its close,
//! frames handed back, a move request, its link's loss, gateway shutdown),
//! each a `Notify`, a watch or a cancellation token whose waiter is
//! registered and removed under a mutex every time the session goes back to
//! sleep: several lock round trips per relayed message, two of them on locks
//! every session of a link, or of the gateway, shares. Here a
//! ring is an atomic `or` and a wake; a wait is an atomic `and` and a waker
//! registration. No lock either way.
//!
//! A link task waits on one too, for the same reason (it used to poll the
//! gateway's shutdown token and its rotation watch, four lock round trips,
//! on every frame it read or batch it wrote): `CLOSING` is gateway shutdown,
//! `MOVE` a requested rotation.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// Why the session was woken; several may be rung before it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rings(u8);

impl Rings {
    /// Server messages are queued for the agent.
    pub(crate) const QUEUED: Self = Self(1);
    /// The session is asked to close (its reason is on the agent).
    pub(crate) const CLOSING: Self = Self(1 << 1);
    /// A dead link handed frames back for the next one.
    pub(crate) const RETURNED: Self = Self(1 << 2);
    /// The rebalancer or a reroute asked for a planned move.
    pub(crate) const MOVE: Self = Self(1 << 3);
    /// The session's link was lost (or may have been: the session checks).
    pub(crate) const LINK_LOST: Self = Self(1 << 4);
    /// The express lane left bytes for the session to write.
    pub(crate) const FLUSH: Self = Self(1 << 5);
    pub(crate) const ALL: Self = Self(0b11_1111);

    pub(crate) fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) const fn or(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The bell. One waiter at a time: the agent's session task (or, for an
/// HTTP agent, the poll waiting on its queue; or a link's task).
#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    rung: AtomicU8,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Records `why` and wakes the waiter.
    pub(crate) fn ring(&self, why: Rings) {
        self.rung.fetch_or(why.0, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Resolves with the rings among `mask`, taking them (others stay for a
    /// later wait). A ring between two waits is never lost.
    pub(crate) fn wait(&self, mask: Rings) -> impl Future<Output = Rings> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(rung) = self.take(mask) {
                return Poll::Ready(rung);
            }
            self.waker.register(cx.waker());
            // A ring between the take and the registration woke no one.
            match self.take(mask) {
                Some(rung) => Poll::Ready(rung),
                None => Poll::Pending,
            }
        })
    }

    fn take(&self, mask: Rings) -> Option<Rings> {
        let rung = self.rung.fetch_and(!mask.0, Ordering::AcqRel) & mask.0;
        (rung != 0).then_some(Rings(rung))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn rings_are_kept_until_taken_and_wake_a_waiting_task() {
        let bell = Arc::new(Doorbell::default());
        bell.ring(Rings::QUEUED);
        bell.ring(Rings::MOVE);
        // Only the asked-for bits are taken.
        assert_eq!(bell.wait(Rings::QUEUED).await, Rings::QUEUED);
        let rest = bell.wait(Rings::ALL).await;
        assert!(rest.contains(Rings::MOVE) && !rest.contains(Rings::QUEUED));

        let waiter = tokio::spawn({
            let bell = bell.clone();
            async move { bell.wait(Rings::ALL).await }
        });
        tokio::task::yield_now().await;
        bell.ring(Rings::CLOSING);
        assert_eq!(waiter.await.unwrap(), Rings::CLOSING);
    }
}
