//! Write [opamp-gateway] policies in Rust.
//!
//! A policy is a `cdylib` crate built for `wasm32-wasip2`. It implements
//! [`Policy`] (built from its config), one trait per hook it takes part in
//! ([`Admit`], [`Assign`], [`ForwardHeaders`], [`Filter`], [`Lifecycle`]), and exports itself with
//! [`export_policy!`], which announces exactly the hooks implemented:
//!
//! ```
//! use opamp_policy::{export_policy, ForwardHeaders, Headers, Policy};
//!
//! struct Strip;
//!
//! impl Policy for Strip {
//!     fn new(_config: &str) -> Result<Self, String> {
//!         Ok(Strip)
//!     }
//! }
//!
//! impl ForwardHeaders for Strip {
//!     fn forward_headers(&self, headers: Headers) -> Headers {
//!         headers.into_iter().filter(|(name, _)| name != "cookie").collect()
//!     }
//! }
//!
//! export_policy!(Strip);
//! # fn main() {}
//! ```
//!
//! What else is here:
//! - [`hooks_of!`]: the hooks a type announces, to assert in a unit test.
//! - [`route`](mod@route): [`Route::upstream`], [`Route::default_link`],
//!   [`AssignInput::links`], [`AssignInput::upstream`].
//! - [`config`]: a small YAML-subset parser for the `<name>.yaml` text.
//! - [`proto`]: the OpAMP protobuf types (prost), to decode what you need.
//! - [`wire`]: top-level protobuf surgery (drop or replace one field while
//!   keeping every other byte as it was): the `opamp-wire` crate, the
//!   same scanner the gateway runs.
//! - [`log`](mod@log): the gateway's logger (`opamp_policy::info!(...)`).
//! - [`state`](mod@state): the store shared by the policy's instances
//!   (get/set with TTL, atomic counters) and the gateway's clock; an
//!   in-memory stand-in in host-side unit tests.
//!
//! The WIT this implements is `wit/policy.wit` in the gateway repository
//! (`opamp-gateway:policy@0.3.0`, world `gateway-policy`). [`Assign`] sees
//! every upstream the gateway relays to and answers a [`Route`]; see
//! [`route`](mod@route) for the helpers.
//!
//! [opamp-gateway]: https://github.com/open-telemetry/opamp-spec

// Lets the generated code name this crate by its public path, from inside it
// and from the crates that expand `export_policy!`.
extern crate self as opamp_policy;

pub mod config;
mod export;
#[doc(hidden)]
pub mod __export {
    pub use crate::export::*;
}
#[cfg(not(target_arch = "wasm32"))]
mod host;
pub mod log;
mod policy;
pub mod route;
pub mod state;
pub mod wire;

pub use policy::{Admit, Assign, Directions, Filter, ForwardHeaders, Lifecycle, Policy};

/// Bindings generated from the WIT. Most policies only need the re-exports
/// at the crate root.
pub mod bindings {
    wit_bindgen::generate!({
        world: "gateway-policy",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_gateway_policy",
        default_bindings_module: "::opamp_policy::bindings",
        runtime_path: "::opamp_policy::__rt::rt",
        bitflags_path: "::opamp_policy::__rt::rt::bitflags",
        generate_unused_types: true,
        additional_derives: [PartialEq, Eq, Hash, Clone],
        generate_all,
    });
}

/// OpAMP protobuf types (package `opamp.proto.v1`), generated with prost
/// from the gateway's `proto/` files. `Message` is prost's trait: use
/// `AgentToServer::decode(bytes)`, `msg.encode_to_vec()`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub use prost::Message;
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

/// The field numbers of every OpAMP message, generated from `proto/`:
/// `fields::agent_to_server::EFFECTIVE_CONFIG` is 6. Name fields with these
/// rather than bare numbers.
pub mod fields {
    include!(concat!(env!("OUT_DIR"), "/fields.rs"));
}

#[doc(hidden)]
pub use wit_bindgen as __rt;

pub use bindings::opamp_gateway::policy::host::StateError;
pub use bindings::opamp_gateway::policy::types::{
    AdmitVerdict, AssignInput, Direction, FieldEdit, FieldValue, Hooks, Link, Rejection, Route, SessionEvent,
    Transport, Upstream, Verdict,
};
pub use route::DEFAULT_UPSTREAM;

/// The message a `filter` judges: the gateway's resource in a component, a
/// plain value (built from bytes or a prost type) in host-side unit tests.
#[cfg(target_arch = "wasm32")]
pub use bindings::opamp_gateway::policy::types::Message;
#[cfg(not(target_arch = "wasm32"))]
pub use host::Message;

/// Why [`Decode::decode`] could not give a field as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The field is a number on the wire, not a string, bytes or message.
    NotBytes { number: u32 },
    /// Its bytes are not a valid encoding of the requested type.
    Invalid { number: u32, reason: String },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotBytes { number } => write!(f, "field {number} is not length-delimited"),
            DecodeError::Invalid { number, reason } => write!(f, "field {number} does not decode: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Typed access to an embedded message: one host call, one decode, and only
/// of the field asked for.
///
/// ```ignore
/// use opamp_policy::{fields::agent_to_server as a2s, proto::EffectiveConfig, Decode};
/// if let Some(Ok(config)) = message.decode::<EffectiveConfig>(a2s::EFFECTIVE_CONFIG) { /* .. */ }
/// ```
pub trait Decode {
    /// `None` when the field is absent.
    fn decode<T: prost::Message + Default>(&self, number: u32) -> Option<Result<T, DecodeError>>;
}

impl Decode for Message {
    fn decode<T: prost::Message + Default>(&self, number: u32) -> Option<Result<T, DecodeError>> {
        Some(match self.field(number)? {
            FieldValue::Bytes(bytes) => {
                T::decode(bytes.as_slice()).map_err(|e| DecodeError::Invalid { number, reason: e.to_string() })
            }
            _ => Err(DecodeError::NotBytes { number }),
        })
    }
}

impl Verdict {
    /// Forward the message with top-level field `number` set to `bytes` (a
    /// string, bytes or embedded message). The gateway rebuilds the message
    /// around it, byte for byte: nothing else is copied into the policy.
    pub fn set_bytes_field(number: u32, bytes: Vec<u8>) -> Verdict {
        Verdict::SetField(FieldEdit { number, value: Some(FieldValue::Bytes(bytes)) })
    }

    /// Forward the message without top-level field `number`.
    pub fn remove_field(number: u32) -> Verdict {
        Verdict::SetField(FieldEdit { number, value: None })
    }
}

impl AdmitVerdict {
    /// Refuse the agent with `status` and a short text `body`.
    pub fn reject(status: u16, body: impl Into<String>) -> AdmitVerdict {
        AdmitVerdict::Reject(Rejection { status, headers: Vec::new(), body: body.into() })
    }
}

/// `filter` in both directions.
pub const FILTER_BOTH: Hooks = Hooks::FILTER_AGENT_TO_SERVER.union(Hooks::FILTER_SERVER_TO_AGENT);

/// Request headers: `(name, value)` pairs, names lower-case.
pub type Headers = Vec<(String, String)>;
