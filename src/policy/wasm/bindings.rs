//! Host bindings generated from the policy WIT, one module per version the
//! gateway loads: [`v3`] from `wit/policy.wit` (0.3.0, current), [`v2`] from
//! `wit/v0.2.0/policy.wit` (0.2.0, kept so components built against it
//! still load). Both map `types.message` to the same [`MessageHandle`], so
//! one store serves either; [`WitVersion`] says which a component targets,
//! and `versions` dispatches on it.
//!
//! Parameters the host passes to a hook are generated borrowing
//! (`ownership: Borrowing`): a hook's headers and names are lowered straight
//! from the relay's strings, not cloned first for every call.
//!
//! Every import is `trappable`: a host function that cannot answer (a stale
//! resource handle, say) traps the guest rather than inventing a value.
//!
//! [`MessageHandle`]: super::message::MessageHandle

// Without the `wasm` feature only the names below remain (error messages).
#![cfg_attr(not(feature = "wasm"), allow(dead_code))]

/// `opamp-gateway:policy@0.3.0`: `assign` sees every upstream.
#[cfg(feature = "wasm")]
pub(crate) mod v3 {
    wasmtime::component::bindgen!({
        world: "gateway-policy",
        path: "wit",
        imports: { default: trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "opamp-gateway:policy/types.message": crate::policy::wasm::message::MessageHandle,
        },
    });
}

/// `opamp-gateway:policy@0.2.0`: `assign` sees the default upstream's links.
#[cfg(feature = "wasm")]
pub(crate) mod v2 {
    wasmtime::component::bindgen!({
        world: "gateway-policy",
        path: "wit/v0.2.0",
        imports: { default: trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "opamp-gateway:policy/types.message": crate::policy::wasm::message::MessageHandle,
        },
    });
}

/// The world's fully qualified name (current version), for error messages
/// and reports.
pub const WORLD: &str = "opamp-gateway:policy/gateway-policy@0.3.0";

/// Every world the gateway loads, for error messages.
pub(super) const WORLDS: &str = "opamp-gateway:policy/gateway-policy@0.3.0 (or @0.2.0)";

/// Prefix of every interface name in the package.
pub(super) const PACKAGE_PREFIX: &str = "opamp-gateway:policy/";

/// A version of the `opamp-gateway:policy` package this host loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    V0_2,
    V0_3,
}

impl WitVersion {
    /// Newest first.
    pub(super) const ALL: [WitVersion; 2] = [WitVersion::V0_3, WitVersion::V0_2];

    /// `0.3.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_2 => "0.2.0",
            WitVersion::V0_3 => "0.3.0",
        }
    }

    pub(super) fn parse(version: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == version)
    }

    /// `@0.3.0 or @0.2.0`, for error messages.
    pub(super) fn supported() -> String {
        Self::ALL.iter().map(|v| format!("@{}", v.as_str())).collect::<Vec<_>>().join(" or ")
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implements one version's `host.log` and `types.message` imports on
/// [`HostState`](super::sandbox::HostState), through the version-free logic
/// in `sandbox` and `message`. The WIT of those is the same in every
/// version; only the generated types differ. The rest of `host` (the state
/// store and clock, 0.3.0 only) is implemented per version below.
#[cfg(feature = "wasm")]
macro_rules! host_imports {
    ($v:ident, { $($extra:tt)* }) => {
        const _: () = {
            use wasmtime::component::Resource;

            use $crate::policy::wasm::bindings::$v::opamp_gateway::policy::{host, types};
            use $crate::policy::wasm::message::{self, MessageHandle, Wire};
            use $crate::policy::wasm::sandbox::{GuestLevel, HostState};

            fn value(w: Wire<'_>) -> types::FieldValue {
                match w {
                    Wire::Varint(v) => types::FieldValue::Varint(v),
                    Wire::Fixed64(v) => types::FieldValue::Fixed64(v),
                    Wire::Fixed32(v) => types::FieldValue::Fixed32(v),
                    Wire::Bytes(b) => types::FieldValue::Bytes(b.to_vec()),
                }
            }

            impl host::Host for HostState {
                fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
                    let level = match level {
                        host::Level::Trace => GuestLevel::Trace,
                        host::Level::Debug => GuestLevel::Debug,
                        host::Level::Info => GuestLevel::Info,
                        host::Level::Warn => GuestLevel::Warn,
                        host::Level::Error => GuestLevel::Error,
                    };
                    self.guest_log(level, message);
                    Ok(())
                }

                $($extra)*
            }

            impl types::Host for HostState {}

            impl types::HostMessage for HostState {
                fn len(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<u32> {
                    message::len(self, &r)
                }
                fn bytes(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<Vec<u8>> {
                    message::bytes(self, &r)
                }
                fn has(&mut self, r: Resource<MessageHandle>, number: u32) -> wasmtime::Result<bool> {
                    message::has(self, &r, number)
                }
                fn field(
                    &mut self,
                    r: Resource<MessageHandle>,
                    number: u32,
                ) -> wasmtime::Result<Option<types::FieldValue>> {
                    message::field(self, &r, number, value)
                }
                fn fields(
                    &mut self,
                    r: Resource<MessageHandle>,
                    number: u32,
                ) -> wasmtime::Result<Vec<types::FieldValue>> {
                    message::fields(self, &r, number, value)
                }
                fn drop(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<()> {
                    message::delete(self, r)
                }
            }
        };
    };
}

#[cfg(feature = "wasm")]
host_imports!(v2, {});

// 0.3.0's state store and clock (see `crate::policy::state`).
#[cfg(feature = "wasm")]
host_imports!(v3, {
    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.state.get(&key))
    }

    fn state_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), host::StateError>> {
        Ok(self.state.set(&key, value, ttl_ms).map_err(state_error))
    }

    fn state_add(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, host::StateError>> {
        Ok(self.state.add(&key, delta, ttl_ms).map_err(state_error))
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.state.delete(&key);
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::policy::state::now_ms())
    }
});

#[cfg(feature = "wasm")]
fn state_error(e: crate::policy::state::StateError) -> v3::opamp_gateway::policy::host::StateError {
    use crate::policy::state::StateError;
    use v3::opamp_gateway::policy::host;
    match e {
        StateError::Full => host::StateError::Full,
        StateError::NotACounter => host::StateError::NotACounter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_names_the_current_version() {
        assert!(WORLD.starts_with(PACKAGE_PREFIX));
        assert!(WORLD.ends_with(&format!("@{}", WitVersion::ALL[0])));
        assert!(WORLDS.starts_with(WORLD) && WORLDS.contains(WitVersion::V0_2.as_str()));
    }

    #[test]
    fn versions_parse_and_list() {
        assert_eq!(WitVersion::parse("0.2.0"), Some(WitVersion::V0_2));
        assert_eq!(WitVersion::parse("0.3.0"), Some(WitVersion::V0_3));
        assert_eq!(WitVersion::parse("0.1.0"), None);
        assert_eq!(WitVersion::supported(), "@0.3.0 or @0.2.0");
    }
}
