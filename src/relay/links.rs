//! Upstream link slots: load accounting, state and the send queue.
//!
//! A slot exists for the gateway's lifetime; the WebSocket behind it comes
//! and goes. Each loss bumps the slot's *generation*. Frames carry the
//! generation they were queued under, so a frame queued for a connection
//! that has since died is never written to its successor (where the server
//! has not seen that agent's handshake) — it is handed back to its agent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::agent::AgentShared;
use super::doorbell::{Doorbell, Rings};
use crate::policy::{LinkInfo, UpstreamInfo};

/// A frame bound for the server.
#[derive(Debug)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Outbound {
    /// Complete WebSocket payload (header + protobuf).
    pub frame: Bytes,
    /// The generation of the link this was queued for.
    pub(crate) generation: u64,
    /// The agent to hand the frame back to if the link dies first; `None`
    /// for the gateway's own messages (handshakes, synthesized disconnects).
    pub(crate) agent: Option<Arc<AgentShared>>,
    /// When the gateway received the message (for the latency metric).
    pub(crate) received: Instant,
    /// The message's share of the buffer budget, given back when the link
    /// task has written the frame or handed it back.
    #[allow(dead_code)] // never read: dropping it gives the bytes back
    pub(crate) held: super::Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub generation: u64,
    pub connected: bool,
}

/// One upstream link slot.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Link {
    /// Gateway-wide slot number: the default upstream's links come first,
    /// so there it equals [`Link::local`].
    pub(crate) index: u32,
    /// Which upstream (index into [`Links::upstreams`]).
    pub(crate) upstream: usize,
    /// The number within its upstream: what policies and metrics see.
    pub(crate) local: u32,
    upstream_name: Arc<str>,
    tx: mpsc::Sender<Outbound>,
    state: watch::Sender<LinkState>,
    /// `custom_capabilities` the server sent on the current connection (raw
    /// protobuf), replayed into each agent's first message.
    capabilities: ArcSwapOption<Bytes>,
    /// The server's `capabilities` bits as last seen on this link (0: not
    /// yet), for the messages the gateway writes to agents itself.
    server_capabilities: AtomicU64,
    /// Shared by all slots: bumped whenever any link connects.
    any_up: Arc<watch::Sender<u64>>,
    /// When the current connection came up (`server.max_link_age`).
    connected_at: Mutex<Option<Instant>>,
    /// Being rotated out: admissions and moves go elsewhere.
    retiring: AtomicBool,
    /// The generation whose connection should close for rotation.
    rotate: Mutex<Option<u64>>,
    /// Wakes the link task: `CLOSING` at shutdown, `MOVE` for a rotation.
    bell: Doorbell,
}

impl Link {
    /// The link's name within its upstream, as the reference gateway names
    /// its connections (also the connection-id header the server sees).
    pub(crate) fn id(&self) -> String {
        format!("upstream-{}", self.local)
    }

    /// The upstream's name (`default` for `server`).
    pub(crate) fn upstream_name(&self) -> &Arc<str> {
        &self.upstream_name
    }

    pub(crate) fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Queues a frame; waits while the queue is full (back-pressure).
    /// `Err` returns the frame when the link task is gone.
    ///
    /// The wait is boxed: this future is part of every agent session's
    /// task, idle or not, and the channel's `send` future is a few hundred
    /// bytes. A queue with room (nearly always) takes the frame at once.
    pub(crate) async fn send(&self, out: Outbound) -> Result<(), Outbound> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(out)) => Err(out),
            Err(mpsc::error::TrySendError::Full(out)) => Box::pin(self.tx.send(out)).await.map_err(|e| e.0),
        }
    }

    pub(crate) fn capabilities(&self) -> Option<Arc<Bytes>> {
        self.capabilities.load_full()
    }

    pub(crate) fn set_capabilities(&self, raw: Bytes) {
        self.capabilities.store(Some(Arc::new(raw)));
    }

    /// The capabilities to claim in a message the gateway writes itself:
    /// the server's own, or `AcceptsStatus` (which every server has) until
    /// the server has said.
    pub(crate) fn server_capabilities(&self) -> u64 {
        match self.server_capabilities.load(Ordering::Relaxed) {
            0 => crate::protocol::compose::ACCEPTS_STATUS,
            c => c,
        }
    }

    pub(crate) fn set_server_capabilities(&self, bits: u64) {
        self.server_capabilities.store(bits, Ordering::Relaxed);
    }

    /// Called by the link task when its connection is up.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn mark_connected(&self) -> u64 {
        self.capabilities.store(None);
        *self.connected_at.lock() = Some(Instant::now());
        self.retiring.store(false, Ordering::Relaxed);
        self.state.send_modify(|s| s.connected = true);
        self.any_up.send_modify(|n| *n += 1);
        self.state().generation
    }

    /// Called by the link task after a loss, once it has handed back every
    /// queued frame: wakes the agents of this link so they migrate.
    pub(crate) fn mark_lost(&self) {
        self.capabilities.store(None);
        *self.connected_at.lock() = None;
        self.retiring.store(false, Ordering::Relaxed);
        self.state.send_modify(|s| {
            s.connected = false;
            s.generation += 1;
        });
    }
}

