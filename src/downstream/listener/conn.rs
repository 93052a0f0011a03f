//! One agent connection's HTTP/1.1 life and its deadlines.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, so it cannot give that wait a longer limit of
//! its own; the deadlines are kept here instead, from the connection's phase:
//! - waiting for a request head: `header_timeout`, from the connection's
//!   start (a silent socket) or from the first byte of a later request (a
//!   trickling one is not saved by trickling);
//! - between requests: `idle_timeout`;
//! - while a request is handled, and once upgraded to a WebSocket: none here
//!   (the handshake and the session have their own).
//!
//! At shutdown a connection waiting for a request closes at once; one with a
//! request in flight (a handshake, a poll) answers it first, then closes.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::limits::{Admitted, Limits, Refusal, SourceSlot, Turn};
use crate::downstream::trust::PeerCertificate;
use crate::downstream::{router, Downstream};
use crate::tls::BoxedIo;

#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

const HEAD: u64 = 0;
const BUSY: u64 = 1;
const IDLE: u64 = 2;
const AGENT: u64 = 3;

/// The connection's phase, shared by the socket wrapper (which notices the
/// next request's first byte), the service and the deadline keeper. The
/// low byte is the phase; the rest counts changes, so a deadline set for an
/// earlier phase is never mistaken for the current one.
struct Phase {
    state: AtomicU64,
    changed: Notify,
    /// The source slot, returned when the connection becomes an agent, and
    /// the turn (`max_handshaking`), returned at its first answer: a refused
    /// keep-alive socket must not keep others waiting.
    connecting: Mutex<(Option<SourceSlot>, Option<Turn>)>,
}

impl Phase {
    fn get(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }

    fn set(&self, phase: u64) {
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| Some(next(s, phase)));
        self.changed.notify_one();
    }

    /// IDLE → HEAD, only if still idle.
    fn request_started(&self) {
        let s = self.get();
        if s & 0xff == IDLE
            && self.state.compare_exchange(s, next(s, HEAD), Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// After each response: a 101 (WebSocket) or 2xx (HTTP poll) means the
    /// server admitted an agent here, so the socket stops counting against
    /// its source's share of connections still connecting.
    fn answered(&self, status: http::StatusCode) {
        let returned = {
            let mut connecting = self.connecting.lock();
            let turn = connecting.1.take();
            let admitted = status == http::StatusCode::SWITCHING_PROTOCOLS || status.is_success();
            (turn, admitted.then(|| connecting.0.take()))
        };
        drop(returned); // outside the lock: the slot takes a lock of its own
        self.set(if status == http::StatusCode::SWITCHING_PROTOCOLS { AGENT } else { IDLE });
    }
}

fn next(state: u64, phase: u64) -> u64 {
    ((state >> 8).wrapping_add(1) << 8) | phase
}

/// The socket, holding the budget permit for as long as it is open (through
/// a WebSocket session too), and telling the phase when a request begins.
/// hyper serves it as `TokioIo<Tracked>`; a WebSocket session takes it back
/// from the upgrade with that type (`hyper::upgrade::Upgraded::downcast`).
pub(crate) struct Tracked {
    io: BoxedIo,
    phase: Arc<Phase>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.phase.get() & 0xff == IDLE {
            self.phase.request_started();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection (after TLS) until it closes, is upgraded, or
/// misses a deadline.
pub(super) async fn serve(
    ds: Arc<Downstream>,
    io: BoxedIo,
    remote: SocketAddr,
    admitted: Admitted,
    peer_cert: Option<PeerCertificate>,
    timeouts: Timeouts,
    limits: Arc<Limits>,
) {
    let start = Instant::now();
    let shutdown = ds.shutdown.clone();
    let (mut draining, mut closing) = (false, false);
    let Admitted { permit, source, turn } = admitted;
    let connecting = Mutex::new((Some(source), turn));
    let phase = Arc::new(Phase { state: AtomicU64::new(HEAD), changed: Notify::new(), connecting });
    let io = Tracked { io, phase: phase.clone(), _permit: permit };
    let on_request = phase.clone();
    let service = service_fn(move |mut req| {
        let (ds, phase, peer_cert) = (ds.clone(), on_request.clone(), peer_cert.clone());
        async move {
            phase.set(BUSY);
            if let Some(cert) = peer_cert {
                req.extensions_mut().insert(cert);
            }
            let response = router::handle(ds, req, remote).await;
            phase.answered(response.status());
            Ok::<_, Infallible>(response)
        }
    });
    let conn = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .header_read_timeout(None) // ours, above
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);

    let mut seen = phase.get();
    let mut deadline = Some(start + timeouts.header);
    loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "agent HTTP connection ended with an error");
                }
                return;
            }
            _ = phase.changed.notified() => {}
            _ = shutdown.cancelled(), if !draining => draining = true,
            _ = expired => {
                if phase.get() == seen {
                    if seen & 0xff == HEAD {
                        limits.note(Refusal::HeaderTimeout, remote, "none");
                    } else {
                        tracing::debug!(%remote, "idle HTTP connection closed");
                    }
                    return; // dropping the connection closes the socket
                }
            }
        }
        let now = phase.get();
        if draining {
            match now & 0xff {
                HEAD => return, // no request yet, or only part of its head
                // Answered (maybe not flushed yet): hyper writes the answer,
                // then closes. Not while busy: on a 101 it would add
                // `Connection: close`.
                IDLE if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ => {}
            }
        }
        if now != seen {
            seen = now;
            deadline = match now & 0xff {
                HEAD => Some(Instant::now() + timeouts.header),
                IDLE => Some(Instant::now() + timeouts.idle),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn the_turn_goes_back_at_the_first_answer_the_source_slot_when_admitted() {
        let limits = Limits::new(10, 1, 1);
        let ip = "192.0.2.1".parse().unwrap();
        let source = limits.source(ip).unwrap();
        let turn = limits.turn(ip).await;
        let phase = Phase {
            state: AtomicU64::new(HEAD),
            changed: Notify::new(),
            connecting: Mutex::new((Some(source), Some(turn))),
        };
        phase.answered(http::StatusCode::UNAUTHORIZED);
        assert!(limits.turn(ip).now_or_never().is_some(), "a refused socket keeps no one waiting");
        assert!(limits.source(ip).is_err(), "but still counts as connecting from its source");
        phase.answered(http::StatusCode::SWITCHING_PROTOCOLS);
        assert!(limits.source(ip).is_ok(), "an agent no longer counts against its source");
    }
}
