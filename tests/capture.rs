//! `telemetry.capture` through a real gateway, and `policy replay` over what
//! it recorded: real agents (WebSocket and plain HTTP) through the gateway
//! to the reference server, the file parsed back (format, direction, uids,
//! credentials redacted), rotation at a small `max_bytes`, and an example
//! policy replayed over the capture by the real binary.

#[path = "policy_support/mod.rs"]
mod policy_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::{
    AgentToServer, CustomMessage, PackageAvailable, PackagesAvailable, ServerToAgent,
};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::telemetry::capture::{self, CaptureRecord, REDACTED};
use opamp_gateway::Gateway;
use prost::Message as _;

const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");
const T: Duration = Duration::from_secs(20);
const SECRET: &str = "Secret-Key s3cr3t-v4lue";

async fn start(server: &ReferenceServer, capture: &str) -> Gateway {
    let yaml = format!(
        "server:\n  endpoint: {}\n  connections: 1\n  reconnect: {{ initial_interval: 50ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\n  http: {{ response_wait: 2s }}\n\
         telemetry:\n  capture:\n{capture}",
        server.url()
    );
    let cfg = Config::from_yaml(&yaml).unwrap();
    let g = Gateway::start(&cfg, None).await.expect("gateway starts with capture on");
    assert!(g.wait_for_links(1, T).await);
    g
}

