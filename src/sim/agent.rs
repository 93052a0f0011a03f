//! One simulated OpAMP agent on a WebSocket.
//!
//! It speaks the wire the way a real agent does (header byte, instance uid,
//! increasing sequence numbers, a goodbye before leaving) and exposes the
//! failure modes tests need to see: the HTTP status and headers of a refused
//! upgrade, and the close code the other side chose — or that there was none.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, Uri};
use prost::Message as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::framing;
use crate::protocol::proto::{
    any_value, AgentConfigFile, AgentConfigMap, AgentDescription, AgentDisconnect, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, ServerToAgent,
};
use crate::protocol::uid::InstanceUid;

/// `AgentCapabilities` of a typical collector: ReportsStatus |
/// AcceptsRemoteConfig | ReportsEffectiveConfig | ReportsHealth |
/// ReportsRemoteConfig.
pub const AGENT_CAPABILITIES: u64 = 0x1 | 0x2 | 0x4 | 0x800 | 0x1000;

/// How to reach the server and who to be.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `ws://host:port/path` or `wss://…`.
    pub url: String,
    /// Extra headers on the upgrade request (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Defaults to a random UUID v4.
    pub uid: InstanceUid,
    /// Send bare protobuf without the `0x00` header, like pre-header agents.
    pub legacy_frames: bool,
    /// Client TLS for `wss://`; `None` trusts the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Local address to connect from (e.g. one of several `127.0.0.x`, so
    /// a large loopback fleet does not run out of ports or look like one
    /// source); `None` lets the kernel choose.
    pub bind: Option<std::net::IpAddr>,
}

impl AgentOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Adds one upgrade request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:4320/v1/opamp".into(),
            headers: Vec::new(),
            uid: InstanceUid::from_uuid(uuid::Uuid::new_v4()),
            legacy_frames: false,
            tls: None,
            bind: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The server answered the upgrade with an HTTP error.
    #[error("upgrade rejected with HTTP {status}")]
    Rejected { status: u16, headers: Vec<(String, String)> },
    /// The connection ended. `code` is the close frame's code (1005 if the
    /// frame had none); `None` means no close frame at all — the TCP
    /// connection just went away.
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    #[error("no message within {0:?}")]
    Timeout(Duration),
    #[error("server sent an undecodable message: {0}")]
    Decode(String),
    #[error("server sent a text message")]
    UnexpectedText,
    #[error("WebSocket: {0}")]
    WebSocket(tungstenite::Error),
}

/// How a connection ended, from [`SimAgent::recv_close`].
#[derive(Debug, Clone, PartialEq)]
pub struct CloseSeen {
    /// The close frame's code; `None` if the TCP connection just went away.
    pub code: Option<u16>,
    pub reason: String,
    /// The `error_response` sent before the close, if any.
    pub error: Option<crate::protocol::proto::ServerErrorResponse>,
}

/// Any byte stream a WebSocket can run on (plain TCP or TLS).
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A connected simulated agent.
pub struct SimAgent {
    ws: WebSocketStream<Box<dyn Transport>>,
    uid: InstanceUid,
    legacy_frames: bool,
    next_seq: u64,
    response_headers: Vec<(String, String)>,
}

impl std::fmt::Debug for SimAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAgent")
            .field("uid", &self.uid)
            .field("legacy_frames", &self.legacy_frames)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Connects to the first address of `host` in `local`'s family, from `local`.
async fn connect_from(local: std::net::IpAddr, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let remote =
        tokio::net::lookup_host((host, port)).await?.find(|a| a.is_ipv4() == local.is_ipv4()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address in {local}'s family"),
            )
        })?;
    let socket = if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind((local, 0).into())?;
    socket.connect(remote).await
}

