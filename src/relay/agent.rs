//! The core's handle on one agent session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::MoveKind;
use super::budget::Held;
use super::doorbell::{Doorbell, Rings};
use super::identity::Identity;
use crate::telemetry::metrics as m;

/// A server→agent frame waiting in an agent's queue.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Complete WebSocket payload (header + protobuf).
    pub frame: Bytes,
    /// The link it arrived on (for capability replay).
    pub link: u32,
    /// The server set `custom_capabilities` itself.
    pub has_capabilities: bool,
    pub received: Instant,
}

/// Why the gateway closed an agent; also the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The agent closed or vanished.
    Peer = 0,
    /// Its queue filled: it reads slower than the server writes.
    SlowConsumer,
    /// A write to it exceeded the deadline.
    WriteTimeout,
    /// No frame (not even a pong) within two keepalive intervals.
    Dead,
    /// Malformed input (bad protobuf, bad uid, non-zero header).
    Protocol,
    /// A text frame: OpAMP is binary only.
    TextFrame,
    /// Message over the size limit.
    TooBig,
    /// A filter policy asked to close it.
    Policy,
    /// Its link died and no other link could take it.
    NoUpstream,
    /// Its link died and the server refused the re-handshake.
    Rejected,
    /// The gateway is shutting down.
    Shutdown,
    /// A message named a uid this connection does not speak for.
    UidMismatch,
    /// Its uid is owned by another live connection with other credentials.
    UidInUse,
    /// An ordinary agent sent a gateway-capability custom message.
    ForgedHandshake,
    /// The same agent reconnected (same uid, same credentials) on a new
    /// connection before this one was known dead.
    Superseded,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Dead => "keepalive_timeout",
            CloseReason::Protocol => "protocol_error",
            CloseReason::TextFrame => "text_frame",
            CloseReason::TooBig => "message_too_big",
            CloseReason::Policy => "policy",
            CloseReason::NoUpstream => "no_upstream",
            CloseReason::Rejected => "rejected",
            CloseReason::Shutdown => "shutdown",
            CloseReason::UidMismatch => "uid_mismatch",
            CloseReason::UidInUse => "uid_in_use",
            CloseReason::ForgedHandshake => "forged_handshake",
            CloseReason::Superseded => "superseded",
        }
    }

    /// The WebSocket close code to send (RFC 6455 §7.4.1).
    pub(crate) fn close_code(self) -> u16 {
        match self {
            CloseReason::Peer | CloseReason::Superseded => 1000,
            CloseReason::Shutdown => 1001,
            CloseReason::Protocol => 1007,
            CloseReason::TextFrame => 1003,
            CloseReason::Policy
            | CloseReason::Rejected
            | CloseReason::UidMismatch
            | CloseReason::UidInUse
            | CloseReason::ForgedHandshake => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::SlowConsumer | CloseReason::WriteTimeout | CloseReason::NoUpstream => 1013,
            CloseReason::Dead => 1011,
        }
    }
}

/// Shared between the agent's session task and the rest of the gateway.
#[derive(Debug)]
pub(crate) struct AgentShared {
    pub id: u64,
    /// Server messages waiting for the agent, read through its [`Inbox`]. A
    /// deque, not a channel: an idle agent's queue costs nothing until its first
    /// message and a few slots after (a channel block is 32 slots).
    queue: Mutex<Queue>,
    queue_cap: usize,
    /// Wakes the session: a message queued, close asked, frames returned,
    /// move asked.
    doorbell: Doorbell,
    closing: CancellationToken,
    /// Set once: the first reason wins, atomically.
    reason: OnceLock<CloseReason>,
    /// Frames waiting for a link: handed back by a dead one, or read while
    /// the agent had none (a server restart). Replayed in order on its next
    /// link, each keeping its share of the buffer budget, so the total is
    /// bounded by `listener.max_buffered_bytes`.
    returned: Mutex<VecDeque<(Bytes, Held)>>,
    /// `server.failover_queue`: beyond this many, the oldest are dropped.
    returned_cap: usize,
    /// Whether the first overflow was logged (once per agent).
    overflow_logged: AtomicBool,
    capabilities_sent: AtomicBool,
    first_reply_sent: AtomicBool,
    /// Uids the server assigned this agent (routed here before first use).
    aliases: Mutex<Vec<Bytes>>,
    identity: Identity,
    /// The link this session is leased on (`NO_LINK` for none yet), read by
    /// the rebalancer to pick agents off a crowded link.
    link: AtomicU32,
    /// The rebalancer's planned-move request (see [`MoveState`]).
    move_state: AtomicU8,
    /// What the pending request is for: 0 rebalance, 1 reroute.
    move_kind: AtomicU8,
}

