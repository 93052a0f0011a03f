//! A reference OpAMP server that supports gateways.
//!
//! It is a test fixture, and it is also the answer to "what does my server
//! need to do to work behind `opamp-gateway`?". The short version:
//!
//! 1. Speak OpAMP over WebSocket as usual. One WebSocket now carries many
//!    agents, so key everything by `instance_uid`, not by connection.
//! 2. Answer the gateway's `connect` custom message (capability
//!    [`handshake::CAPABILITY`]) with a `connectResult` saying whether the agent
//!    may come in, judged from the agent's HTTP headers (`ServerShared::decide`).
//! 3. Send replies for an agent on the connection that agent's messages last
//!    arrived on, and treat `agent_disconnect` as "forget this agent" — the
//!    gateway sends one for agents that vanish, because the stream itself stays
//!    open.
//!
//! Everything else here is observability for tests: a [`ServerState`] snapshot
//! behind a `watch` channel so tests wait on [`ReferenceServer::wait_until`]
//! instead of sleeping, and knobs to misbehave on purpose
//! ([`ConnectMode`], [`ReferenceServer::drop_connections`],
//! [`ReferenceServer::set_accepting`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use prost::Message as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::protocol::framing;
use crate::protocol::handshake::{self, ConnectRequest, ConnectResult};
use crate::protocol::proto::{AgentToServer, CustomCapabilities, CustomMessage, ServerToAgent};

/// `ServerCapabilities`: AcceptsStatus | OffersRemoteConfig.
pub const REPLY_CAPABILITIES: u64 = 0x3;

/// How the server is set up. `Default` is loopback, any port, no auth.
#[derive(Debug, Clone)]
pub struct ReferenceServerConfig {
    pub listen: SocketAddr,
    /// When set, agents are admitted only with `Authorization: Secret-Key <key>`.
    pub secret_key: Option<String>,
    /// Sent once per WebSocket connection, on its first `ServerToAgent`.
    pub custom_capabilities: Vec<String>,
    /// Answer every ordinary agent message (not goodbyes) with a short reply.
    pub reply_to_messages: bool,
    /// `(certificate chain PEM, private key PEM)`: serve `wss://`.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How `connectResult` JSON is written.
    pub json: JsonEncoding,
}

/// How the server writes its `connectResult` JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonEncoding {
    /// serde's: every field, no headers as `{}`.
    #[default]
    Rust,
    /// Byte for byte what a Go server writes for the reference's struct
    /// (`encoding/json`): no headers as `null`, an empty `request_uid` left
    /// out. What the reference's own test server sends.
    Go,
}

impl JsonEncoding {
    pub const ALL: [JsonEncoding; 2] = [JsonEncoding::Rust, JsonEncoding::Go];

    fn encode(self, result: &ConnectResult) -> Bytes {
        match self {
            JsonEncoding::Rust => serde_json::to_vec(result).expect("plain data serializes").into(),
            JsonEncoding::Go => result.to_go_json().into(),
        }
    }
}

impl Default for ReferenceServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret_key: None,
            custom_capabilities: vec!["io.opamp-gateway.reference".into()],
            reply_to_messages: true,
            tls: None,
            json: JsonEncoding::Rust,
        }
    }
}

/// How to answer gateway `connect` requests; switchable at runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConnectMode {
    /// Judge by `secret_key` (accept everyone if there is none).
    #[default]
    Normal,
    /// Never answer, so the gateway's auth timeout fires.
    Ignore,
    /// Reject every agent with this status and these response headers.
    Reject { status: u16, headers: BTreeMap<String, String> },
    /// Answer with this connectResult JSON, as is, after replacing
    /// `{request_uid}` with the request's uid: for answers no encoder writes.
    Raw(String),
}

/// One accepted WebSocket connection (from a gateway link or a direct agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Sequential from 0; also the index in [`ServerState::connections`].
    pub id: u64,
    pub remote: SocketAddr,
    /// The upgrade request's path and query.
    pub path: String,
    /// The upgrade request's headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub open: bool,
    /// Every `AgentToServer` received here, connect requests included.
    pub messages: u64,
}

