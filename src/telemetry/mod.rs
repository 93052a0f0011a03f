//! Metrics (Prometheus text on `/metrics`) and the health endpoints.
//!
//! - [`metrics`]: every metric name, in one place.
//! - [`naming`]: `telemetry.metrics.naming: otelcol`, a recorder layer that
//!   exports the reference's four instruments under the collector's names.
//! - [`server`]: `/metrics`, `/healthz` and `/readyz`.

pub mod metrics;
pub mod naming;
pub mod server;

pub use naming::MetricNaming;
pub use server::{install_recorder, install_recorder_with, serve, TelemetryError};