impl SimAgent {
    /// Dials the URL, does TLS if `wss://`, and upgrades with the headers.
    pub async fn connect(opts: AgentOptions) -> Result<SimAgent, AgentError> {
        let bad_url = |reason: &str| AgentError::BadUrl { url: opts.url.clone(), reason: reason.into() };
        let uri: Uri = opts.url.parse().map_err(|_| bad_url("not a URI"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad_url("scheme must be ws or wss")),
        };
        let host = uri.host().ok_or_else(|| bad_url("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });

        let tcp = match opts.bind {
            None => TcpStream::connect((host.as_str(), port)).await?,
            Some(local) => connect_from(local, &host, port).await?,
        };
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Transport> = if secure {
            let config = opts.tls.clone().unwrap_or_else(default_tls);
            let name = ServerName::try_from(host).map_err(|_| bad_url("host is not a valid TLS name"))?;
            Box::new(TlsConnector::from(config).connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };

        let mut request = uri.into_client_request().map_err(AgentError::WebSocket)?;
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_url("bad header name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| bad_url("bad header value"))?;
            request.headers_mut().append(name, value);
        }
        // Small buffers: a fleet runs thousands of these.
        let config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0);
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    AgentError::Rejected { status: resp.status().as_u16(), headers: header_pairs(resp.headers()) }
                }
                other => closed_or(other),
            })?;
        Ok(SimAgent {
            ws,
            uid: opts.uid,
            legacy_frames: opts.legacy_frames,
            next_seq: 0,
            response_headers: header_pairs(response.headers()),
        })
    }

    pub fn uid(&self) -> &InstanceUid {
        &self.uid
    }

    /// Headers of the successful upgrade response (names lowercase).
    pub fn response_headers(&self) -> &[(String, String)] {
        &self.response_headers
    }

    /// Sends a message, filling in `instance_uid` if empty and stamping the
    /// next sequence number.
    pub async fn send(&mut self, mut msg: AgentToServer) -> Result<(), AgentError> {
        if msg.instance_uid.is_empty() {
            msg.instance_uid = self.uid.as_bytes().clone();
        }
        msg.sequence_num = self.next_seq;
        self.next_seq += 1;
        let frame = if self.legacy_frames { Bytes::from(msg.encode_to_vec()) } else { framing::encode(&msg) };
        self.send_raw(Message::Binary(frame)).await
    }

    /// Sends any WebSocket message as is (for malformed-input tests).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), AgentError> {
        self.ws.send(msg).await.map_err(closed_or)
    }

    /// The next `ServerToAgent`, skipping pings and pongs.
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerToAgent, AgentError> {
        tokio::time::timeout(timeout, self.next_server_message()).await.map_err(|_| AgentError::Timeout(timeout))?
    }

    /// The next WebSocket message of any kind, close frames included.
    pub async fn recv_message(&mut self, timeout: Duration) -> Result<Message, AgentError> {
        tokio::time::timeout(timeout, self.next_message()).await.map_err(|_| AgentError::Timeout(timeout))?
    }

    /// Like [`recv`](Self::recv) without a deadline. Cancel-safe, so it can
    /// sit in a `select!`.
    pub async fn next_server_message(&mut self) -> Result<ServerToAgent, AgentError> {
        loop {
            match self.next_message().await? {
                Message::Binary(frame) => {
                    let payload = framing::payload(&frame).map_err(|e| AgentError::Decode(e.to_string()))?;
                    return ServerToAgent::decode(payload).map_err(|e| AgentError::Decode(e.to_string()));
                }
                Message::Close(frame) => return Err(closed(frame)),
                Message::Text(_) => return Err(AgentError::UnexpectedText),
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn next_message(&mut self) -> Result<Message, AgentError> {
        match self.ws.next().await {
            Some(Ok(msg @ Message::Close(_))) => {
                // tungstenite has queued the echo; send it now, as a real
                // client does, rather than at the next write (which a test
                // holding a closed agent never makes).
                let _ = self.ws.flush().await;
                Ok(msg)
            }
            Some(Ok(msg)) => Ok(msg),
            Some(Err(e)) => Err(closed_or(e)),
            None => Err(AgentError::Closed { code: None, reason: "stream ended".into() }),
        }
    }

    /// Reads until the connection ends, as an agent being sent away would.
    /// A server may explain itself first with `error_response` (OpAMP's
    /// BAD_REQUEST or UNAVAILABLE): that message comes back with the close.
    /// Any other message before the close is an error.
    pub async fn recv_close(&mut self, timeout: Duration) -> Result<CloseSeen, AgentError> {
        let mut error = None;
        loop {
            match self.recv(timeout).await {
                Ok(m) if m.error_response.is_some() && error.is_none() => error = m.error_response,
                Ok(m) => return Err(AgentError::Decode(format!("expected a close, got {m:?}"))),
                Err(AgentError::Closed { code, reason }) => return Ok(CloseSeen { code, reason, error }),
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves politely: `agent_disconnect`, then a close frame (1000), then
    /// waits briefly for the server's close.
    pub async fn say_goodbye(mut self) -> Result<(), AgentError> {
        self.send(AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..Default::default() }).await?;
        let frame = CloseFrame { code: CloseCode::Normal, reason: "goodbye".into() };
        self.send_raw(Message::Close(Some(frame))).await?;
        // Drain until the server echoes the close; don't hang on a bad peer.
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        Ok(())
    }

    /// Vanishes: the socket is dropped with no goodbye and no close frame.
    pub fn drop_abruptly(self) {
        drop(self);
    }

    /// Sends a status report and returns the server's reply to it, reading
    /// past the gateway's own full-state requests (sent after a move).
    pub async fn answered(&mut self, timeout: Duration) -> Result<ServerToAgent, AgentError> {
        let report = self.status_report();
        self.send(report).await?;
        loop {
            let reply = self.recv(timeout).await?;
            if !is_full_state_request(&reply) {
                return Ok(reply);
            }
        }
    }

    /// A realistic first message: description, capabilities, health and a
    /// small effective config.
    /// [`Self::status_report`] with its effective config padded to about
    /// `config_bytes` (YAML comments): a real collector reports its whole
    /// config at connect, often tens of KiB.
    pub fn status_report_sized(&self, config_bytes: usize) -> AgentToServer {
        let mut report = self.status_report();
        let files = report.effective_config.as_mut().and_then(|c| c.config_map.as_mut()).map(|m| &mut m.config_map);
        if let Some(file) = files.and_then(|f| f.values_mut().next()).filter(|f| f.body.len() < config_bytes) {
            let mut body = file.body.to_vec();
            while body.len() < config_bytes {
                body.extend_from_slice(b"# padded to a collector's size\n");
            }
            file.body = body.into();
        }
        report
    }

    pub fn status_report(&self) -> AgentToServer {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{}}\nexporters:\n  debug: {{}}\n\
             service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n\
             # instance {}\n",
            self.uid
        );
        AgentToServer {
            instance_uid: self.uid.as_bytes().clone(),
            agent_description: Some(AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", "io.opentelemetry.collector"),
                    kv("service.version", "0.112.0"),
                    kv("service.instance.id", &self.uid.to_string()),
                ],
                non_identifying_attributes: vec![
                    kv("os.type", "linux"),
                    kv("host.arch", "amd64"),
                    kv("host.name", "sim-host"),
                ],
            }),
            capabilities: AGENT_CAPABILITIES,
            health: Some(ComponentHealth {
                healthy: true,
                start_time_unix_nano: now,
                status: "StatusOK".into(),
                status_time_unix_nano: now,
                ..Default::default()
            }),
            effective_config: Some(EffectiveConfig {
                config_map: Some(AgentConfigMap {
                    config_map: [(
                        String::new(),
                        AgentConfigFile { body: config.into(), content_type: "text/yaml".into() },
                    )]
                    .into_iter()
                    .collect(),
                }),
            }),
            ..Default::default()
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }) }
}

fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

fn closed(frame: Option<CloseFrame>) -> AgentError {
    match frame {
        Some(f) => AgentError::Closed { code: Some(f.code.into()), reason: f.reason.to_string() },
        // RFC 6455 §7.4.1: 1005 stands for "a close frame with no status code".
        None => AgentError::Closed { code: Some(1005), reason: String::new() },
    }
}

/// A transport-level end of the connection becomes `Closed { code: None }`;
/// anything else stays a WebSocket error.
fn closed_or(e: tungstenite::Error) -> AgentError {
    let gone = |reason: String| AgentError::Closed { code: None, reason };
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => gone(e.to_string()),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => gone(e.to_string()),
        tungstenite::Error::Io(io) => gone(io.to_string()),
        other => AgentError::WebSocket(other),
    }
}

fn default_tls() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The gateway's own `ReportFullState` request (sent to an agent that moved
/// links): the flag, and nothing a server's reply would carry.
pub fn is_full_state_request(m: &ServerToAgent) -> bool {
    m.flags == 1 && m.remote_config.is_none() && m.error_response.is_none() && m.custom_message.is_none()
}