impl ConnectionRecord {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the server knows about one agent uid.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// The connection its latest message came in on (where replies go).
    pub conn_id: u64,
    pub messages: u64,
    /// How many `agent_disconnect` messages it sent (real or synthesized).
    pub disconnected: u32,
    pub last: AgentToServer,
    /// Messages whose `sequence_num` was not above the previous one's
    /// (reordered or repeated on the way).
    pub out_of_order: u64,
}

/// A snapshot of everything the server has seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerState {
    pub open_connections: usize,
    pub connections: Vec<ConnectionRecord>,
    /// TCP connections closed on arrival while not accepting, or whose
    /// TLS/WebSocket handshake failed.
    pub refused_connections: u64,
    pub connect_requests: Vec<(u64, ConnectRequest)>,
    /// `connectResult` answers sent, split by verdict.
    pub connects_accepted: u64,
    pub connects_rejected: u64,
    pub agents: BTreeMap<Vec<u8>, AgentRecord>,
    /// Ordinary agent messages (connect requests excluded).
    pub total_messages: u64,
    /// Agent messages carrying `agent_disconnect`.
    pub total_disconnects: u64,
    /// Messages with an empty `instance_uid` (a gateway should never send one).
    pub anonymous_messages: u64,
    /// Binary frames that were not a valid `AgentToServer`, and text frames.
    pub malformed_messages: u64,
}

impl ServerState {
    /// The agent record for `uid`, if it has sent anything.
    pub fn agent(&self, uid: &[u8]) -> Option<&AgentRecord> {
        self.agents.get(uid)
    }
}

/// A `wait_until` (server or fleet) gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("condition not met within {0:?}")]
pub struct WaitTimeout(pub Duration);

/// A running reference server. Dropping it stops it.
pub struct ReferenceServer {
    shared: Arc<ServerShared>,
    addr: SocketAddr,
    tls: bool,
    // Dropping the accept task drops its JoinSet, which aborts every connection.
    accept_task: tokio::task::JoinHandle<()>,
}

