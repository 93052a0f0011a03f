//! The operations kit in `examples/` (issue 12), exercised for real: every
//! example config passes `opamp-gateway check`, and the mTLS, DMZ-pair and
//! policies examples run; the alert rules pass `promtool check rules`; a
//! real Prometheus scrapes a running gateway and evaluates the rules; the
//! dashboard and the alerts query only metrics the gateway exports; the
//! deployment files are consistent; secrets never reach the logs.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package,
//! which `scripts/test` installs; `systemd-analyze` is used where systemd is
//! installed. A test whose tool is missing says so and passes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use tokio::process::Command;

#[path = "support/gateway_process.rs"]
mod gateway_process;
use gateway_process::GatewayProcess;

const T: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The environment the example configs expand (`${env:...}`).
const EXAMPLE_ENV: [(&str, &str); 2] = [("OPAMP_SECRET_KEY", "example-secret"), ("GATEWAY_TOKEN", "example-token")];

/// `opamp-gateway check --config <path>`: (success, stdout + stderr).
async fn check(path: &Path) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"]).arg(path).env_remove("OPAMP_GATEWAY_CONFIG");
    for (k, v) in EXAMPLE_ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A tool from a Debian package, or why the test cannot run.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: `{name}` is not installed (scripts/test installs it with apt)");
    }
    found
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn every_example_config_passes_check() {
    let configs = files("examples/config", "yaml");
    let names: BTreeSet<String> =
        configs.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "minimal.yaml",
        "mtls.yaml",
        "collector.yaml",
        "dmz-lower.yaml",
        "dmz-upper.yaml",
        "ha-member.yaml",
        "policies.yaml",
    ] {
        assert!(names.contains(want), "examples/config/{want} is missing (have {names:?})");
    }
    for path in &configs {
        let (ok, out) = check(path).await;
        assert!(ok, "{} fails `check`:\n{out}", path.display());
        assert!(out.contains(": ok ("), "{}: {out}", path.display());
    }
    // Each example's keys are the real ones: a misspelt key would be refused.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    let minimal = std::fs::read_to_string(repo("examples/config/minimal.yaml")).unwrap();
    std::fs::write(&typo, minimal.replace("endpoint: 0.0.0.0:4320", "endpont: 0.0.0.0:4320")).unwrap();
    let (ok, out) = check(&typo).await;
    assert!(!ok && out.contains("listener"), "{out}");
}

#[tokio::test]
async fn alert_rules_pass_promtool() {
    let Some(promtool) = tool("promtool") else { return };
    let rules = repo("examples/prometheus/alerts.yaml");
    let out = Command::new(promtool).args(["check", "rules"]).arg(&rules).output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// The `opampgateway_*` names `src/telemetry/metrics.rs` declares (the
/// source is the list: a metric renamed there fails the kit's tests).
fn exported_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(repo("src/telemetry/metrics.rs")).unwrap();
    src.split('"').filter(|s| s.starts_with("opampgateway_")).map(str::to_owned).collect()
}

/// The `opampgateway_*` identifiers a PromQL expression reads.
fn metrics_in(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("opampgateway_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// Fails naming every query that reads a metric the gateway does not
/// export (a histogram's `_bucket`, `_sum` and `_count` series count as it).
fn assert_known_metrics(what: &str, exprs: &[String]) {
    let known = exported_metrics();
    assert!(known.len() > 20, "metric names not found in metrics.rs: {known:?}");
    let exported = |name: &str| {
        known.contains(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|b| known.contains(b)))
    };
    let mut unknown = Vec::new();
    for expr in exprs {
        let names = metrics_in(expr);
        assert!(!names.is_empty(), "{what}: a query reads no gateway metric: {expr}");
        unknown.extend(names.into_iter().filter(|n| !exported(n)).map(|n| format!("{n} in {expr}")));
    }
    assert!(unknown.is_empty(), "{what} reads metrics the gateway does not export:\n{}", unknown.join("\n"));
}

#[test]
fn alert_rules_read_only_exported_metrics() {
    let text = std::fs::read_to_string(repo("examples/prometheus/alerts.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    let mut names = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
            names.push(rule["alert"].as_str().unwrap().to_owned());
        }
    }
    assert_known_metrics("examples/prometheus/alerts.yaml", &exprs);
    // Every rule has its runbook paragraph, under a heading with its name.
    let ops = std::fs::read_to_string(repo("docs/operations.md")).unwrap();
    for name in names {
        assert!(ops.contains(&format!("### {name}")), "docs/operations.md has no runbook for {name}");
    }
}

/// Every `expr` anywhere in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo("examples/grafana/opamp-gateway.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 20, "{} queries", all.len());
    assert_known_metrics("examples/grafana/opamp-gateway.json", &all);
    // What the issue asks the dashboard to show, each by a metric.
    for needed in [
        "opampgateway_connections",
        "opampgateway_link_agents",
        "opampgateway_messages_total",
        "opampgateway_message_bytes_total",
        "opampgateway_message_latency_seconds_bucket",
        "opampgateway_handshakes_total",
        "opampgateway_agent_migrations_total",
        "opampgateway_upstream_reconnects_total",
        "opampgateway_policy_calls_total",
        "opampgateway_policy_errors_total",
        "opampgateway_policy_call_seconds_bucket",
    ] {
        assert!(all.iter().any(|e| e.contains(needed)), "no panel reads {needed}");
    }
    let titles: Vec<&str> = dash["panels"].as_array().unwrap().iter().filter_map(|p| p["title"].as_str()).collect();
    let unique: BTreeSet<&str> = titles.iter().copied().collect();
    assert_eq!(unique.len(), titles.len(), "panel titles repeat: {titles:?}");
}

