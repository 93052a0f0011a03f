//! Metrics (Prometheus text on `/metrics`) and the health endpoint.

pub mod metrics;
pub mod server;

pub use server::{install_recorder, serve, TelemetryError};
