//! The `policies:` section of the gateway config.
//!
//! ```yaml
//! policies:
//!   directory: policies.d    # <name>.wasm (+ <name>.yaml), in file-name order
//!   call_timeout: 5ms        # CPU time per hook call; beyond it the call fails (Timeout)
//!   init_timeout: 1s         # CPU time for instantiation + init() of one instance
//!   memory_limit: 33554432   # bytes of linear memory per instance (32 MiB)
//!   instances: 2             # idle instances kept per policy (default: CPUs)
//!   concurrency: 1           # policy calls running at once, gateway-wide (default: CPUs / 2)
//!   queue: 1024              # calls waiting for a turn; beyond: shed (kind `overloaded`)
//!   watch: true              # hot-reload the directory
//!   cache: true              # cache compiled policies on disk
//!   cache_dir: /var/cache/opamp-gateway   # default: the user cache dir
//!   required: false          # /readyz fails while the set is empty or degraded
//!   quarantine:              # circuit breaker per policy (see `breaker`)
//!     after: 5               # consecutive failures (0: never by count)
//!     rate: 0.5              # failed share of calls in `window` (0: never by rate)
//!     window: 10s
//!     backoff: 1s            # first quarantine; doubles per failed trial
//!     max_backoff: 1m
//!   limits:                  # what a policy can make the gateway do
//!     max_forwarded_headers: 100
//!     max_forwarded_header_bytes: 65536
//!     log_lines: 50          # guest log/stdout lines per policy per log_interval
//!     log_interval: 10s
//!     max_module_size: 134217728  # bytes per .wasm; bigger is refused unread
//!     state_bytes: 1048576   # shared state store per policy (keys + values)
//! ```
//!
//! A policy's `<name>.yaml` may override `on_error`, `call_timeout`,
//! `memory_limit` and the `quarantine_*` settings for that policy, and set
//! `mode: shadow` and `state: reset` (see `docs/policies.md`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Folder of `<name>.wasm` (+ optional `<name>.yaml`) files, applied in
    /// file-name order. A missing folder means "no policies". The default,
    /// `policies.d`, is not the repository's `policies/` (the SDK's sources).
    pub directory: PathBuf,
    /// CPU-time budget for one hook call (the calling thread's CPU clock;
    /// wall time only where there is none, see `wasm::deadline`).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// CPU-time budget for creating one instance and running its `init`
    /// (compilation is not included: it happens once, off the hot path).
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// Linear-memory cap per policy instance, in bytes.
    pub memory_limit: u64,
    /// Idle instances kept per policy. Concurrent calls beyond this many get
    /// a fresh instance that is discarded afterwards. Default: one per CPU,
    /// which is how many relay threads can call at once.
    pub instances: Option<usize>,
    /// Policy chains running at once on the relay's workers, gateway-wide:
    /// what bounds how many workers a slow or looping policy can hold.
    /// Default: half the CPUs, at least 1. Each policy keeps at least this
    /// many instances.
    pub concurrency: Option<usize>,
    /// Callers that may wait for a turn; a call beyond them is shed: each
    /// policy it would have called fails (`overloaded`) under its `on_error`.
    pub queue: usize,
    /// Watch the directory and hot-reload on change.
    pub watch: bool,
    /// Keep compiled policies in an on-disk cache (keyed by the module's
    /// bytes, the wasmtime version and the compiler settings), so restarts
    /// and reloads of an unchanged module do not recompile it.
    pub cache: bool,
    /// Where the compile cache lives. Default: wasmtime's per-user cache
    /// directory (`$XDG_CACHE_HOME/wasmtime`, usually `~/.cache/wasmtime`).
    pub cache_dir: Option<PathBuf>,
    /// Readiness (`/readyz`) fails while no policy is serving or the
    /// directory cannot be read (the last good set keeps serving).
    pub required: bool,
    /// Default circuit breaker of every policy.
    pub quarantine: BreakerConfig,
    pub limits: PolicyLimits,
}

/// When a failing policy is quarantined, and for how long. A quarantined
/// policy costs no Wasm call: `on_error: open` skips it, `closed` refuses
/// what it would judge. After `backoff` one trial call decides: success
/// lifts the quarantine, failure doubles the backoff (up to `max_backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls that trip the breaker; 0 disables.
    pub after: u32,
    /// Share of failed calls within `window` (at least [`MIN_CALLS`] calls)
    /// that trips the breaker, in (0, 1]; 0 disables.
    pub rate: f64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// Calls a window needs before its failure rate counts.
