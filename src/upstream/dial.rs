//! Dialing one upstream link: TCP, optional TLS, WebSocket handshake.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::{Config, ConfigError};
use crate::tls::{self, TlsError};

/// Any byte stream a WebSocket can run over (plain or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type BoxedIo = Box<dyn Io>;

/// The header the reference adds to each upstream dial, so the server can
/// tell a gateway's links apart.
pub const CONNECTION_ID_HEADER: &str = "x-opamp-gateway-connection-id";

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
}

/// Everything needed to dial, prepared once from the config.
pub struct Dialer {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    ws_config: WebSocketConfig,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DialerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Dialer {
    pub fn from_config(cfg: &Config) -> Result<Self, DialerError> {
        let uri = cfg.server_uri()?;
        let mut headers = Vec::new();
        for (name, values) in &cfg.server.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::field(format!("server.headers.{name}"), "not a valid header name"))?;
            for v in values.iter() {
                let v = HeaderValue::from_str(v)
                    .map_err(|_| ConfigError::field(format!("server.headers.{name}"), "value must be visible ASCII"))?;
                headers.push((name.clone(), v));
            }
        }
        let tls = if uri.scheme_str() == Some("wss") {
            let host = uri.host().unwrap_or_default();
            let name = tls::server_name(host, cfg.server.tls.as_ref())?;
            Some((TlsConnector::from(tls::client_config(cfg.server.tls.as_ref())?), name))
        } else {
            None
        };
        let max = cfg.server.max_message_size.as_usize();
        let ws_config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
        Ok(Self { uri, headers, tls, ws_config, timeout: cfg.server.write_timeout.max(Duration::from_secs(5)) })
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
        let addr = format!("{}:{port}", host.trim_start_matches('[').trim_end_matches(']'));
        let tcp = TcpStream::connect(&addr).await.map_err(|source| DialError::Tcp { addr: addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let io: BoxedIo = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| DialError::Tls { host: host.to_owned(), source })?,
            ),
            None => Box::new(tcp),
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
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("opamp-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(self.ws_config)).await?;
        Ok(ws)
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("uri", &self.uri).finish_non_exhaustive()
    }
}