struct Queue {
    items: VecDeque<Inbound>,
    /// False once the [`Inbox`] is gone (the session ended).
    open: bool,
    /// The session took a message and has not finished writing it: a
    /// message after it must not overtake it on the express lane.
    in_flight: bool,
    /// The express lane to the agent's socket, while the session has one.
    express: Option<Box<dyn Express>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("items", &self.items.len())
            .field("open", &self.open)
            .field("in_flight", &self.in_flight)
            .field("express", &self.express.is_some())
            .finish()
    }
}

/// A way to write a server message straight to the agent's socket from the
/// task that has it (the link), instead of queueing it and waking the
/// session to write it: one task wake-up, and often a cross-thread one,
/// less per message. Taken only when nothing is queued or being written
/// before the message, so order is kept.
pub(crate) trait Express: Send + Sync {
    /// Delivers `msg` now, or gives it back to be queued (the lane is busy,
    /// the message needs the session's filter phase, ...).
    fn try_deliver(&self, agent: &AgentShared, msg: Inbound) -> Result<(), Inbound>;
}

/// The receiving end of an agent's queue, held by its session.
#[derive(Debug)]
pub(crate) struct Inbox(Arc<AgentShared>);

impl Inbox {
    /// The next queued message, waiting for one. Cancel-safe: a message is
    /// taken only when returned.
    pub(crate) async fn recv(&mut self) -> Option<Inbound> {
        loop {
            if let Some(msg) = self.0.queue.lock().items.pop_front() {
                return Some(msg);
            }
            // A message queued since the check left its ring: no lost wake-up.
            self.0.doorbell.wait(Rings::QUEUED).await;
        }
    }

    /// The next queued message, if any, without waiting. The express lane
    /// stays shut until [`Inbox::written`], so nothing overtakes it.
    pub(crate) fn take_to_write(&mut self) -> Option<Inbound> {
        let mut q = self.0.queue.lock();
        let msg = q.items.pop_front();
        q.in_flight = msg.is_some();
        msg
    }

    /// The message from [`Inbox::take_to_write`] is written (or dropped).
    pub(crate) fn written(&mut self) {
        self.0.queue.lock().in_flight = false;
    }

    /// Opens the express lane (see [`Express`]).
    pub(crate) fn open_express(&mut self, lane: Box<dyn Express>) {
        self.0.queue.lock().express = Some(lane);
    }

    /// Shuts the express lane for good: the session is about to write its
    /// last frames (a parting message, the close), which nothing may follow.
    pub(crate) fn close_express(&mut self) {
        let lane = self.0.queue.lock().express.take();
        drop(lane); // outside the lock
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let left = {
            let mut q = self.0.queue.lock();
            q.open = false;
            (std::mem::take(&mut q.items), q.express.take())
        };
        drop(left); // outside the lock
    }
}

/// Where an agent stands with the rebalancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum MoveState {
    /// May be asked to move.
    Idle = 0,
    /// Asked; the session has not finished the move yet.
    Requested = 1,
    /// A move left it where it was (its assign policy chose this link, or
    /// the handshake failed): not asked again, so it is not churned.
    Stays = 2,
}

/// [`AgentShared::link`] before the session has a lease.
pub(crate) const NO_LINK: u32 = u32::MAX;

