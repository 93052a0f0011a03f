//! A read-only look at the relay core ([`Gateway::inspect`]), for tests,
//! dashboards and embedders. Only counts and copies go out: nothing here can
//! take a link lease, claim a uid or hold budget, so the core's invariants
//! stay the core's.
//!
//! [`Gateway::inspect`]: crate::Gateway::inspect

use std::sync::Arc;

use super::agent::NO_LINK;
use super::links::LinkState;
use super::Relay;

/// Read-only observations of a running gateway's relay core: upstream link
/// loads and states, the uid routing table, connect handshakes in flight and
/// the buffered-bytes budget. Cheap to clone; each read is a snapshot.
#[derive(Clone)]
pub struct RelayView {
    relay: Arc<Relay>,
}

impl RelayView {
    pub(crate) fn new(relay: Arc<Relay>) -> Self {
        Self { relay }
    }

    /// Agents leased to each upstream link, by gateway-wide link index:
    /// `server.connections` entries, then each named upstream's links.
    pub fn loads(&self) -> Vec<u32> {
        self.relay.links.loads()
    }

    /// Agents on each upstream, by name, the default (`server`) first.
    pub fn upstream_loads(&self) -> Vec<(String, u32)> {
        let names = self.relay.links.upstreams().iter().map(|u| u.name.to_string());
        names.zip(self.relay.links.upstream_loads()).collect()
    }

    /// The upstream the agent owning `uid` is on; `None` when the uid is
    /// not routed or its agent holds no lease yet.
    pub fn route_upstream(&self, uid: &[u8]) -> Option<String> {
        let link = self.route_link(uid)?;
        Some(self.relay.links.get(link)?.upstream_name().to_string())
    }

    /// How many upstream links are connected now.
    pub fn connected_links(&self) -> usize {
        self.relay.links.connected()
    }

    /// Each upstream link's state, by link index.
    pub fn link_states(&self) -> Vec<LinkState> {
        self.relay.links.iter().map(|l| l.state()).collect()
    }

    /// Resolves once link `index`'s state satisfies `until` (at once if it
    /// already does). False when there is no such link.
    pub async fn wait_for_link(&self, index: usize, until: impl FnMut(&LinkState) -> bool) -> bool {
        let Some(link) = u32::try_from(index).ok().and_then(|i| self.relay.links.get(i)) else {
            return false;
        };
        let mut state = link.subscribe();
        if state.wait_for(until).await.is_err() {
            return false;
        }
        true
    }

    /// Whether server messages for instance `uid` have an agent to go to.
    pub fn is_routed(&self, uid: &[u8]) -> bool {
        self.relay.routes.get(uid).is_some()
    }

    /// The upstream link index the agent owning `uid` is leased on; `None`
    /// when the uid is not routed or its agent holds no lease yet.
    pub fn route_link(&self, uid: &[u8]) -> Option<u32> {
        self.relay.routes.get(uid).map(|a| a.link()).filter(|&l| l != NO_LINK)
    }

    /// Routed instance uids (an agent's own uid and its aliases).
    pub fn routed_uids(&self) -> usize {
        self.relay.routes.len()
    }

    /// Connect handshakes sent upstream and awaiting a connectResult.
    pub fn pending_handshakes(&self) -> usize {
        self.relay.pending.len()
    }

    /// Agent message bytes read and not yet written upstream.
    pub fn buffered_bytes(&self) -> usize {
        self.relay.budget.in_flight()
    }

    /// `listener.max_buffered_bytes`: the most [`buffered_bytes`](Self::buffered_bytes) may reach.
    pub fn buffer_capacity(&self) -> usize {
        self.relay.budget.capacity()
    }

    /// Agent messages read and waiting for room in the budget.
    pub fn buffer_waiting(&self) -> usize {
        self.relay.budget.waiting()
    }

    /// Whether sessions may start reading new messages (false while the
    /// budget is full; HTTP polls get 503 meanwhile).
    pub fn is_buffer_open(&self) -> bool {
        self.relay.budget.is_open()
    }

    /// WebSocket agents the rebalancer asked to move that stayed on their
    /// link (their assign policy chose it again, or the handshake failed).
    pub fn agents_staying(&self) -> usize {
        self.relay.movable.staying()
    }
}
