//! A full collector config, accepted as written: the gateway's settings are
//! `extensions.opampgateway` (or `opampgateway/<name>`); the collector's other
//! sections and extensions mean nothing here and are skipped (the loader
//! names them in one info line). Also the hints for collector HTTP server
//! (confighttp) keys that have no counterpart under `listener`.

use serde_yaml_ng::{Mapping, Value};

use super::ConfigError;

/// The top-level sections a collector config may have.
const SECTIONS: &[&str] = &["extensions", "service", "receivers", "exporters", "processors", "connectors"];

/// The gateway's part of a config file.
pub(super) struct Unwrapped {
    /// Where the gateway's keys sit: `extensions.opampgateway.`, or empty
    /// when the file is the gateway's own form.
    pub prefix: String,
    /// What was skipped, in file order: `service`, `extensions.health_check`...
    pub ignored: Vec<String>,
}

/// Replaces a collector config by its `opampgateway` extension's mapping.
/// A document without a top-level `extensions` is the gateway's own form and
/// is left as it is.
pub(super) fn unwrap(value: &mut Value) -> Result<Unwrapped, ConfigError> {
    let own = Unwrapped { prefix: String::new(), ignored: Vec::new() };
    let Some(root) = value.as_mapping().filter(|m| m.contains_key("extensions")) else { return Ok(own) };
    let mut ignored = Vec::new();
    for key in root.keys().map(key_name) {
        if !SECTIONS.contains(&key.as_str()) {
            return Err(ConfigError::field(
                key,
                "not a collector section; in a collector config (one with `extensions:`) the gateway's \
                 settings go under extensions.opampgateway",
            ));
        }
        if key != "extensions" {
            ignored.push(key);
        }
    }
    let empty = Mapping::new();
    let extensions = match &root["extensions"] {
        Value::Mapping(m) => m,
        Value::Null => &empty,
        _ => {
            return Err(ConfigError::field("extensions", "expected a mapping of extensions, one of them opampgateway"))
        }
    };
    let mut ours = Vec::new();
    for (key, inner) in extensions {
        let name = key_name(key);
        if name == "opampgateway" || name.starts_with("opampgateway/") {
            ours.push((name, inner));
        } else {
            ignored.push(format!("extensions.{name}"));
        }
    }
    let (name, inner) = match ours.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ConfigError::field(
                "extensions",
                "no opampgateway extension; expected extensions.opampgateway (or opampgateway/<name>) \
                 holding the server and listener settings",
            ))
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ConfigError::field(
                "extensions",
                format!(
                    "several gateway extensions ({}); one process runs one gateway: keep one here, \
                     and run another process with its own file for each of the others",
                    names.join(", ")
                ),
            ));
        }
    };
    // `opampgateway:` with nothing under it: let the missing `server` be reported.
    *value = if inner.is_null() { Value::Mapping(Mapping::new()) } else { inner.clone() };
    Ok(Unwrapped { prefix: format!("extensions.{name}."), ignored })
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).map(|s| s.trim().to_owned()).unwrap_or_default(),
    }
}

/// collector HTTP server (confighttp) keys with no counterpart under
/// `listener`, and what to use instead.
const LISTENER_HINTS: &[(&str, &str)] = &[
    ("max_request_body_size", "use listener.max_message_size (it bounds WebSocket messages and HTTP bodies)"),
    (
        "auth",
        "authentication is the upstream server's decision (each agent's headers are forwarded to it in the \
         connect handshake); not supported",
    ),
    ("cors", "CORS is for browsers and OpAMP agents are not browsers; not supported"),
    ("include_metadata", "agents' request headers always reach the server in the connect handshake; remove it"),
    (
        "include_tls_metadata",
        "not supported; to admit only agents with a client certificate use listener.tls.client_ca_file",
    ),
    ("response_headers", "not supported; the server's answer to each connect handshake may set response headers"),
    (
        "compression_algorithms",
        "not configurable: gzip bodies from HTTP agents are always accepted; WebSocket messages are not compressed",
    ),
    (
        "read_timeout",
        "not supported; listener.header_timeout (alias read_header_timeout) bounds the request headers and \
         listener.max_message_size the body",
    ),
    ("middlewares", "not supported; a Wasm policy (policies.directory) can act on agent messages"),
];

/// A better message for an error at `path` (relative to the gateway's
/// root) when serde reported a collector key it does not know.
pub(super) fn hint(path: &str, message: &str) -> Option<String> {
    let key = path.strip_prefix("listener.")?;
    if !message.starts_with("unknown field") {
        return None;
    }
    let (_, hint) = LISTENER_HINTS.iter().find(|(k, _)| *k == key)?;
    Some(format!("`{key}` is a collector HTTP server setting with no counterpart here: {hint}"))
}

/// Collector shapes that would otherwise fail with a puzzling type error.
/// Paths are relative to the gateway's root.
pub(super) fn check_shapes(value: &Value) -> Result<(), ConfigError> {
    if value.get("listener").and_then(|l| l.get("keepalive")).is_some_and(Value::is_mapping) {
        return Err(ConfigError::field(
            "listener.keepalive",
            "here this is the WebSocket ping interval, a duration such as 30s; the collector's \
             keepalive.idle_timeout is listener.idle_timeout (HTTP keep-alive cannot be turned off)",
        ));
    }
    Ok(())
}
