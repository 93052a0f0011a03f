//! `telemetry.metrics.naming`: the names the reference's four instruments
//! are exported under.
//!
//! `opampgateway` (default) keeps ours. `otelcol` renames them to what a
//! collector running the reference extension shows on its own Prometheus
//! endpoint (`service.telemetry.metrics`, default reader: `otelcol_` prefix,
//! `.` → `_`, no unit or `_total` suffixes), with only the `direction` label
//! and latency in whole milliseconds, so its dashboards work unchanged. The
//! derivation is in docs/compatibility.md. Every other metric keeps its
//! `opampgateway_*` name in both modes.
//!
//! Call sites stay unchanged: `Renaming` sits between the `metrics` facade
//! and the Prometheus recorder.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use serde::Deserialize;

use super::metrics as m;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricNaming {
    /// `opampgateway_connections`, `opampgateway_messages_total`, … (seconds).
    #[default]
    Opampgateway,
    /// `otelcol_opampgateway_connections`, `otelcol_opampgateway_messages`, …
    /// (milliseconds), as the collector exports the reference's instruments.
    Otelcol,
}

/// Up-down counter `otelcol_opampgateway.connections`, unit `{connections}`.
pub const OTELCOL_CONNECTIONS: &str = "otelcol_opampgateway_connections";
/// Counter `otelcol_opampgateway.messages`, unit `{messages}`.
pub const OTELCOL_MESSAGES: &str = "otelcol_opampgateway_messages";
/// Counter `otelcol_opampgateway.messages.bytes`, unit `B`.
pub const OTELCOL_MESSAGE_BYTES: &str = "otelcol_opampgateway_messages_bytes";
/// Histogram `otelcol_opampgateway.messages.latency`, unit `ms`.
pub const OTELCOL_MESSAGE_LATENCY: &str = "otelcol_opampgateway_messages_latency";
/// The reference's explicit bucket boundaries for the latency, in ms.
pub const OTELCOL_LATENCY_BUCKETS_MS: [f64; 19] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0, 25000.0,
    50000.0, 75000.0, 100000.0,
];

/// The one label the reference puts on its instruments.
const DIRECTION: &str = "direction";

/// The collector name for one of ours, if it is a reference instrument.
fn otelcol_name(ours: &str) -> Option<&'static str> {
    match ours {
        m::CONNECTIONS => Some(OTELCOL_CONNECTIONS),
        m::MESSAGES => Some(OTELCOL_MESSAGES),
        m::MESSAGE_BYTES => Some(OTELCOL_MESSAGE_BYTES),
        m::MESSAGE_LATENCY => Some(OTELCOL_MESSAGE_LATENCY),
        _ => None,
    }
}

/// A recorder that exports the reference instruments under their collector
/// names and passes everything else through.
#[derive(Debug)]
pub(crate) struct Renaming<R> {
    inner: R,
}

impl<R> Renaming<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner }
    }

    /// The renamed key, keeping only `direction`. Dropping our extra labels
    /// (`transport`) folds their series into one: the registry hands every
    /// caller the same handle for the same key, so gauge increments add up.
    fn rename(key: &Key) -> Option<Key> {
        let name = otelcol_name(key.name())?;
        let labels: Vec<Label> = key.labels().filter(|l| l.key() == DIRECTION).cloned().collect();
        Some(Key::from_parts(name, labels))
    }

    fn rename_name(name: KeyName) -> KeyName {
        otelcol_name(name.as_str()).map(KeyName::from_const_str).unwrap_or(name)
    }
}

impl<R: Recorder> Recorder for Renaming<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(Self::rename_name(key), unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(Self::rename_name(key), unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let unit = if key.as_str() == m::MESSAGE_LATENCY { Some(Unit::Milliseconds) } else { unit };
        self.inner.describe_histogram(Self::rename_name(key), unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match Self::rename(key) {
            Some(k) => self.inner.register_counter(&k, metadata),
            None => self.inner.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match Self::rename(key) {
            Some(k) => self.inner.register_gauge(&k, metadata),
            None => self.inner.register_gauge(key, metadata),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match Self::rename(key) {
            // Our only renamed histogram is the latency, recorded in seconds.
            Some(k) => Histogram::from_arc(Arc::new(WholeMillis(self.inner.register_histogram(&k, metadata)))),
            None => self.inner.register_histogram(key, metadata),
        }
    }
}

/// Seconds in, whole milliseconds out: the reference records
/// `Duration.Milliseconds()`, which truncates, so a sub-millisecond relay
/// lands in its `le="0"` bucket as it would there.
struct WholeMillis(Histogram);

impl HistogramFn for WholeMillis {
    fn record(&self, seconds: f64) {
        self.0.record((seconds * 1000.0).floor());
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    use super::*;

    /// Everything recorded under `f`, as (kind, name, labels, value).
    fn record(f: impl FnOnce()) -> Vec<(MetricKind, String, Vec<String>, DebugValue)> {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let renaming = Renaming::new(debugging);
        metrics::with_local_recorder(&renaming, f);
        let mut out: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(ck, _, _, v)| {
                let (kind, key) = ck.into_parts();
                let labels = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                (kind, key.name().to_owned(), labels, v)
            })
            .collect();
        out.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        out
    }

    #[test]
    fn reference_instruments_get_collector_names_and_only_direction() {
        let got = record(|| {
            metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "websocket").increment(2.0);
            metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "http").increment(1.0);
            metrics::counter!(m::MESSAGES, "direction" => m::UPSTREAM).increment(3);
            metrics::counter!(m::MESSAGE_BYTES, "direction" => m::UPSTREAM).increment(10);
        });
        let names: Vec<_> = got.iter().map(|(_, n, l, _)| (n.as_str(), l.clone())).collect();
        assert_eq!(
            names,
            [
                (OTELCOL_CONNECTIONS, vec!["direction=downstream".to_owned()]),
                (OTELCOL_MESSAGES, vec!["direction=upstream".to_owned()]),
                (OTELCOL_MESSAGE_BYTES, vec!["direction=upstream".to_owned()]),
            ]
        );
        // Both transports fold into one series.
        assert!(matches!(got[0].3, DebugValue::Gauge(v) if v.into_inner() == 3.0), "{:?}", got[0].3);
    }

    #[test]
    fn latency_is_recorded_in_whole_milliseconds() {
        let got = record(|| {
            let h = metrics::histogram!(m::MESSAGE_LATENCY, "direction" => m::DOWNSTREAM);
            h.record(0.000_4);
            h.record(0.012_7);
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, OTELCOL_MESSAGE_LATENCY);
        match &got[0].3 {
            DebugValue::Histogram(v) => {
                assert_eq!(v.iter().map(|x| x.into_inner()).collect::<Vec<_>>(), [0.0, 12.0])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_metrics_pass_through() {
        let got = record(|| {
            metrics::counter!(m::HANDSHAKES, "outcome" => "accepted", "status" => "101").increment(1);
        });
        assert_eq!(got[0].1, m::HANDSHAKES);
        assert_eq!(got[0].2, ["outcome=accepted", "status=101"]);
    }
}