/// Waits until the gateway whose admin server is `metrics` reports `n`
/// upstream links connected (its own signal; the server files a link a
/// moment before the gateway sees the upgrade answered).
async fn wait_for_links(metrics: SocketAddr, n: usize) {
    let want = format!("opampgateway_connections{{direction=\"upstream\"}} {n}");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let body = opamp_gateway::sim::http_get(metrics, "/metrics").await.map(|r| r.1).unwrap_or_default();
        if body.lines().any(|l| l == want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "links never came up:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on right now, for a child process to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET` on Prometheus' HTTP API, parsed. HTTP/1.0, so that Go answers
/// with the body as it is (no chunked encoding) and closes.
async fn api(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| serde_json::from_str(body).ok())?
}

/// Series of an instant query: each one's labels.
async fn series(prom: SocketAddr, query: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let Some(v) = api(prom, &path).await else { return Vec::new() };
    v["data"]["result"]
        .as_array()
        .map(|r| r.iter().filter_map(|s| s["metric"].as_object().cloned()).collect())
        .unwrap_or_default()
}

fn percent_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn label<'a>(s: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> &'a str {
    s.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway_with_the_documented_labels() {
    let Some(prometheus) = tool("prometheus") else { return };
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let gw = GatewayProcess::spawn(&format!(
        "server:\n  endpoint: {}\n  connections: 2\nlistener:\n  endpoint: 127.0.0.1:0\n\
         telemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n",
        server.url()
    ))
    .await;
    wait_for_links(gw.metrics, 2).await;
    let mut agent = SimAgent::connect(AgentOptions::new(format!("ws://{}/v1/opamp", gw.listener))).await.unwrap();
    agent.send(agent.status_report()).await.unwrap();
    agent.recv(T).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{:?}]\n\
             scrape_configs:\n  - job_name: opamp-gateway\n    static_configs:\n      - targets: [\"{}\"]\n",
            repo("examples/prometheus/alerts.yaml"),
            gw.metrics
        ),
    )
    .unwrap();
    let port = free_port();
    let prom = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Prometheus gives no signal but its API: poll it until every series
    // asked about is stored (histograms appear in /metrics once the
    // recorder has folded their samples, a scrape or two after the rest).
    let latency = |d: &str| format!(r#"opampgateway_message_latency_seconds_bucket{{direction="{d}"}}"#);
    let queries = [
        "opampgateway_connections".to_owned(),
        r#"opampgateway_handshakes_total{outcome="accepted"}"#.to_owned(),
        "opampgateway_link_agents".to_owned(),
        latency("upstream"),
        latency("downstream"),
        "opampgateway_upstream_agents".to_owned(),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let found = loop {
        let mut found = Vec::new();
        for q in &queries {
            found.push(series(prom, q).await);
        }
        if found[0].len() >= 2 && found.iter().all(|s| !s.is_empty()) {
            break found;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("prometheus exited early: {status}");
        }
        let missing: Vec<&String> = queries.iter().zip(&found).filter(|(_, f)| f.is_empty()).map(|(q, _)| q).collect();
        assert!(tokio::time::Instant::now() < deadline, "prometheus never stored {missing:?}: {found:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let [connections, handshakes, links, up_latency, down_latency, upstreams] = &found[..] else { unreachable!() };
    for s in connections {
        assert_eq!(label(s, "job"), "opamp-gateway", "{s:?}");
        assert_eq!(label(s, "instance"), gw.metrics.to_string(), "{s:?}");
        // Agents carry their transport; links are always WebSockets.
        match label(s, "direction") {
            "downstream" => assert!(["websocket", "http"].contains(&label(s, "transport")), "{s:?}"),
            "upstream" => assert_eq!(label(s, "transport"), "", "{s:?}"),
            other => panic!("direction {other:?}: {s:?}"),
        }
    }
    assert!(connections.iter().any(|s| label(s, "direction") == "upstream"), "{connections:?}");
    assert!(
        connections.iter().any(|s| label(s, "direction") == "downstream" && label(s, "transport") == "websocket"),
        "{connections:?}"
    );
    assert!(
        handshakes.iter().any(|s| label(s, "status") == "101" && label(s, "transport") == "websocket"),
        "{handshakes:?}"
    );
    // `server` is the upstream named `default`.
    assert!(links.iter().all(|s| !label(s, "link").is_empty() && label(s, "upstream") == "default"), "{links:?}");
    assert!(upstreams.iter().any(|s| label(s, "upstream") == "default"), "{upstreams:?}");
    for s in up_latency.iter().chain(down_latency) {
        assert!(!label(s, "le").is_empty(), "{s:?}");
    }
    // The alert rules, loaded and evaluated against the real series: each
    // reports its health once evaluated (`ok`, or `err` with the error).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rules = api(prom, "/api/v1/rules").await.expect("rules API answers");
        let all: Vec<&serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == "opamp-gateway")
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let failed: Vec<String> = all.iter().filter(|r| r["health"] == "err").map(|r| r.to_string()).collect();
        assert!(failed.is_empty(), "rules fail on real series:\n{}", failed.join("\n"));
        if !all.is_empty() && all.iter().all(|r| r["health"] == "ok") {
            // None fires on a healthy gateway.
            assert!(all.iter().all(|r| r["state"] == "inactive"), "{all:#?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rules never evaluated: {rules}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    child.kill().await.unwrap();
    drop(agent);
}

/// The gateway binary on `yaml` with stdout and stderr captured; returns
/// once it is ready, with its listener and admin addresses.
async fn spawn_logged(yaml: &str, env: &[(&str, &str)]) -> (tokio::process::Child, [SocketAddr; 2], tempfile::TempDir) {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path).env_remove("OPAMP_GATEWAY_LOG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(T, lines.next_line()).await.expect("ready in time").unwrap().expect("ready line");
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap().parse().unwrap();
    (child, [field("listener="), field("metrics=")], dir)
}

/// One plain-HTTP poll carrying `authorization`, after `preface` (a PROXY
/// protocol header, or nothing); the status answered, 0 if none.
async fn http_poll(gateway: SocketAddr, preface: &str, authorization: &str) -> u16 {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let msg = opamp_gateway::protocol::proto::AgentToServer {
        instance_uid: uuid::Uuid::new_v4().as_bytes().to_vec().into(),
        sequence_num: 1,
        ..Default::default()
    };
    let body = msg.encode_to_vec();
    let mut tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n\
         Authorization: {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(format!("{preface}{head}").as_bytes()).await.unwrap();
    // A connection refused mid-request may be reset: what was read decides.
    let _ = tcp.write_all(&body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut raw)).await.expect("answered in time");
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Runs agents through a gateway logging at trace level (both transports,
/// accepted and rejected credentials, a link secret), stops it, and returns
/// everything it wrote on stderr.
async fn traffic_logged_at_trace(logs: &str, env: &[(&str, &str)]) -> String {
    use tokio::io::AsyncReadExt;
    let server =
        ReferenceServer::start(ReferenceServerConfig { secret_key: Some(AGENT_SECRET.into()), ..Default::default() })
            .await
            .unwrap();
    let yaml = format!(
        "server:\n  endpoint: {}\n  connections: 2\n  headers:\n    X-Link-Secret: \"{LINK_SECRET}\"\n\
         \x20   Authorization: [\"Bearer {LINK_TOKEN}\"]\nlistener:\n  endpoint: 127.0.0.1:0\n\
         telemetry:\n  logs: {logs}\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n",
        server.url()
    );
    let (mut child, [listener, metrics], _dir) = spawn_logged(&yaml, env).await;
    let mut stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut all = Vec::new();
        stderr.read_to_end(&mut all).await.unwrap();
        String::from_utf8_lossy(&all).into_owned()
    });
    wait_for_links(metrics, 2).await;
    let url = format!("ws://{listener}/v1/opamp");
    let mut good =
        SimAgent::connect(AgentOptions::new(&url).header("Authorization", format!("Secret-Key {AGENT_SECRET}")))
            .await
            .expect("the right key is admitted");
    good.send(good.status_report()).await.unwrap();
    good.recv(T).await.unwrap();
    let bad =
        SimAgent::connect(AgentOptions::new(&url).header("Authorization", format!("Secret-Key {WRONG_SECRET}"))).await;
    assert!(bad.is_err(), "a wrong key is refused");
    assert_eq!(http_poll(listener, "", &format!("Secret-Key {AGENT_SECRET}")).await, 200);
    assert_eq!(http_poll(listener, "", &format!("Secret-Key {WRONG_SECRET}")).await, 401);
    let s = server.state();
    assert!(s.connects_accepted >= 2 && s.connects_rejected >= 2, "{s:?}");
    // The secrets were really in use: the links sent them.
    assert!(s.connections.iter().any(|c| c.header("x-link-secret") == Some(LINK_SECRET)));
    good.say_goodbye().await.unwrap();
    // SIGTERM: the gateway drains and exits, its last lines written.
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    assert!(tokio::time::timeout(T, child.wait()).await.expect("exits after SIGTERM").unwrap().success());
    tokio::time::timeout(T, collected).await.unwrap().unwrap()
}

const LINK_SECRET: &str = "link-secret-3e9a7c51";
const LINK_TOKEN: &str = "link-token-b04d2f86";
const AGENT_SECRET: &str = "agent-secret-91c6e2d4";
const WRONG_SECRET: &str = "wrong-secret-7f18a0b3";

fn assert_no_secret(log: &str) {
    for secret in [LINK_SECRET, LINK_TOKEN, AGENT_SECRET, WRONG_SECRET] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).take(5).collect();
        assert!(leaks.is_empty(), "{secret} appears in the logs:\n{}", leaks.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_at_any_level() {
    // JSON at trace, from the config: every line one object with the stable keys.
    let log = traffic_logged_at_trace("{ format: json, level: trace }", &[]).await;
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    for l in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(l.get(key).is_some_and(|v| v.is_string()), "no {key}: {l}");
        }
    }
    assert!(lines.iter().any(|l| l["level"] == "TRACE"), "trace level not in force");
    assert!(lines.iter().any(|l| l.get("agent").is_some()), "no line names its agent");
    assert_no_secret(&log);

    // Text, with the level from RUST_LOG over the config's `error`.
    let log = traffic_logged_at_trace("{ format: text, level: error }", &[("RUST_LOG", "trace")]).await;
    assert!(log.lines().any(|l| l.contains("TRACE")), "RUST_LOG did not override the config's level");
    assert!(log.lines().all(|l| !l.starts_with('{')), "text format wrote JSON");
    assert_no_secret(&log);
}

#[tokio::test]
async fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo("examples/deploy/systemd/opamp-gateway.service")).unwrap();
    for setting in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ExecStart=/usr/local/bin/opamp-gateway --config",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(setting)), "the unit lacks {setting}");
    }
    let Some(analyze) = tool("systemd-analyze") else { return };
    // `verify` checks that ExecStart's binary exists: point it at the one
    // just built, in a copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("opamp-gateway.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/opamp-gateway", BIN)).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&copy).output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // It exits 0 on unknown keys and unparsable values too, with a warning:
    // any output naming the unit is a failure.
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("opamp-gateway.service")).collect();
    assert!(out.status.success() && warnings.is_empty(), "systemd-analyze verify:\n{text}");
}

