//! Live migration when routing changes: after a policy reload, every
//! WebSocket agent is asked again where it goes (`assign`), and those whose
//! answer names another upstream (or another named link) move there, at
//! `server.rebalance.max_moves_per_second`, without being disconnected.
//! The same pass runs when a link comes up (an upstream may be back): a
//! router that sent its agents elsewhere while their upstream was away
//! (the failover asks the chain too) sends them home.
//!
//! The pass only evaluates the chain and decides who is asked; each session
//! moves itself with the same planned move the rebalancer uses
//! ([`Relay::admit_move`](super::Relay::admit_move), kind `Reroute`): it asks
//! the chain once more, re-handshakes on the new server, replays what was
//! queued, and tells the old server its uids are gone. A rejection by the
//! new server leaves it where it was.
//! HTTP agents follow the new route at their next authentication
//! (`listener.http.auth_cache_ttl`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::agent::AgentShared;
use super::{AdmitRequest, Relay};
use crate::policy::{AssignDecision, PolicySet};

/// How often the policy set is compared with the last one seen, and the
/// unit of the move budget.
const TICK: Duration = Duration::from_millis(250);
/// Agents evaluated between yields: a pass over a large fleet must not hold
/// a runtime worker for long.
const CHUNK: usize = 256;

/// The reroute task: a pass whenever the policy set changes, a link comes
/// up, or [`Relay::reroute`] is notified; runs until `shutdown` is
/// cancelled.
pub(crate) async fn run(relay: Arc<Relay>, max_moves_per_second: u32, shutdown: CancellationToken) {
    let budget = (f64::from(max_moves_per_second) * TICK.as_secs_f64()).ceil().max(1.0) as usize;
    let mut seen = relay.policies.snapshot();
    let mut ups = relay.links.link_ups();
    let mut link_up = false;
    let mut due: VecDeque<Arc<AgentShared>> = VecDeque::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = relay.reroute.notified() => true,
            Ok(()) = ups.changed() => {
                // Links come up in bursts (a server restart): one pass at
                // the next tick covers them all.
                link_up = true;
                continue;
            }
            _ = tick.tick() => false,
        };
        let current = relay.policies.snapshot();
        if asked || std::mem::take(&mut link_up) || !Arc::ptr_eq(&current, &seen) {
            seen = current;
            due = pass(&relay, &seen).await;
            if !due.is_empty() {
                tracing::info!(
                    agents = due.len(),
                    "where agents route changed (policy reload, or a link came up); moving them"
                );
            }
        }
        ask(&mut due, budget);
    }
}

/// Asks up to `budget` agents to move. One already moving (the rebalancer
/// asked it) re-runs the chain anyway, so it is not asked twice.
fn ask(due: &mut VecDeque<Arc<AgentShared>>, budget: usize) {
    let mut asked = 0;
    while asked < budget {
        let Some(agent) = due.pop_front() else { return };
        if !agent.closing().is_cancelled() && agent.request_reroute() {
            asked += 1;
        }
    }
}

/// Every session whose route under `set` differs from where it is.
async fn pass(relay: &Relay, set: &PolicySet) -> VecDeque<Arc<AgentShared>> {
    if set.is_empty() && relay.links.upstreams().len() < 2 {
        return VecDeque::new(); // the plain relay: everyone is where it goes
    }
    let sessions = relay.movable.all();
    let upstreams = relay.links.snapshot();
    let mut due = VecDeque::new();
    for chunk in sessions.chunks(CHUNK) {
        for (agent, req) in chunk {
            if elsewhere(relay, set, &upstreams, agent, req) {
                due.push_back(agent.clone());
            }
        }
        tokio::task::yield_now().await;
    }
    due
}

/// Whether `agent`'s route names another upstream than its link's, or
/// another link by name. A chain that fails (or is shed) keeps it put.
fn elsewhere(
    relay: &Relay,
    set: &PolicySet,
    upstreams: &[crate::policy::UpstreamInfo],
    agent: &AgentShared,
    req: &AdmitRequest,
) -> bool {
    let link = agent.link();
    let Some(here) = relay.links.upstream_of(link) else {
        return false; // no lease yet
    };
    match set.assign(&req.assign_input(upstreams)) {
        Ok(AssignDecision::Default) => here != 0,
        Ok(AssignDecision::Route { upstream, link: named }) => {
            upstream != here || named.and_then(|l| relay.links.slot_of(upstream, l)).is_some_and(|slot| slot != link)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::agent::MoveState;
    use crate::relay::identity::{Credential, Identity};
    use crate::relay::CloseReason;

    fn agent(id: u64) -> Arc<AgentShared> {
        AgentShared::new(id, 1, 1, Identity::agent(Credential::none())).0
    }

    #[test]
    fn moves_are_asked_within_the_budget_and_closing_agents_cost_none() {
        let agents: Vec<_> = (0..5).map(agent).collect();
        agents[0].close(CloseReason::Peer);
        let mut due: VecDeque<_> = agents.iter().cloned().collect();
        ask(&mut due, 2);
        let asked: Vec<_> = agents.iter().map(|a| a.move_state() == MoveState::Requested).collect();
        assert_eq!(asked, [false, true, true, false, false], "the closing one is skipped, two are asked");
        assert_eq!(due.len(), 2, "the rest wait for the next tick");
        ask(&mut due, 2);
        assert!(due.is_empty());
        assert!(agents[1..].iter().all(|a| a.move_state() == MoveState::Requested));
        assert_eq!(agents[1].move_kind(), crate::relay::MoveKind::Reroute);
    }
}
