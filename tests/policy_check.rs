//! `opamp-gateway policy check` through the real binary, on real components:
//! the example policies pass with per-hook figures; components that load
//! but fail their calls (a leak up to the memory limit, a loop, a trap, an
//! answer over a cap) fail the check, and the error names what to raise.

mod policy_support;

use std::path::Path;
use std::process::{Command, Output};

use policy_support::install;

const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");

fn policy_check(wasm: &Path, extra: &[&str]) -> (Output, String, String) {
    let out = Command::new(BIN)
        .args(["policy", "check"])
        .arg(wasm)
        .args(extra)
        .env_remove("OPAMP_GATEWAY_CONFIG")
        .output()
        .expect("run opamp-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The table row of `hook` in the report: `[hook, calls, failed, ...]`.
fn row<'a>(stdout: &'a str, hook: &str) -> Vec<&'a str> {
    let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(hook));
    line.unwrap_or_else(|| panic!("no row for {hook} in:\n{stdout}")).split_whitespace().collect()
}

/// `fixture_misbehave` installed as `<dir>/<name>.wasm` with `yaml` beside it
/// (found by `policy check` as `<name>.yaml`).
fn misbehaving(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    install(dir, "fixture_misbehave", name, Some(yaml));
    dir.join(format!("{name}.wasm"))
}

#[test]
fn example_policies_pass_with_figures_per_hook() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    let cases: [(&str, &[&str]); 8] = [
        ("header_allowlist", &["forward-headers"]),
        ("redact_secrets", &["filter-agent-to-server"]),
        ("block_packages", &["filter-server-to-agent"]),
        ("tenant_affinity", &["assign"]),
        ("upstream_router", &["assign"]),
        ("source_allowlist", &["admit"]),
        ("tenant_quota", &["admit", "lifecycle"]),
        ("heartbeat_limiter", &["filter-agent-to-server", "lifecycle"]),
    ];
    for (name, hooks) in cases {
        let yaml = root.join(name).join(format!("{name}.yaml"));
        let (out, stdout, stderr) =
            policy_check(&policy_support::wasm(name), &["--calls", "300", "--config", yaml.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
        assert!(stdout.contains("every hook call succeeded"), "{name}: {stdout}");
        assert!(stdout.contains("implements opamp-gateway:policy/gateway-policy@0.3.0"), "{name}: {stdout}");
        assert!(stdout.lines().any(|l| l.split_whitespace().eq(["wit", "0.3.0"])), "{name}: {stdout}");
        // What the shipped config shows the policy of an agent's headers.
        let shown = match name {
            "tenant_affinity" | "upstream_router" | "tenant_quota" => "headers   only x-tenant (visible_headers)",
            "source_allowlist" | "heartbeat_limiter" => "headers   none (visible_headers: [])",
            _ => "headers   every agent header (no visible_headers)",
        };
        assert!(stdout.contains(shown), "{name}: {stdout}");
        for hook in hooks {
            let r = row(&stdout, hook);
            assert_eq!((r[1], r[2]), ("300", "0"), "{name} {hook}: {stdout}");
            assert!(r.iter().any(|c| c.contains("µs") || *c == "ms"), "{name}: time per call: {stdout}");
            assert!(stdout.contains("MiB") || stdout.contains("n/a"), "{name}: peak memory: {stdout}");
        }
    }
}

#[test]
fn a_0_2_0_component_is_checked_and_named_as_such() {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat/tenant_affinity-0.2.0.wasm");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "300"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("implements opamp-gateway:policy/gateway-policy@0.2.0"), "{stdout}");
    assert!(stdout.contains("wit       0.2.0 (older: its assign sees only the default upstream's links"), "{stdout}");
    assert_eq!(&row(&stdout, "assign")[1..3], ["300", "0"], "{stdout}");
}

#[test]
fn calls_zero_only_loads() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = misbehaving(dir.path(), "quiet", "filter: trap\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "0"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("init accepted its config") && !stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn a_guest_leaking_up_to_its_memory_limit_fails_naming_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB kept per call under a 4 MiB limit: each instance serves a
    // dozen calls, then fails; the next instance starts over.
    let yaml = "hooks: [filter-agent-to-server]\nfilter: leak\nleak_bytes: 262144\nmemory_limit: 4194304\n";
    let wasm = misbehaving(dir.path(), "leaky", yaml);
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "100"]);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let r = row(&stdout, "filter-agent-to-server");
    let failed: usize = r[2].parse().unwrap();
    assert_eq!(r[1], "100", "no run of 20 failures in a row: all calls made\n{stdout}");
    assert!(failed > 0 && failed < 50, "fails now and then, not always: {stdout}");
    assert!(stderr.contains("(memory)") && stderr.contains("exceeded memory_limit (4194304 bytes"), "{stderr}");
    assert!(stderr.contains("raise `memory_limit` in") && stderr.contains("leaky.yaml"), "{stderr}");
}

