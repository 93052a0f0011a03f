//! opamp-gateway: an OpAMP relay that fans many agent connections into a small
//! pool of upstream WebSockets, with operator-programmable (Wasm) hook points.
//!
//! # Module map
//!
//! Data flows one way through three layers:
//!
//! - [`protocol`] — sans-IO. Framing, the protobuf wire scanner, instance uids,
//!   the gateway handshake payloads and the prost types. Pure functions over
//!   bytes: no sockets, no clocks.
//! - [`relay`] — who is connected where. Upstream link loads and leases,
//!   least-connections choice, the uid → agent routing table, pending connect
//!   handshakes. Testable without sockets.
//! - The edges, where I/O happens:
//!   - [`downstream`] — the agent-facing listener (WebSocket upgrade, TLS) and
//!     one task per agent session.
//!   - [`upstream`] — the link pool: dial, reconnect with jittered backoff,
//!     batched writes, routing of server replies.
//!   - [`telemetry`] — Prometheus metrics and the health endpoint.
//!
//! Around them: [`config`] (the YAML file, `${env:VAR}` expansion, validation
//! with field paths), [`policy`] (the hook trait and its default behaviour;
//! the Wasm host implements the same trait), [`tls`], [`gateway`] (wires it all
//! together and owns shutdown) and `sim` (a reference upstream server and an
//! agent simulator used by the demo, the tests and the benchmarks; behind the
//! `sim` cargo feature, on by default).

#![forbid(unsafe_code)]

pub mod config;
pub mod downstream;
pub mod gateway;
pub mod policy;
pub mod protocol;
pub mod relay;
#[cfg(feature = "sim")]
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use gateway::{Gateway, GatewayError};
