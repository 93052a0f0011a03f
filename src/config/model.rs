//! The configuration schema. Every section denies unknown keys, so a typo is
//! an error with its path instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, ConfigError};
use crate::policy::PoliciesConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The upstream OpAMP server.
    pub server: ServerConfig,
    /// Where agents connect.
    #[serde(default)]
    pub listener: ListenerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub policies: PoliciesConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `ws://` or `wss://` URL of the upstream OpAMP server.
    pub endpoint: String,
    /// Headers sent when dialing each upstream link (e.g. Authorization).
    pub headers: BTreeMap<String, HeaderValues>,
    /// Upstream links in the pool.
    pub connections: usize,
    pub tls: Option<ClientTlsConfig>,
    /// How long an agent's connect handshake may wait for the server.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// When a link dies and no other link is up (e.g. the server restarted),
    /// how long its agents wait for one to come back before being closed
    /// with 1013 (try again later).
    #[serde(with = "humantime_serde")]
    pub failover_wait: Duration,
    pub reconnect: BackoffConfig,
    /// Ping interval on each link; a link silent for two intervals is dead.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A write to the server that takes longer than this kills the link.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Frames queued per link before agents are back-pressured.
    pub queue_size: usize,
    /// Largest message accepted from the server.
    pub max_message_size: ByteSize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            connections: 3,
            tls: None,
            auth_timeout: Duration::from_secs(30),
            failover_wait: Duration::from_secs(5),
            reconnect: BackoffConfig::default(),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            queue_size: 4096,
            max_message_size: ByteSize::mib(64),
        }
    }
}

/// A header value: one string, or a list for repeated headers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let s: &[String] = match self {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(v) => v,
        };
        s.iter().map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    pub multiplier: f64,
    /// Fraction of each delay randomised (0.2 = ±20 %), so links dropped
    /// together do not redial together.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM bundle of CAs to trust instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For testing only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Name to verify instead of the endpoint's host.
    pub server_name_override: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// `host:port` to listen on.
    pub endpoint: String,
    /// Only this path is served; unset serves every path (as the reference does).
    pub path: Option<String>,
    pub tls: Option<ServerTlsConfig>,
    /// Largest message accepted from an agent (spec recommendation: 64 MiB).
    pub max_message_size: ByteSize,
    /// Ping interval per agent; an agent silent for two intervals is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A write to an agent that takes longer than this closes the agent.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Server→agent messages queued per agent; a full queue closes that agent.
    pub queue_size: usize,
    /// `Retry-After` sent with 503 when no upstream link is connected.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How long SIGTERM waits for agents to be closed before exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Agents that poll with plain HTTP `POST`s.
    pub http: HttpTransportConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTransportConfig {
    pub enabled: bool,
    /// How long a poll waits for the server's reply before an empty one.
    #[serde(with = "humantime_serde")]
    pub response_wait: Duration,
    /// An agent that has not polled for this long is reported gone.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The connect handshake is re-run at least this often, so a revoked
    /// credential stops working within this time.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Server messages kept per agent between polls.
    pub queue_size: usize,
}

impl Default for HttpTransportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            response_wait: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(120),
            auth_cache_ttl: Duration::from_secs(60),
            queue_size: 64,
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:4320".into(),
            path: None,
            tls: None,
            max_message_size: ByteSize::mib(64),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            queue_size: 64,
            retry_after: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            http: HttpTransportConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, agents must present a certificate signed by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` serving `/metrics` (Prometheus) and `/healthz`; unset disables.
    pub endpoint: Option<String>,
}

impl Config {
    /// Checks what the types cannot. Paths are relative to the document root.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.endpoint.is_empty() {
            return Err(ConfigError::field(
                "server.endpoint",
                "required; expected a ws:// or wss:// URL such as wss://opamp.example.com/v1/opamp",
            ));
        }
        self.server_uri()?;
        if !(1..=64).contains(&s.connections) {
            return Err(ConfigError::field(
                "server.connections",
                format!("must be between 1 and 64, got {}", s.connections),
            ));
        }
        if s.auth_timeout.is_zero() {
            return Err(ConfigError::field("server.auth_timeout", "must be greater than 0, e.g. 30s"));
        }
        let b = &s.reconnect;
        if b.initial_interval.is_zero() || b.max_interval < b.initial_interval {
            return Err(ConfigError::field("server.reconnect", "expected 0 < initial_interval <= max_interval"));
        }
        if b.multiplier.is_nan() || b.multiplier < 1.0 {
            return Err(ConfigError::field("server.reconnect.multiplier", "must be >= 1.0"));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(ConfigError::field("server.reconnect.jitter", "must be a fraction between 0 and 1"));
        }
        for (name, field) in [(s.keepalive, "server.keepalive"), (s.write_timeout, "server.write_timeout")] {
            if name.is_zero() {
                return Err(ConfigError::field(field, "must be greater than 0"));
            }
        }
        if s.queue_size == 0 {
            return Err(ConfigError::field("server.queue_size", "must be at least 1"));
        }
        if let Some(tls) = &s.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::field("server.tls", "cert_file and key_file must be given together"));
            }
        }
        for (name, values) in &s.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::field(format!("server.headers.{name}"), "not a valid HTTP header name"));
            }
            if values.iter().any(|v| http::HeaderValue::from_str(v).is_err()) {
                return Err(ConfigError::field(format!("server.headers.{name}"), "value must be visible ASCII text"));
            }
        }
        let l = &self.listener;
        self.listener_addr()?;
        if let Some(p) = &l.path {
            if !p.starts_with('/') {
                return Err(ConfigError::field(
                    "listener.path",
                    format!("must start with '/', e.g. /v1/opamp; got {p:?}"),
                ));
            }
        }
        if l.queue_size == 0 {
            return Err(ConfigError::field("listener.queue_size", "must be at least 1"));
        }
        if l.http.queue_size == 0 {
            return Err(ConfigError::field("listener.http.queue_size", "must be at least 1"));
        }
        if l.http.idle_timeout.is_zero() {
            return Err(ConfigError::field("listener.http.idle_timeout", "must be greater than 0, e.g. 2m"));
        }
        for (d, field) in [(l.keepalive, "listener.keepalive"), (l.write_timeout, "listener.write_timeout")] {
            if d.is_zero() {
                return Err(ConfigError::field(field, "must be greater than 0"));
            }
        }
        if let Some(ep) = &self.telemetry.metrics.endpoint {
            ep.parse::<SocketAddr>().map_err(|_| {
                ConfigError::field(
                    "telemetry.metrics.endpoint",
                    format!("expected host:port such as 127.0.0.1:8888, got {ep:?}"),
                )
            })?;
        }
        Ok(())
    }

    /// The upstream endpoint, parsed.
    pub fn server_uri(&self) -> Result<http::Uri, ConfigError> {
        let e = &self.server.endpoint;
        let uri: http::Uri = e.parse().map_err(|_| {
            ConfigError::field(
                "server.endpoint",
                format!("not a URL: {e:?}; expected ws://host:port/path or wss://..."),
            )
        })?;
        match uri.scheme_str() {
            Some("ws" | "wss") if uri.host().is_some() => Ok(uri),
            _ => Err(ConfigError::field(
                "server.endpoint",
                format!("expected a ws:// or wss:// URL with a host, got {e:?}"),
            )),
        }
    }

    pub fn listener_addr(&self) -> Result<SocketAddr, ConfigError> {
        let e = &self.listener.endpoint;
        e.parse().map_err(|_| {
            ConfigError::field("listener.endpoint", format!("expected ip:port such as 0.0.0.0:4320, got {e:?}"))
        })
    }
}
