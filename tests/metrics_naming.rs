//! `telemetry.metrics.naming` on the real binary: relay a message, scrape
//! `/metrics`, and find the reference's instruments under the names the
//! naming promises (and not under the other ones).

use std::net::SocketAddr;
use std::time::Duration;

use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};

const T: Duration = Duration::from_secs(10);
#[path = "support/gateway_process.rs"]
mod gateway_process;
use gateway_process::GatewayProcess;

/// The four instruments under each naming.
const DEFAULT_NAMES: [&str; 4] = [
    "opampgateway_connections",
    "opampgateway_messages_total",
    "opampgateway_message_bytes_total",
    "opampgateway_message_latency_seconds",
];
const OTELCOL_NAMES: [&str; 4] = [
    "otelcol_opampgateway_connections",
    "otelcol_opampgateway_messages",
    "otelcol_opampgateway_messages_bytes",
    "otelcol_opampgateway_messages_latency",
];

struct Running {
    _gw: GatewayProcess,
    _server: ReferenceServer,
}

/// Starts a reference server and the binary in front of it with `naming`,
/// relays one agent round trip, and returns once the relay is counted.
async fn run_with(naming: Option<&str>) -> (Running, String) {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let naming = naming.map(|n| format!("    naming: {n}\n")).unwrap_or_default();
    let yaml = format!(
        "server:\n  endpoint: {}\n  connections: 1\nlistener:\n  endpoint: 127.0.0.1:0\ntelemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n{naming}policies:\n  directory: /nonexistent/policies\n",
        server.url()
    );
    let gw = GatewayProcess::spawn(&yaml).await;

    // The link is up once health says so (the gateway's readiness signal).
    let deadline = tokio::time::Instant::now() + T;
    while get(gw.metrics, "/healthz").await.trim() != "1/1 upstream links connected" {
        assert!(tokio::time::Instant::now() < deadline, "link never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut agent = SimAgent::connect(AgentOptions::new(format!("ws://{}/v1/opamp", gw.listener))).await.unwrap();
    let report = agent.status_report();
    agent.send(report).await.unwrap();
    assert_eq!(&agent.recv(T).await.unwrap().instance_uid, agent.uid().as_bytes());
    // Counters move as frames are written; poll the endpoint (no other signal).
    // The agent stays connected while we scrape (dropped at the end).
    let deadline = tokio::time::Instant::now() + T;
    let body = loop {
        let body = get(gw.metrics, "/metrics").await;
        let relayed = ["opampgateway_messages_total", "otelcol_opampgateway_messages"]
            .iter()
            .any(|n| sample(&body, n, &[("direction", "downstream")]).is_some_and(|v| v >= 1.0));
        if relayed {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "relay never counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(agent);
    (Running { _gw: gw, _server: server }, body)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    opamp_gateway::sim::http_get(addr, path).await.expect("admin server answers").1
}

/// The value of the first sample of `name` carrying all `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(body, name).find_map(|(rest, value)| {
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

/// Every sample of exactly `name`: (label block, value).
fn series<'a>(body: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    body.lines().filter(|l| !l.starts_with('#')).filter_map(move |l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name).then_some((rest, value))
    })
}

/// Whether any sample or metadata line mentions the metric family `name`.
fn has_family(body: &str, name: &str) -> bool {
    body.lines().any(|l| {
        let l = l.strip_prefix("# TYPE ").or_else(|| l.strip_prefix("# HELP ")).unwrap_or(l);
        let n = l.split(['{', ' ']).next().unwrap_or("");
        n == name || n.strip_prefix(name).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otelcol_naming_exports_the_collector_names() {
    let (_gw, body) = run_with(Some("otelcol")).await;
    let s = |name, labels: &[(&str, &str)]| {
        sample(&body, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{body}"))
    };
    assert!(body.contains("# TYPE otelcol_opampgateway_connections gauge\n"), "{body}");
    assert!(body.contains("# TYPE otelcol_opampgateway_messages counter\n"), "{body}");
    assert!(body.contains("# TYPE otelcol_opampgateway_messages_bytes counter\n"), "{body}");
    assert!(body.contains("# TYPE otelcol_opampgateway_messages_latency histogram\n"), "{body}");
    assert_eq!(s("otelcol_opampgateway_connections", &[("direction", "upstream")]), 1.0);
    assert_eq!(s("otelcol_opampgateway_connections", &[("direction", "downstream")]), 1.0);
    assert!(s("otelcol_opampgateway_messages", &[("direction", "upstream")]) >= 1.0);
    assert!(s("otelcol_opampgateway_messages_bytes", &[("direction", "upstream")]) > 0.0);
    // The reference's label set: `direction` only (ours adds `transport`).
    for name in &OTELCOL_NAMES[..3] {
        for (labels, _) in series(&body, name) {
            assert!(labels.starts_with("direction=\"") && !labels.contains(','), "{name}{{{labels}:\n{body}");
        }
    }
    // Latency in milliseconds with the reference's bucket boundaries.
    let bucket = "otelcol_opampgateway_messages_latency_bucket";
    let les: Vec<&str> = series(&body, bucket)
        .filter(|(l, _)| l.contains("direction=\"downstream\""))
        .filter_map(|(l, _)| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    let want = [
        "0", "5", "10", "25", "50", "75", "100", "250", "500", "750", "1000", "2500", "5000", "7500", "10000", "25000",
        "50000", "75000", "100000", "+Inf",
    ];
    assert_eq!(les, want, "{body}");
    // (Seconds → whole milliseconds is a unit test in src/telemetry/naming.rs.)
    assert!(s("otelcol_opampgateway_messages_latency_count", &[("direction", "downstream")]) >= 1.0);

    for name in DEFAULT_NAMES {
        assert!(!has_family(&body, name), "{name} present under otelcol naming:\n{body}");
    }
    // Gateway-own metrics keep their names.
    assert!(s("opampgateway_handshakes_total", &[("outcome", "accepted")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_naming_keeps_ours() {
    let (_gw, body) = run_with(None).await;
    let s = |name, labels: &[(&str, &str)]| {
        sample(&body, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{body}"))
    };
    assert_eq!(s("opampgateway_connections", &[("direction", "downstream"), ("transport", "websocket")]), 1.0);
    assert!(s("opampgateway_messages_total", &[("direction", "upstream")]) >= 1.0);
    assert!(s("opampgateway_message_bytes_total", &[("direction", "upstream")]) > 0.0);
    assert!(s("opampgateway_message_latency_seconds_bucket", &[("direction", "downstream"), ("le", "30")]) >= 1.0);
    for name in OTELCOL_NAMES {
        assert!(!has_family(&body, name), "{name} present under default naming:\n{body}");
    }
}
