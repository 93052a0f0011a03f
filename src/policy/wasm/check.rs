//! `opamp-gateway policy check <file.wasm> [--config file.yaml]`: everything
//! a reload would do to one policy (read, digest, compile, type-check,
//! instantiate, `init` with the config), without touching a running gateway.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::bindings::WORLD;
use super::engine::PolicyEngine;
use super::error::PolicyError;
use super::loader::{compile, PolicyFiles, Source};
use crate::policy::config::PoliciesConfig;
use crate::policy::{FailureMode, Hooks, Policy};

/// What `check` found out about a policy that loads.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub name: String,
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
    /// Hex sha256 of the module.
    pub digest: String,
    pub size: u64,
    pub hooks: Hooks,
    pub on_error: FailureMode,
    /// Compile + type-check + first `init` (compilation may hit the cache).
    pub load_time: Duration,
}

/// Loads `wasm` (with `config` as its `<name>.yaml`) the way the gateway
/// would, and reports on it. The policy name is the file stem.
pub fn check(wasm: &Path, config: Option<&Path>, cfg: &PoliciesConfig) -> Result<CheckReport, PolicyError> {
    let name = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
        return Err(PolicyError::Name { path: wasm.to_owned() });
    }
    let engine = PolicyEngine::new(cfg)?;
    let files = PolicyFiles { name: name.clone(), wasm: wasm.to_owned(), config: config.map(Path::to_owned) };
    let source = Source::read(files)?;
    let digest = source.digest.clone();
    let size = source.wasm.len() as u64;
    let started = Instant::now();
    let policy = compile(&engine, source, cfg, None)?;
    Ok(CheckReport {
        name,
        wasm: wasm.to_owned(),
        config: config.map(Path::to_owned),
        digest,
        size,
        hooks: policy.hooks(),
        on_error: policy.failure_mode(),
        load_time: started.elapsed(),
    })
}

/// `assign, forward-headers` style list of hooks, or `none`.
pub(crate) fn hook_list(h: Hooks) -> String {
    let names = h.names();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "policy {} ok: compiles, implements {WORLD}, init accepted its config", self.name)?;
        writeln!(f, "  module    {} ({} bytes)", self.wasm.display(), self.size)?;
        match &self.config {
            Some(c) => writeln!(f, "  config    {}", c.display())?,
            None => writeln!(f, "  config    (none: init gets an empty string)")?,
        }
        writeln!(f, "  sha256    {}", self.digest)?;
        writeln!(f, "  hooks     {}", hook_list(self.hooks))?;
        let mode = match self.on_error {
            FailureMode::Open => "open (a failing call is skipped)",
            FailureMode::Closed => "closed (a failing call drops the message / refuses the agent)",
        };
        writeln!(f, "  on_error  {mode}")?;
        write!(f, "  loaded in {:.1} ms", self.load_time.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_lists() {
        assert_eq!(hook_list(Hooks::default()), "none");
        let h = Hooks { assign: true, filter_server_to_agent: true, ..Hooks::default() };
        assert_eq!(hook_list(h), "assign, filter-server-to-agent");
        assert_eq!(hook_list(Hooks::FILTER), "filter-agent-to-server, filter-server-to-agent");
    }
}
