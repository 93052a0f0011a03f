//! Host bindings generated from `wit/policy.wit`.
//!
//! Every import is `trappable`: a host function that cannot answer (a stale
//! resource handle, say) traps the guest rather than inventing a value.

wasmtime::component::bindgen!({
    world: "gateway-policy",
    path: "wit",
    imports: { default: trappable },
    with: {
        "opamp-gateway:policy/types.message": super::message::MessageHandle,
    },
});

/// The world's fully qualified name, for error messages and reports.
pub const WORLD: &str = "opamp-gateway:policy/gateway-policy@0.1.0";
