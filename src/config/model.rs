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
    /// The upstream OpAMP server: the `default` upstream, where agents go
    /// unless a policy routes them elsewhere.
    pub server: ServerConfig,
    /// More upstreams, by name, that an `assign` policy may route agents
    /// to. Same keys as `server`; the agent-wide ones (`auth_timeout`,
    /// `failover_wait`, `failover_queue`, `rebalance`) are read from
    /// `server` only.
    #[serde(default)]
    pub upstreams: BTreeMap<String, ServerConfig>,
    /// Where agents connect.
    #[serde(default)]
    pub listener: ListenerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// The binary's async runtime (an embedding application builds its own).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Where these settings sit in the file: `extensions.opampgateway.` in a
    /// collector config, else empty. Prefixes errors found after loading.
    #[serde(skip)]
    pub key_prefix: String,
}

impl Config {
    /// Every default, upstream at `server_endpoint`: for a gateway built in
    /// code ([`crate::Gateway::builder`]).
    pub fn new(server_endpoint: impl Into<String>) -> Self {
        Self {
            server: ServerConfig { endpoint: server_endpoint.into(), ..ServerConfig::default() },
            upstreams: BTreeMap::new(),
            listener: ListenerConfig::default(),
            telemetry: TelemetryConfig::default(),
            policies: PoliciesConfig::default(),
            runtime: RuntimeConfig::default(),
            key_prefix: String::new(),
        }
    }
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
    /// HTTP CONNECT proxy for the links: `http://[user:password@]host:port`
    /// or `https://...`. Unset (or empty): HTTPS_PROXY/HTTP_PROXY/NO_PROXY.
    pub proxy_url: Option<String>,
    /// How long an agent's connect handshake may wait for the server.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// When a link dies and no other link is up (e.g. the server restarted),
    /// how long its agents wait for one to come back before being closed
    /// with 1013 (try again later).
    #[serde(with = "humantime_serde")]
    pub failover_wait: Duration,
    /// An agent's own messages that may wait for a link meanwhile (its
    /// socket is still read). Beyond, the oldest are dropped and counted;
    /// all agents together stay within `listener.max_buffered_bytes`.
    pub failover_queue: usize,
    pub reconnect: BackoffConfig,
    /// Ping interval on each link; a link silent for two intervals is dead.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A write to the server that takes longer than this kills the link.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Deadline for opening one link (TCP, proxy, TLS, WebSocket upgrade).
    /// Unset: `write_timeout`, at least 5s (the behaviour before this key).
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Option<Duration>,
    /// Frames queued per link before agents are back-pressured.
    pub queue_size: usize,
    /// Largest message accepted from the server.
    pub max_message_size: ByteSize,
    pub rebalance: RebalanceConfig,
    /// Retire each link after this long (plus up to 10% jitter), one at a
    /// time: its agents move first, then it redials, so a clustered server's
    /// load balancer can place it anew. Unset: links live until lost.
    #[serde(with = "humantime_serde")]
    pub max_link_age: Option<Duration>,
}

/// `server.rebalance`: moving agents between links, without disconnecting
/// them, when link loads drift apart (e.g. after links come back).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceConfig {
    pub enabled: bool,
    /// Allowed spread between the busiest and the idlest connected link, as
    /// a fraction of the mean load per link (never less than one agent).
    pub tolerance: f64,
    /// Planned moves asked per second, gateway-wide.
    pub max_moves_per_second: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self { enabled: true, tolerance: 0.1, max_moves_per_second: 50 }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            connections: 3,
            tls: None,
            proxy_url: None,
            auth_timeout: Duration::from_secs(30),
            // A server restart (60 s, and the links' reconnect backoff of up
            // to 30 s + jitter on top) is not a fleet reconnect.
            failover_wait: Duration::from_secs(120),
            failover_queue: 64,
            reconnect: BackoffConfig::default(),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            dial_timeout: None,
            queue_size: 4096,
            max_message_size: ByteSize::mib(64),
            rebalance: RebalanceConfig::default(),
            max_link_age: None,
        }
    }
}

