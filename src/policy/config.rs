//! The `policies:` section of the gateway config.
//!
//! ```yaml
//! policies:
//!   directory: policies      # <name>.wasm (+ <name>.yaml), in file-name order
//!   call_timeout: 5ms        # CPU time per hook call; beyond it the call fails (Timeout)
//!   init_timeout: 1s         # CPU time for instantiation + init() of one instance
//!   memory_limit: 33554432   # bytes of linear memory per instance (32 MiB)
//!   instances: 2             # idle instances kept per policy (default: CPUs)
//!   watch: true              # hot-reload the directory
//!   cache: true              # cache compiled policies on disk
//!   cache_dir: /var/cache/opamp-gateway   # default: the user cache dir
//! ```
//!
//! A policy's `<name>.yaml` may override `on_error`, `call_timeout` and
//! `memory_limit` for that policy (see `docs/policies.md`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Folder of `<name>.wasm` (+ optional `<name>.yaml`) files, applied in
    /// file-name order. A missing folder means "no policies".
    pub directory: PathBuf,
    /// Wall-clock budget for one hook call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Wall-clock budget for creating one instance and running its `init`
    /// (compilation is not included: it happens once, off the hot path).
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// Linear-memory cap per policy instance, in bytes.
    pub memory_limit: u64,
    /// Idle instances kept per policy. Concurrent calls beyond this many get
    /// a fresh instance that is discarded afterwards. Default: one per CPU,
    /// which is how many relay threads can call at once.
    pub instances: Option<usize>,
    /// Watch the directory and hot-reload on change.
    pub watch: bool,
    /// Keep compiled policies in an on-disk cache (keyed by the module's
    /// bytes, the wasmtime version and the compiler settings), so restarts
    /// and reloads of an unchanged module do not recompile it.
    pub cache: bool,
    /// Where the compile cache lives. Default: wasmtime's per-user cache
    /// directory (`$XDG_CACHE_HOME/wasmtime`, usually `~/.cache/wasmtime`).
    pub cache_dir: Option<PathBuf>,
}

impl PoliciesConfig {
    /// Idle instances per policy, resolved.
    pub fn instances(&self) -> usize {
        self.instances.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1)
    }
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("policies"),
            call_timeout: Duration::from_millis(5),
            init_timeout: Duration::from_secs(1),
            memory_limit: 32 << 20,
            instances: None,
            watch: true,
            cache: true,
            cache_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c: PoliciesConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c.call_timeout, Duration::from_millis(5));
        assert!(c.watch && c.cache && c.instances() >= 1);
        let c: PoliciesConfig =
            serde_yaml_ng::from_str("call_timeout: 2ms\ninstances: 3\ncache: false\ncache_dir: /tmp/x").unwrap();
        assert_eq!(c.call_timeout, Duration::from_millis(2));
        assert_eq!(c.instances(), 3);
        assert!(!c.cache);
        assert!(serde_yaml_ng::from_str::<PoliciesConfig>("bogus: 1").is_err());
    }
}
