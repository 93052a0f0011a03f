//! The OpAMP wire, sans-IO: everything here is a pure function over bytes.
//!
//! - [`proto`]: prost types generated from `proto/*.proto`.
//! - [`framing`]: the WebSocket message header (a varint, always 0 today).
//! - [`wire`]: the protobuf wire format, top level only (tags, lengths).
//! - [`scan`]: validates an OpAMP message and finds the few fields the relay
//!   needs, on top of [`wire`], without decoding the rest.
//! - [`uid`]: agent instance uids (16-byte UUID or legacy 26-char ULID).
//! - [`handshake`]: the `com.bindplane.opamp-gateway` connect / connectResult
//!   custom messages.
//! - [`compose`]: small messages the gateway writes itself (synthesized
//!   disconnects, injected capabilities).
//! - [`ws_boundaries`]: where WebSocket messages end in an agent's byte
//!   stream, so a session knows when its WebSocket holds nothing unread.

pub mod compose;
pub mod framing;
pub mod handshake;
pub mod scan;
pub mod uid;
pub mod wire;
pub mod ws_boundaries;

/// Generated OpAMP protobuf types (package `opamp.proto.v1`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

pub use framing::FrameError;
pub use scan::{AgentFrame, ScanError, ServerFrame};
pub use uid::{InstanceUid, UidError};
