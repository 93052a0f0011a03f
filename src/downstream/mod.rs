//! The agent-facing edge.
//!
//! - [`listener`]: accepts TCP (and TLS), serves HTTP/1.1 with hyper.
//! - `proxy_protocol`: the PROXY header a TCP load balancer sends first.
//! - [`router`]: one HTTP request → the WebSocket upgrade, a plain-HTTP
//!   poll, or an answer of its own (wrong path or method).
//! - [`websocket`]: the connect handshake → a WebSocket upgrade, or the
//!   status the server (or our limits) chose; then the session task.
//! - [`session`]: one task per connected WebSocket agent.
//! - [`express`]: a link writes a reply straight to its agent's socket.
//! - [`http`]: agents that poll with plain HTTP `POST`s.
//! - [`respond`]: response builders both transports share (text answers,
//!   refusals).
//! - [`headers`]: which request headers are forwarded to the server.
//! - `log_every`: at most one log line per kind of refusal per interval.
//! - [`pipeline`]: the per-message steps both transports share.
//! - [`trust`]: who a connection is (credential digest, trusted downstream
//!   gateway or ordinary agent).
//! - [`uid_guard`]: the one-uid-per-agent rule, applied to every message.

#[cfg(fuzzing)]
pub mod express;
#[cfg(not(fuzzing))]
pub(crate) mod express;
pub(crate) mod headers;
#[cfg(fuzzing)]
pub mod http;
#[cfg(not(fuzzing))]
pub(crate) mod http;
pub(crate) mod listener;
pub(crate) mod log_every;
pub(crate) mod pipeline;
pub(crate) mod proxy_protocol;
pub(crate) mod respond;
#[cfg(fuzzing)]
pub mod router;
#[cfg(not(fuzzing))]
pub(crate) mod router;
#[cfg(fuzzing)]
pub mod session;
#[cfg(not(fuzzing))]
pub(crate) mod session;
#[cfg(fuzzing)]
pub mod trust;
#[cfg(not(fuzzing))]
pub(crate) mod trust;
pub(crate) mod uid_guard;
pub(crate) mod websocket;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;

pub(crate) use listener::bind;
pub use listener::ListenerError;

/// Settings the agent-facing side needs (a slice of the config).
#[derive(Debug, Clone)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
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
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Downstream {
    pub(crate) relay: Arc<Relay>,
    pub(crate) settings: DownstreamSettings,
    /// Cancelled on shutdown: sessions close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task (TLS, HTTP requests, handshakes) and every
    /// WebSocket session task, so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// Agents using the plain-HTTP transport.
    pub(crate) http: http::HttpAgents,
    /// `telemetry.capture` (off unless [`Downstream::with_capture`]).
    pub(crate) capture: crate::telemetry::capture::Capture,
    next_agent_id: AtomicU64,
}

impl Downstream {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(relay: Arc<Relay>, settings: DownstreamSettings, shutdown: CancellationToken) -> Self {
        Self {
            relay,
            settings,
            shutdown,
            sessions: TaskTracker::new(),
            http: http::HttpAgents::default(),
            capture: Default::default(),
            next_agent_id: AtomicU64::new(1),
        }
    }

    /// Records relayed messages and connects to `capture`.
    pub(crate) fn with_capture(self, capture: crate::telemetry::capture::Capture) -> Self {
        Self { capture, ..self }
    }

    fn next_id(&self) -> u64 {
        self.next_agent_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
