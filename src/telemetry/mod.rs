//! Metrics (Prometheus text on `/metrics`) and the health endpoint.

pub mod metrics;
pub mod naming;
pub mod server;

pub use naming::MetricNaming;
pub use server::{install_recorder, install_recorder_with, serve, TelemetryError};