/// Link rotation (`server.max_link_age`, see `relay::rotation`).
impl Link {
    /// How long the current connection has been up; `None` while down.
    pub(crate) fn age(&self) -> Option<std::time::Duration> {
        self.connected_at.lock().map(|t| t.elapsed())
    }

    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    pub(crate) fn set_retiring(&self, retiring: bool) {
        self.retiring.store(retiring, Ordering::Relaxed);
    }

    /// Asks the link task to close connection `generation` and redial.
    pub(crate) fn request_rotation(&self, generation: u64) {
        *self.rotate.lock() = Some(generation);
        self.bell.ring(Rings::MOVE);
    }

    /// Whether rotation of connection `generation` was asked (a `MOVE`
    /// ring may be for an earlier connection).
    pub(crate) fn rotation_requested(&self, generation: u64) -> bool {
        *self.rotate.lock() == Some(generation)
    }

    /// Tells the link task the gateway is shutting down.
    pub(crate) fn shut_down(&self) {
        self.bell.ring(Rings::CLOSING);
    }

    /// Resolves when shutdown or a rotation was rung since the last wait.
    pub(crate) fn rung(&self) -> impl std::future::Future<Output = Rings> + '_ {
        self.bell.wait(Rings::CLOSING.or(Rings::MOVE))
    }

    /// Usable for new admissions and moves.
    fn open(&self) -> bool {
        self.state().connected && !self.is_retiring()
    }
}

/// One upstream's slots: `slots[first..first + len]`.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) name: Arc<str>,
    first: usize,
    len: usize,
}

impl Upstream {
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.len
    }
}

/// All slots of every upstream plus their loads. Loads change only through
/// [`LinkLease`]. Slots are numbered gateway-wide, upstream after upstream,
/// the default (`server`) first.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Links {
    slots: Vec<Arc<Link>>,
    upstreams: Vec<Upstream>,
    loads: Mutex<Vec<u32>>,
    any_up: Arc<watch::Sender<u64>>,
}

impl Links {
    /// Creates `n` slots of the default upstream; returns the receivers for
    /// the link tasks.
    #[cfg(any(test, fuzzing))]
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(n: usize, queue: usize) -> (Arc<Self>, Vec<mpsc::Receiver<Outbound>>) {
        Self::with_upstreams(&[(crate::policy::DEFAULT_UPSTREAM, n, queue)])
    }

    /// Creates each upstream's slots, in order (the default first): `(name,
    /// links, send queue per link)`. Returns the receivers for the link
    /// tasks, in slot order.
    pub(crate) fn with_upstreams(pools: &[(&str, usize, usize)]) -> (Arc<Self>, Vec<mpsc::Receiver<Outbound>>) {
        let n = pools.iter().map(|p| p.1).sum();
        let mut slots = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        let mut upstreams = Vec::with_capacity(pools.len());
        let any_up = Arc::new(watch::channel(0).0);
        for (u, &(name, len, queue)) in pools.iter().enumerate() {
            let name: Arc<str> = name.into();
            upstreams.push(Upstream { name: name.clone(), first: slots.len(), len });
            for local in 0..len {
                let (tx, rx) = mpsc::channel(queue);
                let (state, _) = watch::channel(LinkState { generation: 0, connected: false });
                slots.push(Arc::new(Link {
                    index: slots.len() as u32,
                    upstream: u,
                    local: local as u32,
                    upstream_name: name.clone(),
                    tx,
                    state,
                    capabilities: ArcSwapOption::empty(),
                    server_capabilities: AtomicU64::new(0),
                    any_up: any_up.clone(),
                    connected_at: Mutex::new(None),
                    retiring: AtomicBool::new(false),
                    rotate: Mutex::new(None),
                    bell: Doorbell::default(),
                }));
                rxs.push(rx);
            }
        }
        (Arc::new(Self { slots, upstreams, loads: Mutex::new(vec![0; n]), any_up }), rxs)
    }