/// The Kubernetes documents, by kind.
fn kubernetes() -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(repo("examples/deploy/kubernetes/opamp-gateway.yaml")).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde_yaml_ng::Value::deserialize(d).unwrap()).collect()
}

#[tokio::test]
async fn the_kubernetes_manifests_agree_with_the_gateway_config() {
    let docs = kubernetes();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    // The ConfigMap's gateway.yaml is a config the gateway accepts.
    let dir = tempfile::tempdir().unwrap();
    let gateway_yaml = dir.path().join("gateway.yaml");
    std::fs::write(&gateway_yaml, kind("ConfigMap")["data"]["gateway.yaml"].as_str().unwrap()).unwrap();
    let (ok, out) = check(&gateway_yaml).await;
    assert!(ok, "the ConfigMap's gateway.yaml fails `check`:\n{out}");
    // Its settings, as the gateway reads them (the secret is not needed here).
    let text = std::fs::read_to_string(&gateway_yaml).unwrap().replace("${env:OPAMP_SECRET_KEY}", "x");
    let config = opamp_gateway::config::Config::from_yaml(&text).unwrap();
    let admin_port: i64 = config.telemetry.metrics.endpoint.unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
    let agent_port: i64 = config.listener.endpoint.rsplit_once(':').unwrap().1.parse().unwrap();

    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let port = |name: &str| {
        c["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"].as_i64().unwrap()
    };
    assert_eq!((port("opamp"), port("admin")), (agent_port, admin_port));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    // The policies folder is the ConfigMap mounted whole (no subPath), so
    // the kubelet's `..data` swap reaches the gateway's watcher.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let policies = mounts.iter().find(|m| m["name"] == "policies").expect("a policies mount");
    assert_eq!(policies["mountPath"].as_str().map(Path::new), Some(config.policies.directory.as_path()));
    assert!(policies.get("subPath").is_none(), "a subPath mount never sees ConfigMap updates");
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "policies").unwrap();
    assert!(volume["configMap"]["name"].is_string());
    let cache = mounts.iter().find(|m| m["name"] == "cache").expect("a cache mount");
    assert_eq!(cache["mountPath"].as_str().map(Path::new), config.policies.cache_dir.as_deref());
    // Grace period covers the drain the config asks for.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > (config.listener.drain_delay + config.listener.shutdown_timeout).as_secs(), "{grace}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let selector = &kind("Deployment")["spec"]["selector"]["matchLabels"];
    assert_eq!(&kind("Service")["spec"]["selector"], selector);
    assert_eq!(&kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(kind("Service")["spec"]["ports"][0]["targetPort"], "opamp");
}

