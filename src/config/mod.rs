//! The gateway's configuration file.
//!
//! The shape is the one users already write for the reference extension
//! (`server`, `listener`), plus our own settings, each with a default. A full
//! collector config is accepted as written: the gateway's settings are taken
//! from `extensions.opampgateway` and the rest is skipped (`collector`).
//! Loading is three steps: parse YAML → expand `${env:VAR}` in every string
//! → deserialize with the field path tracked, so every error names
//! `server.tls.ca_file`-style paths (as the user wrote them, prefix included).

mod collector;
mod env;
mod listen;
mod model;
pub(crate) mod proxy_url;
mod size;

pub use env::expand_env;
pub use listen::{default_max_connections, open_file_limit, ListenEndpoint, ListenHost};
pub use model::*;
pub use proxy_url::{ProxyScheme, ProxyUrl};
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

    /// `field` as the user wrote it: `extensions.opampgateway.listener.endpoint`
    /// in a collector config.
    pub fn field_path(&self, field: &str) -> String {
        format!("{}{field}", self.key_prefix)
    }

    /// [`Config::validate`], with paths as the user wrote them.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate().map_err(|e| match e {
            ConfigError::Field { field, message } => ConfigError::Field { field: self.field_path(&field), message },
            other => other,
        })
    }

    /// As [`Config::load`], from text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_named(text, "<config>")
    }

    fn from_yaml_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut value: Value =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml { path: name.to_owned(), source })?;
        let collector::Unwrapped { prefix, ignored } = collector::unwrap(&mut value)?;
        let at = |e: ConfigError| match e {
            ConfigError::Field { field, message } => ConfigError::Field { field: format!("{prefix}{field}"), message },
            other => other,
        };
        if !ignored.is_empty() {
            tracing::info!(
                gateway = prefix.trim_end_matches('.'),
                ignored = %ignored.join(", "),
                "collector config: using the gateway extension; other sections mean nothing here"
            );
        }
        expand_env(&mut value, &prefix, &|k| std::env::var(k).ok())?;
        collector::check_shapes(&value).map_err(at)?;
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = collector::hint(&path, &message).unwrap_or(message);
            let field = match (prefix.as_str(), path.as_str()) {
                (p, ".") => p.trim_end_matches('.').to_owned(),
                (p, path) => format!("{p}{path}"),
            };
            ConfigError::field(if field.is_empty() { "<root>".into() } else { field }, message)
        })?;
        config.validate().map_err(at)?;
        config.key_prefix = prefix;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
