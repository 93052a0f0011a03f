//! The agent-facing edge.
//!
//! - [`listener`]: accepts TCP (and TLS), serves HTTP/1.1 with hyper.
//! - [`router`]: one HTTP request → the WebSocket upgrade, a plain-HTTP
//!   poll, or an answer of its own (wrong path or method).
//! - [`websocket`]: the connect handshake → a WebSocket upgrade, or the
//!   status the server (or our limits) chose; then the session task.
//! - [`session`]: one task per connected WebSocket agent.
//! - [`http`]: agents that poll with plain HTTP `POST`s.
//! - [`respond`]: response builders both transports share (text answers,
//!   refusals).
//! - [`headers`]: which request headers are forwarded to the server.
//! - `log_every`: at most one log line per kind of refusal per interval.
//! - [`pipeline`]: the per-message steps both transports share.
//! - [`trust`]: who a connection is (credential digest, trusted downstream
//!   gateway or ordinary agent).
//! - [`uid_guard`]: the one-uid-per-agent rule, applied to every message.

pub mod headers;
pub mod http;
pub mod listener;
pub(crate) mod log_every;
pub mod pipeline;
pub mod respond;
pub mod router;
pub mod session;
pub mod trust;
pub mod uid_guard;
pub mod websocket;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;

pub use listener::{bind, Listener, ListenerError};

/// Settings the agent-facing side needs (a slice of the config).
#[derive(Debug, Clone)]
pub struct DownstreamSettings {
    pub path: Option<String>,
    pub max_message_size: usize,
    pub keepalive: Duration,
    pub write_timeout: Duration,
    pub retry_after: Duration,
    pub http: http::HttpSettings,
    /// `listener.downstream_gateways`.
    pub gateways: trust::GatewayTrust,
}

/// Shared by every request and session.
pub struct Downstream {
    pub relay: Arc<Relay>,
    pub settings: DownstreamSettings,
    /// Cancelled on shutdown: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Every connection task (TLS, HTTP requests, handshakes) and every
    /// WebSocket session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Agents using the plain-HTTP transport.
    pub http: http::HttpAgents,
    next_agent_id: AtomicU64,
}

impl Downstream {
    pub fn new(relay: Arc<Relay>, settings: DownstreamSettings, shutdown: CancellationToken) -> Self {
        Self {
            relay,
            settings,
            shutdown,
            sessions: TaskTracker::new(),
            http: http::HttpAgents::default(),
            next_agent_id: AtomicU64::new(1),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_agent_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
