//! Response builders shared by the WebSocket and plain-HTTP paths: the
//! text answers, and the answer to an agent the gateway could not admit
//! (with its rate-limited log line).

use std::net::SocketAddr;
use std::sync::LazyLock;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::log_every::{LogEvery, REFUSAL_LOG_EVERY};
use super::Downstream;
use crate::policy::Transport;
use crate::relay::AdmitError;
use crate::telemetry::metrics as m;

pub(crate) type Body = Full<Bytes>;

/// Answers an agent the gateway could not admit, with the server's status
/// and headers on rejection, or 502/503/504 with `Retry-After`.
pub(crate) fn refuse(ds: &Downstream, e: AdmitError, remote: SocketAddr, transport: Transport) -> Response<Body> {
    // `status()` lets only a 4xx/5xx of the server's through (else 502).
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let t = transport_label(transport);
    metrics::counter!(m::HANDSHAKES, "outcome" => e.outcome(), "status" => status.as_str().to_owned(), "transport" => t)
        .increment(1);
    log_refusal(&REFUSALS, &e, status, remote, t);
    if let AdmitError::PolicyRejected(rejection) = e {
        return rejected_by_policy(status, rejection);
    }
    let mut r = plain(status, e.to_string());
    match &e {
        AdmitError::Rejected(result) => copy_headers(r.headers_mut(), &result.response_headers),
        AdmitError::PolicyRejected(_) => unreachable!("answered above"),
        // A 502 (unreadable connectResult) is the server's fault too: ask the
        // agent to back off rather than retry at once.
        AdmitError::NoUpstream | AdmitError::Timeout | AdmitError::BadResult(_) | AdmitError::PolicyRefused(_) => {
            let secs = ds.settings.retry_after.as_secs().max(1).to_string();
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
        }
    }
    r
}

/// A policy's `admit` rejection, as it asked (status, headers, body:
/// checked by the policy chain).
fn rejected_by_policy(status: StatusCode, rejection: crate::policy::Rejection) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::new(Bytes::from(rejection.body)))
        .expect("static response parts are valid");
    for (k, v) in rejection.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            r.headers_mut().append(k, v);
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

pub(super) fn copy_headers(into: &mut http::HeaderMap, from: &std::collections::BTreeMap<String, String>) {
    for (k, v) in from {
        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            (Ok(k), Ok(v)) => {
                into.insert(k, v);
            }
            _ => tracing::debug!(header = %k, "server sent an invalid response header; skipped"),
        }
    }
}

fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::WebSocket => "websocket",
        Transport::Http => "http",
    }
}

/// A text answer (one line, newline-terminated).
pub(crate) fn plain(status: StatusCode, body: impl Into<String>) -> Response<Body> {
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
    use std::sync::Arc;
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
