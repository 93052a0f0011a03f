//! From a directory of files to a list of ready policies.
//!
//! - [`scan`]: `<dir>/<name>.wasm` plus optional `<name>.yaml` (or `.yml`),
//!   ordered by file name (byte order): that order is the chain order.
//!   Hidden files are ignored, so editors' temporaries and Kubernetes'
//!   `..data` links do not count as policies.
//! - [`Source::read`]: the bytes, their sha256 digest, the config text and
//!   the host-side settings the gateway reads from it ([`Settings`]).
//! - [`compile`]: compile (through wasmtime's on-disk cache), type-check
//!   against the WIT world, create the first instance and run `init`. Each
//!   step names the file and the reason when it fails.
//! - [`Loader`]: remembers the loaded set, so a reload reuses every policy
//!   whose module and config are byte-identical (no recompilation, warm
//!   instance pools) and only builds what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{WitVersion, PACKAGE_PREFIX};
use super::engine::{Budget, PolicyEngine};
use super::error::{one_line, PolicyError};
use super::policy::WasmPolicy;
use super::pool::{InitFailure, InstancePool};
use super::versions::Pre;
use crate::policy::config::{show_yaml as show, BreakerOverrides, PoliciesConfig};
use crate::policy::filter_fields::FilterFields;
use crate::policy::visible_headers::VisibleHeaders;
use crate::policy::{FailureMode, HookError, Mode};

/// The files of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyFiles {
    pub name: String,
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
}

/// Lists the policies in `dir`, in chain order.
pub(crate) fn scan(dir: &Path) -> Result<Vec<PolicyFiles>, PolicyError> {
    let io = |source| PolicyError::Io { path: dir.to_owned(), source };
    let mut modules = BTreeMap::new();
    let mut configs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            tracing::warn!(path = %path.display(), "ignoring a file whose name is not UTF-8");
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let Some((stem, ext)) = file_name.rsplit_once('.') else { continue };
        match ext {
            "wasm" => {
                modules.insert(stem.to_owned(), path.clone());
            }
            "yaml" | "yml" => configs.entry(stem.to_owned()).or_default().push(path.clone()),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(modules.len());
    for (name, wasm) in modules {
        if !valid_policy_name(&name) {
            return Err(PolicyError::Name { path: wasm });
        }
        let config = match configs.remove(&name) {
            None => None,
            Some(mut paths) if paths.len() == 1 => paths.pop(),
            Some(paths) => {
                return Err(PolicyError::Config {
                    path: paths[0].clone(),
                    reason: format!("both {name}.yaml and {name}.yml exist; keep one"),
                })
            }
        };
        out.push(PolicyFiles { name, wasm, config });
    }
    for paths in configs.values() {
        for p in paths {
            tracing::warn!(path = %p.display(), "policy config without a matching .wasm module; ignored");
        }
    }
    Ok(out)
}

/// A policy's name (its file stem) as the log, metrics and `policy check`
/// show it: ASCII letters, digits, `-`, `_` and `.`.
pub(super) fn valid_policy_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// Every top-level key the gateway reads from a policy's YAML, each with a
/// value it accepts. A policy receives the whole text and must skip these:
/// the SDK's `GATEWAY_KEYS` and the Python and JavaScript templates list
/// them, and the example and template tests load each policy with all of
/// them set.
pub const RESERVED_KEYS: [(&str, &str); 13] = [
    ("on_error", "closed"),
    ("mode", "shadow"),
    ("state", "reset"),
    ("call_timeout", "20ms"),
    ("memory_limit", "16777216"),
    ("quarantine_after", "3"),
    ("quarantine_rate", "0.9"),
    ("quarantine_window", "30s"),
    ("quarantine_backoff", "2s"),
    ("quarantine_max_backoff", "2m"),
    ("filter_agent_to_server", "[effective_config]"),
    ("filter_server_to_agent", "[packages_available]"),
    ("visible_headers", "[x-tenant]"),
];

/// Host-side settings read from a policy's YAML ([`RESERVED_KEYS`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Settings {
    pub on_error: FailureMode,
    pub call_timeout: Option<Duration>,
    pub memory_limit: Option<u64>,
    /// `quarantine_*` keys, over `policies.quarantine`.
    pub quarantine: BreakerOverrides,
    /// `mode: shadow`: verdicts counted, never applied.
    pub mode: Mode,
    /// `state: reset`: a fresh state store at each load (default `keep`).
    pub reset_state: bool,
    /// `filter_agent_to_server` / `filter_server_to_agent`: the messages
    /// its `filter` is called for.
    pub filter_fields: FilterFields,
    /// `visible_headers`: the agent headers its hooks are shown.
    pub visible_headers: VisibleHeaders,
}

