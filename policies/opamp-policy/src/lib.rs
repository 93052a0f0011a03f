//! Write [opamp-gateway] policies in Rust.
//!
//! A policy is a `cdylib` crate built for `wasm32-wasip2`. It implements
//! [`Policy`] — only the hooks it needs, the others keep their pass-through
//! defaults — and exports itself with [`export_policy!`]:
//!
//! ```ignore
//! use opamp_policy::{export_policy, Headers, Hooks, Policy};
//!
//! struct Strip;
//!
//! impl Policy for Strip {
//!     fn new(_config: &str) -> Result<Self, String> {
//!         Ok(Strip)
//!     }
//!     fn hooks(&self) -> Hooks {
//!         Hooks::FORWARD_HEADERS
//!     }
//!     fn forward_headers(&self, headers: Headers) -> Headers {
//!         headers.into_iter().filter(|(name, _)| name != "cookie").collect()
//!     }
//! }
//!
//! export_policy!(Strip);
//! ```
//!
//! What else is here:
//! - [`config`]: a small YAML-subset parser for the `<name>.yaml` text.
//! - [`proto`]: the OpAMP protobuf types (prost), to decode what you need.
//! - [`wire`]: top-level protobuf surgery (drop or replace one field while
//!   keeping every other byte as it was).
//! - [`log`](mod@log): the gateway's logger (`opamp_policy::info!(...)`).
//!
//! The WIT this implements is `wit/policy.wit` in the gateway repository
//! (`opamp-gateway:policy@0.2.0`, world `gateway-policy`).
//!
//! [opamp-gateway]: https://github.com/open-telemetry/opamp-spec

// Lets the generated code name this crate by its public path, from inside it
// and from the crates that expand `export_policy!`.
extern crate self as opamp_policy;

pub mod config;
#[cfg(not(target_arch = "wasm32"))]
mod host;
pub mod log;
pub mod wire;

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

pub use bindings::opamp_gateway::policy::types::{
    AssignInput, Direction, FieldEdit, FieldValue, Hooks, Link, Transport, Verdict,
};

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

/// `filter` in both directions.
pub const FILTER_BOTH: Hooks = Hooks::FILTER_AGENT_TO_SERVER.union(Hooks::FILTER_SERVER_TO_AGENT);

/// Request headers: `(name, value)` pairs, names lower-case.
pub type Headers = Vec<(String, String)>;

/// A policy. Implement [`Policy::new`] and [`Policy::hooks`], plus the hooks
/// you announce; the gateway never calls the others.
///
/// One value is built per instance, and the gateway keeps a few instances
/// per policy (one per relay thread) and replaces one whenever a call fails.
/// Treat the value as read-only configuration: state kept in it is neither
/// shared between instances nor guaranteed to survive.
pub trait Policy: Sized + Send + Sync + 'static {
    /// Builds the policy from the text of its `<name>.yaml` (empty if there
    /// is none). An `Err` refuses the policy at load, with your message in
    /// the gateway's log.
    fn new(config: &str) -> Result<Self, String>;

    /// The hooks this policy implements, e.g. `Hooks::ASSIGN | FILTER_BOTH`.
    /// Announce `filter` only for the directions you judge
    /// (`Hooks::FILTER_AGENT_TO_SERVER`, `Hooks::FILTER_SERVER_TO_AGENT`):
    /// the gateway then skips the call, and its cost, for the other one.
    fn hooks(&self) -> Hooks;

    /// Which upstream link should carry this agent? `None`: no opinion.
    fn assign(&self, _input: &AssignInput) -> Option<u32> {
        None
    }

    /// The headers forwarded to the server in the connect handshake.
    fn forward_headers(&self, headers: Headers) -> Headers {
        headers
    }

    /// One message on its way through, in a direction announced by
    /// [`Policy::hooks`]. Read only what you need from
    /// `message`: [`Message::has`] and [`Message::field`] are cheap,
    /// [`Message::bytes`] copies the whole message.
    fn filter(&self, _direction: Direction, _uid: &[u8], _message: &Message) -> Verdict {
        Verdict::Forward
    }
}

/// Exports a [`Policy`] implementation as the component's `policy`
/// interface. Use it once, at the crate root.
///
/// It expands to nothing on non-wasm targets, so a policy crate can also be
/// an `rlib` whose logic is unit-tested on the host with `cargo test`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __OpampPolicyExport;

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        static __OPAMP_POLICY: ::std::sync::OnceLock<$policy> = ::std::sync::OnceLock::new();

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::opamp_gateway::policy::policy::Guest for __OpampPolicyExport {
            fn init(config: ::std::string::String) -> ::std::result::Result<$crate::Hooks, ::std::string::String> {
                $crate::__init(&__OPAMP_POLICY, &config)
            }

            fn assign(input: $crate::AssignInput) -> ::std::option::Option<u32> {
                __OPAMP_POLICY.get().and_then(|p| $crate::Policy::assign(p, &input))
            }

            fn forward_headers(headers: $crate::Headers) -> $crate::Headers {
                match __OPAMP_POLICY.get() {
                    Some(p) => $crate::Policy::forward_headers(p, headers),
                    None => headers,
                }
            }

            fn filter(
                direction: $crate::Direction,
                uid: ::std::vec::Vec<u8>,
                message: &$crate::Message,
            ) -> $crate::Verdict {
                match __OPAMP_POLICY.get() {
                    Some(p) => $crate::Policy::filter(p, direction, &uid, message),
                    None => $crate::Verdict::Forward,
                }
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_gateway_policy!(__OpampPolicyExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub fn __init<P: Policy>(cell: &std::sync::OnceLock<P>, config: &str) -> Result<Hooks, String> {
    // Panic messages go to the gateway's log through `host.log`, not to WASI
    // stderr: the gateway grants no stdio, and the message is more useful
    // next to the policy's name than in a discarded stream.
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| crate::log::log(crate::log::Level::Error, &format!("panic: {info}"))));
    let policy = P::new(config)?;
    let hooks = policy.hooks();
    cell.set(policy).map_err(|_| "init called twice".to_owned())?;
    Ok(hooks)
}
