//! Dialing one upstream link: TCP (directly or through a CONNECT proxy),
//! optional TLS, WebSocket handshake.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use super::proxy::{self, Tunnel};
use crate::config::{Config, ConfigError, ServerConfig};
use crate::tls::{self, BoxedIo, Io, TlsError};

/// The header the reference adds to each upstream dial, so the server can
/// tell a gateway's links apart.
pub(crate) const CONNECTION_ID_HEADER: &str = "x-opamp-gateway-connection-id";

/// Bytes a link reads per system call. tungstenite zero-fills this much
/// before every read, one that finds nothing included: its 128 KiB default
/// cost a 128 KiB `memset` per reply at a sparse rate, 9 % of the gateway's
/// CPU. A larger message still arrives whole, in more reads.
const LINK_READ_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("TLS handshake with {host}: {source}")]
    Tls { host: String, source: std::io::Error },
    #[error("WebSocket handshake: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// `proxy` is shown without credentials.
    #[error("proxy {proxy} refused CONNECT to {target}: {status} {reason}")]
    ProxyRefused { proxy: String, target: String, status: u16, reason: String },
    #[error("proxy {proxy}: {source}")]
    ProxyIo { proxy: String, source: std::io::Error },
}

/// Everything needed to dial, prepared once from the config.
pub struct Dialer {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    proxy: Option<Tunnel>,
    ws_config: WebSocketConfig,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DialerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A named upstream's TLS settings: the TLS errors name the keys as
    /// they are spelled under `server`.
    #[error("{path} (keys as under server): {source}")]
    Upstream { path: String, source: TlsError },
}

impl Dialer {
    /// The dialer of the default upstream (`server`).
    pub fn from_config(cfg: &Config) -> Result<Self, DialerError> {
        Self::for_upstream(&cfg.server, "server")
    }

    /// The dialer of one upstream; `path` is where it is configured
    /// (`server`, `upstreams.green`).
    pub(crate) fn for_upstream(server: &ServerConfig, path: &str) -> Result<Self, DialerError> {
        let at = |e: TlsError| match path {
            "server" => DialerError::Tls(e),
            _ => DialerError::Upstream { path: path.to_owned(), source: e },
        };
        let uri = server.uri(path)?;
        let headers = server.parsed_headers(path)?;
        let tls = if uri.scheme_str() == Some("wss") {
            let host = uri.host().unwrap_or_default();
            let name = tls::server_name(host, server.tls.as_ref()).map_err(at)?;
            Some((TlsConnector::from(tls::client_config(server.tls.as_ref()).map_err(at)?), name))
        } else {
            None
        };
        let max = server.max_message_size.as_usize();
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(LINK_READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let proxy = proxy::for_endpoint(server, path, &uri, &|k| std::env::var(k).ok()).map_err(|e| match e {
            DialerError::Tls(e) => at(e),
            other => other,
        })?;
        let timeout = dial_timeout(server);
        Ok(Self { uri, headers, tls, proxy, ws_config, timeout })
    }

    pub fn endpoint(&self) -> &Uri {
        &self.uri
    }

    /// Opens link `index`.
    pub async fn dial(&self, index: u32) -> Result<WebSocketStream<BoxedIo>, DialError> {
        tokio::time::timeout(self.timeout, self.dial_inner(index))
            .await
            .map_err(|_| DialError::Timeout(self.timeout))?
    }

    async fn dial_inner(&self, index: u32) -> Result<WebSocketStream<BoxedIo>, DialError> {
        let host = self.uri.host().unwrap_or_default();
        let port = self.uri.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let io: BoxedIo = match &self.proxy {
            // The proxy resolves the name: brackets stay on an IPv6 host.
            Some(tunnel) => self.secure(tunnel.connect(&format!("{host}:{port}")).await?, host).await?,
            None => {
                let addr = format!("{}:{port}", host.trim_start_matches('[').trim_end_matches(']'));
                let tcp =
                    TcpStream::connect(&addr).await.map_err(|source| DialError::Tcp { addr: addr.clone(), source })?;
                let _ = tcp.set_nodelay(true);
                self.secure(tcp, host).await?
            }
        };
        let mut request = self.uri.clone().into_client_request()?;
        let h = request.headers_mut();
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        h.insert(
            HeaderName::from_static(CONNECTION_ID_HEADER),
            HeaderValue::from_str(&format!("upstream-{index}")).expect("ascii"),
        );
        // A configured User-Agent wins over ours, as with the reference.
        if !h.contains_key(http::header::USER_AGENT) {
            h.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(concat!("opamp-gateway/", env!("CARGO_PKG_VERSION"))),
            );
        }
        let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(self.ws_config)).await?;
        Ok(ws)
    }

    /// TLS to the upstream over `io` for `wss://`; `io` as is for `ws://`.
    async fn secure<S: Io>(&self, io: S, host: &str) -> Result<BoxedIo, DialError> {
        Ok(match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), io)
                    .await
                    .map_err(|source| DialError::Tls { host: host.to_owned(), source })?,
            ),
            None => Box::new(io),
        })
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("uri", &self.uri).field("proxy", &self.proxy).finish_non_exhaustive()
    }
}

/// `server.dial_timeout`; unset, `write_timeout` but at least 5 s (what the
/// links used before the key existed).
fn dial_timeout(s: &ServerConfig) -> Duration {
    s.dial_timeout.unwrap_or_else(|| s.write_timeout.max(Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_timeout_defaults_to_write_timeout_at_least_5s() {
        let mut s = ServerConfig::default();
        assert_eq!(dial_timeout(&s), Duration::from_secs(10), "write_timeout's default");
        s.write_timeout = Duration::from_secs(1);
        assert_eq!(dial_timeout(&s), Duration::from_secs(5));
        s.dial_timeout = Some(Duration::from_millis(1500));
        assert_eq!(dial_timeout(&s), Duration::from_millis(1500), "the key wins");
    }

    #[test]
    fn dial_timeout_is_read_from_yaml_and_must_be_positive() {
        let c = Config::from_yaml("server:\n  endpoint: ws://127.0.0.1:1/\n  dial_timeout: 2s\n").unwrap();
        assert_eq!(Dialer::from_config(&c).unwrap().timeout, Duration::from_secs(2));
        let unset = Config::from_yaml("server:\n  endpoint: ws://127.0.0.1:1/\n  dial_timeout: null\n").unwrap();
        assert_eq!(unset.server.dial_timeout, None, "as the README writes the default");
        let zero = Config::from_yaml("server:\n  endpoint: ws://127.0.0.1:1/\n  dial_timeout: 0s\n");
        assert!(zero.unwrap_err().to_string().contains("server.dial_timeout"));
    }
}
