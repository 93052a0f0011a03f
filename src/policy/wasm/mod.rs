//! The WebAssembly policy host: components implementing `wit/policy.wit`
//! behind the [`Policy`](crate::policy::Policy) trait.
//!
//! | file          | concept                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `bindings`    | `bindgen!` of each WIT version (0.3.0, 0.2.0), host imports    |
//! | `versions`    | a component/instance of either version, 0.2.0 → 0.3.0 types    |
//! | `engine`      | the wasmtime engine, compile cache, epoch ticker, budgets      |
//! | `deadline`    | per-call deadlines charged in the thread's CPU time            |
//! | `sandbox`     | per-store host state: denying WASI, memory limiter, `host.log` |
//! | `message`     | the `message` resource a filter reads fields from              |
//! | `pool`        | live instances per policy; failed ones are discarded           |
//! | `policy`      | `WasmPolicy`:   WIT ⇄ relay types, answer validation           |
//! | `loader`      | directory scan, YAML settings, digest, compile, reuse          |
//! | `watcher`     | notify + debounce → reload                                     |
//! | `check`       | the `policy check` CLI                                         |
//!
//! The hot-reloading runtime that ties these together is
//! [`crate::policy::runtime::PolicyRuntime`]. Guest-side documentation is in
//! `docs/policies.md`; example policies are in `policies/`.

mod bindings;
#[cfg(feature = "wasm")]
mod check;
#[cfg(feature = "wasm")]
mod deadline;
#[cfg(feature = "wasm")]
mod engine;
mod error;
#[cfg(feature = "wasm")]
mod loader;
#[cfg(feature = "wasm")]
mod message;
#[cfg(feature = "wasm")]
mod policy;
#[cfg(feature = "wasm")]
mod pool;
#[cfg(feature = "wasm")]
mod sandbox;
#[cfg(feature = "wasm")]
mod versions;
#[cfg(feature = "wasm")]
mod watcher;

pub use bindings::{WitVersion, WORLD};
#[cfg(feature = "wasm")]
pub use check::{check, CheckReport};
pub use error::PolicyError;
#[cfg(feature = "wasm")]
pub use policy::WasmPolicy;

#[cfg(feature = "wasm")]
pub(crate) use check::hook_list;
#[cfg(feature = "wasm")]
pub(crate) use engine::PolicyEngine;
#[cfg(feature = "wasm")]
pub(crate) use loader::Loader;
#[cfg(feature = "wasm")]
pub use loader::RESERVED_KEYS;
#[cfg(feature = "wasm")]
pub(crate) use watcher::DirWatcher;