pub(crate) fn parse_settings(path: &Path, text: &str) -> Result<Settings, PolicyError> {
    let bad = |reason: String| PolicyError::Config { path: path.to_owned(), reason };
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = match value {
        serde_yaml_ng::Value::Null => return Ok(Settings::default()),
        serde_yaml_ng::Value::Mapping(m) => m,
        _ => return Err(bad("the top level must be a mapping (key: value)".into())),
    };
    let mut s = Settings::default();
    if let Some(v) = map.get("on_error") {
        s.on_error = match v.as_str() {
            Some("open") => FailureMode::Open,
            Some("closed") => FailureMode::Closed,
            _ => return Err(bad(format!("on_error must be `open` or `closed`, not {}", show(v)))),
        };
    }
    if let Some(v) = map.get("call_timeout") {
        let d = v
            .as_str()
            .and_then(|t| humantime::parse_duration(t).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad(format!("call_timeout must be a duration like `10ms`, not {}", show(v))))?;
        s.call_timeout = Some(d);
    }
    if let Some(v) = map.get("memory_limit") {
        let n = v
            .as_u64()
            .filter(|n| *n >= 1 << 16)
            .ok_or_else(|| bad(format!("memory_limit must be a number of bytes >= 65536, not {}", show(v))))?;
        s.memory_limit = Some(n);
    }
    if let Some(v) = map.get("mode") {
        s.mode = match v.as_str() {
            Some("enforce") => Mode::Enforce,
            Some("shadow") => Mode::Shadow,
            _ => return Err(bad(format!("mode must be `enforce` or `shadow`, not {}", show(v)))),
        };
    }
    if let Some(v) = map.get("state") {
        s.reset_state = match v.as_str() {
            Some("keep") => false,
            Some("reset") => true,
            _ => return Err(bad(format!("state must be `keep` or `reset`, not {}", show(v)))),
        };
    }
    s.filter_fields = FilterFields::parse(&map).map_err(bad)?;
    s.visible_headers = VisibleHeaders::parse(&map).map_err(bad)?;
    s.quarantine = BreakerOverrides::parse(&map).map_err(bad)?;
    Ok(s)
}

/// Hex sha256.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One policy's files, read.
pub(crate) struct Source {
    pub files: PolicyFiles,
    pub wasm: Vec<u8>,
    pub digest: String,
    pub config_text: String,
    pub config_digest: Option<String>,
    pub settings: Settings,
}

impl Source {
    /// Reads the files; a module over `max_module_size` bytes (or a config
    /// over [`MAX_CONFIG_BYTES`]) is refused before it is read.
    pub(super) fn read(files: PolicyFiles, max_module_size: u64) -> Result<Self, PolicyError> {
        let wasm = read_bounded(&files.wasm, max_module_size, "policies.limits.max_module_size")?;
        let digest = sha256(&wasm);
        let (config_text, config_digest, settings) = match &files.config {
            None => (String::new(), None, Settings::default()),
            Some(path) => {
                let bytes = read_bounded(path, MAX_CONFIG_BYTES, "the policy config limit")?;
                let digest = sha256(&bytes);
                let text = String::from_utf8(bytes)
                    .map_err(|_| PolicyError::Config { path: path.clone(), reason: "not UTF-8 text".into() })?;
                let settings = parse_settings(path, &text)?;
                (text, Some(digest), settings)
            }
        };
        Ok(Self { files, wasm, digest, config_text, config_digest, settings })
    }
}

