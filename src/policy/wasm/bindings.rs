//! Host bindings generated from `wit/policy.wit`.
//!
//! Every import is `trappable`: a host function that cannot answer (a stale
//! resource handle, say) traps the guest rather than inventing a value.

// Without the `wasm` feature only the names below remain (error messages).
#![cfg_attr(not(feature = "wasm"), allow(dead_code))]

#[cfg(feature = "wasm")]
wasmtime::component::bindgen!({
    world: "gateway-policy",
    path: "wit",
    imports: { default: trappable },
    with: {
        "opamp-gateway:policy/types.message": super::message::MessageHandle,
    },
});

/// The world's fully qualified name, for error messages and reports.
pub const WORLD: &str = "opamp-gateway:policy/gateway-policy@0.2.0";

/// The version of the `opamp-gateway:policy` package this host implements.
pub(super) const VERSION: &str = "0.2.0";

/// Prefix of every interface name in the package.
pub(super) const PACKAGE_PREFIX: &str = "opamp-gateway:policy/";

#[cfg(test)]
mod tests {
    #[test]
    fn world_names_the_version() {
        assert!(super::WORLD.starts_with(super::PACKAGE_PREFIX));
        assert!(super::WORLD.ends_with(&format!("@{}", super::VERSION)));
    }
}
