//! One agent's WebSocket upgrade: the connect handshake, the `101`, then
//! the session task once hyper hands over the upgraded connection.
//!
//! The gateway makes no authentication decision of its own: it forwards the
//! request's headers and address to the server and answers the agent with
//! whatever the server decided (status and headers on reject).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::express::SharedSocket;
use super::headers::forwarded_headers;
use super::listener::Tracked;
use super::respond::{copy_headers, plain, refuse, Body};
use super::session::Session;
use super::trust::PeerCertificate;
use super::Downstream;
use crate::policy::Transport;
use crate::relay::{Admission, AdmitRequest};
use crate::telemetry::metrics as m;

/// Answers a WebSocket upgrade request (the router checked it is one).
pub(super) async fn upgrade(ds: Arc<Downstream>, mut req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if req.headers().get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version; expected 13");
        r.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let admit = AdmitRequest {
        headers: forwarded_headers(req.headers()),
        remote_addr: remote.to_string(),
        transport: Transport::WebSocket,
    };
    let peer_cert = req.extensions().get::<PeerCertificate>().cloned();
    let started = Instant::now();
    let admission = ds.relay.admit_new(&admit).await;
    metrics::histogram!(m::HANDSHAKE_SECONDS).record(started.elapsed().as_secs_f64());
    super::pipeline::capture_connect(&ds, &admit, admission.is_ok());
    let admission = match admission {
        Ok(a) => a,
        Err(e) => return refuse(&ds, e, remote, Transport::WebSocket),
    };
    metrics::counter!(m::HANDSHAKES, "outcome" => "accepted", "status" => "101", "transport" => "websocket")
        .increment(1);
    tracing::debug!(%remote, link = admission.lease.index(), "agent accepted");

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(Body::default())
        .expect("static response parts are valid");
    copy_headers(response.headers_mut(), &admission.response_headers);

    let on_upgrade = hyper::upgrade::on(&mut req);
    // A task keeps room for everything its future captured for as long as
    // it lives; these parts are used once, when it starts, so they travel
    // in one box and the idle session's task holds a pointer's worth.
    let parts = Box::new(SessionParts { ds: ds.clone(), admission, admit, peer_cert, remote });
    ds.sessions.spawn(async move {
        // Not `if let`: its matched value would keep its room while the
        // session runs.
        let Some((session, ws)) = open_session(parts, on_upgrade).await else { return };
        session.run(ws).await;
    });
    response
}

/// What an accepted agent's session is built from once hyper hands over
/// the upgraded connection.
struct SessionParts {
    ds: Arc<Downstream>,
    admission: Admission,
    admit: AdmitRequest,
    peer_cert: Option<PeerCertificate>,
    remote: SocketAddr,
}

/// The session for an accepted agent, once hyper hands over its upgraded
/// connection. Its own future, not part of the spawned block: what it
/// borrows along the way would otherwise keep its room in the task for the
/// session's whole life.
async fn open_session(
    parts: Box<SessionParts>,
    on_upgrade: OnUpgrade,
) -> Option<(Session, WebSocketStream<SharedSocket<Tracked>>)> {
    let SessionParts { ds, admission, admit, peer_cert, remote } = *parts;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "agent went away during the upgrade");
            return None;
        }
    };
    let Some((ws, socket)) = agent_socket(upgraded, ws_config(&ds)).await else {
        tracing::error!(%remote, "the upgraded connection is not the listener's socket; closing it (a bug)");
        return None;
    };
    // Decided only now that the server accepted these headers.
    let identity = ds.settings.gateways.identify(&admit.headers, peer_cert.as_ref());
    if identity.is_gateway() {
        tracing::info!(%remote, "downstream gateway connected");
    }
    Some((Session::new(ds, admission, admit, identity).with_express(socket), ws))
}

/// Takes the listener's socket back from hyper, so the session reads and
/// writes it directly rather than through hyper's upgrade wrapper (two more
/// layers, one of them dynamic, on every read and write), and shares it
/// with the agent's express lane. Bytes the agent sent behind its upgrade
/// request, already read by hyper, come first.
async fn agent_socket(
    upgraded: Upgraded,
    config: WebSocketConfig,
) -> Option<(WebSocketStream<SharedSocket<Tracked>>, SharedSocket<Tracked>)> {
    let parts = upgraded.downcast::<TokioIo<Tracked>>().ok()?;
    let socket = SharedSocket::new(parts.io.into_inner());
    socket.read_before(&parts.read_buf);
    let io = socket.clone();
    let ws = if parts.read_buf.is_empty() {
        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
    } else {
        WebSocketStream::from_partially_read(io, parts.read_buf.to_vec(), Role::Server, Some(config)).await
    };
    Some((ws, socket))
}

/// What an agent's WebSocket reads at a time, and the size its read buffer
/// is given back once a larger message grew it
/// ([`Session`]'s buffer release).
pub(crate) const READ_BUFFER: usize = 1024;

/// Small buffers: an idle agent should cost kilobytes, not the 128 KiB
/// tungstenite reserves by default. The read buffer lives as long as the
/// agent; 1 KiB holds a heartbeat in one read, and a larger frame grows it
/// to the frame's size (read 1 KiB per syscall: a few more reads for a
/// large status report, 1 KiB less for every idle agent).
fn ws_config(ds: &Downstream) -> WebSocketConfig {
    let max = ds.settings.max_message_size;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}
