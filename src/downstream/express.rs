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
//!
//! The socket also notes where the agent's messages end in what it hands
//! the session's WebSocket ([`MessageBoundaries`]), so the session can tell
//! when that WebSocket holds nothing unread, and swap its buffers (grown
//! to the largest message it ever held) for small ones.

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
use crate::protocol::ws_boundaries::MessageBoundaries;
use crate::relay::agent::Express;
use crate::relay::{AgentShared, Inbound};

/// The agent's socket, shared by its session (as the stream under its
/// WebSocket) and its express lane.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct SharedSocket<S>(Arc<Mutex<Socket<S>>>);

struct Socket<S> {
    io: S,
    /// Whole frames accepted but not yet taken by the socket, in order.
    pending: BytesMut,
    /// The stream's own flush is pending (TLS holds records of its own):
    /// a write now could replace the waker of the session waiting on it.
    unflushed: bool,
    /// A lane write failed: the session is told on its next write or flush,
    /// so it closes the agent.
    failed: Option<io::ErrorKind>,
    /// Where messages end in the bytes read so far.
    boundaries: MessageBoundaries,
}

impl<S> Clone for SharedSocket<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: AgentIo> SharedSocket<S> {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(io: S) -> Self {
        Self(Arc::new(Mutex::new(Socket {
            io,
            pending: BytesMut::new(),
            unflushed: false,
            failed: None,
            boundaries: MessageBoundaries::default(),
        })))
    }

    /// Bytes the agent sent that were read before the socket was shared
    /// (behind the upgrade request), handed to the WebSocket first.
    pub(crate) fn read_before(&self, bytes: &[u8]) {
        self.0.lock().boundaries.observe(bytes);
    }

    /// The WebSocket over this socket, having yielded `taken` messages,
    /// holds no byte unread and none unwritten: a fresh one in its place
    /// would lose nothing.
    pub(crate) fn quiet(&self, taken: u32) -> bool {
        let socket = self.0.lock();
        socket.boundaries.drained(taken) && socket.pending.is_empty() && !socket.unflushed && socket.failed.is_none()
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
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.pending.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Drained: let the allocation go (`advance` hides its size), so an
        // idle agent does not keep the buffer of one large message.
        self.pending = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Drains `pending`, then flushes the stream itself.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        self.unflushed = flushed.is_pending();
        flushed
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
        let mut socket = self.0.lock();
        let before = buf.filled().len();
        let read = Pin::new(&mut socket.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            socket.boundaries.observe(&buf.filled()[before..]);
        }
        read
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
        self.0.lock().flush(cx)
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
        // A closing agent is sent nothing more (as its session would not).
        if agent.is_closing() || self.ds.capture.is_enabled() || needs_filter(relay, &msg) {
            return Err(msg);
        }
        let mut socket = self.socket.0.lock();
        if !socket.is_free() {
            return Err(msg);
        }
        let frame = pipeline::replayed_frame(relay, agent, &msg);
        let written = socket.write_now(&frame);
        drop(socket);
        if written != Written::Out {
            agent.ring_flush(); // the session writes the rest, or meets the error
        }
        if written != Written::Failed {
            pipeline::delivered(frame.len(), msg.received);
        }
        Ok(())
    }
}

/// Whether some policy's filter would be called for `msg` (the session
/// runs that phase). Asked before the frame's first-reply fields are
/// spliced in (that claims them), so a policy that wants those fields is
/// called for every message, as if they were there.
fn needs_filter(relay: &crate::relay::Relay, msg: &Inbound) -> bool {
    use crate::protocol::framing;
    use crate::protocol::wire::field::server::{CAPABILITIES, CUSTOM_CAPABILITIES};
    let set = relay.policies.snapshot();
    if !set.filters(Direction::ServerToAgent) {
        return false;
    }
    let spliced = 1 << CAPABILITIES | 1 << CUSTOM_CAPABILITIES;
    let payload = framing::payload(&msg.frame).unwrap_or_default();
    set.filters_message(Direction::ServerToAgent, &payload, spliced)
}

