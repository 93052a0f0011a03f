//! Metrics (names, naming modes, the recorder) and logs. A leaf: it depends on no
//! other module of the crate, so every layer can record into it. The HTTP
//! endpoints that serve them live in `admin`.
//!
//! - [`capture`]: `telemetry.capture`, relayed messages recorded to a file
//!   for `policy replay`.
//! - [`logs`]: `telemetry.logs`, the log format and level (text or JSON).
//! - [`metrics`]: every metric name, in one place.
//! - [`naming`]: `telemetry.metrics.naming: otelcol`, a recorder layer that
//!   exports the reference's four instruments under the collector's names.
//! - [`recorder`]: installs the process-wide Prometheus recorder.

pub mod capture;
pub mod logs;
pub mod metrics;
pub mod naming;
pub mod recorder;

pub use logs::{LogFormat, LogsConfig};
pub use naming::MetricNaming;
pub use recorder::{install_recorder, install_recorder_with, TelemetryError};
