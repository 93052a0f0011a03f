//! What a test binary needs to read what the gateway logs and counts: a
//! process-wide log capture and Prometheus recorder, installed once (both are
//! global, so every test in the binary shares them; match on names unique to
//! the test).
//!
//! Included with `#[path = ".../support/observe.rs"] mod observe;`.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) struct Observed {
    logs: Capture,
    pub metrics: PrometheusHandle,
}

impl Observed {
    /// Captured log lines mentioning every one of `words`.
    pub(crate) fn log_lines(&self, words: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.logs.0.lock()).into_owned();
        text.lines().filter(|l| words.iter().all(|w| l.contains(w))).map(str::to_owned).collect()
    }
}

/// Installs the capture (with the `tracing` env-filter `filter`) and the
/// recorder on first use; later calls get the same, whatever their filter.
pub(crate) fn install(filter: &str) -> &'static Observed {
    static G: OnceLock<Observed> = OnceLock::new();
    G.get_or_init(|| {
        let logs = Capture::default();
        let writer = logs.clone();
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(move || writer.clone()).init();
        Observed { logs, metrics: opamp_gateway::telemetry::install_recorder().expect("recorder installs once") }
    })
}