/// What became of a frame written on the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// The socket took all of it.
    Out,
    /// Some waits in `pending` (or in the stream's own buffer).
    Partly,
    /// The socket failed; the session is told on its next write.
    Failed,
}

impl<S: AgentIo> Socket<S> {
    /// Whether the lane may write now. Not while the agent is behind: the
    /// session writes in turn, and it may be waiting on the socket, whose
    /// waker a write here would replace.
    fn is_free(&self) -> bool {
        self.pending.is_empty() && !self.unflushed && self.failed.is_none()
    }

    /// Writes one binary frame around `payload` from outside the session
    /// task, without waiting. Call only when [`Socket::is_free`].
    fn write_now(&mut self, payload: &[u8]) -> Written {
        let mut header = [0u8; MAX_HEADER];
        let header = binary_frame_header(payload.len(), &mut header);
        // Nothing to wake: if the socket is full, the session is rung and
        // polls it again with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let flushed = self.accept(&mut cx, header, payload).map(|()| self.flush(&mut cx));
        match flushed {
            Ok(Poll::Ready(Ok(()))) => Written::Out,
            Ok(Poll::Pending) => Written::Partly,
            Ok(Poll::Ready(Err(e))) | Err(e) => {
                self.failed = Some(e.kind());
                Written::Failed
            }
        }
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

    /// A socket that takes `room` more bytes, then would block; fails
    /// every write once `broken`; holds its flush while `holding`.
    #[derive(Default)]
    struct Wire {
        out: Vec<u8>,
        room: usize,
        broken: bool,
        holding: bool,
    }

    impl AsyncRead for Wire {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = buf.len().min(self.room);
            if n == 0 {
                return Poll::Pending;
            }
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.holding {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn socket(wire: Wire) -> Socket<Wire> {
        Socket {
            io: wire,
            pending: BytesMut::new(),
            unflushed: false,
            failed: None,
            boundaries: MessageBoundaries::default(),
        }
    }

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn a_frame_the_socket_cannot_take_waits_whole_and_later_frames_follow_it() {
        let mut s = socket(Wire { room: 5, ..Default::default() });
        assert_eq!(s.write_now(b"hello world"), Written::Partly);
        assert!(!s.is_free(), "the lane waits while bytes are pending");
        // The session's next frame goes behind it, not into the socket.
        s.accept(&mut noop(), &[], b"XYZ").unwrap();
        s.io.room = 1000;
        assert!(s.flush(&mut noop()).is_ready());
        let mut want = vec![0x82, 11];
        want.extend_from_slice(b"hello worldXYZ");
        assert_eq!(s.io.out, want, "every byte once, in order");
        assert_eq!(s.pending.capacity(), 0, "the drained buffer is let go");
        assert!(s.is_free());
    }

    #[test]
    fn a_failed_lane_write_is_reported_to_the_session() {
        let mut s = socket(Wire { broken: true, ..Default::default() });
        assert_eq!(s.write_now(b"reply"), Written::Failed);
        assert!(!s.is_free());
        s.io.broken = false; // even if the socket recovers, the loss is reported
        match s.flush(&mut noop()) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected the lane's error, got {other:?}"),
        }
    }

    #[test]
    fn the_lane_waits_while_the_stream_holds_a_flush() {
        // TLS keeps records of its own: a pending flush is not `pending`.
        let mut s = socket(Wire { room: 1000, holding: true, ..Default::default() });
        assert_eq!(s.write_now(b"reply"), Written::Partly);
        assert!(s.pending.is_empty());
        assert!(!s.is_free(), "the session may be waiting on that flush");
        s.io.holding = false;
        assert!(s.flush(&mut noop()).is_ready());
        assert!(s.is_free());
    }

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
