//! The process-wide Prometheus recorder, and the errors of the telemetry
//! section (the admin server in `admin` reports its bind failure
//! here too, as it serves `telemetry.metrics.endpoint`).

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::naming::{MetricNaming, Renaming, OTELCOL_LATENCY_BUCKETS_MS, OTELCOL_MESSAGE_LATENCY};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.metrics.endpoint: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// How often histogram samples are folded into their buckets. The recorder
/// only does it when `/metrics` is rendered: with no scraper (or no metrics
/// endpoint) the samples piled up, about 370 bytes per agent session (the
/// soak benchmark, docs/BENCHMARKS.md).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A thread, not a task: the recorder may be installed before any runtime.
fn spawn_upkeep(handle: PrometheusHandle) -> Result<(), TelemetryError> {
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        })
        .map(drop)
        .map_err(|e| TelemetryError::Recorder(format!("cannot start the upkeep thread: {e}")))
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
            spawn_upkeep(handle.clone())?;
            Ok(handle)
        }
        MetricNaming::Otelcol => {
            let recorder = builder
                .set_buckets_for_metric(Matcher::Full(OTELCOL_MESSAGE_LATENCY.into()), &OTELCOL_LATENCY_BUCKETS_MS)
                .map_err(|e| err(&e))?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(Renaming::new(recorder)).map_err(|e| err(&e))?;
            spawn_upkeep(handle.clone())?;
            Ok(handle)
        }
    }
}
