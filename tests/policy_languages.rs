//! Python and JavaScript as policy languages: the templates in
//! `policies/templates/` are built with their own build scripts
//! (componentize-py, componentize-js) and loaded into a real gateway, whose
//! verdicts are observed at the reference server and at the agent.
//!
//! The toolchains come from `policies/templates/install.sh` (run by
//! `scripts/test`; this test runs it too, skipped in milliseconds once
//! installed). Without python3/pip or node/npm, or without the registries on
//! first run, the test fails and names that command.

#[path = "policy_support/mod.rs"]
mod policy_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{
    AgentToServer, PackageAvailable, PackageStatus, PackageStatuses, PackagesAvailable, ServerToAgent,
};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

const T: Duration = Duration::from_secs(30);

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/templates")
}

/// Runs `cmd`, failing the test with `what`, its output and how to fix it.
fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: could not start {cmd:?}: {e}. Install the toolchains with `policies/templates/install.sh`.")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}\nInstall the toolchains with `policies/templates/install.sh` \
         (needs python3 with pip and node with npm; PyPI and npm on first run).",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs the pinned toolchains, then builds both templates into `dir`
/// as `block_package_py.wasm` and `block_package_js.wasm`, each with a
/// config blocking its own package name.
fn build_templates(dir: &Path) {
    run(Command::new(templates().join("install.sh")), "policies/templates/install.sh");
    let mut py = Command::new(templates().join("python/build.sh"));
    py.arg(dir.join("block_package_py.wasm"));
    run(py, "policies/templates/python/build.sh");
    let mut js = Command::new("node");
    js.arg(templates().join("javascript/build.mjs")).arg(dir.join("block_package_js.wasm"));
    run(js, "node policies/templates/javascript/build.mjs");
    for (lang, blocked) in [("py", "py-blocked"), ("js", "js-blocked")] {
        let shipped = std::fs::read_to_string(
            templates()
                .join(format!("{}/block_package_{lang}.yaml", if lang == "py" { "python" } else { "javascript" })),
        )
        .unwrap();
        let yaml = shipped.replace("block: [evil-plugin]", &format!("block: [{blocked}]"));
        assert_ne!(yaml, shipped, "the template's yaml has a `block:` line");
        std::fs::write(dir.join(format!("block_package_{lang}.yaml")), yaml).unwrap();
    }
}

fn statuses(name: &str) -> AgentToServer {
    let mut packages = HashMap::new();
    packages.insert(name.to_owned(), PackageStatus { name: name.into(), ..Default::default() });
    AgentToServer { package_statuses: Some(PackageStatuses { packages, ..Default::default() }), ..Default::default() }
}

fn offer(name: &str) -> ServerToAgent {
    let mut packages = HashMap::new();
    packages.insert(name.to_owned(), PackageAvailable { version: "1.0".into(), ..Default::default() });
    ServerToAgent {
        packages_available: Some(PackagesAvailable { packages, all_packages_hash: name.as_bytes().to_vec().into() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_templates_filter_through_a_real_gateway() {
    let dir = tempfile::tempdir().unwrap();
    build_templates(dir.path());

    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  connections: 1\n  reconnect: {{ initial_interval: 50ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\n",
        server.url()
    ))
    .unwrap();
    cfg.policies = policy_support::config(dir.path(), false);
    // The templates skip every key the gateway reads from their YAML.
    let every = tempfile::tempdir().unwrap();
    for lang in ["py", "js"] {
        let name = format!("block_package_{lang}");
        std::fs::copy(dir.path().join(format!("{name}.wasm")), every.path().join(format!("{name}.wasm"))).unwrap();
        let yaml = std::fs::read_to_string(dir.path().join(format!("{name}.yaml"))).unwrap();
        std::fs::write(every.path().join(format!("{name}.yaml")), policy_support::with_every_reserved_key(&yaml))
            .unwrap();
    }
    let rt = opamp_gateway::policy::runtime::PolicyRuntime::start(&policy_support::config(every.path(), false))
        .expect("both templates accept every gateway key in their YAML");
    assert_eq!(rt.loaded().len(), 2);
    drop(rt);

    let g = Gateway::start(&cfg, None).await.expect("the gateway loads both components");
    let mut loaded: Vec<_> = g.policies().loaded().iter().map(|p| p.name.clone()).collect();
    loaded.sort();
    assert_eq!(loaded, ["block_package_js", "block_package_py"]);
    assert!(g.wait_for_links(1, T).await);

    let mut a = SimAgent::connect(AgentOptions::new(g.agent_url())).await.unwrap();
    a.send(AgentToServer::default()).await.unwrap();
    a.recv(T).await.unwrap();
    let uid = a.uid().as_bytes().clone();
    let before = server.state().agent(&uid).unwrap().messages;

    // Agent → server: each language drops the report naming its package;
    // the one after them arrives (and is the only one answered).
    for name in ["py-blocked", "js-blocked", "allowed"] {
        a.send(statuses(name)).await.unwrap();
    }
    a.recv(T).await.unwrap();
    let state = server.state();
    let seen = state.agent(&uid).unwrap();
    assert_eq!(seen.messages, before + 1, "the two blocked reports never reached the server");
    let reported: Vec<_> = seen.last.package_statuses.as_ref().unwrap().packages.keys().cloned().collect();
    assert_eq!(reported, ["allowed"]);

    // Server → agent: the blocked offers are dropped; the next one arrives
    // first (one link, in order).
    for name in ["py-blocked", "js-blocked", "allowed"] {
        assert!(server.push(&uid, offer(name)));
    }
    let got = a.recv(T).await.unwrap();
    let offered: Vec<_> = got.packages_available.unwrap().packages.keys().cloned().collect();
    assert_eq!(offered, ["allowed"], "the blocked offers were dropped by the policies");
    g.shutdown().await;
}