#[test]
fn a_looping_guest_fails_naming_call_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = misbehaving(dir.path(), "loop", "hooks: [filter-server-to-agent]\nfilter: spin\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "1000"]);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let r = row(&stdout, "filter-server-to-agent");
    assert_eq!((r[1], r[2]), ("20", "20"), "gives up after 20 failures in a row: {stdout}");
    assert!(stdout.contains("stopped after 20 failures in a row"), "{stdout}");
    assert!(stderr.contains("(timeout)") && stderr.contains("exceeded call_timeout (5ms"), "{stderr}");
    // Not set in loop.yaml: both places to raise it are named.
    assert!(stderr.contains("raise `call_timeout` in") && stderr.contains("`policies.call_timeout`"), "{stderr}");
}

#[test]
fn a_trapping_filter_fails_with_the_guest_message() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = misbehaving(dir.path(), "trap", "hooks: [filter]\nfilter: trap\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "50"]);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    for hook in ["filter-agent-to-server", "filter-server-to-agent"] {
        assert_eq!(row(&stdout, hook)[2], "20", "{stdout}");
    }
    assert!(stderr.contains("(trap)") && stderr.contains("asked to trap"), "{stderr}");
}

#[test]
fn the_gateway_configs_caps_apply() {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 headers: over the default cap of 100.
    let wasm = misbehaving(dir.path(), "many", "hooks: [forward-headers]\nforward_headers: many\ncall_timeout: 1s\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "30"]);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("(invalid)") && stderr.contains("policies.limits.max_forwarded_headers"), "{stderr}");

    // A gateway config's policies.call_timeout applies, and is named.
    let gw = dir.path().join("gateway.yaml");
    std::fs::write(
        &gw,
        "server:\n  endpoint: ws://127.0.0.1:4320/v1/opamp\npolicies:\n  call_timeout: 2ms\n  memory_limit: 8388608\n",
    )
    .unwrap();
    let wasm = misbehaving(dir.path(), "spin2", "hooks: [assign]\nassign: spin\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "5", "--gateway-config", gw.to_str().unwrap()]);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("memory_limit 8388608 bytes"), "{stdout}");
    assert!(stderr.contains("exceeded call_timeout (2ms"), "{stderr}");
}

#[test]
fn a_printing_guest_passes() {
    // Issue 17 point 7: stdout/stderr writes are buffered, not a failure.
    let dir = tempfile::tempdir().unwrap();
    let wasm =
        misbehaving(dir.path(), "chatty", "hooks: [filter, forward-headers]\nfilter: print\nforward_headers: print\n");
    let (out, stdout, stderr) = policy_check(&wasm, &["--calls", "200"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "forward-headers")[1..3], ["200", "0"], "{stdout}");
    assert!(!stdout.contains("printed to") && !stderr.contains("printed to"), "guest output stays in the sandbox");
}
