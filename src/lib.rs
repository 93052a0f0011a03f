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
//! - `relay` — who is connected where. Upstream link loads and leases,
//!   least-connections choice, the uid → agent routing table, pending connect
//!   handshakes. Testable without sockets.
//! - The edges, where I/O happens:
//!   - `downstream` — the agent-facing listener (TLS, limits), the request
//!     router, the WebSocket upgrade and one task per agent session, and the
//!     plain-HTTP transport.
//!   - [`upstream`] — the link pool: dial, reconnect with jittered backoff,
//!     batched writes, routing of server replies.
//!
//! Around them:
//! - [`telemetry`] — a leaf: metric names, the otelcol naming and the
//!   Prometheus recorder. Every layer records into it; it imports nothing of
//!   the crate.
//! - [`policy`] — the hook trait and its default behaviour; the Wasm host
//!   implements the same trait. Below `relay`, above [`protocol`].
//! - [`config`] — the YAML file, `${env:VAR}` expansion, validation with
//!   field paths. Reads the policy section's and telemetry's types; [`tls`],
//!   [`upstream`] and `downstream` read it.
//! - [`tls`] — rustls configurations and [`tls::BoxedIo`], the plain-or-TLS
//!   stream both edges carry.
//! - `admin` — the admin HTTP server (`/metrics`, health endpoints): it
//!   reads the relay's links and the policies' health, so it sits on top,
//!   beside `gateway` (wires it all together and owns shutdown).
//! - `sim` — a reference upstream server and an agent simulator used by the
//!   demo, the tests and the benchmarks; behind the `sim` cargo feature, on
//!   by default.
//!
//! No cycles among these modules. Bottom up, each uses only what comes
//! before it: `telemetry`, `protocol` → `policy` → `relay` → `config` →
//! `tls` → `upstream`, `downstream` → `admin`, `gateway`.
//!
//! # What is public
//!
//! What an embedder, a policy author or the binary needs: [`Gateway`] and
//! [`GatewayBuilder`]; [`RelayView`] (read-only loads, routes, handshakes
//! and buffered bytes, from [`Gateway::inspect`]); [`GatewayError`] and the
//! errors it carries; [`config`]; [`policy`]'s [`Policy`](policy::Policy)
//! trait, the chain a policy author runs as the relay does, the runtime
//! and the `policy check` entry; [`protocol`] whole (sans-IO, shared with
//! the simulator, the benchmarks and fuzz/); [`tls`]'s rustls builders;
//! [`upstream::Dialer`] (one dial, to probe the upstream path);
//! [`telemetry`]'s recorder and metric names; `sim` behind its feature.
//! The rest is `pub(crate)`, kept so by the `unreachable_pub` lint
//! (Cargo.toml): nothing outside can take a link lease or claim a uid.
//! cargo-fuzz builds (`--cfg fuzzing`) also see the parts of `relay` and
//! `downstream` its in-memory harness drives.

pub(crate) mod admin;
pub mod config;
#[cfg(fuzzing)]
pub mod downstream;
#[cfg(not(fuzzing))]
pub(crate) mod downstream;
mod gateway;
pub mod policy;
pub mod protocol;
#[cfg(fuzzing)]
pub mod relay;
#[cfg(not(fuzzing))]
pub(crate) mod relay;
#[cfg(feature = "sim")]
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use downstream::ListenerError;
pub use gateway::{Gateway, GatewayBuilder, GatewayError};
pub use relay::{LinkState, RelayView};
