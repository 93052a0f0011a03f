//! Shared by the `policy_*` tests and the policy benchmark: builds the
//! `policies/` workspace for wasm32-wasip2 once per test binary, and loads
//! real components into a `PolicyRuntime` over a temporary directory.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::policy::runtime::{PolicyRuntime, ReloadOutcome, ReloadStatus};
use opamp_gateway::policy::PoliciesConfig;
use opamp_gateway::protocol::uid::InstanceUid;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::Gateway;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `policies/target/wasm32-wasip2/release`, after building every policy
/// crate once (cargo makes repeat builds cheap and serialises concurrent
/// ones with its own lock).
pub(crate) fn wasm_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let policies = root().join("policies");
        let target = policies.join("target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(policies.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            // Flags meant for the host build (coverage, target-cpu) must not
            // reach the wasm build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("run cargo to build the policies workspace");
        assert!(
            status.success(),
            "building policies/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
        target.join("wasm32-wasip2").join("release")
    })
}

/// The built component of crate `name` (its lib name, e.g. `header_allowlist`).
pub(crate) fn wasm(name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A config for tests: compile cache under cargo's per-test temp dir (not
/// the user's cache), and no watcher unless asked.
pub(crate) fn config(dir: &Path, watch: bool) -> PoliciesConfig {
    PoliciesConfig {
        directory: dir.to_owned(),
        watch,
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-cache")),
        instances: Some(2),
        ..PoliciesConfig::default()
    }
}

/// Copies component `crate_name` into `dir` as `<as_name>.wasm`, with
/// `yaml` as its config. Writes go through a rename, as a deploy should.
pub(crate) fn install(dir: &Path, crate_name: &str, as_name: &str, yaml: Option<&str>) {
    if let Some(y) = yaml {
        atomic_write(&dir.join(format!("{as_name}.yaml")), y.as_bytes());
    }
    let bytes = std::fs::read(wasm(crate_name)).unwrap();
    atomic_write(&dir.join(format!("{as_name}.wasm")), &bytes);
}

/// `yaml` with every key the gateway reads from a policy's YAML that it
/// does not set yet (a policy's own config reader must skip them all).
pub(crate) fn with_every_reserved_key(yaml: &str) -> String {
    let mut out = yaml.to_owned();
    for (key, value) in opamp_gateway::policy::wasm::RESERVED_KEYS {
        if !yaml.lines().any(|l| l.starts_with(&format!("{key}:"))) {
            out.push_str(&format!("\n{key}: {value}"));
        }
    }
    out
}

pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A runtime over a fresh directory holding `policies` (crate, name, yaml).
pub(crate) fn runtime(policies: &[(&str, &str, Option<&str>)]) -> (tempfile::TempDir, PolicyRuntime) {
    let dir = tempfile::tempdir().unwrap();
    for (krate, name, yaml) in policies {
        install(dir.path(), krate, name, *yaml);
    }
    let rt = PolicyRuntime::start(&config(dir.path(), false)).expect("policies load");
    (dir, rt)
}

/// Waits (bounded) for a reload status matching `pred`.
pub(crate) async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<ReloadStatus>,
    what: &str,
    pred: impl FnMut(&ReloadStatus) -> bool,
) -> ReloadStatus {
    let waited = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(pred)).await.map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("runtime dropped while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; last status: {:?}", *rx.borrow()),
    }
}

/// Names of an applied set, `None` for other outcomes.
pub(crate) fn applied(s: &ReloadStatus) -> Option<Vec<String>> {
    match &s.outcome {
        ReloadOutcome::Applied(set) => Some(set.iter().map(|p| p.name.clone()).collect()),
        _ => None,
    }
}

/// An agent of `g` whose 16-byte uid starts with the `misbehave` fixture's
/// filter `mode` word (`spin_00000000001`), so the fixture misbehaves on its
/// messages and on the server's replies to it.
pub(crate) async fn mode_agent(g: &Gateway, mode: &str, n: usize) -> SimAgent {
    let mut o = AgentOptions::new(g.agent_url());
    let uid = format!("{mode}_{n:0width$}", width = 15 - mode.len());
    o.uid = InstanceUid::parse(Some(Bytes::from(uid))).unwrap();
    SimAgent::connect(o).await.unwrap()
}
