//! The relay core: who is connected where. No sockets here — the edges
//! (`downstream`, `upstream`) move bytes; this module decides where they go.
//!
//! - [`links`]: the upstream link slots, their loads (RAII leases, so a load
//!   can never drift) and their generations (bumped on every loss).
//! - [`agent`]: what the core knows of one agent session: its queue, close
//!   signal and frames handed back by a dead link.
//! - [`doorbell`]: one lock-free wake-up per agent session, a bit per
//!   reason (queued, closing, frames returned, move asked).
//! - [`identity`]: who is on a connection (credential digest, agent or
//!   trusted downstream gateway), for uid ownership.
//! - [`routes`]: instance uid → agent, for server→agent messages, and the
//!   ownership rule (a uid belongs to the connection that first spoke for it).
//! - [`pending`]: connect handshakes awaiting the server's connectResult.
//! - [`forwarded`]: handshakes a downstream gateway forwarded through us,
//!   by request uid (a namespace of their own, never mixed with uids).
//! - [`admission`]: the connect handshake itself (assign a link, ask the
//!   server, wait), shared by first connects and migrations.
//! - [`dispatch`]: what to do with one message from the server.
//! - [`budget`]: the gateway-wide cap on agent message bytes in flight.
//! - [`deadline`]: write deadlines that arm a timer only for a write that
//!   does not complete at once (both edges' hot paths).
//! - [`rebalance`]: moves agents off crowded links, without disconnecting
//!   them, when loads drift apart (e.g. after links return).
//! - [`rotation`]: retires links older than `server.max_link_age`, one at a
//!   time, so a clustered server's load balancer can place them anew.
//! - [`reroute`]: after a policy reload, moves agents whose route now names
//!   another upstream, live (the same planned move as rebalancing).
//!
//! Upstreams: `server` (named `default`) and each entry of `upstreams` have
//! their own link slots, numbered gateway-wide in one [`Links`] table. A
//! session's lease pins it to one upstream; rebalancing and rotation move
//! agents only within an upstream, rerouting only across them.

pub(crate) mod admission;
pub(crate) mod agent;
pub(crate) mod budget;
pub(crate) mod deadline;
pub(crate) mod dispatch;
pub(crate) mod doorbell;
pub(crate) mod forwarded;
pub(crate) mod identity;
pub(crate) mod links;
pub(crate) mod pending;
pub(crate) mod rebalance;
pub(crate) mod reroute;
pub(crate) mod rotation;
pub(crate) mod routes;
mod view;

use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policies;

#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use admission::{Admission, AdmitRequest};
pub(crate) use admission::{AdmitError, MoveKind};
pub(crate) use agent::{AgentShared, CloseReason, Inbound};
pub(crate) use budget::{Budget, Held};
pub(crate) use forwarded::{ForwardRefused, ForwardedHandshakes};
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use identity::{Credential, Identity, Role};
pub use links::LinkState;
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use links::Outbound;
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub use links::{Link, LinkLease, Links};
pub(crate) use pending::PendingConnects;
pub(crate) use routes::{Claimed, Routes};
pub use view::RelayView;

/// Settings the core needs (a slice of the config).
#[derive(Debug, Clone)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct RelaySettings {
    pub auth_timeout: Duration,
    /// How long an agent whose link died waits for any link to be up.
    pub failover_wait: Duration,
    pub agent_queue: usize,
    /// Connect handshakes one downstream gateway connection may have in
    /// flight through us.
    pub max_forwarded_handshakes: usize,
    /// `server.failover_queue`: an agent's messages that may wait for a link.
    pub failover_queue: usize,
    /// `listener.max_buffered_bytes`: the size of [`Relay::budget`].
    pub max_buffered_bytes: usize,
}

/// The shared state of one gateway.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Relay {
    pub(crate) links: Arc<Links>,
    pub(crate) routes: Routes,
    pub(crate) pending: PendingConnects,
    pub(crate) forwarded: ForwardedHandshakes,
    pub(crate) policies: Arc<Policies>,
    pub(crate) settings: RelaySettings,
    /// Agent message bytes between being read and written upstream.
    pub(crate) budget: Arc<Budget>,
    /// WebSocket sessions the rebalancer may ask to move.
    pub(crate) movable: rebalance::Movable,
    /// Asks the reroute pass to run now (an embedder's native policy
    /// changed its mind; Wasm reloads are noticed by themselves).
    pub(crate) reroute: tokio::sync::Notify,
}

impl Relay {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(links: Arc<Links>, policies: Arc<Policies>, settings: RelaySettings) -> Self {
        Self {
            links,
            routes: Routes::default(),
            pending: PendingConnects::default(),
            forwarded: ForwardedHandshakes::default(),
            policies,
            budget: Budget::new(settings.max_buffered_bytes),
            movable: rebalance::Movable::default(),
            reroute: tokio::sync::Notify::new(),
            settings,
        }
    }
}