#[test]
fn the_dockerfile_is_multi_stage_and_non_root() {
    // Not built here: the machine cannot pull base images (examples/README.md).
    let text = std::fs::read_to_string(repo("examples/deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "not multi-stage");
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "runs as {user}");
    let volume = lines.iter().find(|l| l.starts_with("VOLUME ")).expect("a VOLUME line");
    assert!(volume.contains("policies.d") && volume.contains("/var/cache/opamp-gateway"), "{volume}");
    assert!(lines.iter().any(|l| l.contains("--bin opamp-gateway")));
}

#[path = "support/test_ca.rs"]
mod test_ca;
use test_ca::Ca;

/// `examples/config/mtls.yaml` as shipped, its certificate paths pointed at
/// generated files, its server at a TLS reference server: the links dial
/// through the private CA with the client certificate, and only agents with
/// a certificate from the agents' CA get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_example_runs_with_real_certificates() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let (upstream_ca, listener_ca, agents_ca) = (Ca::new("upstream CA"), Ca::new("listener CA"), Ca::new("agents CA"));
    file("upstream-ca.pem", &upstream_ca.pem());
    let (cert, key) = upstream_ca.leaf("gateway", true);
    file("gateway-client.pem", &cert);
    file("gateway-client.key", &key);
    let (cert, key) = listener_ca.leaf("localhost", false);
    file("listener.pem", &cert);
    file("listener.key", &key);
    file("agents-ca.pem", &agents_ca.pem());

    let (cert, key) = upstream_ca.leaf("localhost", false);
    let server = ReferenceServer::start(ReferenceServerConfig {
        tls: Some((cert.into_bytes(), key.into_bytes())),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut yaml = std::fs::read_to_string(repo("examples/config/mtls.yaml")).unwrap();
    for (from, to) in [
        ("/etc/opamp-gateway/tls/".to_owned(), format!("{}/", dir.path().display())),
        (
            "wss://opamp.internal.example.com:443/v1/opamp".to_owned(),
            format!("wss://localhost:{}/v1/opamp", server.addr().port()),
        ),
        ("endpoint: 0.0.0.0:4320".to_owned(), "endpoint: 127.0.0.1:0".to_owned()),
        ("endpoint: 127.0.0.1:8888".to_owned(), "endpoint: 127.0.0.1:0".to_owned()),
    ] {
        assert!(yaml.contains(&from), "mtls.yaml no longer has {from:?}: update this test");
        yaml = yaml.replace(&from, &to);
    }
    let (mut child, [listener, metrics], _dir) = spawn_logged(&yaml, &EXAMPLE_ENV).await;
    let mut stderr = child.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    wait_for_links(metrics, 3).await;

    let agent_tls = |with_cert: bool| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(listener_ca.pem().as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(opamp_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let (cert, key) = agents_ca.leaf("agent-1", true);
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let mut o = AgentOptions::new(format!("wss://localhost:{}/v1/opamp", listener.port()));
        o.tls = Some(std::sync::Arc::new(config));
        o
    };
    let mut agent = SimAgent::connect(agent_tls(true)).await.expect("an agent with a certificate is admitted");
    agent.send(agent.status_report()).await.unwrap();
    agent.recv(T).await.unwrap();
    let uid = agent.uid().as_bytes().clone();
    server.wait_until(T, |s| s.agent(&uid).is_some()).await.expect("the agent reached the server");
    assert!(SimAgent::connect(agent_tls(false)).await.is_err(), "an agent without a certificate got in");
    drop(agent);
}

/// `text` with each `(from, to)` replaced; `from` must be there, so an
/// example edited out from under its test fails loudly.
fn rewrite(mut text: String, name: &str, pairs: &[(String, String)]) -> String {
    for (from, to) in pairs {
        assert!(text.contains(from.as_str()), "{name} no longer has {from:?}: update this test");
        text = text.replace(from.as_str(), to);
    }
    text
}

/// Reads and discards a child's stderr, so a chatty one never blocks on it.
fn discard_stderr(child: &mut tokio::process::Child) {
    let mut stderr = child.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
}

/// `examples/config/dmz-lower.yaml` and `dmz-upper.yaml` as a running
/// chain: agents → lower gateway → (wss, shared token) → upper gateway →
/// server. The upper one admits the lower one's forwarded handshakes only
/// because the token matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dmz_pair_relays_agents_through_both_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = format!("{}/", dir.path().display());
    let ca = Ca::new("dmz CA");
    std::fs::write(dir.path().join("dmz-ca.pem"), ca.pem()).unwrap();
    let (cert, key) = ca.leaf("localhost", false);
    std::fs::write(dir.path().join("dmz-gateway.pem"), cert).unwrap();
    std::fs::write(dir.path().join("dmz-gateway.key"), key).unwrap();
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let loopback = |s: &str| (s.to_owned(), "endpoint: 127.0.0.1:0".to_owned());

    let upper = rewrite(
        std::fs::read_to_string(repo("examples/config/dmz-upper.yaml")).unwrap(),
        "dmz-upper.yaml",
        &[
            ("wss://opamp.example.com/v1/opamp".into(), server.url()),
            ("/etc/opamp-gateway/tls/".into(), tls_dir.clone()),
            loopback("endpoint: 0.0.0.0:4320"),
            loopback("endpoint: 127.0.0.1:8888"),
        ],
    );
    let (mut upper, [upper_listener, upper_metrics], _d1) = spawn_logged(&upper, &EXAMPLE_ENV).await;
    discard_stderr(&mut upper);
    wait_for_links(upper_metrics, 4).await;

    let lower = rewrite(
        std::fs::read_to_string(repo("examples/config/dmz-lower.yaml")).unwrap(),
        "dmz-lower.yaml",
        &[
            (
                "wss://opamp-gw.dmz.example.com:4320/v1/opamp".into(),
                format!("wss://localhost:{}/v1/opamp", upper_listener.port()),
            ),
            ("/etc/opamp-gateway/tls/".into(), tls_dir),
            loopback("endpoint: 0.0.0.0:4320"),
            loopback("endpoint: 127.0.0.1:8888"),
        ],
    );
    let (mut lower, [lower_listener, lower_metrics], _d2) = spawn_logged(&lower, &EXAMPLE_ENV).await;
    discard_stderr(&mut lower);
    wait_for_links(lower_metrics, 2).await;

    // More agents than the lower gateway has links: its links carry several
    // uids each, which the upper one allows only to a trusted gateway.
    let mut agents = Vec::new();
    for _ in 0..4 {
        let url = format!("ws://{lower_listener}/v1/opamp");
        let mut a = SimAgent::connect(AgentOptions::new(url)).await.expect("admitted through both gateways");
        a.send(a.status_report()).await.unwrap();
        a.recv(T).await.unwrap();
        agents.push(a);
    }
    let uids: Vec<Vec<u8>> = agents.iter().map(|a| a.uid().as_bytes().to_vec()).collect();
    server.wait_until(T, |s| uids.iter().all(|u| s.agent(u).is_some())).await.expect("every agent reached the server");
    // The server saw the upper gateway's links only, with its own header.
    let s = server.state();
    assert!(s.connections.iter().all(|c| c.header("authorization") == Some("Secret-Key example-secret")), "{s:?}");
}

/// `examples/config/policies.yaml` running: with `required: true`, a gateway
/// whose policies folder holds no policy keeps `/readyz` at 503 (a load
/// balancer leaves it out) while its links are up and `/livez` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policies_example_is_not_ready_without_its_policies() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.d");
    std::fs::create_dir(&policies).unwrap();
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let yaml = rewrite(
        std::fs::read_to_string(repo("examples/config/policies.yaml")).unwrap(),
        "policies.yaml",
        &[
            ("wss://opamp.example.com/v1/opamp".into(), server.url()),
            ("endpoint: 0.0.0.0:4320".into(), "endpoint: 127.0.0.1:0".into()),
            ("endpoint: 127.0.0.1:8888".into(), "endpoint: 127.0.0.1:0".into()),
            ("/etc/opamp-gateway/policies.d".into(), policies.display().to_string()),
            ("/var/cache/opamp-gateway".into(), dir.path().join("cache").display().to_string()),
        ],
    );
    let (mut gw, [_, metrics], _d) = spawn_logged(&yaml, &EXAMPLE_ENV).await;
    discard_stderr(&mut gw);
    wait_for_links(metrics, 3).await;
    let get = |path: &'static str| async move { opamp_gateway::sim::http_get(metrics, path).await.unwrap().0 };
    assert_eq!(get("/livez").await, 200);
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 503, "ready with no policy although policies.required is true");
}

