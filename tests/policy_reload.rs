//! Hot reload through `PolicyRuntime` on a temporary directory, with real
//! components: add, replace (module and config), remove, refusal of broken
//! modules with the previous set still serving, a directory that appears
//! later, and the `policy check` report. Waits on the runtime's reload
//! status channel, never on sleeps.

mod policy_support;

use std::sync::Arc;

use bytes::Bytes;
use opamp_gateway::policy::runtime::{PolicyRuntime, ReloadOutcome};
use opamp_gateway::policy::wasm::{check, PolicyError};
use opamp_gateway::policy::{Direction, FilterOutcome, Hooks};
use policy_support::{applied, atomic_write, config, install, wait_for};

fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn sample() -> Vec<(String, String)> {
    vec![h("authorization", "k"), h("cookie", "c"), h("x-tenant", "t")]
}

/// ServerToAgent { instance_uid, packages_available: {} , flags: 1 }.
fn offer() -> Bytes {
    let mut m = vec![0x0a, 16];
    m.extend_from_slice(b"0123456789abcdef");
    m.extend_from_slice(&[0x2a, 0, 0x30, 1]);
    Bytes::from(m)
}

#[tokio::test]
async fn add_replace_remove_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PolicyRuntime::start(&config(dir.path(), true)).unwrap();
    let mut rx = rt.subscribe();
    assert_eq!(applied(&rx.borrow()), Some(vec![]));
    let policies = rt.policies();
    assert!(policies.snapshot().is_empty());

    // Add.
    install(dir.path(), "header_allowlist", "a", Some("allow: [authorization]\n"));
    wait_for(&mut rx, "a added", |s| applied(s) == Some(vec!["a".into()])).await;
    let before = policies.snapshot();
    assert_eq!(before.forward_headers(&sample()).unwrap(), vec![h("authorization", "k")]);

    // Replace the config.
    atomic_write(&dir.path().join("a.yaml"), b"allow: [authorization, x-tenant]\n");
    let gen = rx.borrow().generation;
    wait_for(&mut rx, "a's config replaced", |s| s.generation > gen && applied(s).is_some()).await;
    assert_eq!(
        policies.snapshot().forward_headers(&sample()).unwrap(),
        vec![h("authorization", "k"), h("x-tenant", "t")]
    );
    // A snapshot taken before the swap keeps the rules it started with.
    assert_eq!(before.forward_headers(&sample()).unwrap(), vec![h("authorization", "k")]);

    // Add a second policy: the unchanged first one is reused as is.
    let a = rt.policy("a").unwrap();
    install(dir.path(), "block_packages", "b", None);
    wait_for(&mut rx, "b added", |s| applied(s) == Some(vec!["a".into(), "b".into()])).await;
    assert!(Arc::ptr_eq(&a, &rt.policy("a").unwrap()), "unchanged policy reused, not rebuilt");
    match policies.snapshot().filter(Direction::ServerToAgent, b"u", offer()) {
        FilterOutcome::Forward(b) => assert!(b.len() < offer().len(), "packages stripped"),
        other => panic!("{other:?}"),
    }

    // Replace a module with a different one (same name).
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    install(dir.path(), "tenant_affinity", "a", None);
    wait_for(&mut rx, "a replaced by tenant_affinity", |s| match &s.outcome {
        ReloadOutcome::Applied(set) => {
            set.first().is_some_and(|p| p.hooks == Hooks { assign: true, ..Hooks::default() })
        }
        _ => false,
    })
    .await;
    assert_eq!(policies.snapshot().forward_headers(&sample()).unwrap(), sample());

    // Remove.
    std::fs::remove_file(dir.path().join("a.wasm")).unwrap();
    wait_for(&mut rx, "a removed", |s| applied(s) == Some(vec!["b".into()])).await;
    std::fs::remove_file(dir.path().join("b.wasm")).unwrap();
    wait_for(&mut rx, "all removed", |s| applied(s) == Some(vec![])).await;
    assert!(policies.snapshot().is_empty());
}

