//! Interop with OpAMP clients this project did not write.
//!
//! Two published clients, both plain-HTTP only, talk through the gateway to
//! the reference upstream server, next to a WebSocket agent on the same
//! listener:
//!
//! - PyPI `opentelemetry-opamp-client` (driver: `tests/interop/python_client.py`)
//! - npm `@elastic/opamp-client-node` (driver: `tests/interop/node_client.js`)
//!
//! Each driver runs the real client — full-state report, heartbeats on the
//! client's own timer, then its own way of leaving — checks that every reply
//! it got was addressed to its own uid, and prints a one-line JSON summary.
//! Here we check that summary and what the server saw.
//!
//! The clients are installed by the test command (`scripts/test`) with
//! `tests/interop/install.sh`, into `target/interop/{python,node}` at the
//! versions pinned in `tests/interop/`. If they are missing this test fails,
//! naming the script: it never skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig, ServerState};
use opamp_gateway::Gateway;
use serde_json::Value;

/// Generous bound for anything that should happen "promptly" on loopback.
const T: Duration = Duration::from_secs(10);
const SECRET: &str = "interop-secret";
/// Heartbeats each client must get replies to before it leaves.
const HEARTBEATS: u64 = 3;
/// Heartbeat interval the clients are given, seconds.
const INTERVAL: &str = "0.3";
/// The drivers stop themselves after this many seconds; we wait a bit longer.
const DRIVER_TIMEOUT: u64 = 20;
/// HTTP agents silent this long are reported gone. Several heartbeat
/// intervals, so a live client is never reaped, yet short enough to see a
/// client that leaves without a goodbye (the Node one) reported within `T`.
const HTTP_IDLE: &str = "2s";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn interop_dir() -> PathBuf {
    root().join("tests/interop")
}

/// A third-party client and where `install.sh` put it.
struct Client {
    name: &'static str,
    program: &'static str,
    script: &'static str,
    /// Environment variable that makes the installed package importable.
    path_var: &'static str,
    path: PathBuf,
    /// The pinned file `install.sh` copies next to a finished install.
    pin: &'static str,
    stamp: PathBuf,
    /// Prefix of the `User-Agent` the client sends.
    user_agent: &'static str,
    /// Whether the client sends `agent_disconnect` when it stops.
    says_goodbye: bool,
}

fn clients() -> [Client; 2] {
    let target = root().join("target/interop");
    [
        Client {
            name: "python (PyPI opentelemetry-opamp-client)",
            program: "python3",
            script: "python_client.py",
            path_var: "PYTHONPATH",
            path: target.join("python"),
            pin: "requirements.txt",
            stamp: target.join("python/.installed-requirements.txt"),
            user_agent: "OTel-OpAMP-Python/",
            says_goodbye: true,
        },
        Client {
            name: "node (npm @elastic/opamp-client-node)",
            program: "node",
            script: "node_client.js",
            path_var: "NODE_PATH",
            path: target.join("node/node_modules"),
            pin: "package-lock.json",
            stamp: target.join("node/.installed-package-lock.json"),
            user_agent: "@elastic/opamp-client-node/",
            says_goodbye: false,
        },
    ]
}

/// Fails (never skips) unless `install.sh` installed the pinned versions.
fn require_installed(c: &Client) {
    let pinned = std::fs::read(interop_dir().join(c.pin)).expect("pin file in tests/interop");
    let installed = std::fs::read(&c.stamp).ok();
    assert!(
        installed.as_deref() == Some(&pinned[..]),
        "the {} client is not installed at the version pinned in tests/interop/{} \
         (no matching {}); run tests/interop/install.sh (scripts/test does)",
        c.name,
        c.pin,
        c.stamp.display(),
    );
}

fn gateway_config(server_url: &str) -> Config {
    let mut c = Config::from_yaml(&format!(
        "server:\n  endpoint: {server_url}\n  reconnect: {{ initial_interval: 50ms, max_interval: 500ms }}\n\
         listener:\n  endpoint: 127.0.0.1:0\n  http: {{ idle_timeout: {HTTP_IDLE} }}\n"
    ))
    .expect("test config is valid");
    c.policies.directory = "/nonexistent/opamp-gateway-test-policies".into();
    c
}