pub const MIN_CALLS: u64 = 20;

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            after: 5,
            rate: 0.5,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl BreakerConfig {
    /// Checks ranges; `Err` names the key (relative to the section).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.rate) || self.rate.is_nan() {
            return Err(("rate", format!("expected a fraction in [0, 1], got {}", self.rate)));
        }
        if self.window.is_zero() {
            return Err(("window", "expected a duration > 0".into()));
        }
        if self.backoff.is_zero() {
            return Err(("backoff", "expected a duration > 0".into()));
        }
        if self.max_backoff < self.backoff {
            return Err(("max_backoff", "expected a duration >= backoff".into()));
        }
        Ok(())
    }
}

/// A policy's own `quarantine_*` keys (in its `<name>.yaml`; flat, so the
/// guest helper's config parser can skip them), each over the global value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BreakerOverrides {
    pub after: Option<u32>,
    pub rate: Option<f64>,
    pub window: Option<Duration>,
    pub backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
}

/// A YAML value as a config error quotes it (`on_error must be … not 3`).
pub(crate) fn show_yaml(v: &serde_yaml_ng::Value) -> String {
    serde_yaml_ng::to_string(v).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "?".into())
}

impl BreakerOverrides {
    /// The reserved keys, as a policy's YAML spells them.
    pub const KEYS: [&'static str; 5] =
        ["quarantine_after", "quarantine_rate", "quarantine_window", "quarantine_backoff", "quarantine_max_backoff"];

    /// Reads the keys from a policy's top-level mapping; `Err` says which
    /// key is wrong and what it expects.
    pub fn parse(map: &serde_yaml_ng::Mapping) -> Result<Self, String> {
        let show = show_yaml;
        let duration = |key: &str| -> Result<Option<Duration>, String> {
            map.get(key)
                .map(|v| {
                    v.as_str()
                        .and_then(|t| humantime::parse_duration(t).ok())
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("{key} must be a duration like `2s`, not {}", show(v)))
                })
                .transpose()
        };
        let after = map
            .get("quarantine_after")
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("quarantine_after must be a count of failures (0: off), not {}", show(v)))
            })
            .transpose()?;
        let rate = map
            .get("quarantine_rate")
            .map(|v| {
                v.as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("quarantine_rate must be a fraction in [0, 1] (0: off), not {}", show(v)))
            })
            .transpose()?;
        Ok(Self {
            after,
            rate,
            window: duration("quarantine_window")?,
            backoff: duration("quarantine_backoff")?,
            max_backoff: duration("quarantine_max_backoff")?,
        })
    }

    /// `base` with these overrides; `None` when there are none. The cap is
    /// raised to the backoff when only the backoff was raised.
    pub fn over(&self, base: &BreakerConfig) -> Option<BreakerConfig> {
        if *self == Self::default() {
            return None;
        }
        let backoff = self.backoff.unwrap_or(base.backoff);
        Some(BreakerConfig {
            after: self.after.unwrap_or(base.after),
            rate: self.rate.unwrap_or(base.rate),
            window: self.window.unwrap_or(base.window),
            backoff,
            max_backoff: self.max_backoff.unwrap_or(base.max_backoff).max(backoff),
        })
    }
}

/// Caps on what a policy's answers can make the gateway do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyLimits {
    /// Headers a `forward-headers` answer may hold.
    pub max_forwarded_headers: usize,
    /// Total bytes (names + values) of a `forward-headers` answer.
    pub max_forwarded_header_bytes: usize,
    /// Guest log and stdout/stderr lines logged per policy per
    /// `log_interval`; the rest are counted and summarised.
    pub log_lines: u32,
    #[serde(with = "humantime_serde")]
    pub log_interval: Duration,
    /// Largest policy module (`.wasm`) loaded, in bytes: a bigger file is
    /// refused, unread, and the serving set keeps serving.
    pub max_module_size: u64,
    /// Bytes (keys + values) each policy's shared state store may hold
    /// (WIT 0.3.0 `host.state-*`); a write beyond is refused with `full`.
    pub state_bytes: usize,
    /// Largest replacement message per direction (agent→server,
    /// server→agent): the receiving side's `max_message_size`, filled in by
    /// [`PoliciesConfig::for_relay`]; not configurable here.
    #[serde(skip)]
    pub max_replacement: [usize; 2],
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            max_forwarded_headers: 100,
            max_forwarded_header_bytes: 64 << 10,
            log_lines: 50,
            log_interval: Duration::from_secs(10),
            // componentize-py's components are about 40 MB.
            max_module_size: 128 << 20,
            state_bytes: 1 << 20,
            max_replacement: [64 << 20; 2],
        }
    }
}

