//! Rebalancing: when link loads drift apart (links came back after a server
//! restart, say), agents on the crowded links are asked to move, at a
//! bounded rate, without being disconnected.
//!
//! The task only decides who is asked; each session moves itself with the
//! failover re-handshake ([`Relay::admit_move`](super::Relay::admit_move)),
//! keeping its old link until the new one has accepted it. An agent whose
//! assign policy names its current link stays, and is not asked again
//! until a link (re)connects.
//! HTTP agents hold no session (they lease per poll) and are not moved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::agent::{AgentShared, CloseReason, MoveState};
use super::{AdmitRequest, Relay};
use crate::telemetry::metrics as m;

/// `server.rebalance`, as the task uses it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RebalanceSettings {
    pub enabled: bool,
    /// Allowed spread (busiest minus idlest link) as a fraction of the mean
    /// load; never below one agent.
    pub tolerance: f64,
    pub max_moves_per_second: u32,
}

/// How often loads are compared; a tick asks at most a second's moves.
const TICK: Duration = Duration::from_secs(1);

/// A movable session and what it was admitted with (the reroute pass asks
/// the policies about it again).
pub(crate) type MovableSession = (Arc<AgentShared>, Arc<AdmitRequest>);

/// The WebSocket sessions that can be asked to move.
#[derive(Default)]
pub(crate) struct Movable {
    sessions: Mutex<HashMap<u64, MovableSession>>,
}

impl Movable {
    pub(crate) fn register(&self, agent: &Arc<AgentShared>, admit: &Arc<AdmitRequest>) {
        self.sessions.lock().insert(agent.id, (agent.clone(), admit.clone()));
    }

    /// Every session with what it was admitted with.
    pub(crate) fn all(&self) -> Vec<MovableSession> {
        self.sessions.lock().values().cloned().collect()
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.sessions.lock().remove(&id);
    }

    /// Closes every session once `shutdown` is cancelled: sessions wait on
    /// their own doorbell, not on the gateway-wide token (whose waiter list
    /// is a lock every session would take on every message). A session
    /// registered after this sweep checks the token itself.
    pub(crate) async fn close_all_on(&self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        let sessions: Vec<_> = self.sessions.lock().values().map(|e| e.0.clone()).collect();
        for agent in sessions {
            agent.close(CloseReason::Shutdown);
        }
    }

    /// Wakes the sessions on `link`, which its task has just marked lost, so
    /// they fail over. A session that was not listed yet, or was moving onto
    /// `link`, checks its lease after listing itself or setting its link
    /// (`session::check_link` in `downstream`): with a `SeqCst` fence on each side, between
    /// the write and the read of (generation, link), either this sweep sees
    /// the session on `link` or the session sees the new generation.
    pub(crate) fn link_lost(&self, link: u32) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        for a in self.sessions.lock().values().map(|e| &e.0).filter(|a| a.link() == link) {
            a.ring_link_lost();
        }
    }

    /// Agents that stayed put when asked (their assign policy chose their
    /// link, or the handshake failed).
    pub(crate) fn staying(&self) -> usize {
        self.sessions.lock().values().map(|e| &e.0).filter(|a| a.move_state() == MoveState::Stays).count()
    }

    /// Agents on `link` that stayed may be asked again (it is retiring).
    pub(crate) fn reconsider_on(&self, link: u32) {
        for a in self.sessions.lock().values().map(|e| &e.0).filter(|a| a.link() == link) {
            a.reconsider_move();
        }
    }

    /// A link came up: every agent may be asked again.
    fn reconsider(&self) {
        for a in self.sessions.lock().values().map(|e| &e.0) {
            a.reconsider_move();
        }
    }

    /// Moves asked and not yet finished, per link.
    pub(crate) fn in_flight(&self, links: usize) -> Vec<u32> {
        let mut n = vec![0; links];
        for a in self.sessions.lock().values().map(|e| &e.0) {
            if a.move_state() == MoveState::Requested {
                if let Some(c) = n.get_mut(a.link() as usize) {
                    *c += 1;
                }
            }
        }
        n
    }

    /// Asks up to `n` idle agents on `link` to move; returns how many.
    pub(crate) fn ask(&self, link: u32, n: usize) -> usize {
        let sessions = self.sessions.lock();
        sessions
            .values()
            .map(|e| &e.0)
            .filter(|a| a.link() == link && !a.closing().is_cancelled())
            .filter(|a| a.request_move())
            .take(n)
            .count()
    }
}