impl ServerConfig {
    /// Checks one upstream; `p` is its path (`server`, `upstreams.green`).
    pub(crate) fn validate(&self, p: &str) -> Result<(), ConfigError> {
        let f = |key: &str| format!("{p}.{key}");
        if self.endpoint.is_empty() {
            return Err(ConfigError::field(
                f("endpoint"),
                "required; expected a ws:// or wss:// URL such as wss://opamp.example.com/v1/opamp",
            ));
        }
        self.uri(p)?;
        if !(1..=64).contains(&self.connections) {
            return Err(ConfigError::field(
                f("connections"),
                format!("must be between 1 and 64, got {}", self.connections),
            ));
        }
        if self.auth_timeout.is_zero() {
            return Err(ConfigError::field(f("auth_timeout"), "must be greater than 0, e.g. 30s"));
        }
        let b = &self.reconnect;
        if b.initial_interval.is_zero() || b.max_interval < b.initial_interval {
            return Err(ConfigError::field(f("reconnect"), "expected 0 < initial_interval <= max_interval"));
        }
        if b.multiplier.is_nan() || b.multiplier < 1.0 {
            return Err(ConfigError::field(f("reconnect.multiplier"), "must be >= 1.0"));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(ConfigError::field(f("reconnect.jitter"), "must be a fraction between 0 and 1"));
        }
        for (d, key) in [(self.keepalive, "keepalive"), (self.write_timeout, "write_timeout")] {
            if d.is_zero() {
                return Err(ConfigError::field(f(key), "must be greater than 0"));
            }
        }
        if self.dial_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::field(f("dial_timeout"), "must be greater than 0, e.g. 10s, or unset"));
        }
        if self.failover_queue == 0 {
            return Err(ConfigError::field(f("failover_queue"), "must be at least 1 (messages per agent)"));
        }
        if self.queue_size == 0 {
            return Err(ConfigError::field(f("queue_size"), "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&self.rebalance.tolerance) {
            return Err(ConfigError::field(
                f("rebalance.tolerance"),
                format!(
                    "expected a fraction of the mean load between 0 and 10, e.g. 0.1, got {}",
                    self.rebalance.tolerance
                ),
            ));
        }
        if self.rebalance.max_moves_per_second == 0 {
            return Err(ConfigError::field(
                f("rebalance.max_moves_per_second"),
                format!("must be at least 1 (set {p}.rebalance.enabled: false to turn rebalancing off)"),
            ));
        }
        if let Some(age) = self.max_link_age {
            if age < Duration::from_secs(1) {
                return Err(ConfigError::field(
                    f("max_link_age"),
                    format!("must be at least 1s, e.g. 1h, or unset (off), got {age:?}"),
                ));
            }
            if self.connections < 2 {
                return Err(ConfigError::field(
                    f("max_link_age"),
                    format!("needs {p}.connections of at least 2 (a link's agents move to another one first)"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate_at(&f("tls"))?;
        }
        if let Some(proxy) = self.proxy_url.as_deref().filter(|u| !u.is_empty()) {
            super::ProxyUrl::parse(proxy).map_err(|m| ConfigError::field(f("proxy_url"), m))?;
        }
        self.parsed_headers(p)?;
        Ok(())
    }

    /// A named upstream may not set what applies to every agent: the
    /// gateway reads those keys from `server`, and silently ignoring them
    /// would surprise.
    fn only_in_server(&self, p: &str) -> Result<(), ConfigError> {
        let d = ServerConfig::default();
        let r = &self.rebalance;
        let agent_wide = [
            ("auth_timeout", self.auth_timeout != d.auth_timeout),
            ("failover_wait", self.failover_wait != d.failover_wait),
            ("failover_queue", self.failover_queue != d.failover_queue),
            (
                "rebalance",
                r.enabled != d.rebalance.enabled
                    || r.tolerance != d.rebalance.tolerance
                    || r.max_moves_per_second != d.rebalance.max_moves_per_second,
            ),
        ];
        match agent_wide.into_iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(ConfigError::field(
                format!("{p}.{key}"),
                format!("applies to every agent, whichever upstream it is on: set it as server.{key}"),
            )),
            None => Ok(()),
        }
    }

    /// `endpoint`, parsed.
    pub(crate) fn uri(&self, p: &str) -> Result<http::Uri, ConfigError> {
        let e = &self.endpoint;
        let uri: http::Uri = e.parse().map_err(|_| {
            ConfigError::field(
                format!("{p}.endpoint"),
                format!("not a URL: {e:?}; expected ws://host:port/path or wss://..."),
            )
        })?;
        match uri.scheme_str() {
            Some("ws" | "wss") if uri.host().is_some() => Ok(uri),
            _ => Err(ConfigError::field(
                format!("{p}.endpoint"),
                format!("expected a ws:// or wss:// URL with a host, got {e:?}"),
            )),
        }
    }

    /// `headers`, parsed: one pair per value, in config order.
    pub(crate) fn parsed_headers(&self, p: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
        let mut out = Vec::new();
        for (name, values) in &self.headers {
            let field = || format!("{p}.headers.{name}");
            let parsed = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::field(field(), "not a valid HTTP header name"))?;
            for v in values.iter() {
                let v = http::HeaderValue::from_str(v)
                    .map_err(|_| ConfigError::field(field(), "value must be visible ASCII text"))?;
                out.push((parsed.clone(), v));
            }
        }
        Ok(out)
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

/// `server.tls`: the collector's configtls client settings (same keys, same
/// defaults), so a reference config works unchanged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// PEM bundle of CAs to trust instead of the system trust store.
    pub ca_file: Option<PathBuf>,
    /// The same CAs inline; exclusive with `ca_file`.
    pub ca_pem: Option<String>,
    /// Trust the system's CAs in addition to `ca_file`/`ca_pem`.
    pub include_system_ca_certs_pool: bool,
    /// Client certificate (PEM) for mutual TLS; needs a key.
    pub cert_file: Option<PathBuf>,
    pub cert_pem: Option<String>,
    pub key_file: Option<PathBuf>,
    pub key_pem: Option<String>,
    /// Lowest TLS version offered; unset means "1.2".
    #[serde(deserialize_with = "tls_version")]
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version offered; unset means "1.3".
    #[serde(deserialize_with = "tls_version")]
    pub max_version: Option<TlsVersion>,
    /// Re-read the certificate, key and CA files this often (checked at the
    /// next handshake); unset or 0 never reloads.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
    /// configtls: "no TLS settings". The scheme decides whether TLS is used,
    /// so as in the reference, with `wss://` and no CA this means default
    /// TLS (system CAs, certificate checked) and the other keys are ignored.
    pub insecure: bool,
    /// Accept any server certificate. For testing only.
    pub insecure_skip_verify: bool,
    /// Name to verify instead of the endpoint's host.
    pub server_name_override: Option<String>,
    /// configtls keys with no rustls equivalent; accepted only when empty.
    pub cipher_suites: Option<serde_yaml_ng::Value>,
    pub curve_preferences: Option<serde_yaml_ng::Value>,
    pub tpm: Option<serde_yaml_ng::Value>,
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
    /// All agents' messages read and not yet written upstream, in bytes.
    /// Beyond it WebSocket agents are not read (TCP back-pressure) and HTTP
    /// polls get 503 with `Retry-After`. At least `max_message_size`.
    pub max_buffered_bytes: ByteSize,
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
    /// A request's headers must arrive within this, counted from the
    /// connection's start (after TLS) or from the first byte of a later
    /// request: silent and trickling connections are closed.
    #[serde(with = "humantime_serde", alias = "read_header_timeout")]
    pub header_timeout: Duration,
    /// HTTP keep-alive: how long a connection may wait for its next request.
    /// Not `http.idle_timeout`, which forgets a polling agent.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A TLS handshake slower than this is abandoned.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Open agent sockets at most; beyond it, 503 with `Retry-After` (plain
    /// listener) or a close (TLS). Default: the open-file limit less 1024.
    pub max_connections: usize,
    /// Sockets one source (IPv4 address, IPv6 /64) may hold that are not yet
    /// agents (no request admitted yet); beyond it, 429 with `Retry-After`.
    pub max_handshaking_per_source: usize,
    /// Connections in their TLS/HTTP phase (not yet agents) at once, over
    /// all sources (one source: at most half); more wait, unread, for a
    /// turn. Bounds what a connect storm allocates at once (request
    /// buffers, TLS state).
    pub max_handshaking: usize,
    /// Every connection starts with a PROXY protocol header (v1 or v2, from
    /// a TCP load balancer); its source address is the agent's address. A
    /// connection without a valid one within `header_timeout` is closed.
    pub proxy_protocol: bool,
    /// How long SIGTERM waits for agents to be closed, and for handshakes
    /// and HTTP polls in flight to be answered, before exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On SIGTERM, how long the listener keeps accepting agents after
    /// `/readyz` turns 503 (so load balancers stop sending new ones) before
    /// the drain starts. 0: drain at once.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Agents that poll with plain HTTP `POST`s.
    pub http: HttpTransportConfig,
    /// Connections allowed to act as a gateway below this one (several uids,
    /// forwarded handshakes). Empty: every connection is an ordinary agent.
    pub downstream_gateways: DownstreamGatewaysConfig,
    /// Request headers whose values are an agent's credentials: only an agent
    /// reconnecting with the same values (and client certificate) may take
    /// its uid over from a connection not yet known dead.
    pub credential_headers: Vec<String>,
}

/// `listener.downstream_gateways`: which connections are trusted gateways.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamGatewaysConfig {
    /// A connection the server accepted is a gateway if it matches any rule.
    pub trusted: Vec<GatewayRule>,
    /// Connect handshakes one gateway connection may have in flight.
    pub max_handshakes_in_flight: usize,
}

impl Default for DownstreamGatewaysConfig {
    fn default() -> Self {
        Self { trusted: Vec::new(), max_handshakes_in_flight: 1024 }
    }
}

impl DownstreamGatewaysConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        const F: &str = "listener.downstream_gateways";
        if self.max_handshakes_in_flight == 0 {
            return Err(ConfigError::field(format!("{F}.max_handshakes_in_flight"), "must be at least 1"));
        }
        for (i, rule) in self.trusted.iter().enumerate() {
            let at = format!("{F}.trusted[{i}]");
            match (&rule.header, &rule.client_cert_san) {
                (None, None) => {
                    return Err(ConfigError::field(
                        at,
                        "a rule needs `header: { name, value }` and/or `client_cert_san`; an empty rule would trust everyone",
                    ))
                }
                (Some(h), _) if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() => {
                    return Err(ConfigError::field(format!("{at}.header.name"), "not a valid HTTP header name"))
                }
                (Some(h), _)
                    if h.name.to_ascii_lowercase().starts_with("x-opamp-gateway-")
                        || h.name.eq_ignore_ascii_case("proxy-authorization") =>
                {
                    return Err(ConfigError::field(
                        format!("{at}.header.name"),
                        "the gateway strips this header from every request, so it can never match; use another name",
                    ))
                }
                (Some(h), _) if h.value.is_empty() => {
                    return Err(ConfigError::field(format!("{at}.header.value"), "must not be empty"))
                }
                (_, Some(san)) if san.is_empty() => {
                    return Err(ConfigError::field(format!("{at}.client_cert_san"), "must not be empty"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One way to recognise a downstream gateway; every part given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRule {
    /// A request header with exactly this value (e.g. a token only the
    /// gateways hold, which the server also saw and accepted).
    pub header: Option<HeaderRule>,
    /// A DNS name (or IP) in the subject alternative names of the client
    /// certificate it presented (needs `listener.tls.client_ca_file`).
    pub client_cert_san: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub name: String,
    pub value: String,
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
            max_buffered_bytes: ByteSize::mib(256),
            keepalive: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            queue_size: 64,
            retry_after: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: super::default_max_connections(),
            max_handshaking_per_source: 1024,
            max_handshaking: 64,
            proxy_protocol: false,
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            http: HttpTransportConfig::default(),
            downstream_gateways: DownstreamGatewaysConfig::default(),
            credential_headers: crate::relay::identity::CREDENTIAL_HEADERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `listener.tls`: the collector's configtls server settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// The listener's certificate chain: a file or inline PEM (one of them).
    pub cert_file: Option<PathBuf>,
    pub cert_pem: Option<String>,
    /// Its private key: a file or inline PEM (one of them).
    pub key_file: Option<PathBuf>,
    pub key_pem: Option<String>,
    /// When set, agents must present a certificate signed by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
    /// Re-read `client_ca_file` as soon as it changes on disk.
    pub client_ca_file_reload: bool,
    /// Accepted as configtls does; like there, it does not verify agents
    /// (that is `client_ca_file`), but it must be a readable PEM bundle.
    pub ca_file: Option<PathBuf>,
    pub ca_pem: Option<String>,
    /// Also accept agent certificates chaining to the system's CAs.
    pub include_system_ca_certs_pool: bool,
    #[serde(deserialize_with = "tls_version")]
    pub min_version: Option<TlsVersion>,
    #[serde(deserialize_with = "tls_version")]
    pub max_version: Option<TlsVersion>,
    /// Re-read certificate, key and client CA files this often (checked at
    /// the next handshake); unset or 0 never reloads.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
    /// configtls keys with no rustls equivalent; accepted only when empty.
    pub cipher_suites: Option<serde_yaml_ng::Value>,
    pub curve_preferences: Option<serde_yaml_ng::Value>,
    pub tpm: Option<serde_yaml_ng::Value>,
}

/// A TLS protocol version, spelt as configtls does ("1.2", "1.3").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// `min_version`/`max_version`: "1.2", "1.3" (also unquoted numbers); "" is unset.
fn tls_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TlsVersion>, D::Error> {
    let v = Option::<serde_yaml_ng::Value>::deserialize(d)?;
    let s = match &v {
        None | Some(serde_yaml_ng::Value::Null) => return Ok(None),
        Some(serde_yaml_ng::Value::String(s)) => s.clone(),
        Some(serde_yaml_ng::Value::Number(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
    };
    match s.as_str() {
        "" => Ok(None),
        "1.2" => Ok(Some(TlsVersion::V1_2)),
        "1.3" => Ok(Some(TlsVersion::V1_3)),
        "1.0" | "1.1" => Err(serde::de::Error::custom(format!(
            "TLS {s} is not supported (rustls speaks only 1.2 and 1.3); expected \"1.2\" or \"1.3\""
        ))),
        _ => Err(serde::de::Error::custom(format!("expected \"1.2\" or \"1.3\", got {s:?}"))),
    }
}

/// Checks shared by `server.tls` and `listener.tls`; `p` is the field path.
fn validate_tls_common(
    p: &str,
    (ca_file, ca_pem): (bool, bool),
    (cert_file, cert_pem): (bool, bool),
    (key_file, key_pem): (bool, bool),
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
    refused: [(&str, &Option<serde_yaml_ng::Value>); 3],
) -> Result<(), ConfigError> {
    for (what, file, pem) in [("ca", ca_file, ca_pem), ("cert", cert_file, cert_pem), ("key", key_file, key_pem)] {
        if file && pem {
            return Err(ConfigError::field(
                format!("{p}.{what}_pem"),
                format!("cannot be combined with {p}.{what}_file; give it either as a file or inline"),
            ));
        }
    }
    if (cert_file || cert_pem) != (key_file || key_pem) {
        return Err(ConfigError::field(
            p,
            "a certificate (cert_file or cert_pem) and a key (key_file or key_pem) must be given together",
        ));
    }
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            return Err(ConfigError::field(format!("{p}.min_version"), "cannot be greater than max_version"));
        }
    }
    for (key, value) in refused {
        let given = match value {
            None | Some(serde_yaml_ng::Value::Null) => false,
            Some(serde_yaml_ng::Value::Sequence(s)) => !s.is_empty(),
            Some(serde_yaml_ng::Value::String(s)) => !s.is_empty(),
            Some(serde_yaml_ng::Value::Mapping(m)) => {
                // `tpm: { enabled: false }` asks for nothing.
                m.get("enabled").and_then(serde_yaml_ng::Value::as_bool).unwrap_or(!m.is_empty())
            }
            Some(_) => true,
        };
        if given {
            let why = match key {
                "tpm" => "TPM-held keys are not supported; give the key as key_file or key_pem",
                _ => "not configurable here: rustls's safe defaults are used; remove it",
            };
            return Err(ConfigError::field(format!("{p}.{key}"), why));
        }
    }
    Ok(())
}

impl ClientTlsConfig {
    /// `p`: where it sits (`server.tls`, `upstreams.green.tls`).
    fn validate_at(&self, p: &str) -> Result<(), ConfigError> {
        validate_tls_common(
            p,
            (self.ca_file.is_some(), self.ca_pem.is_some()),
            (self.cert_file.is_some(), self.cert_pem.is_some()),
            (self.key_file.is_some(), self.key_pem.is_some()),
            self.min_version,
            self.max_version,
            [
                ("cipher_suites", &self.cipher_suites),
                ("curve_preferences", &self.curve_preferences),
                ("tpm", &self.tpm),
            ],
        )?;
        Ok(())
    }
}

impl ServerTlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        const P: &str = "listener.tls";
        validate_tls_common(
            P,
            (self.ca_file.is_some(), self.ca_pem.is_some()),
            (self.cert_file.is_some(), self.cert_pem.is_some()),
            (self.key_file.is_some(), self.key_pem.is_some()),
            self.min_version,
            self.max_version,
            [
                ("cipher_suites", &self.cipher_suites),
                ("curve_preferences", &self.curve_preferences),
                ("tpm", &self.tpm),
            ],
        )?;
        if self.cert_file.is_none() && self.cert_pem.is_none() {
            return Err(ConfigError::field(
                P,
                "a server needs a certificate and key: cert_file (or cert_pem) and key_file (or key_pem)",
            ));
        }
        if self.client_ca_file_reload && self.client_ca_file.is_none() {
            return Err(ConfigError::field(
                "listener.tls.client_ca_file_reload",
                "needs listener.tls.client_ca_file (the file to watch)",
            ));
        }
        Ok(())
    }
}

/// `runtime`: read by the `opamp-gateway` binary when it starts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run sessions, links and policy calls. Unset: one per
    /// CPU (tokio's default, which also honours `TOKIO_WORKER_THREADS`).
    /// Fewer workers wake each other less: at a paced load well within one
    /// core, `1` spends about a seventh less CPU per message
    /// (docs/BENCHMARKS.md), but a policy call then holds the only worker.
    pub worker_threads: Option<usize>,
}

impl RuntimeConfig {
    /// The most worker threads accepted: more than any machine's cores is a typo.
    pub const MAX_WORKER_THREADS: usize = 1024;

    fn validate(&self) -> Result<(), ConfigError> {
        match self.worker_threads {
            Some(n) if n == 0 || n > Self::MAX_WORKER_THREADS => Err(ConfigError::field(
                "runtime.worker_threads",
                format!("expected a number of threads from 1 to {}, got {n}", Self::MAX_WORKER_THREADS),
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub metrics: MetricsConfig,
    /// `format: text|json` and `level`; see [`crate::telemetry::logs`].
    pub logs: crate::telemetry::LogsConfig,
    /// Relayed messages to a file, for `policy replay`; off by default.
    pub capture: CaptureConfig,
}

/// `telemetry.capture`; the file format is in [`crate::telemetry::capture`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub enabled: bool,
    /// The current file; rotated ones are `<path>.1`, `<path>.2`, ...
    pub path: Option<PathBuf>,
    /// Size cap of each file (and of payload bytes waiting for the writer).
    pub max_bytes: ByteSize,
    /// Files kept, the current one included.
    pub max_files: usize,
    /// Records waiting for the writer at most; more are dropped, counted.
    pub queue: usize,
    /// Header values of connect records are written as `<redacted>`...
    pub redact_headers: bool,
    /// ...except these headers' (names, case-insensitive).
    pub keep_headers: Vec<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            max_bytes: ByteSize::mib(64),
            max_files: 3,
            queue: 4096,
            redact_headers: true,
            keep_headers: ["user-agent", "content-type", "content-encoding", "accept-encoding"].map(Into::into).into(),
        }
    }
}

impl CaptureConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        const P: &str = "telemetry.capture";
        if self.enabled && self.path.is_none() {
            return Err(ConfigError::field(
                format!("{P}.path"),
                "needed when enabled, e.g. /var/lib/opamp-gateway/capture.jsonl",
            ));
        }
        if self.max_bytes.0 < 4096 {
            return Err(ConfigError::field(
                format!("{P}.max_bytes"),
                format!("at least 4KiB, e.g. 64MiB; got {}", self.max_bytes),
            ));
        }
        for (n, field) in [(self.max_files, "max_files"), (self.queue, "queue")] {
            if n == 0 {
                return Err(ConfigError::field(format!("{P}.{field}"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// What the writer needs; `None` when capture is off.
    pub fn settings(&self) -> Option<crate::telemetry::capture::CaptureSettings> {
        Some(crate::telemetry::capture::CaptureSettings {
            path: self.path.clone().filter(|_| self.enabled)?,
            max_bytes: self.max_bytes.0,
            max_files: self.max_files,
            queue: self.queue,
            redact_headers: self.redact_headers,
            keep_headers: self.keep_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` serving `/metrics` (Prometheus) and `/healthz`; unset disables.
    pub endpoint: Option<String>,
    /// `opampgateway` (our names) or `otelcol` (the reference's instruments
    /// as a collector exports them); see docs/compatibility.md.
    pub naming: crate::telemetry::MetricNaming,
}

impl Config {
    /// Checks what the types cannot. Paths are relative to the document root.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate("server")?;
        for (name, upstream) in &self.upstreams {
            let path = format!("upstreams.{name}");
            if name == crate::policy::DEFAULT_UPSTREAM {
                return Err(ConfigError::field(
                    path,
                    "the name `default` is the upstream configured under `server`; choose another name",
                ));
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ConfigError::field(
                    path,
                    "an upstream name is letters, digits, `-` and `_`, e.g. green or eu-west",
                ));
            }
            upstream.validate(&path)?;
            upstream.only_in_server(&path)?;
        }
        let l = &self.listener;
        self.listener_endpoint()?;
        for (d, field) in [
            (l.header_timeout, "listener.header_timeout"),
            (l.idle_timeout, "listener.idle_timeout"),
            (l.tls_handshake_timeout, "listener.tls_handshake_timeout"),
        ] {
            if d.is_zero() {
                return Err(ConfigError::field(field, "must be greater than 0, e.g. 10s"));
            }
        }
        for (n, field) in [
            (l.max_connections, "listener.max_connections"),
            (l.max_handshaking_per_source, "listener.max_handshaking_per_source"),
            (l.max_handshaking, "listener.max_handshaking"),
        ] {
            if n == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        if let Some(tls) = &l.tls {
            tls.validate()?;
        }
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
        if l.max_buffered_bytes < l.max_message_size {
            return Err(ConfigError::field(
                "listener.max_buffered_bytes",
                format!(
                    "must be at least listener.max_message_size ({}), got {}",
                    l.max_message_size, l.max_buffered_bytes
                ),
            ));
        }
        if l.http.queue_size == 0 {
            return Err(ConfigError::field("listener.http.queue_size", "must be at least 1"));
        }
        if l.http.idle_timeout.is_zero() {
            return Err(ConfigError::field("listener.http.idle_timeout", "must be greater than 0, e.g. 2m"));
        }
        l.downstream_gateways.validate()?;
        for (i, name) in l.credential_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::field(
                    format!("listener.credential_headers[{i}]"),
                    format!("not a valid HTTP header name: {name:?}"),
                ));
            }
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
        self.telemetry.capture.validate()?;
        self.policies.validate().map_err(|(field, why)| ConfigError::field(format!("policies.{field}"), why))?;
        self.runtime.validate()?;
        Ok(())
    }

    /// The default upstream's endpoint, parsed.
    pub fn server_uri(&self) -> Result<http::Uri, ConfigError> {
        self.server.uri("server")
    }

    /// `server.headers`, parsed: one pair per value, in config order.
    pub fn server_headers(&self) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
        self.server.parsed_headers("server")
    }

    /// Every upstream with its name and config path, the default first.
    pub fn upstream_list(&self) -> Vec<(&str, &ServerConfig, String)> {
        let default = (crate::policy::DEFAULT_UPSTREAM, &self.server, "server".to_owned());
        let named = self.upstreams.iter().map(|(name, s)| (name.as_str(), s, format!("upstreams.{name}")));
        std::iter::once(default).chain(named).collect()
    }

    /// `listener.endpoint`, parsed; a host name is resolved when binding.
    pub fn listener_endpoint(&self) -> Result<super::ListenEndpoint, ConfigError> {
        self.listener.endpoint.parse().map_err(|m: String| ConfigError::field("listener.endpoint", m))
    }
}