/// Waits (bounded) until the file at `path` parses and satisfies `done`:
/// the writer flushes whenever its queue runs dry.
async fn wait_for_records(path: &Path, done: impl Fn(&[CaptureRecord]) -> bool) -> Vec<CaptureRecord> {
    let found = tokio::time::timeout(T, async {
        loop {
            // A line may be half written: read again.
            if let Ok(records) = capture::read(path) {
                if done(&records) {
                    return records;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{} never held the expected records", path.display()))
}

/// Whether `r` is a message record going `direction` for `uid`.
fn is_message(r: &CaptureRecord, dir: &str, uid: &[u8]) -> bool {
    matches!(r, CaptureRecord::Message { direction, uid: u, .. } if direction == dir && *u == capture::hex(uid))
}

#[path = "support/http_poll.rs"]
mod http_poll;

/// One plain-HTTP poll, answered with 200.
async fn post(g: &Gateway, headers: &[(&str, &str)], msg: &AgentToServer) -> ServerToAgent {
    http_poll::post(g.listen_addr(), headers, msg).await.message()
}

fn offer() -> ServerToAgent {
    let mut packages = std::collections::HashMap::new();
    packages.insert("collector".to_owned(), PackageAvailable { version: "9.9".into(), ..Default::default() });
    ServerToAgent {
        flags: 1,
        packages_available: Some(PackagesAvailable { packages, all_packages_hash: Bytes::from_static(b"h") }),
        ..Default::default()
    }
}

fn hex(b: &[u8]) -> String {
    capture::hex(b)
}

/// Whether a record is the agent→server message with `capabilities`.
fn has_capabilities(r: &CaptureRecord, capabilities: u64) -> bool {
    let Some((_, payload)) = r.decoded() else { return false };
    matches!(r, CaptureRecord::Message { direction, .. } if direction == "agent_to_server")
        && AgentToServer::decode(payload).is_ok_and(|m| m.capabilities == capabilities)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_both_directions_redacted_and_replays_a_policy_over_them() {
    let server =
        ReferenceServer::start(ReferenceServerConfig { secret_key: Some("s3cr3t-v4lue".into()), ..Default::default() })
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.jsonl");
    let g = start(&server, &format!("    enabled: true\n    path: {}\n    keep_headers: [x-tenant]\n", path.display()))
        .await;

    // A WebSocket agent: a status report, its reply, then a package offer.
    let opts = AgentOptions::new(g.agent_url()).header("Authorization", SECRET).header("x-tenant", "blue");
    let mut ws = SimAgent::connect(opts).await.unwrap();
    ws.send(AgentToServer { capabilities: 0x2a, ..Default::default() }).await.unwrap();
    ws.recv(T).await.unwrap();
    assert!(server.push(ws.uid().as_bytes(), offer()));
    let got = ws.recv(T).await.unwrap();
    assert!(got.packages_available.is_some(), "the gateway runs no policy: the offer arrives");

    // A plain-HTTP agent.
    let http_uid = [0x42u8; 16];
    let poll = AgentToServer { instance_uid: Bytes::copy_from_slice(&http_uid), capabilities: 1, ..Default::default() };
    let reply = post(&g, &[("authorization", SECRET)], &poll).await;
    assert_eq!(&reply.instance_uid[..], &http_uid);

    let records = wait_for_records(&path, |r| r.iter().any(|r| is_message(r, "server_to_agent", &http_uid))).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("s3cr3t"), "the credential never reaches the file:\n{text}");
    assert!(matches!(&records[0], CaptureRecord::Start { format: capture::FORMAT, .. }), "{records:?}");
    let connects: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            CaptureRecord::Connect { transport, accepted, headers, .. } => {
                Some((transport.as_str(), *accepted, headers))
            }
            _ => None,
        })
        .collect();
    assert_eq!(connects.len(), 2, "{connects:?}");
    let (transport, accepted, headers) = connects[0];
    assert_eq!((transport, accepted), ("websocket", true));
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(header("authorization"), Some(REDACTED));
    assert_eq!(header("x-tenant"), Some("blue"), "keep_headers are kept");
    assert_eq!(connects[1].0, "http");

    let messages: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            CaptureRecord::Message { direction, transport, uid, size, .. } => {
                let (_, payload) = r.decoded().unwrap();
                assert_eq!(payload.len(), *size);
                Some((direction.as_str(), transport.as_str(), uid.clone(), payload))
            }
            _ => None,
        })
        .collect();
    let ws_uid = hex(ws.uid().as_bytes());
    let up: Vec<_> = messages.iter().filter(|m| m.0 == "agent_to_server" && m.2 == ws_uid).collect();
    assert_eq!(up.len(), 1, "{messages:?}");
    assert_eq!(AgentToServer::decode(up[0].3.clone()).unwrap().capabilities, 0x2a, "the bare protobuf, as sent");
    let down: Vec<_> = messages.iter().filter(|m| m.0 == "server_to_agent" && m.2 == ws_uid).collect();
    assert_eq!(down.len(), 2, "reply and offer: {messages:?}");
    assert!(ServerToAgent::decode(down[1].3.clone()).unwrap().packages_available.is_some());
    assert!(messages.iter().any(|m| m.0 == "agent_to_server" && m.1 == "http" && m.2 == hex(&http_uid)));
    g.shutdown().await;

    // Replayed offline: block_packages would strip the one offer.
    let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/block_packages/block_packages.yaml");
    let out = Command::new(BIN)
        .args(["policy", "replay"])
        .arg(policy_support::wasm("block_packages"))
        .arg("--config")
        .arg(&yaml)
        .arg("--gateway-config")
        .arg(gateway_config(dir.path()))
        .arg(&path)
        .env_remove("OPAMP_GATEWAY_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let downs = messages.iter().filter(|m| m.0 == "server_to_agent").count();
    assert!(
        stdout.starts_with(&format!(
            "policy block_packages: replayed 2 connects and {} messages from 1 file\n",
            messages.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  filter-server-to-agent: {downs} calls: {} forward, 1 replace\n", downs - 1)),
        "{stdout}"
    );
    assert!(!stdout.contains("filter-agent-to-server"), "block_packages judges server messages only: {stdout}");
    let size = down[1].3.len();
    let changed = stdout.lines().skip_while(|l| !l.starts_with("would change")).collect::<Vec<_>>();
    assert_eq!(changed[0], "would change 1 message:", "{stdout}");
    let line: Vec<_> = changed[1].split_whitespace().collect();
    assert_eq!(line[1..5], ["server_to_agent", &format!("uid={ws_uid}"), "replace", &size.to_string()], "{stdout}");
    let after: usize = line[6].parse().unwrap();
    assert!(after < size, "the offer is stripped: {stdout}");
}

/// A gateway config for `policy replay`: its compile cache stays under the
/// test's temp dir.
fn gateway_config(dir: &Path) -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let path = dir.join("gateway.yaml");
    let yaml = format!("server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\npolicies:\n  cache_dir: {}\n", cache.display());
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_at_max_bytes_keeping_max_files() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.jsonl");
    let g = start(
        &server,
        &format!("    enabled: true\n    path: {}\n    max_bytes: 4KiB\n    max_files: 2\n", path.display()),
    )
    .await;
    let mut a = SimAgent::connect(AgentOptions::new(g.agent_url())).await.unwrap();
    let rotated = dir.path().join("capture.jsonl.1");
    // 30 round trips of ~400 bytes in the file: several times 2 × 4 KiB.
    for n in 1..=30u64 {
        let data = Bytes::from(vec![7u8; 250]);
        let custom = CustomMessage { capability: "io.example.padding".into(), r#type: "pad".into(), data };
        a.send(AgentToServer { capabilities: n, custom_message: Some(custom), ..Default::default() }).await.unwrap();
        a.recv(T).await.unwrap();
        // Each message written before the next is sent: the writer's queue
        // holds at most max_bytes of payload (here 4 KiB, a dozen records),
        // and a writer thread starved on a loaded machine would otherwise
        // drop some (counted; a unit test covers it), the last included.
        // Written means in the current file, or in the rotated one if the
        // reply behind it started a new file.
        let written = |r: &[CaptureRecord]| r.iter().any(|r| has_capabilities(r, n));
        wait_for_records(&path, |r| written(r) || capture::read(&rotated).is_ok_and(|r| written(&r))).await;
    }
    let mut names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["capture.jsonl", "capture.jsonl.1"], "max_files: 2");
    for name in &names {
        let p = dir.path().join(name);
        assert!(std::fs::metadata(&p).unwrap().len() <= 4096, "{name} is within max_bytes");
        let records = capture::read(&p).unwrap();
        assert!(matches!(records[0], CaptureRecord::Start { .. }), "each file starts with a start record");
        assert!(records.len() > 2, "{name}: {records:?}");
    }
    g.shutdown().await;
}

#[test]
fn config_errors_name_the_field() {
    let base = "server:\n  endpoint: ws://127.0.0.1:1/v1/opamp\ntelemetry:\n  capture:\n";
    for (yaml, field) in [
        ("    enabled: true\n", "telemetry.capture.path"),
        ("    max_bytes: 1KiB\n", "telemetry.capture.max_bytes"),
        ("    max_files: 0\n", "telemetry.capture.max_files"),
    ] {
        let e = Config::from_yaml(&format!("{base}{yaml}")).unwrap_err().to_string();
        assert!(e.contains(field), "{yaml}: {e}");
    }
    let off = Config::from_yaml(&format!("{base}    path: /nonexistent/dir/c.jsonl\n")).unwrap();
    assert!(off.telemetry.capture.settings().is_none(), "off by default, even with a path");
}
