//! One agent HTTP request: the connect handshake, then the WebSocket upgrade.
//!
//! The gateway makes no authentication decision of its own: it forwards the
//! request's headers and address to the server and answers the agent with
//! whatever the server decided (status and headers on reject).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::listener::log_every::{LogEvery, REFUSAL_LOG_EVERY};
use super::session::Session;
use super::trust::PeerCertificate;
use super::Downstream;
use crate::policy::Transport;
use crate::relay::{AdmitError, AdmitRequest};
use crate::telemetry::metrics as m;

pub type Body = Full<Bytes>;

pub async fn handle(ds: Arc<Downstream>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    if let Some(path) = &ds.settings.path {
        if req.uri().path() != path {
            return plain(StatusCode::NOT_FOUND, format!("not found; OpAMP is served at {path}"));
        }
    }
    if is_websocket_upgrade(&req) {
        return websocket(ds, req, remote).await;
    }
    match *req.method() {
        Method::POST => super::http::handle(ds, req, remote).await,
        _ => {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "OpAMP: send a WebSocket upgrade (GET) or an application/x-protobuf POST",
            );
            r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
            r
        }
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.method() == Method::GET && has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket")
}

async fn websocket(ds: Arc<Downstream>, mut req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
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
    let admission = ds.relay.admit(&admit).await;
    metrics::histogram!(m::HANDSHAKE_SECONDS).record(started.elapsed().as_secs_f64());
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
    let ds2 = ds.clone();
    ds.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config(&ds2))).await;
                // Decided only now that the server accepted these headers.
                let identity = ds2.settings.gateways.identify(&admit.headers, peer_cert.as_ref());
                if identity.is_gateway() {
                    tracing::info!(%remote, "downstream gateway connected");
                }
                Session::new(ds2, admission, admit, identity).run(ws).await;
            }
            Err(e) => tracing::debug!(%remote, error = %e, "agent went away during the upgrade"),
        }
    });
    response
}

/// Small buffers: an idle agent should cost kilobytes, not the 128 KiB
/// tungstenite reserves by default. Large messages still grow them on demand.
fn ws_config(ds: &Downstream) -> WebSocketConfig {
    let max = ds.settings.max_message_size;
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Answers an agent the gateway could not admit, with the server's status
/// and headers on rejection, or 502/503/504 with `Retry-After`.
pub(crate) fn refuse(ds: &Downstream, e: AdmitError, remote: SocketAddr, transport: Transport) -> Response<Body> {
    // `status()` lets only a 4xx/5xx of the server's through (else 502).
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let t = transport_label(transport);
    metrics::counter!(m::HANDSHAKES, "outcome" => e.outcome(), "status" => status.as_str().to_owned(), "transport" => t)
        .increment(1);
    log_refusal(&REFUSALS, &e, status, remote, t);
    let mut r = plain(status, e.to_string());
    match &e {
        AdmitError::Rejected(result) => copy_headers(r.headers_mut(), &result.response_headers),
        // A 502 (unreadable connectResult) is the server's fault too: ask the
        // agent to back off rather than retry at once.
        AdmitError::NoUpstream | AdmitError::Timeout | AdmitError::BadResult(_) | AdmitError::PolicyRefused(_) => {
            let secs = ds.settings.retry_after.as_secs().max(1).to_string();
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
        }
    }
    r
}

/// Refusal log lines, one per (outcome, transport) per interval, as for the
/// listener's refusals: the handshake counter carries the volume.
static REFUSALS: LazyLock<LogEvery<(&'static str, &'static str)>> = LazyLock::new(|| LogEvery::new(REFUSAL_LOG_EVERY));

fn log_refusal(
    log: &LogEvery<(&'static str, &'static str)>,
    e: &AdmitError,
    status: StatusCode,
    remote: SocketAddr,
    transport: &'static str,
) {
    // A reject that is no 4xx/5xx is the server's mistake: said at warn.
    let odd = match e {
        AdmitError::Rejected(r) if r.http_status_code != 0 && r.http_status_code != status.as_u16() => {
            Some(r.http_status_code)
        }
        _ => None,
    };
    let kind = if odd.is_some() { "rejected_bad_status" } else { e.outcome() };
    let Some(suppressed) = log.check((kind, transport)) else { return };
    let every = log.every().as_secs();
    match odd {
        Some(server_status) => tracing::warn!(
            %remote, server_status, status = status.as_u16(), transport, suppressed_since_last = suppressed,
            "the server rejected an agent with a status that is not 4xx/5xx; answered 502 \
             (logged at most once per {every}s)"
        ),
        None => tracing::info!(
            %remote, status = status.as_u16(), transport, reason = %e, suppressed_since_last = suppressed,
            "agent not admitted (logged at most once per {every}s per outcome)"
        ),
    }
}

/// The request's headers as the server should see them: Go-style, without
/// `Host` (Go's `http.Request.Header`, what the reference forwards, leaves
/// it out), and without what belongs to this hop rather than to the agent —
/// hop-by-hop headers (RFC 9110 §7.6.1, including those the `Connection`
/// header names), the WebSocket handshake's own, and the gateway's own
/// `X-Opamp-Gateway-*`, which an agent must not be able to forge.
pub(crate) fn forwarded_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let named_by_connection: Vec<String> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    h.iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            !(HOP_BY_HOP.contains(&n)
                || n.starts_with("sec-websocket-")
                || n.starts_with("x-opamp-gateway-")
                || named_by_connection.iter().any(|c| c == n))
        })
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect()
}

/// Never forwarded: `Host`, and the hop-by-hop headers of RFC 9110 §7.6.1
/// plus the proxy ones RFC 2616 listed.
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn copy_headers(into: &mut http::HeaderMap, from: &std::collections::BTreeMap<String, String>) {
    for (k, v) in from {
        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            (Ok(k), Ok(v)) => {
                into.insert(k, v);
            }
            _ => tracing::debug!(header = %k, "server sent an invalid response header; skipped"),
        }
    }
}

pub(crate) fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::WebSocket => "websocket",
        Transport::Http => "http",
    }
}

pub fn plain(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::protocol::handshake::ConnectResult;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An auth storm is one line per outcome per interval, not one per agent.
    #[test]
    fn refusals_are_logged_once_per_outcome_per_interval() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).without_time().finish();
        let log = LogEvery::new(Duration::from_secs(3600));
        let remote: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let odd = AdmitError::Rejected(ConnectResult { http_status_code: 200, ..Default::default() });
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                log_refusal(&log, &AdmitError::Timeout, StatusCode::GATEWAY_TIMEOUT, remote, "websocket");
                log_refusal(&log, &odd, StatusCode::BAD_GATEWAY, remote, "websocket");
            }
            log_refusal(&log, &AdmitError::NoUpstream, StatusCode::SERVICE_UNAVAILABLE, remote, "websocket");
        });
        let text = String::from_utf8(out.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(text.matches("agent not admitted").count(), 2, "{text}");
        let warn = text.lines().find(|l| l.contains("WARN")).expect("the odd status is a warning");
        assert!(warn.contains("server_status=200") && warn.contains("status=502"), "{warn}");
    }
}