    /// Every upstream, the default first.
    pub(crate) fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The slot of link `local` of upstream `upstream`.
    pub(crate) fn slot_of(&self, upstream: usize, local: u32) -> Option<u32> {
        let u = self.upstreams.get(upstream)?;
        ((local as usize) < u.len).then(|| (u.first + local as usize) as u32)
    }

    /// The upstream slot `index` belongs to.
    pub(crate) fn upstream_of(&self, index: u32) -> Option<usize> {
        self.slots.get(index as usize).map(|l| l.upstream)
    }

    /// Slots of the same upstream as `index` (none for a missing slot).
    fn siblings(&self, index: u32) -> std::ops::Range<usize> {
        self.upstream_of(index).map_or(0..0, |u| self.upstreams[u].range())
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn get(&self, index: u32) -> Option<&Arc<Link>> {
        self.slots.get(index as usize)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.slots.iter()
    }

    /// Changes whenever some link connects. Subscribe *before* an attempt
    /// that may fail, then wait for a change: "a link is connected" alone is
    /// no reason to retry (the attempt just failed despite it).
    pub(crate) fn link_ups(&self) -> watch::Receiver<u64> {
        self.any_up.subscribe()
    }

    pub(crate) fn connected(&self) -> usize {
        self.slots.iter().filter(|l| l.state().connected).count()
    }

    /// What a policy sees: every upstream, its links numbered within it.
    pub(crate) fn snapshot(&self) -> Vec<UpstreamInfo> {
        let loads = self.loads.lock();
        self.upstreams
            .iter()
            .map(|u| UpstreamInfo {
                name: u.name.to_string(),
                links: u
                    .range()
                    .map(|i| {
                        let l = &self.slots[i];
                        LinkInfo { index: l.local, load: loads[i], connected: l.state().connected }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Agents per upstream.
    pub(crate) fn upstream_loads(&self) -> Vec<u32> {
        let loads = self.loads.lock();
        self.upstreams.iter().map(|u| loads[u.range()].iter().sum()).collect()
    }

    pub(crate) fn loads(&self) -> Vec<u32> {
        self.loads.lock().clone()
    }

    /// The least-loaded connected link of `from`'s upstream, if moving one
    /// agent there from `from` narrows the spread (its load is at least two
    /// below `from`'s).
    pub(crate) fn relief_for(&self, from: u32) -> Option<u32> {
        let loads = self.loads.lock();
        let from_load = *loads.get(from as usize)?;
        self.siblings(from)
            .filter(|&i| i != from as usize && self.slots[i].open())
            .min_by_key(|&i| (loads[i], i))
            .filter(|&i| loads[i] + 1 < from_load)
            .map(|i| i as u32)
    }

    /// Where an agent leaving retiring link `from` goes: the least-loaded
    /// other open link of its upstream, whatever the spread.
    pub(crate) fn rotation_target(&self, from: u32) -> Option<u32> {
        let loads = self.loads.lock();
        self.siblings(from)
            .filter(|&i| i != from as usize && self.slots[i].open())
            .min_by_key(|&i| (loads[i], i))
            .map(|i| i as u32)
    }

    /// Leases a link of the default upstream: see [`Links::lease_in`].
    #[cfg(any(test, fuzzing))]
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn lease(self: &Arc<Self>, preferred: Option<u32>) -> Option<LinkLease> {
        self.lease_in(0, preferred)
    }

    /// Leases slot `preferred` if it is connected and of `upstream`, else
    /// that upstream's least-loaded connected link (lowest index on ties).
    /// A retiring link is taken only when no other of the upstream is
    /// connected. Choice and increment happen under one lock, so a connect
    /// storm balances exactly.
    pub(crate) fn lease_in(self: &Arc<Self>, upstream: usize, preferred: Option<u32>) -> Option<LinkLease> {
        let range = self.upstreams.get(upstream)?.range();
        // One read of each slot's state: the lease must carry the generation
        // its link was seen connected in. Read again later, a loss in between
        // would give a lease on the next generation of a dead link, which
        // `is_stale` cannot tell from a live one; a handshake sent on it
        // waits out `auth_timeout` for an answer that cannot come.
        let seen: Vec<(usize, LinkState, bool)> = range
            .clone()
            .map(|i| {
                let state = self.slots[i].state();
                (i, state, state.connected && !self.slots[i].is_retiring())
            })
            .collect();
        let mut loads = self.loads.lock();
        let (chosen, state) = {
            let least = |usable: fn(&(usize, LinkState, bool)) -> bool| {
                seen.iter().filter(|s| usable(s)).min_by_key(|s| (loads[s.0], s.0))
            };
            let (i, state, _) = preferred
                .and_then(|p| seen.iter().find(|s| s.0 == p as usize && s.2))
                .or_else(|| least(|s| s.2))
                .or_else(|| least(|s| s.1.connected))?;
            (*i, *state)
        };
        loads[chosen] += 1;
        Some(self.lease_seen(chosen, state))
    }

    /// The lease on slot `i` as it was in `seen`: stale at once if the link
    /// was lost since. The caller has counted the load.
    fn lease_seen(self: &Arc<Self>, i: usize, seen: LinkState) -> LinkLease {
        LinkLease { generation: seen.generation, link: self.slots[i].clone(), links: self.clone() }
    }
}

/// One agent's claim on a link. Dropping it is the only way a load goes down.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct LinkLease {
    link: Arc<Link>,
    links: Arc<Links>,
    /// The link generation this agent was admitted under.
    generation: u64,
}

impl LinkLease {
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    pub(crate) fn index(&self) -> u32 {
        self.link.index
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The link this lease was taken on has since been lost.
    pub(crate) fn is_stale(&self) -> bool {
        self.link.state().generation != self.generation
    }
}

impl Drop for LinkLease {
    fn drop(&mut self) {
        let mut loads = self.links.loads.lock();
        let load = &mut loads[self.link.index as usize];
        *load = load.saturating_sub(1);
    }
}

impl std::fmt::Debug for LinkLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkLease({}/upstream-{}@{})", self.link.upstream_name, self.link.local, self.generation)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn up(links: &Links, i: u32) {
        links.get(i).unwrap().mark_connected();
    }

    fn out(byte: u8) -> Outbound {
        Outbound {
            frame: Bytes::from(vec![byte]),
            generation: 0,
            agent: None,
            received: Instant::now(),
            held: Default::default(),
        }
    }

    /// A full queue makes the sender wait (the boxed path), in order, until
    /// the link task takes a frame; a gone link hands the frame back.
    #[tokio::test]
    async fn a_full_queue_holds_the_sender_until_there_is_room() {
        let (links, mut rxs) = Links::new(1, 1);
        let link = links.get(0).unwrap().clone();
        assert!(link.send(out(1)).await.is_ok(), "room: taken at once");
        let mut waiting = std::pin::pin!(link.send(out(2)));
        assert!(waiting.as_mut().now_or_never().is_none(), "the queue is full: the sender waits");
        let mut rx = rxs.pop().unwrap();
        assert_eq!(rx.recv().await.unwrap().frame[..], [1]);
        assert!(waiting.await.is_ok(), "the waiting frame went in once there was room");
        assert_eq!(rx.recv().await.unwrap().frame[..], [2]);
        drop(rx);
        let back = link.send(out(3)).await.expect_err("no link task: the frame comes back");
        assert_eq!(back.frame[..], [3]);
    }

    #[test]
    fn least_connections_and_no_drift() {
        let (links, _rx) = Links::new(3, 8);
        assert!(links.lease(None).is_none(), "nothing connected yet");
        for i in 0..3 {
            up(&links, i);
        }
        let leases: Vec<_> = (0..7).map(|_| links.lease(None).unwrap()).collect();
        assert_eq!(links.loads(), vec![3, 2, 2]);
        assert_eq!(leases.iter().map(|l| l.index()).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2, 0]);
        drop(leases);
        assert_eq!(links.loads(), vec![0, 0, 0]);
    }

    /// The race behind a handshake that hung for `auth_timeout`: the link
    /// is lost after `lease_in` saw it connected and before the lease is
    /// made. The lease must be stale (so the handshake retries elsewhere),
    /// not a lease on the dead link's next generation.
    #[test]
    fn a_link_lost_while_being_leased_gives_a_stale_lease() {
        let (links, _rx) = Links::new(1, 8);
        up(&links, 0);
        let seen = links.slots[0].state();
        links.slots[0].mark_lost();
        let lease = links.lease_seen(0, seen);
        assert!(lease.is_stale(), "a lease taken as the link died must not look live");
        up(&links, 0);
        assert!(lease.is_stale(), "nor come alive when the link reconnects");
        assert!(!links.lease(None).unwrap().is_stale());
    }

    #[test]
    fn relief_only_where_a_move_narrows_the_spread() {
        let (links, _rx) = Links::new(3, 8);
        for i in 0..3 {
            up(&links, i);
        }
        let _on_2: Vec<_> = (0..4).map(|_| links.lease(Some(2)).unwrap()).collect();
        let _on_1 = links.lease(Some(1)).unwrap();
        assert_eq!(links.loads(), vec![0, 1, 4]);
        assert_eq!(links.relief_for(2), Some(0));
        assert_eq!(links.relief_for(1), None, "0 vs 1: a move would only swap them");
        links.get(0).unwrap().mark_lost();
        assert_eq!(links.relief_for(2), Some(1), "only connected links take agents");
    }

    #[test]
    fn a_retiring_link_is_avoided_while_another_is_up() {
        let (links, _rx) = Links::new(2, 8);
        up(&links, 0);
        up(&links, 1);
        links.get(0).unwrap().set_retiring(true);
        assert_eq!(links.lease(None).unwrap().index(), 1);
        assert_eq!(links.lease(Some(0)).unwrap().index(), 1, "not even when preferred");
        assert_eq!(links.rotation_target(0), Some(1));
        assert_eq!(links.relief_for(1), None, "moves never go to a retiring link");
        links.get(1).unwrap().mark_lost();
        assert_eq!(links.lease(None).unwrap().index(), 0, "the last connected link still serves");
        assert_eq!(links.rotation_target(0), None);
        links.get(0).unwrap().mark_connected();
        assert!(!links.get(0).unwrap().is_retiring(), "a new connection starts fresh");
    }

    #[test]
    fn each_upstream_balances_and_moves_within_itself() {
        let (links, _rx) = Links::with_upstreams(&[("default", 2, 8), ("green", 2, 8)]);
        for i in 0..4 {
            up(&links, i);
        }
        assert_eq!(links.slot_of(1, 1), Some(3));
        assert_eq!(links.slot_of(1, 2), None);
        assert_eq!(links.upstream_of(2), Some(1));
        let green: Vec<_> = (0..3).map(|_| links.lease_in(1, None).unwrap()).collect();
        assert_eq!(green.iter().map(|l| l.index()).collect::<Vec<_>>(), [2, 3, 2], "green's own links only");
        let third = links.lease_in(1, Some(0)).unwrap();
        assert_eq!(third.index(), 3, "a slot of another upstream is not preferred");
        let _d = links.lease(None).unwrap();
        assert_eq!(links.loads(), vec![1, 0, 2, 2]);
        assert_eq!(links.upstream_loads(), vec![1, 4]);
        assert_eq!(links.relief_for(0), None, "default's spread is 1");
        links.get(3).unwrap().mark_lost();
        assert_eq!(links.rotation_target(2), None, "green has no other open link; default's do not count");
        let snap = links.snapshot();
        assert_eq!(snap[1].name, "green");
        assert_eq!(snap[1].links[1], LinkInfo { index: 1, load: 2, connected: false }, "numbered within green");
        assert!(links.lease_in(2, None).is_none(), "no such upstream");
    }

    #[test]
    fn preferred_and_loss() {
        let (links, _rx) = Links::new(2, 8);
        up(&links, 0);
        up(&links, 1);
        assert_eq!(links.lease(Some(1)).unwrap().index(), 1);
        let l = links.lease(Some(0)).unwrap();
        assert!(!l.is_stale());
        links.get(0).unwrap().mark_lost();
        assert!(l.is_stale());
        assert_eq!(links.lease(Some(0)).unwrap().index(), 1, "lost link is not leased");
        links.get(1).unwrap().mark_lost();
        assert!(links.lease(None).is_none());
    }
}
