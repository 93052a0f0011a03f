//! The gateway's configuration file.
//!
//! The shape is the one users already write for the reference extension
//! (`server`, `listener`), plus our own settings, each with a default. The
//! collector wrapper `extensions: { opampgateway: {...} }` is accepted so a
//! reference config can be reused unchanged. Loading is three steps:
//! parse YAML → expand `${env:VAR}` in every string → deserialize with the
//! field path tracked, so every error names `server.tls.ca_file`-style paths.

mod env;
mod model;
mod size;

pub use env::expand_env;
pub use model::*;
pub use size::ByteSize;

use std::path::Path;

use serde_yaml_ng::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not valid YAML: {source}")]
    Yaml { path: String, source: serde_yaml_ng::Error },
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

impl ConfigError {
    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field { field: field.into(), message: message.into() }
    }
}

impl Config {
    /// Reads, expands, deserializes and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_yaml_named(&text, &path.display().to_string())
    }

    /// As [`Config::load`], from text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_named(text, "<config>")
    }

    fn from_yaml_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut value: Value =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml { path: name.to_owned(), source })?;
        let prefix = unwrap_collector_form(&mut value);
        expand_env(&mut value, &prefix, &|k| std::env::var(k).ok())?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = match (prefix.as_str(), path.as_str()) {
                (p, ".") => p.trim_end_matches('.').to_owned(),
                (p, path) => format!("{p}{path}"),
            };
            ConfigError::field(if field.is_empty() { "<root>".into() } else { field }, e.into_inner().to_string())
        })?;
        config.validate().map_err(|e| match e {
            ConfigError::Field { field, message } => ConfigError::Field { field: format!("{prefix}{field}"), message },
            other => other,
        })?;
        Ok(config)
    }
}

/// Accepts `extensions: { opampgateway: {...} }` (optionally `opampgateway/name`)
/// by replacing the document with the inner mapping. Returns the path prefix
/// so errors still point at the user's own lines.
fn unwrap_collector_form(value: &mut Value) -> String {
    let Some(map) = value.as_mapping() else { return String::new() };
    if map.len() != 1 {
        return String::new();
    }
    let Some(ext) = map.get("extensions").and_then(Value::as_mapping) else { return String::new() };
    let mut found = ext
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?, v)))
        .filter(|(k, _)| *k == "opampgateway" || k.starts_with("opampgateway/"));
    let Some((key, inner)) = found.next() else { return String::new() };
    if found.next().is_some() {
        return String::new(); // ambiguous: let deserialization report it
    }
    let prefix = format!("extensions.{key}.");
    *value = inner.clone();
    prefix
}

#[cfg(test)]
mod tests;