/// What a driver run produced.
struct Run {
    code: Option<i32>,
    summary: Option<Value>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    fn u64(&self, key: &str) -> u64 {
        self.summary.as_ref().and_then(|s| s[key].as_u64()).unwrap_or(0)
    }
}

async fn run_driver(c: &Client, url: &str, key: &str) -> Run {
    let mut cmd = tokio::process::Command::new(c.program);
    cmd.arg(interop_dir().join(c.script))
        .args(["--url", url])
        .args(["--header", &format!("Authorization: Secret-Key {key}")])
        .args(["--heartbeats", &HEARTBEATS.to_string()])
        .args(["--interval", INTERVAL])
        .args(["--timeout", &DRIVER_TIMEOUT.to_string()])
        .env(c.path_var, &c.path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // Loopback only: no proxy may get in the way.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run `{}` for the {} client: {e}; it is needed by the interop tests", c.program, c.name)
    });
    let out = tokio::time::timeout(Duration::from_secs(DRIVER_TIMEOUT + 10), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {} driver ignored its own timeout", c.name))
        .expect("driver output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok());
    Run { code: out.status.code(), summary, stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn uid_of(run: &Run) -> Option<Vec<u8>> {
    let hex = run.summary.as_ref()?["uid"].as_str()?;
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

fn has_user_agent(state: &ServerState, prefix: &str) -> bool {
    state.connect_requests.iter().any(|(_, req)| {
        req.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
            .any(|(_, values)| values.iter().any(|v| v.starts_with(prefix)))
    })
}

/// Checks one client's run against its summary and the server's view.
/// Returns the problems found (empty = pass).
async fn check(c: &Client, run: &Run, server: &ReferenceServer) -> Vec<String> {
    eprintln!("{}: {}", c.name, run.stdout.trim_end());
    let mut problems = Vec::new();
    if run.code != Some(0) {
        problems.push("the driver did not exit 0".to_string());
    }
    let Some(summary) = &run.summary else {
        problems.push("no JSON summary line on stdout".into());
        return problems;
    };
    if summary["errors"].as_array().is_none_or(|e| !e.is_empty()) {
        problems.push(format!("the client reported errors: {}", summary["errors"]));
    }
    let own = run.u64("own_uid_replies");
    if own < HEARTBEATS {
        problems.push(format!("only {own} replies addressed to the client's uid (want >= {HEARTBEATS})"));
    }
    if run.u64("foreign_uid_replies") != 0 {
        problems.push("replies addressed to another uid reached the client".into());
    }
    if summary["sent"]["full_state"].as_u64() != Some(1) {
        problems.push(format!("expected exactly one full-state report, got {}", summary["sent"]));
    }
    if run.u64("heartbeat_replies") < HEARTBEATS {
        problems.push(format!("fewer than {HEARTBEATS} heartbeats answered"));
    }
    let sent_goodbye = summary["sent"]["disconnect"].as_u64() == Some(1);
    if sent_goodbye != c.says_goodbye {
        problems.push(format!("agent_disconnect sent: {sent_goodbye}, expected {}", c.says_goodbye));
    }
    let Some(uid) = uid_of(run) else {
        problems.push("summary has no valid uid".into());
        return problems;
    };

    // The server saw this uid (full state + heartbeats [+ goodbye]) and, in
    // the end, exactly one agent_disconnect: the client's own, or the one the
    // gateway synthesizes when an HTTP agent stops polling.
    let want_msgs = 1 + HEARTBEATS + u64::from(c.says_goodbye);
    let seen =
        server.wait_until(T, |s| s.agent(&uid).is_some_and(|a| a.messages >= want_msgs && a.disconnected >= 1)).await;
    let state = server.state();
    match state.agent(&uid) {
        None => problems.push(format!("the server never saw uid {}", summary["uid"])),
        Some(a) => {
            if seen.is_err() {
                problems.push(format!(
                    "server saw {} messages / {} disconnects for the uid within {T:?} (want >= {want_msgs} / 1)",
                    a.messages, a.disconnected
                ));
            } else if a.disconnected != 1 {
                problems.push(format!("server counted {} agent_disconnects for the uid, want 1", a.disconnected));
            }
        }
    }
    if !has_user_agent(&state, c.user_agent) {
        problems.push(format!("no connect request reached the server with User-Agent {}*", c.user_agent));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn third_party_http_clients_next_to_websocket_agents() {
    let clients = clients();
    for c in &clients {
        require_installed(c);
    }

    let server =
        ReferenceServer::start(ReferenceServerConfig { secret_key: Some(SECRET.into()), ..Default::default() })
            .await
            .expect("reference server starts");
    let cfg = gateway_config(&server.url());
    let gateway = Gateway::start(&cfg, None).await.expect("gateway starts");
    assert!(gateway.wait_for_links(cfg.server.connections, T).await, "links did not connect");
    let ws_url = gateway.agent_url();
    let http_url = ws_url.replacen("ws://", "http://", 1);
    assert!(http_url.starts_with("http://"), "unexpected agent URL {ws_url}");

    // A WebSocket agent on the same listener, round-tripping throughout.
    let opts = AgentOptions::new(ws_url.clone()).header("Authorization", format!("Secret-Key {SECRET}"));
    let mut ws_agent = SimAgent::connect(opts).await.expect("WebSocket agent connects");
    let ws_uid = ws_agent.uid().as_bytes().to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let ws_task = tokio::spawn({
        let stop = stop.clone();
        let ws_uid = ws_uid.clone();
        async move {
            let mut trips = 0u64;
            let mut msg = ws_agent.status_report();
            loop {
                ws_agent.send(msg).await.expect("WebSocket agent sends");
                let reply = ws_agent.recv(T).await.expect("WebSocket agent gets a reply");
                assert_eq!(&reply.instance_uid[..], &ws_uid[..], "WebSocket reply must be addressed to its agent");
                trips += 1;
                if stop.load(Ordering::SeqCst) && trips >= 3 {
                    break;
                }
                msg = AgentToServer::default(); // heartbeats from now on
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ws_agent.say_goodbye().await.expect("WebSocket agent leaves");
            trips
        }
    });

    // Both third-party clients at once, over plain HTTP on the same listener.
    let (py, node) =
        tokio::join!(run_driver(&clients[0], &http_url, SECRET), run_driver(&clients[1], &http_url, SECRET));

    let mut report = Vec::new();
    for (c, run) in clients.iter().zip([&py, &node]) {
        let problems = check(c, run, &server).await;
        if !problems.is_empty() {
            report.push(format!("{}:\n  - {}\n{}", c.name, problems.join("\n  - "), run.describe()));
        }
    }

    stop.store(true, Ordering::SeqCst);
    let trips = ws_task.await.expect("WebSocket agent task");
    let ws_left = server.wait_until(T, |s| s.agent(&ws_uid).is_some_and(|a| a.disconnected == 1)).await;
    if trips < 3 || ws_left.is_err() {
        report.push(format!("WebSocket agent: {trips} round trips, goodbye seen: {}", ws_left.is_ok()));
    }

    let state = server.state();
    if state.anonymous_messages != 0 || state.malformed_messages != 0 {
        report.push(format!(
            "server saw {} anonymous and {} malformed messages",
            state.anonymous_messages, state.malformed_messages
        ));
    }

    // A wrong key is refused by the server, through the gateway, for an HTTP client too.
    let refused = run_driver(&clients[0], &http_url, "wrong-key").await;
    let errors = refused.summary.as_ref().map(|s| s["errors"].to_string()).unwrap_or_default();
    if refused.code == Some(0) || !errors.contains("401") {
        report.push(format!("python client with a wrong key was not refused with 401:\n{}", refused.describe()));
    }

    gateway.shutdown().await;
    assert!(report.is_empty(), "interop failures:\n\n{}", report.join("\n\n"));
}