/// One tick's decision.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Busiest minus idlest connected link.
    pub spread: u32,
    /// Links to drain and how many agents to ask on each.
    pub drain: Vec<(u32, usize)>,
}

impl Plan {
    pub(crate) fn balanced(&self) -> bool {
        self.drain.is_empty()
    }
}

/// Which links to drain this tick. `loads[i]` is `None` for a link that is
/// not connected (its agents are failing over, not rebalancing);
/// `in_flight[i]` counts moves already asked off link `i`. Links above the
/// mean (rounded up) give their excess, busiest first, within `budget`.
pub(crate) fn plan(loads: &[Option<u32>], in_flight: &[u32], tolerance: f64, budget: usize) -> Plan {
    let up: Vec<(u32, u32)> = loads.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i as u32, l))).collect();
    let (Some(max), Some(min)) = (up.iter().map(|u| u.1).max(), up.iter().map(|u| u.1).min()) else {
        return Plan { spread: 0, drain: Vec::new() };
    };
    let spread = max - min;
    let total: u64 = up.iter().map(|u| u64::from(u.1)).sum();
    let mean = total as f64 / up.len() as f64;
    let allowed = ((tolerance * mean).floor() as u32).max(1);
    if up.len() < 2 || spread <= allowed {
        return Plan { spread, drain: Vec::new() };
    }
    let target = total.div_ceil(up.len() as u64) as u32;
    let mut over: Vec<(u32, u32)> = up.iter().copied().filter(|&(_, l)| l > target).collect();
    if over.is_empty() {
        // e.g. [10, 10, 8]: nothing above the rounded-up mean, still too wide.
        over = up.iter().copied().filter(|&(_, l)| l == max).take(1).map(|(i, l)| (i, l.max(target + 1))).collect();
    }
    over.sort_by_key(|&(i, l)| (std::cmp::Reverse(l), i));
    let mut left = budget;
    let mut drain = Vec::new();
    for (i, load) in over {
        let asked = in_flight.get(i as usize).copied().unwrap_or(0);
        let n = (load - target).saturating_sub(asked) as usize;
        let n = n.min(left);
        if n > 0 {
            drain.push((i, n));
            left -= n;
        }
    }
    Plan { spread, drain }
}

/// The rebalancer task: returns at once when disabled, else when
/// `shutdown` is cancelled.
pub(crate) async fn run(relay: Arc<Relay>, settings: RebalanceSettings, shutdown: CancellationToken) {
    if !settings.enabled {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut episode: Option<usize> = None; // moves asked so far
    let mut ups = relay.links.link_ups();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Ok(()) = ups.changed() => {
                relay.movable.reconsider();
                continue;
            }
            _ = tick.tick() => {}
        }
        episode = step(&relay, &settings, episode);
    }
}