/// A policy's YAML is a few settings; anything near this is a mistake.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The bytes of `path`, a regular file (after symlinks) of at most `max`
/// bytes. The size is checked before reading, so a stray 200 MB file costs
/// nothing, and the read is capped in case the file grows meanwhile.
fn read_bounded(path: &Path, max: u64, limit: &str) -> Result<Vec<u8>, PolicyError> {
    use std::io::Read;
    let io = |source| PolicyError::Io { path: path.to_owned(), source };
    let too_large = |size: u64| PolicyError::File {
        path: path.to_owned(),
        reason: format!("{size} bytes is over {limit} ({max} bytes)"),
    };
    // `metadata` first: opening a FIFO would block until it has a writer.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file" };
        return Err(PolicyError::File { path: path.to_owned(), reason: format!("is {what}; remove or rename it") });
    }
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path).map_err(io)?.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Compiles, type-checks and initialises one policy. `compiled` is the
/// already type-checked component when a serving policy has the same bytes
/// (only its config changed).
pub(crate) fn compile(
    engine: &PolicyEngine,
    source: Source,
    cfg: &PoliciesConfig,
    compiled: Option<Pre>,
) -> Result<WasmPolicy, PolicyError> {
    let Source { files, wasm, digest, config_text, config_digest, settings } = source;
    let path = files.wasm.clone();
    let started = Instant::now();
    let pre = match compiled {
        Some(pre) => pre,
        None => {
            let component = Component::new(&engine.engine, &wasm)
                .map_err(|e| PolicyError::Compile { path: path.clone(), reason: one_line(&format!("{e:#}")) })?;
            let interface = |reason: String| PolicyError::Interface { path: path.clone(), reason };
            let wasmtime_err = |e: wasmtime::Error| interface(one_line(&format!("{e:#}")));
            // The version the component names decides the bindings; one it
            // does not name (another package altogether) is type-checked
            // against the current world, whose error says what is missing.
            let version = match built_against(&engine.engine, &component) {
                None => WitVersion::ALL[0],
                Some(v) => WitVersion::parse(&v).ok_or_else(|| {
                    interface(format!(
                        "it was built against opamp-gateway:policy@{v}, this gateway loads {}: rebuild it \
                         with a current opamp-policy crate",
                        WitVersion::supported()
                    ))
                })?,
            };
            let pre = engine.linker.instantiate_pre(&component).map_err(wasmtime_err)?;
            Pre::new(version, pre).map_err(wasmtime_err)?
        }
    };
    let compiled = started.elapsed();
    let version = pre.version();

    let mut budget = Budget::from_config(cfg);
    if let Some(t) = settings.call_timeout {
        budget.call_timeout = t;
    }
    if let Some(m) = settings.memory_limit {
        budget.memory_limit = m;
    }
    let name: Arc<str> = files.name.as_str().into();
    let state = engine.states.store(&name, cfg.limits.state_bytes, settings.reset_state);
    let (pool, hooks) =
        InstancePool::new(name.clone(), pre, engine.clone(), config_text, budget, state).map_err(|e| {
            let reason = match e {
                InitFailure::Failed(HookError::Timeout) => {
                    format!("did not finish within init_timeout ({})", humantime::format_duration(budget.init_timeout))
                }
                InitFailure::Failed(HookError::Memory) => {
                    format!("exceeded its memory limit ({} bytes)", budget.memory_limit)
                }
                other => other.to_string(),
            };
            PolicyError::Init { path: path.clone(), reason }
        })?;
    tracing::debug!(
        policy = &*name,
        compile_ms = compiled.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "policy compiled and initialised"
    );
    Ok(WasmPolicy {
        name,
        digest,
        config_digest,
        wasm_path: files.wasm,
        config_path: files.config,
        failure_mode: settings.on_error,
        quarantine: settings.quarantine.over(&cfg.quarantine),
        hooks,
        version,
        mode: settings.mode,
        filter_fields: settings.filter_fields,
        visible_headers: settings.visible_headers,
        pool,
    })
}

/// The `opamp-gateway:policy` version a component names: the one its
/// `policy` export names, else any other of the package's interfaces.
fn built_against(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(n, _)| n).chain(ty.imports(engine).map(|(n, _)| n)).collect();
    // (interface, version) of every interface of the package.
    let ours: Vec<(&str, &str)> =
        names.iter().filter_map(|n| n.strip_prefix(PACKAGE_PREFIX)?.split_once('@')).collect();
    ours.iter().find(|(interface, _)| *interface == "policy").or(ours.first()).map(|(_, v)| (*v).to_owned())
}

/// Loads directories, reusing what did not change since the last commit.
pub(crate) struct Loader {
    engine: PolicyEngine,
    cfg: PoliciesConfig,
    current: Vec<Arc<WasmPolicy>>,
}

impl Loader {
    pub(crate) fn new(engine: PolicyEngine, cfg: PoliciesConfig) -> Self {
        Self { engine, cfg, current: Vec::new() }
    }