impl AgentShared {
    /// `queue_size` server messages may wait for the agent; `failover_queue`
    /// of its own messages may wait for a link.
    pub(crate) fn new(id: u64, queue_size: usize, failover_queue: usize, identity: Identity) -> (Arc<Self>, Inbox) {
        let shared = Self {
            id,
            queue: Mutex::new(Queue { items: VecDeque::new(), open: true, in_flight: false, express: None }),
            queue_cap: queue_size.max(1),
            doorbell: Doorbell::default(),
            closing: CancellationToken::new(),
            reason: OnceLock::new(),
            returned: Mutex::new(VecDeque::new()),
            returned_cap: failover_queue.max(1),
            overflow_logged: AtomicBool::new(false),
            capabilities_sent: AtomicBool::new(false),
            first_reply_sent: AtomicBool::new(false),
            aliases: Mutex::new(Vec::new()),
            identity,
            link: AtomicU32::new(NO_LINK),
            move_state: AtomicU8::new(MoveState::Idle as u8),
            move_kind: AtomicU8::new(0),
        };
        let shared = Arc::new(shared);
        (shared.clone(), Inbox(shared))
    }

    /// Delivers a server message on the express lane when it is free, or
    /// queues it without waiting: a full queue means this agent is too slow,
    /// and waiting would stall every agent on the link.
    pub(crate) fn offer(&self, msg: Inbound) -> Result<(), CloseReason> {
        {
            let mut q = self.queue.lock();
            if !q.open {
                return Err(CloseReason::Peer); // the session already ended; its routes are about to go
            }
            // Under the queue's lock, so no message queued or taken
            // meanwhile can be written before this one.
            let msg = match &q.express {
                Some(lane) if q.items.is_empty() && !q.in_flight => match lane.try_deliver(self, msg) {
                    Ok(()) => return Ok(()),
                    Err(msg) => msg,
                },
                _ => msg,
            };
            if q.items.len() < self.queue_cap {
                q.items.push_back(msg);
                drop(q);
                self.doorbell.ring(Rings::QUEUED);
                return Ok(());
            }
        }
        self.close(CloseReason::SlowConsumer);
        Err(CloseReason::SlowConsumer)
    }