/// `examples/config/ha-member.yaml` running behind a (simulated) load
/// balancer: connections start with a PROXY header whose source is the
/// agent's address, which the server then sees; a connection without one
/// (something bypassing the balancer) is refused; SIGTERM turns `/readyz`
/// 503 at once while the drain delay runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_member_example_takes_agents_through_a_proxy_header() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let yaml = rewrite(
        std::fs::read_to_string(repo("examples/config/ha-member.yaml")).unwrap(),
        "ha-member.yaml",
        &[
            ("wss://opamp.example.com/v1/opamp".into(), server.url()),
            ("endpoint: 0.0.0.0:4320".into(), "endpoint: 127.0.0.1:0".into()),
            ("endpoint: 0.0.0.0:8888".into(), "endpoint: 127.0.0.1:0".into()),
        ],
    );
    let (mut gw, [listener, metrics], _d) = spawn_logged(&yaml, &EXAMPLE_ENV).await;
    discard_stderr(&mut gw);
    wait_for_links(metrics, 3).await;
    let get = |path: &'static str| async move { opamp_gateway::sim::http_get(metrics, path).await.unwrap().0 };
    assert_eq!(get("/readyz").await, 200);

    let proxy = format!("PROXY TCP4 203.0.113.7 {} 40001 {}\r\n", listener.ip(), listener.port());
    assert_eq!(http_poll(listener, &proxy, "Secret-Key any").await, 200);
    let seen = server.state().connect_requests.last().cloned().expect("a connect request").1;
    assert_eq!(seen.remote_address, "203.0.113.7:40001");
    assert_eq!(http_poll(listener, "", "Secret-Key any").await, 0, "a connection without a PROXY header got in");

    let pid = gw.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    // `/readyz` says so at once; `listener.drain_delay` (10s) keeps the
    // listener open meanwhile. Polled: the signal is handled asynchronously.
    let deadline = tokio::time::Instant::now() + T;
    while get("/readyz").await != 503 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_poll(listener, &proxy, "Secret-Key any").await, 200, "agents refused during the drain delay");
}