    pub(crate) fn directory(&self) -> &Path {
        &self.cfg.directory
    }

    pub(crate) fn current(&self) -> &[Arc<WasmPolicy>] {
        &self.current
    }

    /// Builds the set the directory describes now. A missing directory is
    /// the empty set. Any bad policy fails the whole set: a chain with a
    /// hole in it could let through what the missing policy would stop.
    pub(crate) fn load(&self) -> Result<Vec<Arc<WasmPolicy>>, PolicyError> {
        // A missing directory is an error here (the runtime decides).
        let dir = &self.cfg.directory;
        let mut out = Vec::new();
        for files in scan(dir)? {
            let source = Source::read(files, self.cfg.limits.max_module_size)?;
            let reuse = self.current.iter().find(|p| {
                *p.name == *source.files.name
                    && p.digest == source.digest
                    && p.config_digest == source.config_digest
                    && p.wasm_path == source.files.wasm
                    && p.config_path == source.files.config
            });
            match reuse {
                Some(p) => out.push(p.clone()),
                None => {
                    let same_module = self.current.iter().find(|p| p.digest == source.digest).map(|p| p.pool.pre());
                    out.push(Arc::new(compile(&self.engine, source, &self.cfg, same_module)?));
                }
            }
        }
        Ok(out)
    }

    /// Records `set` as the one now serving.
    pub(crate) fn commit(&mut self, set: Vec<Arc<WasmPolicy>>) {
        self.current = set;
    }

    /// Whether `set` is exactly what is serving (same policies, same order).
    pub(crate) fn unchanged(&self, set: &[Arc<WasmPolicy>]) -> bool {
        set.len() == self.current.len() && set.iter().zip(&self.current).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_orders_by_name_and_pairs_configs() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["20-b.wasm", "10-a.wasm", "10-a.yaml", "notes.txt", ".hidden.wasm", "orphan.yml"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let got = scan(dir.path()).unwrap();
        let names: Vec<_> = got.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["10-a", "20-b"]);
        assert_eq!(got[0].config.as_deref(), Some(dir.path().join("10-a.yaml").as_path()));
        assert_eq!(got[1].config, None);
    }

    #[test]
    fn scan_refuses_bad_names_and_double_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a b.wasm"), b"").unwrap();
        assert!(matches!(scan(dir.path()), Err(PolicyError::Name { .. })));
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.wasm", "a.yaml", "a.yml"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        assert!(matches!(scan(dir.path()), Err(PolicyError::Config { .. })));
    }

    #[test]
    fn settings_are_read_from_reserved_keys() {
        let p = Path::new("x.yaml");
        assert_eq!(parse_settings(p, "").unwrap(), Settings::default());
        assert_eq!(parse_settings(p, "# only a comment\n").unwrap(), Settings::default());
        let s = parse_settings(p, "on_error: closed\ncall_timeout: 20ms\nmemory_limit: 1048576\nallow: [a]\n").unwrap();
        assert_eq!(s.on_error, FailureMode::Closed);
        assert_eq!(s.call_timeout, Some(Duration::from_millis(20)));
        assert_eq!(s.memory_limit, Some(1 << 20));
        let s = parse_settings(p, "mode: shadow\nstate: reset\n").unwrap();
        assert_eq!((s.mode, s.reset_state), (Mode::Shadow, true));
        let s = parse_settings(p, "mode: enforce\nstate: keep\n").unwrap();
        assert_eq!((s.mode, s.reset_state), (Mode::Enforce, false));
        for bad in [
            "on_error: maybe",
            "call_timeout: soon",
            "memory_limit: 12",
            "- a list",
            "a: [unclosed",
            "mode: dry",
            "state: wipe",
        ] {
            let e = parse_settings(p, bad).unwrap_err();
            assert!(matches!(e, PolicyError::Config { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn every_reserved_key_is_read_and_its_sample_accepted() {
        let p = Path::new("x.yaml");
        let all: String = RESERVED_KEYS.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        parse_settings(p, &all).unwrap();
        // Each sample moves the settings off their default: a key listed
        // here is one the gateway reads.
        for (key, value) in RESERVED_KEYS {
            let one = parse_settings(p, &format!("{key}: {value}\n")).unwrap();
            assert_ne!(one, Settings::default(), "{key} is listed as reserved but not read");
        }
    }

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
