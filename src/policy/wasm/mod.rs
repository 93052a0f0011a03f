//! The WebAssembly policy host: components implementing `wit/policy.wit`
//! behind the [`Policy`](crate::policy::Policy) trait.
//!
//! | file          | concept                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `bindings`    | `bindgen!` of the world `opamp-gateway:policy/gateway-policy`  |
//! | `engine`      | the wasmtime engine, compile cache, epoch ticker, budgets      |
//! | `deadline`    | per-call deadlines charged in the thread's CPU time            |
//! | `sandbox`     | per-store host state: denying WASI, memory limiter, `host.log` |
//! | `message`     | the `message` resource a filter reads fields from              |
//! | `pool`        | live instances per policy; failed ones are discarded           |
//! | `policy`      | [`WasmPolicy`]: WIT ⇄ relay types, answer validation           |
//! | `loader`      | directory scan, YAML settings, digest, compile, reuse          |
//! | `watcher`     | notify + debounce → reload                                     |
//! | `check`       | the `policy check` CLI                                         |
//!
//! The hot-reloading runtime that ties these together is
//! [`crate::policy::runtime::PolicyRuntime`]. Guest-side documentation is in
//! `docs/policies.md`; example policies are in `policies/`.

mod bindings;
mod check;
mod deadline;
mod engine;
mod error;
mod loader;
mod message;
mod policy;
mod pool;
mod sandbox;
mod watcher;

pub use bindings::WORLD;
pub use check::{check, CheckReport};
pub use error::PolicyError;
pub use policy::WasmPolicy;

pub(crate) use check::hook_list;
pub(crate) use engine::PolicyEngine;
pub(crate) use loader::Loader;
pub(crate) use watcher::DirWatcher;
