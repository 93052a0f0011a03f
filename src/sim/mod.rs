//! Development kit: a reference OpAMP upstream server that implements the
//! gateway handshake, and an agent simulator. Used by `opamp-gateway demo`,
//! the integration tests and the benchmarks; server authors can read
//! [`server`] to see what gateway support takes.
//!
//! - [`server`]: [`ReferenceServer`], a real WebSocket OpAMP server on
//!   loopback. Answers the gateway's `connect` handshake, replies to agents by
//!   uid, and records what it saw in a [`ServerState`] that tests wait on
//!   ([`ReferenceServer::wait_until`]) instead of sleeping.
//! - [`agent`]: [`SimAgent`], one agent on a WebSocket (`ws://` or `wss://`),
//!   with the knobs tests need: raw sends, legacy header-less frames, close
//!   codes, abrupt drops.
//! - [`fleet`]: [`Fleet`], N agents with bounded connect concurrency and
//!   heartbeats, counted in atomics; the load generator for demo and benches.
//! - [`proxy`]: [`ConnectProxy`], an HTTP CONNECT egress proxy (optionally
//!   TLS, optionally demanding credentials) that records what it was asked.
//! - [`probe`]: [`http_get`], for reading the gateway's admin endpoints.
//! - [`blackhole`]: [`BlackholeProxy`], a TCP relay whose connections can go
//!   half-open on demand (fault tests).

pub mod agent;
pub mod blackhole;
pub mod fleet;
pub mod probe;
pub mod proxy;
pub mod server;

#[cfg(test)]
mod tests;

pub use agent::{AgentError, AgentOptions, SimAgent};
pub use blackhole::BlackholeProxy;
pub use fleet::{Fleet, FleetConfig, FleetStats};
pub use probe::http_get;
pub use proxy::{ConnectProxy, ConnectProxyConfig, ConnectRecord, ProxyState};
pub use server::{
    AgentRecord, ConnectMode, ConnectionRecord, ReferenceServer, ReferenceServerConfig, ServerState, WaitTimeout,
};