#[tokio::test]
async fn a_broken_module_is_refused_and_the_previous_set_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "header_allowlist", "a", Some("allow: [authorization]\n"));
    let rt = PolicyRuntime::start(&config(dir.path(), true)).unwrap();
    let mut rx = rt.subscribe();
    let policies = rt.policies();
    let serving = |ctx: &str| {
        assert_eq!(policies.snapshot().forward_headers(&sample()).unwrap(), vec![h("authorization", "k")], "{ctx}");
    };
    serving("initial");

    let refused = |file: &'static str, needle: &'static str| {
        move |s: &opamp_gateway::policy::runtime::ReloadStatus| match &s.outcome {
            ReloadOutcome::Refused { file: Some(f), reason } => f.ends_with(file) && reason.contains(needle),
            _ => false,
        }
    };

    // Garbage bytes.
    atomic_write(&dir.path().join("b.wasm"), b"definitely not wasm");
    wait_for(&mut rx, "garbage refused", refused("b.wasm", "not a valid WebAssembly component")).await;
    serving("after garbage");

    // A component for another world.
    install(dir.path(), "fixture_wrong_world", "b", None);
    wait_for(&mut rx, "wrong world refused", refused("b.wasm", "does not implement")).await;
    serving("after wrong world");

    // A policy whose init fails.
    install(dir.path(), "fixture_misbehave", "b", Some("init: fail\n"));
    wait_for(&mut rx, "init failure refused", refused("b.wasm", "asked to fail")).await;
    serving("after init failure");

    // A bad config for the serving policy.
    atomic_write(&dir.path().join("a.yaml"), b"allow: []\n");
    wait_for(
        &mut rx,
        "bad config refused",
        |s| matches!(&s.outcome, ReloadOutcome::Refused { .. } if s.generation > 0 && rx_reason(s).contains("a.wasm")),
    )
    .await;
    serving("after bad config");

    // Fixing everything applies the new set.
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("b.wasm")).unwrap();
    atomic_write(&dir.path().join("a.yaml"), b"allow: [cookie]\n");
    wait_for(&mut rx, "fixed", |s| applied(s) == Some(vec!["a".into()])).await;
    assert_eq!(policies.snapshot().forward_headers(&sample()).unwrap(), vec![h("cookie", "c")]);
}

fn rx_reason(s: &opamp_gateway::policy::runtime::ReloadStatus) -> String {
    match &s.outcome {
        ReloadOutcome::Refused { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn a_missing_directory_is_no_policies_until_it_appears() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    let rt = PolicyRuntime::start(&config(&dir, true)).unwrap();
    let mut rx = rt.subscribe();
    assert!(rt.policies().snapshot().is_empty());

    // Populate it elsewhere and move it in, as a deploy would.
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    install(&staging, "block_packages", "block", None);
    std::fs::rename(&staging, &dir).unwrap();
    wait_for(&mut rx, "directory appeared", |s| applied(s) == Some(vec!["block".into()])).await;

    // It vanishes: nothing is unloaded (the set keeps serving, degraded).
    std::fs::remove_dir_all(&dir).unwrap();
    wait_for(&mut rx, "directory removed", |s| matches!(s.outcome, ReloadOutcome::Refused { .. })).await;
    assert_eq!(rt.loaded().len(), 1);
    assert!(rt.health().is_degraded());
    // An explicit empty directory unloads everything.
    std::fs::create_dir(&dir).unwrap();
    wait_for(&mut rx, "empty directory", |s| applied(s) == Some(vec![])).await;
    assert!(!rt.health().is_degraded());
}

#[test]
fn manual_reload_without_a_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PolicyRuntime::start(&config(dir.path(), false)).unwrap();
    install(dir.path(), "block_packages", "block", None);
    assert!(rt.policies().snapshot().is_empty(), "not watched: nothing happens by itself");
    let s = rt.reload();
    assert_eq!(s.generation, 1);
    assert_eq!(applied(&s), Some(vec!["block".into()]));
    assert_eq!(rt.reload().outcome, ReloadOutcome::Unchanged);
    let loaded = rt.loaded();
    assert_eq!(loaded[0].digest, sha256_hex(&std::fs::read(dir.path().join("block.wasm")).unwrap()));
}

#[test]
fn startup_refuses_a_bad_directory() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "block_packages", "good", None);
    atomic_write(&dir.path().join("zz-bad.wasm"), b"\0asm garbage");
    let e = PolicyRuntime::start(&config(dir.path(), false)).err().expect("refused");
    assert!(matches!(e, PolicyError::Compile { .. }), "{e}");
    assert!(e.path().unwrap().ends_with("zz-bad.wasm"));
}