    /// Asks the session to close; the first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.closing.cancel();
            self.doorbell.ring(Rings::CLOSING);
        }
    }

    /// A close was asked (the session may not have seen it yet).
    pub(crate) fn is_closing(&self) -> bool {
        self.reason.get().is_some()
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub(crate) fn close_reason(&self) -> CloseReason {
        self.reason.get().copied().unwrap_or(CloseReason::Peer)
    }

    /// Keeps a frame for the agent's next link: one a dying link returns,
    /// or one read while the agent has no link. Over `failover_queue`, the
    /// oldest is dropped: counted, and logged once per agent.
    pub(crate) fn hand_back(&self, frame: Bytes, held: Held) {
        let dropped = {
            let mut returned = self.returned.lock();
            returned.push_back((frame, held));
            let over = returned.len().saturating_sub(self.returned_cap);
            returned.drain(..over).count()
        };
        if dropped > 0 {
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "failover_queue_full")
                .increment(dropped as u64);
            if !self.overflow_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    agent = self.id,
                    limit = self.returned_cap,
                    "agent's messages waiting for a link exceed server.failover_queue; dropping the oldest \
                     (further drops for this agent: opampgateway_messages_dropped_total{{reason=\"failover_queue_full\"}} only)"
                );
            }
        }
        self.doorbell.ring(Rings::RETURNED);
    }

    /// Resolves with why the session was woken (see [`Rings`]), taking
    /// those rings; the session is its only waiter.
    pub(crate) async fn rung(&self) -> Rings {
        self.doorbell.wait(Rings::ALL).await
    }

    /// The express lane left bytes the socket would not take yet: the
    /// session writes them when it can (within `listener.write_timeout`).
    pub(crate) fn ring_flush(&self) {
        self.doorbell.ring(Rings::FLUSH);
    }

    pub(crate) fn take_returned(&self) -> VecDeque<(Bytes, Held)> {
        std::mem::take(&mut *self.returned.lock())
    }

    /// True exactly once: the first time the agent is due its capabilities.
    pub(crate) fn claim_capabilities(&self) -> bool {
        !self.capabilities_sent.swap(true, Ordering::Relaxed)
    }

    /// Who is on this connection (credential digest, agent or gateway).
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the server assigned this agent `uid` (it may then use it).
    pub(crate) fn has_alias(&self, uid: &[u8]) -> bool {
        self.aliases.lock().iter().any(|a| a == uid)
    }

    /// Remembers a server-assigned uid routed to this agent.
    pub(crate) fn add_alias(&self, uid: Bytes) {
        // Its own copy: a slice would keep the server message it came in.
        self.aliases.lock().push(Bytes::copy_from_slice(&uid));
    }

    pub(crate) fn take_aliases(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.aliases.lock())
    }

    /// True exactly once: for the first `ServerToAgent` this agent is sent,
    /// which the spec says MUST carry the server's `capabilities`.
    pub(crate) fn claim_first_reply(&self) -> bool {
        !self.first_reply_sent.swap(true, Ordering::Relaxed)
    }

    /// The link the session is on now.
    pub(crate) fn link(&self) -> u32 {
        self.link.load(Ordering::Relaxed)
    }

    pub(crate) fn set_link(&self, index: u32) {
        self.link.store(index, Ordering::Relaxed);
    }

    /// Tells the session its link may be gone ([`super::rebalance::Movable::link_lost`]).
    pub(crate) fn ring_link_lost(&self) {
        self.doorbell.ring(Rings::LINK_LOST);
    }

    pub(crate) fn move_state(&self) -> MoveState {
        match self.move_state.load(Ordering::Relaxed) {
            0 => MoveState::Idle,
            1 => MoveState::Requested,
            _ => MoveState::Stays,
        }
    }

    /// Asks the session to move to a less-loaded link; false if it was not
    /// idle (already asked, or known to stay).
    pub(crate) fn request_move(&self) -> bool {
        self.request(MoveState::Idle, MoveKind::Rebalance)
    }

    /// Asks the session to follow its route after a policy reload: even an
    /// agent that stayed last time is asked (the policies changed); false
    /// while a move is already being made.
    pub(crate) fn request_reroute(&self) -> bool {
        self.reconsider_move();
        self.request(MoveState::Idle, MoveKind::Reroute)
    }

    fn request(&self, from: MoveState, kind: MoveKind) -> bool {
        let asked = self
            .move_state
            .compare_exchange(from as u8, MoveState::Requested as u8, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if asked {
            self.move_kind.store(kind as u8, Ordering::Release);
            self.doorbell.ring(Rings::MOVE);
        }
        asked
    }

    /// What the pending move request is for.
    pub(crate) fn move_kind(&self) -> MoveKind {
        match self.move_kind.load(Ordering::Acquire) {
            0 => MoveKind::Rebalance,
            _ => MoveKind::Reroute,
        }
    }

    /// Makes an agent that stayed eligible again (links changed).
    pub(crate) fn reconsider_move(&self) {
        let _ = self.move_state.compare_exchange(
            MoveState::Stays as u8,
            MoveState::Idle as u8,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The session finished a requested move: `moved` or it stays put.
    pub(crate) fn move_done(&self, moved: bool) {
        let next = if moved { MoveState::Idle } else { MoveState::Stays };
        self.move_state.store(next as u8, Ordering::Release);
    }

    /// The server sent this agent capabilities itself: nothing to replay.
    pub(crate) fn capabilities_delivered(&self) {
        self.capabilities_sent.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::identity::{Credential, Identity};

    #[test]
    fn the_first_close_reason_wins_even_under_races() {
        let (agent, _rx) = AgentShared::new(1, 1, 1, Identity::agent(Credential::none()));
        let reasons = [CloseReason::SlowConsumer, CloseReason::Shutdown, CloseReason::Policy, CloseReason::Dead];
        std::thread::scope(|s| {
            for r in reasons {
                let agent = &agent;
                s.spawn(move || agent.close(r));
            }
        });
        assert!(agent.closing().is_cancelled());
        let winner = agent.close_reason();
        assert!(reasons.contains(&winner));
        agent.close(CloseReason::Peer);
        assert_eq!(agent.close_reason(), winner, "later reasons never overwrite the first");
    }

    #[tokio::test]
    async fn the_queue_is_bounded_ordered_and_closed_with_its_inbox() {
        let msg =
            |n: u8| Inbound { frame: Bytes::from(vec![n]), link: 0, has_capabilities: false, received: Instant::now() };
        let (agent, mut inbox) = AgentShared::new(1, 2, 1, Identity::agent(Credential::none()));
        agent.offer(msg(1)).unwrap();
        agent.offer(msg(2)).unwrap();
        assert_eq!(inbox.recv().await.unwrap().frame[0], 1);
        agent.offer(msg(3)).unwrap();
        assert_eq!(agent.offer(msg(4)), Err(CloseReason::SlowConsumer), "a full queue closes the agent");
        assert_eq!(agent.close_reason(), CloseReason::SlowConsumer);
        assert_eq!(inbox.recv().await.unwrap().frame[0], 2);
        assert_eq!(inbox.recv().await.unwrap().frame[0], 3);
        drop(inbox);
        assert_eq!(agent.offer(msg(5)), Err(CloseReason::Peer), "no session: nothing is queued");
    }

    /// A lane that records what it delivered, or refuses while `busy`
    /// (as a full socket does).
    struct Recorder {
        delivered: Arc<Mutex<Vec<u8>>>,
        busy: Arc<AtomicBool>,
    }

    impl Express for Recorder {
        fn try_deliver(&self, _agent: &AgentShared, msg: Inbound) -> Result<(), Inbound> {
            if self.busy.load(Ordering::Relaxed) {
                return Err(msg);
            }
            self.delivered.lock().push(msg.frame[0]);
            Ok(())
        }
    }

    #[test]
    fn the_express_lane_is_taken_only_with_nothing_queued_or_being_written() {
        let msg =
            |n: u8| Inbound { frame: Bytes::from(vec![n]), link: 0, has_capabilities: false, received: Instant::now() };
        let (agent, mut inbox) = AgentShared::new(1, 8, 1, Identity::agent(Credential::none()));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicBool::new(false));
        inbox.open_express(Box::new(Recorder { delivered: delivered.clone(), busy: busy.clone() }));
        let queued = |inbox: &mut Inbox| inbox.take_to_write().map(|m| m.frame[0]);

        agent.offer(msg(1)).unwrap(); // nothing ahead: straight through
        busy.store(true, Ordering::Relaxed);
        agent.offer(msg(2)).unwrap(); // refused: queued
        busy.store(false, Ordering::Relaxed);
        agent.offer(msg(3)).unwrap(); // 2 is queued ahead of it
        assert_eq!(queued(&mut inbox), Some(2));
        assert_eq!(queued(&mut inbox), Some(3), "the session takes 3 and is writing it");
        agent.offer(msg(4)).unwrap(); // the queue is empty, but 3 is not written yet
        assert_eq!(*delivered.lock(), [1], "nothing overtakes a message being written");
        inbox.written();
        assert_eq!(queued(&mut inbox), Some(4));
        inbox.written();
        agent.offer(msg(5)).unwrap();
        assert_eq!(*delivered.lock(), [1, 5], "with nothing ahead, the lane is taken again");
        inbox.close_express();
        agent.offer(msg(6)).unwrap();
        assert_eq!(queued(&mut inbox), Some(6), "once shut, the session's queue is the only way");
        assert_eq!(*delivered.lock(), [1, 5]);
    }

    #[test]
    fn frames_waiting_for_a_link_are_bounded_oldest_dropped_first_and_keep_their_share() {
        let budget = crate::relay::Budget::new(1000);
        let (agent, _rx) = AgentShared::new(1, 1, 3, Identity::agent(Credential::none()));
        for i in 0..5u8 {
            let held = budget.try_take(10).expect("room");
            agent.hand_back(Bytes::from(vec![i]), held);
        }
        assert_eq!(budget.in_flight(), 30, "the two dropped gave their share back");
        let kept: Vec<u8> = agent.take_returned().into_iter().map(|(f, _)| f[0]).collect();
        assert_eq!(kept, [2, 3, 4], "the newest, in order");
        assert_eq!(budget.in_flight(), 0);
    }
}
