//! The express lane: a link writes a server message straight to its
//! agent's socket.
//!
//! Without it, every reply is queued, the agent's session task is woken, and
//! it writes the frame. With many agents per link, a link reading a batch of
//! replies wakes as many sessions, and tokio hands half of them to another
//! worker thread (a futex wake and two context switches). The lane skips
//! that wake when it can: the socket is shared, behind a lock, between the
//! session (which reads it, and writes what it must: pongs, pings, replies
//! that need its filter phase, the close) and the lane.
//!
//! Order is what makes it safe. Every byte goes through [`SharedSocket`]'s
//! one `pending` buffer, whole frames only, in the order they were offered;
//! the lane is taken only when nothing is queued for the agent or being
//! written by its session ([`crate::relay::agent::Express`]), when no
//! policy filters server messages and capture is off (the session's path
//! runs those), and when the socket has taken every earlier byte. Bytes the
//! socket does not take at once wait in `pending`, and the session is rung
//! to write them under its `listener.write_timeout`, as it writes its own.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pipeline;
use super::session::AgentIo;
use super::Downstream;
use crate::policy::Direction;
use crate::relay::agent::Express;
use crate::relay::{AgentShared, Inbound};

/// `pending` keeps its allocation up to this size once drained: an idle
/// agent should not hold the buffer of the one large message it was sent.
const KEEP_PENDING: usize = 4096;

/// The agent's socket, shared by its session (as the stream under its
/// WebSocket) and its express lane.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct SharedSocket<S>(Arc<Mutex<Socket<S>>>);

struct Socket<S> {
    io: S,
    /// Whole frames accepted but not yet taken by the socket, in order.
    pending: BytesMut,
}

impl<S> Clone for SharedSocket<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: AgentIo> SharedSocket<S> {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(io: S) -> Self {
        Self(Arc::new(Mutex::new(Socket { io, pending: BytesMut::new() })))
    }

    /// The lane for the agent behind this socket.
    pub(crate) fn lane(self, ds: Arc<Downstream>) -> Box<dyn Express>
    where
        S: 'static,
    {
        Box::new(Lane { ds, socket: self })
    }
}

impl<S: AgentIo> Socket<S> {
    /// Writes `pending` out until it is empty or the socket is full.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.pending.capacity() > KEEP_PENDING {
            self.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes one frame, `head` then `body`, keeping what the socket does
    /// not take in `pending`. Never refuses bytes: a frame is accepted whole
    /// or not at all, so frames from the session and the lane cannot
    /// interleave.
    fn accept(&mut self, cx: &mut Context<'_>, head: &[u8], body: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(head);
            self.pending.extend_from_slice(body);
            return Ok(());
        }
        let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &[IoSlice::new(head), IoSlice::new(body)]) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        let in_head = written.min(head.len());
        self.pending.extend_from_slice(&head[in_head..]);
        self.pending.extend_from_slice(&body[written - in_head..]);
        Ok(())
    }
}

impl<S: AgentIo> AsyncRead for SharedSocket<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_read(cx, buf)
    }
}

/// The session's writes (through tungstenite) are accepted whole, behind
/// whatever the lane left pending; `poll_flush` is where they wait for the
/// socket, and where the session's write deadline applies.
impl<S: AgentIo> AsyncWrite for SharedSocket<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut socket = self.0.lock();
        if let Poll::Ready(Err(e)) = socket.drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(socket.accept(cx, &[], buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket = self.0.lock();
        std::task::ready!(socket.drain(cx))?;
        Pin::new(&mut socket.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket = self.0.lock();
        std::task::ready!(socket.drain(cx))?;
        Pin::new(&mut socket.io).poll_shutdown(cx)
    }
}

struct Lane<S> {
    ds: Arc<Downstream>,
    socket: SharedSocket<S>,
}

impl<S: AgentIo + 'static> Express for Lane<S> {
    fn try_deliver(&self, agent: &AgentShared, msg: Inbound) -> Result<(), Inbound> {
        let relay = &self.ds.relay;
        if self.ds.capture.is_enabled() || relay.policies.snapshot().filters(Direction::ServerToAgent) {
            return Err(msg);
        }
        let mut socket = self.socket.0.lock();
        if !socket.pending.is_empty() {
            return Err(msg); // the agent is behind: its session writes in turn
        }
        let frame = pipeline::replayed_frame(relay, agent, &msg);
        let mut header = [0u8; MAX_HEADER];
        let header = binary_frame_header(frame.len(), &mut header);
        // Nothing to wake: if the socket is full, the session is rung and
        // polls it again with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let flushed = match socket.accept(&mut cx, header, &frame) {
            Ok(()) => socket.pending.is_empty() && Pin::new(&mut socket.io).poll_flush(&mut cx).is_ready(),
            Err(_) => false, // the session meets the error on its next write
        };
        drop(socket);
        if !flushed {
            agent.ring_flush();
        }
        pipeline::delivered(frame.len(), msg.received);
        Ok(())
    }
}

/// The longest header of an unmasked frame: 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

/// The header of one unmasked, final binary frame of `len` bytes: what a
/// server sends (RFC 6455 §5.2).
fn binary_frame_header(len: usize, out: &mut [u8; MAX_HEADER]) -> &[u8] {
    out[0] = 0x82; // FIN, opcode 2 (binary)
    if len < 126 {
        out[1] = len as u8;
        &out[..2]
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        &out[..4]
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        &out[..10]
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    use super::*;

    #[test]
    fn frame_headers_match_tungstenites_encoding() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 300_000] {
            let payload = vec![7u8; len];
            let mut theirs = Vec::new();
            Frame::message(
                payload.clone(),
                tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Binary,
                ),
                true,
            )
            .format(&mut theirs)
            .unwrap();
            let mut buf = [0u8; MAX_HEADER];
            let mut ours = binary_frame_header(len, &mut buf).to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(ours, theirs, "frame of {len} bytes");
        }
    }
}
