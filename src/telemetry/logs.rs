//! `telemetry.logs`: the log format and level, and the process-wide
//! subscriber that writes them to stderr.
//!
//! ```yaml
//! telemetry:
//!   logs:
//!     format: text   # or json: one object per line
//!     level: info    # or a filter: info,opamp_gateway::relay=debug
//! ```
//!
//! `OPAMP_GATEWAY_LOG`, then `RUST_LOG`, override `level` when set.
//!
//! JSON lines have stable keys: `timestamp` (RFC 3339, UTC), `level`
//! (`ERROR`..`TRACE`), `message`, `target`, then the event's own fields
//! (`agent`, `link`, `policy`, `reason`, ...) and those of the spans it
//! happened in, flat. Written by hand rather than with tracing-subscriber's
//! `json` feature, whose layout nests fields under `fields` and `spans`.

use std::fmt;
use std::io::Write;

use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `telemetry.logs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or an
    /// `EnvFilter` directive list. Unset: `info`.
    #[serde(deserialize_with = "filter")]
    pub level: Option<String>,
}

/// `telemetry.logs.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Accepts what `EnvFilter` parses where every directive ends in a level,
/// so a typo fails `check`: a bare word would otherwise be a target name
/// (`level: infoo` would log nothing but target `infoo`).
fn filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let Some(level) = Option::<String>::deserialize(d)? else { return Ok(None) };
    let ends_in_level = |directive: &str| {
        let l = directive.rsplit_once('=').map_or(directive, |(_, l)| l).trim();
        LEVELS.iter().any(|name| name.eq_ignore_ascii_case(l))
    };
    match EnvFilter::builder().parse(&level) {
        Ok(_) if !level.trim().is_empty() && level.split(',').all(ends_in_level) => Ok(Some(level)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a level (error, warn, info, debug, trace) or a filter such as \
             info,opamp_gateway::relay=debug, got {level:?}"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("installing the log subscriber: {0}")]
pub struct LogsError(String);

/// Installs the process-wide subscriber: `OPAMP_GATEWAY_LOG`, else
/// `RUST_LOG`, else `config.level`, else `default_level` decides what is
/// written; `config.format` how.
pub fn init(config: &LogsConfig, default_level: &str) -> Result<(), LogsError> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("OPAMP_GATEWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(config.level.as_deref().unwrap_or(default_level)));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter_fn(never_secret)),
            )
            .try_init(),
        LogFormat::Json => registry.with(JsonLayer::stderr().with_filter(filter_fn(never_secret))).try_init(),
    };
    result.map_err(|e| LogsError(e.to_string()))
}

/// Dependencies' events that print headers or payloads verbatim
/// (credentials included), written at no level, whatever `level` or
/// `RUST_LOG` ask: `(target prefix, most verbose level still written)`.
/// tests/ops_kit.rs runs real traffic at trace level and fails on any
/// secret it finds.
const HEADER_DUMPS: &[(&str, Level)] = &[
    // trace: "Request: GET ... authorization: ..." on every link dial, and
    // "Sending frame"/"Received frame" with each payload, the connect
    // handshake's agent headers among them.
    ("tungstenite::", Level::DEBUG),
];

fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    !HEADER_DUMPS.iter().any(|(target, max)| meta.target().starts_with(target) && meta.level() > max)
}

/// Where finished lines go: stderr, or a buffer in the unit tests.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Writes each event as one JSON object, one line, in one call.
struct JsonLayer {
    write: Sink,
}

impl JsonLayer {
    fn stderr() -> Self {
        // One write per line, so concurrent events never interleave.
        Self { write: Box::new(|line| drop(std::io::stderr().lock().write_all(line))) }
    }
}

/// A span's fields, kept in its extensions for the events inside it.
struct SpanFields(Map<String, Value>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLayer {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields(Map::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
            let mut fields = Fields(std::mem::take(map));
            values.record(&mut fields);
            *map = fields.0;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string().into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("message".into(), Value::String(String::new()));
        line.insert("target".into(), meta.target().into());
        // Outer spans first, so an inner span's (or the event's) field wins.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(map)) = span.extensions().get::<SpanFields>() {
                    line.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        // Records from the `log` crate carry their real target as a field.
        if let Some(Value::String(target)) = fields.0.remove("log.target") {
            line.insert("target".into(), target.into());
        }
        fields.0.retain(|k, _| !k.starts_with("log."));
        line.extend(fields.0);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        (self.write)(text.as_bytes());
    }
}

/// Collects fields as JSON values: numbers and booleans as such, the rest
/// as the text `Display`/`Debug` gives.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LogsConfig, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn format_and_level_parse_and_typos_are_refused() {
        let c = parse("format: json\nlevel: info,opamp_gateway::relay=debug").unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.level.as_deref(), Some("info,opamp_gateway::relay=debug"));
        let c = parse("{}").unwrap();
        assert_eq!((c.format, c.level), (LogFormat::Text, None));
        let e = parse("format: xml").unwrap_err();
        assert!(e.contains("unknown variant `xml`") && e.contains("`text`") && e.contains("`json`"), "{e}");
        for typo in ["loud", "infoo", "info,opamp_gateway", "opamp_gateway=loud", "a=b=c"] {
            assert!(parse(&format!("level: {typo}")).unwrap_err().contains("expected a level"), "{typo}");
        }
        assert_eq!(parse("level: WARN").unwrap().level.as_deref(), Some("WARN"));
        assert!(parse("level: \"\"").unwrap_err().contains("expected a level"));
        assert!(parse("colour: true").is_err());
    }

    #[test]
    fn json_lines_have_the_stable_keys_flat() {
        let out = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = JsonLayer { write: Box::new(move |line| sink.lock().extend_from_slice(line)) };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!("session", link = 2, agent = 1u64);
            let _g = span.enter();
            tracing::warn!(agent = 7u64, policy = "p", error = %"bad", "agent message refused");
            tracing::info!("plain");
        });
        let out = String::from_utf8(out.lock().clone()).unwrap();
        let lines: Vec<Map<String, Value>> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first = &lines[0];
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        for k in ["timestamp", "level", "message", "target", "agent", "link", "policy", "error"] {
            assert!(keys.contains(&k), "{k} missing: {out}");
        }
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "agent message refused");
        assert_eq!(first["target"], module_path!());
        // The event's own field wins over its span's.
        assert_eq!(
            (&first["agent"], &first["link"], &first["policy"]),
            (&Value::from(7), &Value::from(2), &Value::from("p"))
        );
        assert!(humantime::parse_rfc3339(first["timestamp"].as_str().unwrap()).is_ok(), "{out}");
        assert_eq!((&lines[1]["message"], &lines[1]["link"]), (&Value::from("plain"), &Value::from(2)));
    }
}