impl PoliciesConfig {
    /// This config with replacements bounded by the message sizes of the
    /// side they go to: agent→server by `server.max_message_size`,
    /// server→agent by `listener.max_message_size`.
    pub fn for_relay(&self, to_server: usize, to_agent: usize) -> Self {
        let mut c = self.clone();
        c.limits.max_replacement = [to_server, to_agent];
        c
    }

    /// Checks ranges; `Err` is the field path (under `policies.`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.quarantine.validate().map_err(|(k, why)| (format!("quarantine.{k}"), why))?;
        if self.limits.log_interval.is_zero() {
            return Err(("limits.log_interval".into(), "expected a duration > 0".into()));
        }
        if self.concurrency == Some(0) {
            return Err(("concurrency".into(), "expected a number of calls >= 1, got 0".into()));
        }
        if self.instances == Some(0) {
            return Err(("instances".into(), "expected a number of instances >= 1, got 0".into()));
        }
        Ok(())
    }

    /// Concurrent policy calls, resolved.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1)
    }

    /// Idle instances per policy, resolved.
    pub fn instances(&self) -> usize {
        self.instances.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1)
    }
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("policies.d"),
            call_timeout: Duration::from_millis(5),
            init_timeout: Duration::from_secs(1),
            memory_limit: 32 << 20,
            instances: None,
            concurrency: None,
            queue: 1024,
            watch: true,
            cache: true,
            cache_dir: None,
            required: false,
            quarantine: BreakerConfig::default(),
            limits: PolicyLimits::default(),
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

    #[test]
    fn concurrency_settings() {
        let c: PoliciesConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert!(c.concurrency() >= 1 && c.queue == 1024);
        let c: PoliciesConfig = serde_yaml_ng::from_str("concurrency: 3\nqueue: 0").unwrap();
        assert_eq!((c.concurrency(), c.queue), (3, 0));
        let c: PoliciesConfig = serde_yaml_ng::from_str("concurrency: 0").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "concurrency");
        let c: PoliciesConfig = serde_yaml_ng::from_str("instances: 0").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "instances");
    }

    #[test]
    fn containment_settings() {
        let c: PoliciesConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert!(!c.required);
        assert_eq!(c.quarantine, BreakerConfig::default());
        assert_eq!((c.limits.max_forwarded_headers, c.limits.max_forwarded_header_bytes), (100, 65536));
        let c: PoliciesConfig = serde_yaml_ng::from_str(
            "required: true\nquarantine: { after: 0, rate: 0.25, backoff: 2s, max_backoff: 10s }\n\
             limits: { max_forwarded_headers: 3, log_lines: 1 }",
        )
        .unwrap();
        assert!(c.required);
        assert_eq!((c.quarantine.after, c.quarantine.rate), (0, 0.25));
        assert_eq!(c.quarantine.max_backoff, Duration::from_secs(10));
        assert_eq!((c.limits.max_forwarded_headers, c.limits.log_lines), (3, 1));
        assert!(c.validate().is_ok());
        let c: PoliciesConfig = serde_yaml_ng::from_str("quarantine: { backoff: 2s, max_backoff: 1s }").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "quarantine.max_backoff");
        let c: PoliciesConfig = serde_yaml_ng::from_str("quarantine: { rate: 1.5 }").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "quarantine.rate");
        assert!(serde_yaml_ng::from_str::<PoliciesConfig>("limits: { max_replacement: 1 }").is_err());
        assert_eq!(c.for_relay(10, 20).limits.max_replacement, [10, 20]);
    }

    #[test]
    fn per_policy_quarantine_keys() {
        let map = |t: &str| serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(t).unwrap();
        let base = BreakerConfig::default();
        assert_eq!(BreakerOverrides::parse(&map("allow: [a]")).unwrap().over(&base), None);
        let o =
            BreakerOverrides::parse(&map("quarantine_after: 2\nquarantine_backoff: 5m\nquarantine_rate: 0")).unwrap();
        let c = o.over(&base).unwrap();
        assert_eq!((c.after, c.rate, c.window), (2, 0.0, base.window));
        assert_eq!((c.backoff, c.max_backoff), (Duration::from_secs(300), Duration::from_secs(300)));
        for bad in ["quarantine_after: -1", "quarantine_rate: 2", "quarantine_window: soon", "quarantine_backoff: 0s"] {
            let e = BreakerOverrides::parse(&map(bad)).unwrap_err();
            assert!(e.starts_with(bad.split(':').next().unwrap()), "{bad}: {e}");
        }
    }
}