impl ReferenceServer {
    pub async fn start(cfg: ReferenceServerConfig) -> io::Result<ReferenceServer> {
        let acceptor = cfg.tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let caps = (!cfg.custom_capabilities.is_empty())
            .then(|| CustomCapabilities { capabilities: cfg.custom_capabilities.clone() });
        let shared = Arc::new(ServerShared {
            secret_key: cfg.secret_key,
            custom_capabilities: caps,
            reply_to_messages: cfg.reply_to_messages,
            json: cfg.json,
            state: watch::Sender::new(ServerState::default()),
            links: Mutex::new(HashMap::new()),
            mode: Mutex::new(ConnectMode::Normal),
            accepting: AtomicBool::new(true),
            reading: watch::Sender::new(true),
        });
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(ReferenceServer { shared, addr, tls: cfg.tls.is_some(), accept_task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/v1/opamp` (`wss://` with TLS). Any path works.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/opamp", self.addr)
    }

    pub fn set_connect_mode(&self, mode: ConnectMode) {
        *self.shared.mode.lock() = mode;
    }

    /// While false, new TCP connections are closed as soon as they arrive.
    pub fn set_accepting(&self, accepting: bool) {
        self.shared.accepting.store(accepting, Ordering::SeqCst);
    }

    /// While false, connections stop reading, as a stalled server would: the
    /// gateway's writes back up into TCP buffers. Replies already queued
    /// still go out.
    pub fn set_reading(&self, reading: bool) {
        self.shared.reading.send_replace(reading);
    }

    /// Sends `msg` to the connection `uid` was last seen on, with
    /// `instance_uid` set. False if the uid is unknown or its link is gone.
    pub fn push(&self, uid: &[u8], mut msg: ServerToAgent) -> bool {
        let Some(conn_id) = self.shared.state.borrow().agents.get(uid).map(|a| a.conn_id) else {
            return false;
        };
        msg.instance_uid = Bytes::copy_from_slice(uid);
        self.shared.send_to(conn_id, Outgoing::Message(Box::new(msg)))
    }

    /// Sends a raw WebSocket payload as is (no header added, no capabilities).
    pub fn push_raw(&self, conn_id: u64, payload: Bytes) -> bool {
        self.shared.send_to(conn_id, Outgoing::Raw(payload))
    }

    /// Sends a WebSocket text frame, which OpAMP never uses (garbage tests).
    pub fn push_text(&self, conn_id: u64, text: &str) -> bool {
        self.shared.send_to(conn_id, Outgoing::Text(text.to_owned()))
    }

    /// Closes every open connection cleanly: a close frame with `code`, then
    /// the socket. New connections still work.
    pub fn close_connections(&self, code: u16) {
        for link in self.shared.links.lock().values() {
            let _ = link.tx.send(Outgoing::Close(code));
        }
    }

    /// Abruptly closes every open connection: the TCP socket is dropped with
    /// no close frame, as when a link is lost. New connections still work.
    pub fn drop_connections(&self) {
        for link in self.shared.links.lock().values() {
            link.kill.cancel();
        }
    }

    /// A copy of the current state.
    pub fn state(&self) -> ServerState {
        self.shared.state.borrow().clone()
    }

    /// Waits until `pred` holds for the state (checked now and on every
    /// change), or `timeout` passes. `pred` runs under the state's lock: keep
    /// it a plain look at its argument, don't call back into the server.
    pub async fn wait_until<F>(&self, timeout: Duration, pred: F) -> Result<(), WaitTimeout>
    where
        F: Fn(&ServerState) -> bool,
    {
        let mut rx = self.shared.state.subscribe();
        // `wait_for` fails only if the sender is dropped, and `self` owns it.
        let met = tokio::time::timeout(timeout, async { rx.wait_for(|s| pred(s)).await.is_ok() }).await;
        match met {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(WaitTimeout(timeout)),
        }
    }

    /// Stops accepting and closes every connection; returns once the
    /// listening socket is released.
    pub async fn shutdown(mut self) {
        self.accept_task.abort();
        // A cancelled task is the expected outcome here.
        let _ = (&mut self.accept_task).await;
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// State shared by the accept loop, every connection task and the handle.
struct ServerShared {
    secret_key: Option<String>,
    custom_capabilities: Option<CustomCapabilities>,
    reply_to_messages: bool,
    json: JsonEncoding,
    /// The observable state; `send_modify` wakes every `wait_until`.
    state: watch::Sender<ServerState>,
    /// Live connections by id: how to reach and kill each one.
    links: Mutex<HashMap<u64, LinkHandle>>,
    mode: Mutex<ConnectMode>,
    accepting: AtomicBool,
    /// While false, no connection reads (see `set_reading`).
    reading: watch::Sender<bool>,
}

struct LinkHandle {
    tx: mpsc::UnboundedSender<Outgoing>,
    kill: CancellationToken,
}

enum Outgoing {
    Message(Box<ServerToAgent>),
    Raw(Bytes),
    Text(String),
    Close(u16),
}

impl ServerShared {
    fn send_to(&self, conn_id: u64, out: Outgoing) -> bool {
        self.links.lock().get(&conn_id).is_some_and(|l| l.tx.send(out).is_ok())
    }

    /// The gateway's question: may this agent connect? The server sees the
    /// agent's own HTTP headers and answers as it would a direct agent.
    fn decide(&self, req: &ConnectRequest) -> Option<ConnectResult> {
        let reject = |status: u16, headers: BTreeMap<String, String>| ConnectResult {
            request_uid: req.request_uid.clone(),
            accept: false,
            http_status_code: status,
            response_headers: headers,
        };
        let mode = self.mode.lock().clone();
        match mode {
            ConnectMode::Ignore | ConnectMode::Raw(_) => None,
            ConnectMode::Reject { status, headers } => Some(reject(status, headers)),
            ConnectMode::Normal => {
                let authorized = match &self.secret_key {
                    None => true,
                    Some(key) => {
                        let expected = format!("Secret-Key {key}");
                        // Names arrive Go-canonical ("Authorization"); don't rely on it.
                        req.headers
                            .iter()
                            .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                            .any(|(_, values)| values.contains(&expected))
                    }
                };
                Some(if authorized {
                    ConnectResult { request_uid: req.request_uid.clone(), accept: true, ..Default::default() }
                } else {
                    reject(401, BTreeMap::from([("X-Reject-Reason".into(), "bad key".into())]))
                })
            }
        }
    }

    /// Handles one agent message; returns the reply to send, if any.
    fn on_message(&self, conn_id: u64, frame: &Bytes) -> Option<ServerToAgent> {
        let msg = framing::payload(frame).ok().and_then(|p| AgentToServer::decode(p).ok());
        let Some(msg) = msg else {
            self.state.send_modify(|s| s.malformed_messages += 1);
            return None;
        };
        // The gateway handshake rides on a custom message with no uid.
        if let Some(custom) = &msg.custom_message {
            match ConnectRequest::from_custom(custom) {
                Some(Ok(req)) => return self.on_connect(conn_id, req),
                Some(Err(_)) => {
                    self.state.send_modify(|s| s.malformed_messages += 1);
                    return None;
                }
                None => {}
            }
        }

        let uid = msg.instance_uid.clone();
        let goodbye = msg.agent_disconnect.is_some();
        // One state update per message: wakes waiters once, keeps it O(1).
        self.state.send_modify(|s| {
            s.connections[conn_id as usize].messages += 1;
            s.total_messages += 1;
            s.total_disconnects += u64::from(goodbye);
            if uid.is_empty() {
                s.anonymous_messages += 1;
                return;
            }
            // Last seen wins: after a link drop the agent returns on another one.
            let rec = s.agents.entry(uid.to_vec()).or_insert_with(|| AgentRecord {
                conn_id,
                messages: 0,
                disconnected: 0,
                last: AgentToServer::default(),
                out_of_order: 0,
            });
            rec.out_of_order += u64::from(rec.messages > 0 && msg.sequence_num <= rec.last.sequence_num);
            rec.conn_id = conn_id;
            rec.messages += 1;
            rec.disconnected += u32::from(goodbye);
            rec.last = msg;
        });
        // A leaving agent gets no answer: there may be nobody left to read it.
        (self.reply_to_messages && !goodbye && !uid.is_empty()).then(|| ServerToAgent {
            instance_uid: uid,
            capabilities: REPLY_CAPABILITIES,
            ..Default::default()
        })
    }

    fn on_connect(&self, conn_id: u64, req: ConnectRequest) -> Option<ServerToAgent> {
        let raw = match &*self.mode.lock() {
            ConnectMode::Raw(json) => Some(Bytes::from(json.replace("{request_uid}", &req.request_uid))),
            _ => None,
        };
        let verdict = self.decide(&req);
        self.state.send_modify(|s| {
            s.connections[conn_id as usize].messages += 1;
            s.connect_requests.push((conn_id, req));
            match &verdict {
                Some(r) if r.accept => s.connects_accepted += 1,
                Some(_) => s.connects_rejected += 1,
                None => {}
            }
        });
        let data = match raw {
            Some(raw) => raw,
            None => self.json.encode(&verdict?),
        };
        Some(ServerToAgent {
            custom_message: Some(CustomMessage {
                capability: handshake::CAPABILITY.into(),
                r#type: handshake::CONNECT_RESULT.into(),
                data,
            }),
            ..Default::default()
        })
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<ServerShared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else { continue };
                if !shared.accepting.load(Ordering::SeqCst) {
                    drop(tcp);
                    shared.state.send_modify(|s| s.refused_connections += 1);
                    continue;
                }
                conns.spawn(serve_tcp(tcp, remote, tls.clone(), shared.clone()));
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_tcp(tcp: TcpStream, remote: SocketAddr, tls: Option<TlsAcceptor>, shared: Arc<ServerShared>) {
    // Replies are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    match tls {
        None => serve_ws(tcp, remote, shared).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(stream) => serve_ws(stream, remote, shared).await,
            Err(_) => shared.state.send_modify(|s| s.refused_connections += 1),
        },
    }
}

/// One WebSocket connection: handshake, register, then pump messages.
async fn serve_ws<S>(stream: S, remote: SocketAddr, shared: Arc<ServerShared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut path = String::new();
    let mut headers = Vec::new();
    // The callback's signature is tungstenite's; it never returns Err here.
    #[allow(clippy::result_large_err)]
    let record_request = |req: &Request, resp: Response| {
        path = req.uri().to_string();
        headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Ok(resp)
    };
    // Modest buffers: benchmarks may point thousands of direct agents here.
    // A gateway writes each message as one frame: frames may be as large as
    // messages (tungstenite's default caps frames at 16 MiB).
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(8 * 1024).max_frame_size(None);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, record_request, Some(config)).await;
    let Ok(ws) = ws else {
        shared.state.send_modify(|s| s.refused_connections += 1);
        return;
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let kill = CancellationToken::new();
    let mut id = 0;
    shared.state.send_modify(|s| {
        id = s.connections.len() as u64;
        s.open_connections += 1;
        s.connections.push(ConnectionRecord { id, remote, path, headers, open: true, messages: 0 });
        // Reachable before anyone can observe it as open.
        let link = LinkHandle { tx: tx.clone(), kill: kill.clone() };
        shared.links.lock().insert(id, link);
    });
    // Unregisters on every exit path, including abort.
    let _guard = Registration { shared: shared.clone(), id };

    let (sink, stream) = ws.split();
    tokio::select! {
        biased;
        // Returning drops the socket without a close frame: that is the point.
        _ = kill.cancelled() => {}
        _ = read_agents(stream, id, tx, &shared) => {}
        _ = write_replies(sink, rx, &shared) => {}
    }
}

/// Handles incoming messages until the peer leaves or the connection fails.
/// Replies go through the writer's queue, behind any earlier pushes.
async fn read_agents<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
    shared: &ServerShared,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reading = shared.reading.subscribe();
    loop {
        // The sender lives as long as `shared`.
        let _ = reading.wait_for(|r| *r).await;
        let Some(Ok(incoming)) = stream.next().await else { break };
        match incoming {
            Message::Binary(frame) => {
                if let Some(reply) = shared.on_message(id, &frame) {
                    let _ = tx.send(Outgoing::Message(Box::new(reply)));
                }
            }
            Message::Text(_) => shared.state.send_modify(|s| s.malformed_messages += 1),
            // Pings are answered by tungstenite; a close is echoed by it too.
            _ => {}
        }
    }
}

/// Writes replies and pushes, batching whatever is queued into one flush.
async fn write_replies<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: &ServerShared,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // opamp-go servers send custom capabilities once per connection, on the
    // first message. Gateways must replay them to every agent, so we copy that.
    let mut caps = shared.custom_capabilities.clone();
    let mut encode = |out: Outgoing| match out {
        Outgoing::Message(mut msg) => {
            if let Some(c) = caps.take() {
                msg.custom_capabilities = Some(c);
            }
            Message::Binary(framing::encode(&*msg))
        }
        Outgoing::Raw(bytes) => Message::Binary(bytes),
        Outgoing::Text(text) => Message::Text(text.into()),
        Outgoing::Close(code) => Message::Close(Some(CloseFrame { code: code.into(), reason: "".into() })),
    };
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let closing = matches!(out, Outgoing::Close(_));
            sink.feed(encode(out)).await?;
            if closing {
                // Returning ends the connection task, which drops the socket.
                return sink.flush().await;
            }
            next = rx.try_recv().ok();
        }
        sink.flush().await?;
    }
    Ok(())
}

/// Marks a connection closed when its task ends, however it ends.
struct Registration {
    shared: Arc<ServerShared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.links.lock().remove(&self.id);
        self.shared.state.send_modify(|s| {
            s.open_connections -= 1;
            s.connections[self.id as usize].open = false;
        });
    }
}

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsAcceptor> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(format!("key PEM: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
