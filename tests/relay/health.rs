//! Health endpoints for orchestrators (issue 9.5): `/livez` is about the
//! process, `/healthz` about the links, `/readyz` also about shutdown; on
//! shutdown the listener keeps serving for `listener.drain_delay`.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;

use crate::common::{config, eventually, round_trip, T};

/// `GET path` on the admin server: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    opamp_gateway::sim::http_get(addr, path).await.expect("admin server answers")
}

/// A gateway with its admin endpoint on loopback. The Prometheus handle is
/// not installed as the global recorder: only the health endpoints matter.
async fn start(server_url: &str, tweak: impl FnOnce(&mut opamp_gateway::config::Config)) -> Gateway {
    let mut cfg = config(server_url);
    cfg.telemetry.metrics.endpoint = Some("127.0.0.1:0".into());
    tweak(&mut cfg);
    let handle = PrometheusBuilder::new().build_recorder().handle();
    Gateway::start(&cfg, Some(handle)).await.expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_stays_up_while_the_server_is_down() {
    // A port nothing listens on: the links never connect.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/v1/opamp", dead.local_addr().unwrap());
    drop(dead);
    let g = start(&url, |_| {}).await;
    let admin = g.metrics_addr().unwrap();
    assert_eq!(get(admin, "/livez").await.0, 200);
    let (code, body) = get(admin, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_at_once_on_shutdown_while_the_listener_serves_out_its_drain_delay() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    // Longer than any test run: only the cut below ends it.
    let g = start(&server.url(), |c| c.listener.drain_delay = Duration::from_secs(3600)).await;
    assert!(g.wait_for_links(3, T).await);
    let (admin, addr, url) = (g.metrics_addr().unwrap(), g.listen_addr(), g.agent_url());
    let (code, body) = get(admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let mut before = SimAgent::connect(opamp_gateway::sim::agent::AgentOptions::new(url.clone())).await.unwrap();
    round_trip(&mut before).await;

    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = tokio::spawn(g.shutdown_with(async {
        let _ = cut_rx.await;
    }));
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (code, body) = get(admin, "/readyz").await;
        if code == 503 {
            assert!(body.starts_with("draining"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never turned 503: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(admin, "/livez").await.0, 200, "draining is not dead");
    assert_eq!(get(admin, "/healthz").await.0, 200, "healthz is unchanged");

    // During the delay new agents are still admitted and served.
    let mut during = SimAgent::connect(opamp_gateway::sim::agent::AgentOptions::new(url)).await.unwrap();
    round_trip(&mut during).await;
    round_trip(&mut before).await;

    cut.send(()).unwrap();
    for mut a in [before, during] {
        assert_eq!(a.recv_close(T).await.unwrap().code, Some(1001), "then drained as before");
    }
    tokio::time::timeout(T, shutdown).await.expect("shutdown completes").unwrap();
    eventually("the listener is closed", || std::net::TcpStream::connect(addr).is_err()).await;
}
