//! The upstream edge: a fixed pool of WebSocket links to the OpAMP server.
//!
//! - `backoff`: jittered exponential redial delays.
//! - `dial`: TCP + optional TLS + WebSocket handshake, with our headers.
//! - `proxy`: which egress proxy a link uses (config or environment) and
//!   the HTTP CONNECT tunnel through it.
//! - `link`: one task per link slot: dial, pump frames both ways with
//!   batched writes and keepalive pings, and on loss hand queued frames back
//!   to their agents before redialing.
//!
//! Public: [`Dialer`], one dial as a link makes it (TLS, proxy, headers),
//! to probe the upstream path; the link pool itself stays inside.

pub(crate) mod backoff;
pub(crate) mod dial;
pub(crate) mod link;
pub(crate) mod proxy;

pub use dial::{DialError, Dialer, DialerError};
pub(crate) use link::{spawn_links, LinkSettings};