#[test]
fn check_reports_hooks_and_digest() {
    let cfg = config(std::path::Path::new("unused"), false);
    let wasm = policy_support::wasm("header_allowlist");
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("allow.yaml");
    std::fs::write(&yaml, "allow: [authorization]\non_error: closed\n").unwrap();
    let report = check(&wasm, Some(&yaml), &cfg).unwrap();
    assert_eq!(report.name, "header_allowlist");
    assert_eq!(report.hooks, Hooks { forward_headers: true, ..Hooks::default() });
    assert_eq!(report.digest, sha256_hex(&std::fs::read(&wasm).unwrap()));
    let text = report.to_string();
    assert!(text.contains("forward-headers") && text.contains(&report.digest) && text.contains("closed"), "{text}");

    // Without its required config, init refuses.
    let e = check(&wasm, None, &cfg).unwrap_err();
    assert!(matches!(e, PolicyError::Init { .. }), "{e}");
    let e = check(&policy_support::wasm("fixture_wrong_world"), None, &cfg).unwrap_err();
    assert!(matches!(e, PolicyError::Interface { .. }), "{e}");
    // Built against an older WIT: the error says which, and what to do.
    let e = check(&policy_support::wasm("fixture_old_version"), None, &cfg).unwrap_err();
    assert!(matches!(e, PolicyError::Interface { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("built against opamp-gateway:policy@0.1.0") && text.contains("rebuild"), "{text}");
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "redact_secrets", "r", None);
    let mut cfg = config(dir.path(), false);
    cfg.cache_dir = Some(cache.path().to_owned());
    drop(PolicyRuntime::start(&cfg).unwrap());
    let files = walk(cache.path());
    assert!(files > 0, "the compiled component was written to the cache");
    drop(PolicyRuntime::start(&cfg).unwrap());
    assert_eq!(walk(cache.path()), files, "a restart reuses the cache entry");
}

/// Compiled entries in a wasmtime cache directory. Its background worker's
/// bookkeeping (`.stats` usage files, `*.wip-*` task locks such as the
/// cleanup task's) is written at the worker's own pace, so it is not
/// counted: it says nothing about whether a compile was reused.
fn walk(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.path() {
                    d if d.is_dir() => walk(&d),
                    f if bookkeeping(&f) => 0,
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn bookkeeping(f: &std::path::Path) -> bool {
    f.extension().and_then(|x| x.to_str()).is_some_and(|x| x == "stats" || x.starts_with("wip-"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn metrics_report_the_loaded_set_and_reload_outcomes() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "block_packages", "block", None);
    let digest = sha256_hex(&std::fs::read(dir.path().join("block.wasm")).unwrap());
    metrics::with_local_recorder(&recorder, || {
        let rt = PolicyRuntime::start(&config(dir.path(), false)).unwrap();
        atomic_write(&dir.path().join("bad.wasm"), b"junk");
        assert!(matches!(rt.reload().outcome, ReloadOutcome::Refused { .. }));
        std::fs::remove_file(dir.path().join("bad.wasm")).unwrap();
        std::fs::remove_file(dir.path().join("block.wasm")).unwrap();
        assert_eq!(applied(&rt.reload()), Some(vec![]));
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find_map(|(k, _, _, v)| {
            let key = k.key();
            let matches = key.name() == name
                && labels.iter().all(|(lk, lv)| key.labels().any(|l| l.key() == *lk && l.value() == *lv));
            matches.then_some(v)
        })
    };
    let reloads = "opampgateway_policy_reloads_total";
    assert_eq!(value(reloads, &[("outcome", "initial")]), Some(&DebugValue::Counter(1)));
    assert_eq!(value(reloads, &[("outcome", "refused")]), Some(&DebugValue::Counter(1)));
    assert_eq!(value(reloads, &[("outcome", "applied")]), Some(&DebugValue::Counter(1)));
    // Loaded at start (1), then unloaded by the last reload (0).
    let loaded = value("opampgateway_policy_loaded", &[("policy", "block"), ("digest", &digest)]);
    assert!(matches!(loaded, Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0), "{loaded:?}");
}
