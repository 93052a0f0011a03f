//! `/metrics` (Prometheus text) and `/healthz` on their own port, so
//! scraping never competes with agents and can be firewalled separately.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics as m;
use super::naming::{MetricNaming, Renaming, OTELCOL_LATENCY_BUCKETS_MS, OTELCOL_MESSAGE_LATENCY};
use crate::policy::health::PolicyHealth;
use crate::relay::Links;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.metrics.endpoint: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// Installs the process-wide Prometheus recorder (once per process) with
/// today's names.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    install_recorder_with(MetricNaming::default())
}

/// Installs the process-wide Prometheus recorder (once per process), naming
/// the reference's instruments as `naming` says (see [`super::naming`]).
pub fn install_recorder_with(naming: MetricNaming) -> Result<PrometheusHandle, TelemetryError> {
    let err = |e: &dyn std::fmt::Display| TelemetryError::Recorder(e.to_string());
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0,
    ];
    let builder = PrometheusBuilder::new().set_buckets(&buckets).map_err(|e| err(&e))?;
    match naming {
        MetricNaming::Opampgateway => {
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| err(&e))?;
            Ok(handle)
        }
        MetricNaming::Otelcol => {
            let recorder = builder
                .set_buckets_for_metric(Matcher::Full(OTELCOL_MESSAGE_LATENCY.into()), &OTELCOL_LATENCY_BUCKETS_MS)
                .map_err(|e| err(&e))?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(Renaming::new(recorder)).map_err(|e| err(&e))?;
            Ok(handle)
        }
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown`. Health is 200 when at
/// least one upstream link is connected, 503 otherwise. `/readyz` also
/// needs the policy set ready (see [`PolicyHealth`]).
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    links: Arc<Links>,
    policies: Arc<PolicyHealth>,
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
            let policies = policies.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = match req.uri().path() {
                        "/metrics" => {
                            publish_link_loads(&links);
                            (StatusCode::OK, handle.render())
                        }
                        "/healthz" => {
                            let up = links.connected();
                            let status = if up > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            (status, format!("{up}/{} upstream links connected\n", links.len()))
                        }
                        "/readyz" => {
                            let up = links.connected();
                            let (ok, text) = match policies.readiness() {
                                Ok(t) => (up > 0, t),
                                Err(t) => (false, t),
                            };
                            let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            (status, format!("{up}/{} upstream links connected\n{text}\n", links.len()))
                        }
                        _ => (StatusCode::NOT_FOUND, "try /metrics or /healthz\n".to_owned()),
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

/// Per-link load gauges, refreshed at scrape time (cheaper than on every
/// connect and disconnect).
fn publish_link_loads(links: &Links) {
    for (i, load) in links.loads().into_iter().enumerate() {
        metrics::gauge!(m::LINK_AGENTS, "link" => format!("upstream-{i}")).set(f64::from(load));
    }
}
