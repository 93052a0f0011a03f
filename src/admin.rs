//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz` on their own port, so scraping never competes with agents and
//! can be firewalled separately.
//!
//! Its own top-level module because it reads the relay's links and the
//! policies' health: kept out of [`crate::telemetry`], which those modules
//! record into, so the module graph stays acyclic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::policy::health::PolicyHealth;
use crate::relay::{Budget, Links};
use crate::telemetry::metrics as m;
use crate::telemetry::TelemetryError;

/// Serves `/metrics` and the health endpoints until `shutdown`:
/// - `/livez`: 200 while this server answers, whatever the upstream's state
///   (a liveness probe must not restart gateways during a server outage);
/// - `/healthz`: 200 when at least one upstream link is connected;
/// - `/readyz`: as `/healthz`, and not `draining` (cancelled once shutdown
///   begins), and the policy set ready (see [`PolicyHealth`]).
pub(crate) async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    links: Arc<Links>,
    budget: Arc<Budget>,
    policies: Arc<PolicyHealth>,
    draining: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), TelemetryError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| TelemetryError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let handle = handle.clone();
            let links = links.clone();
            let budget = budget.clone();
            let policies = policies.clone();
            let draining = draining.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = match req.uri().path() {
                        "/metrics" => {
                            publish_link_loads(&links);
                            metrics::gauge!(m::BUFFERED_BYTES).set(budget.in_flight() as f64);
                            let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
                            metrics::gauge!(m::RUNTIME_ALIVE_TASKS).set(tasks as f64);
                            (StatusCode::OK, handle.render())
                        }
                        "/healthz" => {
                            let (up, text) = link_health(&links);
                            let status = if up > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            (status, text)
                        }
                        "/livez" => (StatusCode::OK, "alive\n".to_owned()),
                        "/readyz" => {
                            let (up, links) = link_health(&links);
                            let (ok, text) = match policies.readiness() {
                                Ok(t) => (up > 0, t),
                                Err(t) => (false, t),
                            };
                            let drain = draining.is_cancelled();
                            let status = if ok && !drain { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            let drain = if drain { "draining: shutting down\n" } else { "" };
                            (status, format!("{drain}{links}{text}\n"))
                        }
                        _ => (StatusCode::NOT_FOUND, "try /metrics, /livez, /readyz or /healthz\n".to_owned()),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(body.0)
                                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body.1)))
                                .expect("valid response"),
                        )
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Ok((local, task))
}

/// The default upstream's connected links (what health is judged by: every
/// agent without a route goes there), and a line per upstream.
fn link_health(links: &Links) -> (usize, String) {
    let mut text = String::new();
    let mut default_up = 0;
    for (i, upstream) in links.upstreams().iter().enumerate() {
        let range = upstream.range();
        let up = range.clone().filter(|&l| links.get(l as u32).is_some_and(|l| l.state().connected)).count();
        if i == 0 {
            default_up = up;
            text.push_str(&format!("{up}/{} upstream links connected\n", range.len()));
        } else {
            text.push_str(&format!("upstream {}: {up}/{} links connected\n", upstream.name, range.len()));
        }
    }
    (default_up, text)
}

/// Per-link load gauges, refreshed at scrape time (cheaper than on every
/// connect and disconnect).
fn publish_link_loads(links: &Links) {
    for (link, load) in links.iter().zip(links.loads()) {
        let upstream = link.upstream_name().to_string();
        metrics::gauge!(m::LINK_AGENTS, "upstream" => upstream, "link" => link.id()).set(f64::from(load));
    }
    for (upstream, load) in links.upstreams().iter().zip(links.upstream_loads()) {
        metrics::gauge!(m::UPSTREAM_AGENTS, "upstream" => upstream.name.to_string()).set(f64::from(load));
    }
}
