//! The relay core: who is connected where. No sockets here — the edges
//! (`downstream`, `upstream`) move bytes; this module decides where they go.
//!
//! - [`links`]: the upstream link slots, their loads (RAII leases, so a load
//!   can never drift) and their generations (bumped on every loss).
//! - [`agent`]: what the core knows of one agent session: its queue, close
//!   signal and frames handed back by a dead link.
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
//! - [`rebalance`]: moves agents off crowded links, without disconnecting
//!   them, when loads drift apart (e.g. after links return).

pub mod admission;
pub mod agent;
pub mod budget;
pub mod dispatch;
pub mod forwarded;
pub mod identity;
pub mod links;
pub mod pending;
pub mod rebalance;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use crate::policy::Policies;

pub use admission::{Admission, AdmitError, AdmitRequest};
pub use agent::{AgentShared, CloseReason, Inbound};
pub use budget::{Budget, Held};
pub use forwarded::{ForwardRefused, ForwardedHandshakes};
pub use identity::{Credential, Identity, Role};
pub use links::{Link, LinkLease, LinkState, Links, Outbound};
pub use pending::PendingConnects;
pub use routes::{Claimed, Routes, UidInUse};

/// Settings the core needs (a slice of the config).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub auth_timeout: Duration,
    /// How long an agent whose link died waits for any link to be up.
    pub failover_wait: Duration,
    pub agent_queue: usize,
    /// Connect handshakes one downstream gateway connection may have in
    /// flight through us.
    pub max_forwarded_handshakes: usize,
    /// `listener.max_buffered_bytes`: the size of [`Relay::budget`].
    pub max_buffered_bytes: usize,
}

/// The shared state of one gateway.
pub struct Relay {
    pub links: Arc<Links>,
    pub routes: Routes,
    pub pending: PendingConnects,
    pub forwarded: ForwardedHandshakes,
    pub policies: Arc<Policies>,
    pub settings: RelaySettings,
    /// Agent message bytes between being read and written upstream.
    pub budget: Arc<Budget>,
    /// WebSocket sessions the rebalancer may ask to move.
    pub movable: rebalance::Movable,
}

impl Relay {
    pub fn new(links: Arc<Links>, policies: Arc<Policies>, settings: RelaySettings) -> Self {
        Self {
            links,
            routes: Routes::default(),
            pending: PendingConnects::default(),
            forwarded: ForwardedHandshakes::default(),
            policies,
            budget: Budget::new(settings.max_buffered_bytes),
            movable: rebalance::Movable::default(),
            settings,
        }
    }
}