/// One tick: compare loads within each upstream (agents never rebalance
/// across upstreams: that is the policies' routing), ask for moves, log an
/// episode's start and end.
fn step(relay: &Relay, settings: &RebalanceSettings, episode: Option<usize>) -> Option<usize> {
    let all = relay.links.loads();
    // A retiring link is being drained by the rotation: neither a source
    // nor a destination here.
    let open = |i: usize| relay.links.get(i as u32).is_some_and(|l| l.state().connected && !l.is_retiring());
    let loads: Vec<Option<u32>> = all.iter().enumerate().map(|(i, &l)| open(i).then_some(l)).collect();
    let mut budget = (settings.max_moves_per_second as f64 * TICK.as_secs_f64()).ceil() as usize;
    let mut in_flight: Option<Vec<u32>> = None;
    let mut plan = Plan { spread: 0, drain: Vec::new() };
    for upstream in relay.links.upstreams() {
        let range = upstream.range();
        let quick = self::plan(&loads[range.clone()], &[], settings.tolerance, budget);
        metrics::gauge!(m::LINK_IMBALANCE, "upstream" => upstream.name.to_string()).set(quick.spread as f64);
        plan.spread = plan.spread.max(quick.spread);
        if quick.balanced() {
            continue;
        }
        let in_flight = in_flight.get_or_insert_with(|| relay.movable.in_flight(loads.len()));
        let part = self::plan(&loads[range.clone()], &in_flight[range.clone()], settings.tolerance, budget);
        for (local, n) in part.drain {
            budget -= n;
            plan.drain.push((range.start as u32 + local, n));
        }
    }
    let asked: usize = plan.drain.iter().map(|&(link, n)| relay.movable.ask(link, n)).sum();
    match episode {
        None if asked > 0 => {
            tracing::info!(loads = ?relay.links.loads(), spread = plan.spread, "link loads drifted apart; rebalancing");
            Some(asked)
        }
        Some(n) if plan.balanced() => {
            tracing::info!(loads = ?relay.links.loads(), moves_asked = n, "link loads balanced again");
            None
        }
        Some(n) if asked == 0 && nothing_in_flight(relay) => {
            tracing::info!(
                loads = ?relay.links.loads(),
                moves_asked = n,
                "rebalancing stopped: no agent on the busy links can move"
            );
            None
        }
        Some(n) => Some(n + asked),
        None => None,
    }
}

fn nothing_in_flight(relay: &Relay) -> bool {
    relay.movable.sessions.lock().values().map(|e| &e.0).all(|a| a.move_state() != MoveState::Requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(loads: &[u32]) -> Vec<Option<u32>> {
        loads.iter().map(|&l| Some(l)).collect()
    }

    #[test]
    fn drains_the_busiest_link_toward_the_mean() {
        let p = plan(&up(&[0, 0, 30]), &[0, 0, 0], 0.1, 50);
        assert_eq!(p.spread, 30);
        assert_eq!(p.drain, vec![(2, 20)]);
    }

    #[test]
    fn moves_per_tick_are_bounded_and_shared_busiest_first() {
        let p = plan(&up(&[0, 100, 200]), &[0, 0, 0], 0.1, 50);
        assert_eq!(p.drain, vec![(2, 50)]);
        let p = plan(&up(&[0, 120, 180]), &[0, 0, 0], 0.1, 100);
        assert_eq!(p.drain, vec![(2, 80), (1, 20)]);
    }

    #[test]
    fn moves_in_flight_are_not_asked_twice() {
        let p = plan(&up(&[0, 0, 30]), &[0, 0, 15], 0.1, 50);
        assert_eq!(p.drain, vec![(2, 5)]);
        assert!(plan(&up(&[0, 0, 30]), &[0, 0, 20], 0.1, 50).drain.is_empty());
    }

    #[test]
    fn within_tolerance_is_balanced() {
        assert!(plan(&up(&[67, 67, 66]), &[0; 3], 0.1, 50).balanced());
        assert!(plan(&up(&[64, 67, 69]), &[0; 3], 0.1, 50).balanced(), "spread 5 within 10% of 66.7");
        assert!(!plan(&up(&[60, 67, 73]), &[0; 3], 0.1, 50).balanced());
        assert!(plan(&up(&[10, 10, 9]), &[0; 3], 0.0, 50).balanced(), "one agent of spread is always allowed");
        let p = plan(&up(&[10, 10, 8]), &[0; 3], 0.0, 50);
        assert_eq!(p.drain, vec![(0, 1)], "nothing above the mean, yet too wide: move one off the busiest");
    }

    #[test]
    fn disconnected_links_are_left_to_failover() {
        assert!(plan(&[None, None, Some(30)], &[0; 3], 0.1, 50).balanced(), "one link: nowhere to move");
        let p = plan(&[Some(0), None, Some(30)], &[0; 3], 0.1, 50);
        assert_eq!(p.drain, vec![(2, 15)]);
        assert!(plan(&[], &[], 0.1, 50).balanced());
    }
}
