//! One connected WebSocket agent.
//!
//! A single task owns the socket and selects over: the agent's frames, its
//! doorbell (server messages queued for it, its link's loss, frames a dead
//! link handed back, the rebalancer's request to move, a close or shutdown),
//! the failover itself, and keepalive. A failover is one
//! more branch, not a detour: while the agent waits for a link (a server
//! restart) its socket is still read and pinged, and what it sends waits in
//! its bounded failover queue.
//! The session is the socket's only reader. Its links may write server
//! messages to it directly, through the express lane ([`super::express`]),
//! when nothing is queued ahead of them; otherwise the session writes them
//! in turn, and it always writes what needs its filter phase, its pings and
//! its close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::express::SharedSocket;
use super::log_every::{LogEvery, REFUSAL_LOG_EVERY};
use super::websocket::READ_BUFFER;
use super::{pipeline, uid_guard, Downstream};
use crate::policy::lifecycle::SessionTicket;
use crate::protocol::compose::{self, ErrorKind};
use crate::protocol::AgentFrame;
use crate::relay::agent::Inbox;
use crate::relay::deadline;
use crate::relay::doorbell::Rings;
use crate::relay::{
    budget, Admission, AdmitError, AdmitRequest, AgentShared, CloseReason, Held, Identity, Inbound, LinkLease,
    MoveKind, Relay,
};
use crate::telemetry::metrics as m;

/// The agent's socket. Generic so tests and fuzzers can drive a session
/// over an in-memory stream; in the gateway it is a hyper upgrade.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentIo for T {}

#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Session {
    ds: Arc<Downstream>,
    agent: Arc<AgentShared>,
    inbox: Inbox,
    lease: LinkLease,
    /// Kept to re-run the handshake on another link (shared with the
    /// relay's reroute pass, which asks the policies where it now goes).
    admit: Arc<AdmitRequest>,
    /// Every uid this connection spoke for, and whether it said goodbye.
    /// One for an ordinary agent (plus any the server assigned it); many
    /// only for a trusted downstream gateway.
    uids: uid_guard::SpokenFor,
    /// The uid named by the message that broke a rule, for the
    /// `error_response` sent before closing when the session has none yet.
    offending_uid: Option<Bytes>,
    last_seen: Instant,
    /// `listener.max_buffered_bytes` is closed: start no new message.
    budget_open: watch::Receiver<bool>,
    /// A message read while the budget had no room, waiting for its share.
    /// The socket is not read meanwhile. Boxed: rare, and the session
    /// would otherwise carry its room for life.
    waiting: Option<Box<(Bytes, Instant, budget::Wait)>>,
    /// The re-handshake after the agent's link died, while it runs.
    failover: Option<Failover>,
    /// Listed with the rebalancer while the session lives.
    _movable: Movable,
    /// The policies' `on-disconnect` when the session ends.
    lifecycle: SessionTicket,
    /// A message larger than [`READ_BUFFER`] has grown the WebSocket's
    /// buffers, and they have not been swapped for small ones yet.
    buffers_grown: bool,
    /// Messages the WebSocket yielded (data and control, wrapping): what
    /// [`SharedSocket::quiet`] compares with the messages it saw arrive.
    messages_taken: u32,
}

/// Failed planned moves, one line per kind (rejected by the server, or
/// not) per interval: a reload can send a whole fleet at a server that
/// refuses it.
static MOVE_REFUSALS: std::sync::LazyLock<LogEvery<bool>> =
    std::sync::LazyLock::new(|| LogEvery::new(REFUSAL_LOG_EVERY));

/// A re-admission on any link, within `server.failover_wait`.
type Failover = Pin<Box<dyn Future<Output = Result<Admission, AdmitError>> + Send>>;

/// Keeps a session in [`Relay::movable`] until it is dropped.
struct Movable {
    relay: Arc<Relay>,
    id: u64,
}

impl Movable {
    fn register(relay: &Arc<Relay>, agent: &Arc<AgentShared>, admit: &Arc<AdmitRequest>) -> Self {
        relay.movable.register(agent, admit);
        Self { relay: relay.clone(), id: agent.id }
    }
}

impl Drop for Movable {
    fn drop(&mut self) {
        self.relay.movable.unregister(self.id);
    }
}

impl Session {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn new(ds: Arc<Downstream>, admission: Admission, admit: AdmitRequest, identity: Identity) -> Self {
        let (agent, inbox) =
            AgentShared::new(ds.next_id(), ds.relay.settings.agent_queue, ds.relay.settings.failover_queue, identity);
        let lifecycle = admission.ticket.start(agent.id, None, upstream_name(&ds.relay, &admission.lease));
        let budget_open = ds.relay.budget.watch();
        agent.set_link(admission.lease.index());
        let admit = Arc::new(admit);
        let movable = Movable::register(&ds.relay, &agent, &admit);
        let session = Self {
            ds,
            agent,
            inbox,
            lease: admission.lease,
            admit,
            uids: uid_guard::SpokenFor::default(),
            offending_uid: None,
            last_seen: Instant::now(),
            budget_open,
            waiting: None,
            failover: None,
            _movable: movable,
            lifecycle,
            buffers_grown: false,
            messages_taken: 0,
        };
        check_link(&session.agent, &session.lease);
        session
    }

    /// Lets the agent's links write server messages straight to `socket`,
    /// the one under the session's WebSocket (see [`super::express`]).
    /// Taken by value: the socket must close when the session and its lane
    /// are gone, not linger in a handle held elsewhere.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    pub fn with_express<S: AgentIo + 'static>(mut self, socket: SharedSocket<S>) -> Self {
        self.inbox.open_express(socket.lane(self.ds.clone()));
        self
    }

    /// The session's whole life: it ends when the agent, the gateway or a
    /// rule closes it.
    ///
    /// Not an `async fn`: one would move `self` and `ws` from its arguments
    /// into locals of its own, and its future (every idle agent's task)
    /// would hold both twice, about 750 bytes more per agent. An `async
    /// move` block uses what it captured in place.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn run<S: AgentIo>(mut self, mut ws: WebSocketStream<SharedSocket<S>>) -> impl Future<Output = ()> + Send {
        async move {
            let gauge = metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "websocket");
            gauge.increment(1.0);
            let reason = self.pump(&mut ws).await;
            // What follows (a parting message, the close) is the last thing
            // the agent is sent: no server message may follow it.
            self.inbox.close_express();
            if let Some(frame) = self.parting_message(reason) {
                // Best effort: the agent learns why before the close frame.
                let _ = tokio::time::timeout(self.ds.settings.write_timeout, ws.send(Message::Binary(frame))).await;
            }
            let write_timeout = self.ds.settings.write_timeout;
            if reason == CloseReason::Peer {
                // If the agent sent a close frame, tungstenite has queued its
                // echo: flushing sends it, so the agent sees a clean close
                // rather than 1006.
                let _ = tokio::time::timeout(write_timeout, SinkExt::close(&mut ws)).await;
            } else {
                let frame = CloseFrame { code: CloseCode::from(reason.close_code()), reason: reason.as_str().into() };
                let _ = tokio::time::timeout(write_timeout, ws.close(Some(frame))).await;
            }
            let uid = self.uids.first().map(|u| u.as_bytes().clone());
            let upstream = upstream_name(&self.ds.relay, &self.lease);
            std::mem::take(&mut self.lifecycle).end(reason.as_str(), uid, Some(upstream));
            Box::pin(self.release()).await;
            gauge.decrement(1.0);
            metrics::counter!(m::AGENTS_CLOSED, "reason" => reason.as_str(), "transport" => "websocket").increment(1);
            tracing::debug!(agent = self.agent.id, reason = reason.as_str(), "agent session ended");
            if reason != CloseReason::Peer {
                drop(self); // the lease and routes go now, not after the linger
                linger(&mut ws, write_timeout.min(CLOSE_LINGER)).await;
            }
        }
    }

    async fn pump<S: AgentIo>(&mut self, ws: &mut WebSocketStream<SharedSocket<S>>) -> CloseReason {
        let keepalive = self.ds.settings.keepalive;
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        // Shutdown reaches a running session as a close on its doorbell
        // (`Movable::close_all_on`); one that registered after that sweep
        // sees the token here.
        if self.ds.shutdown.is_cancelled() {
            self.agent.close(CloseReason::Shutdown);
        }
        let agent = self.agent.clone();
        loop {
            let reading = self.reading();
            // The budget's signal matters only while it keeps us from reading.
            let budget_closed = !reading && self.waiting.is_none();
            let step = tokio::select! {
                biased;
                rings = agent.rung() => self.on_rings(ws, rings).await,
                // Rare branches are boxed: an await's state is part of every
                // idle session's task, sized by its largest branch.
                admitted = run_failover(&mut self.failover) => {
                    self.failover = None;
                    Box::pin(self.on_failover(admitted)).await
                }
                held = wait_room(&mut self.waiting), if self.waiting.is_some() => Box::pin(self.on_room(held)).await,
                Ok(()) = self.budget_open.changed(), if budget_closed => Ok(()), // `reading` is re-evaluated
                msg = ws.next(), if reading => {
                    self.took(ws, &msg);
                    self.on_agent_message(msg).await
                }
                _ = ping.tick() => Box::pin(self.keepalive(ws)).await,
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// What woke the session, in order: a close wins; then a lost link,
    /// frames a dead link returned, a requested move, and the agent's queued
    /// messages.
    async fn on_rings<S: AgentIo>(&mut self, ws: &mut WebSocketStream<S>, rings: Rings) -> Result<(), CloseReason> {
        if rings.contains(Rings::CLOSING) {
            return Err(self.agent.close_reason());
        }
        if rings.contains(Rings::LINK_LOST) {
            self.on_link_change();
        }
        if rings.contains(Rings::RETURNED) {
            Box::pin(self.resend_returned()).await?;
        }
        if rings.contains(Rings::MOVE) {
            Box::pin(self.planned_move()).await?;
        }
        if rings.contains(Rings::FLUSH) {
            self.flush(ws).await?;
        }
        if rings.contains(Rings::QUEUED) {
            while let Some(msg) = self.inbox.take_to_write() {
                let delivered = self.deliver(ws, msg).await;
                self.inbox.written();
                delivered?;
            }
        }
        Ok(())
    }

    /// Writes what the express lane left for the socket to take later.
    async fn flush<S: AgentIo>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), CloseReason> {
        match deadline::within(self.ds.settings.write_timeout, SinkExt::flush(ws)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::Peer),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    /// Whether to read the socket now: not while a message waits for room in
    /// the buffer budget, nor while the budget is closed (TCP back-pressure).
    /// The budget's atomic mirror, not its channel (a lock per message);
    /// the channel is awaited only while the budget is closed.
    fn reading(&self) -> bool {
        self.waiting.is_none() && self.ds.relay.budget.is_open()
    }

    /// Notes a message the WebSocket yielded; once one larger than
    /// [`READ_BUFFER`] has grown the WebSocket's buffers (tungstenite keeps
    /// them at the largest frame's size for the connection's life: an agent
    /// that sent a 16 KiB config at connect would hold 16 KiB while idle),
    /// swaps the WebSocket for a fresh one over the same socket as soon as
    /// it holds nothing unread or unwritten.
    fn took<S: AgentIo>(&mut self, ws: &mut WebSocketStream<SharedSocket<S>>, msg: &Option<Result<Message, WsError>>) {
        let Some(Ok(msg)) = msg else { return };
        self.messages_taken = self.messages_taken.wrapping_add(1);
        // Only after a data message: reading a ping or a close, tungstenite
        // queues its answer inside the WebSocket, to go out on the next
        // write; a data message is read only after that answer was written.
        if let Message::Binary(frame) = msg {
            self.buffers_grown |= frame.len() > READ_BUFFER;
            if self.buffers_grown {
                self.release_buffers(ws);
            }
        }
    }

    /// Swaps `ws` for a fresh WebSocket over the same socket, with buffers
    /// of the configured size, if nothing would be lost (see
    /// [`SharedSocket::quiet`]). The old one's buffers go with it; a frame
    /// read through them lives on in the relay until it is delivered.
    fn release_buffers<S: AgentIo>(&mut self, ws: &mut WebSocketStream<SharedSocket<S>>) {
        if !ws.get_ref().quiet(self.messages_taken) {
            return;
        }
        // Without a handshake the stream is built at once; were it ever
        // not, the buffers simply stay until the next try.
        let fresh = WebSocketStream::from_raw_socket(ws.get_ref().clone(), Role::Server, Some(*ws.get_config()));
        if let Some(fresh) = fresh.now_or_never() {
            *ws = fresh;
            self.buffers_grown = false;
            metrics::counter!(m::AGENT_BUFFERS_RELEASED).increment(1);
        }
    }

    /// A message from the agent: takes its share of the buffer budget, or
    /// waits for it with the socket unread.
    async fn on_agent_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), CloseReason> {
        self.last_seen = Instant::now();
        let frame = match msg {
            Some(Ok(Message::Binary(frame))) => frame,
            Some(Ok(Message::Text(_))) => return Err(CloseReason::TextFrame),
            Some(Ok(Message::Close(_))) | None => return Err(CloseReason::Peer),
            Some(Ok(_)) => return Ok(()), // ping/pong: already answered by tungstenite
            Some(Err(e)) => {
                let reason = read_error_reason(&e);
                if reason != CloseReason::Peer {
                    tracing::info!(agent = self.agent.id, error = %e, reason = reason.as_str(), "agent message refused");
                }
                return Err(reason);
            }
        };
        match self.ds.relay.budget.take(frame.len()) {
            Ok(held) => self.forward(frame, self.last_seen, held).await,
            Err(wait) => {
                self.waiting = Some(Box::new((frame, self.last_seen, wait)));
                Ok(())
            }
        }
    }

    async fn on_room(&mut self, held: Held) -> Result<(), CloseReason> {
        let (frame, received, _) = *self.waiting.take().expect("only called for a waiting message");
        self.forward(frame, received, held).await
    }

    /// Validates the message, learns its uid, filters and forwards it.
    async fn forward(&mut self, frame: Bytes, received: Instant, held: Held) -> Result<(), CloseReason> {
        let parsed = AgentFrame::parse_ws(&frame).map_err(|e| {
            tracing::info!(agent = self.agent.id, error = %e, "malformed agent message");
            CloseReason::Protocol
        })?;
        if let uid_guard::Passed::Answer(frame) = self.learn_uid(&parsed)? {
            let answer = Inbound { frame, link: self.lease.index(), has_capabilities: true, received: Instant::now() };
            return self.agent.offer(answer);
        }

        pipeline::capture_up(&self.ds, &parsed, crate::policy::Transport::WebSocket);
        if let Some(frame) = pipeline::upstream_frame(&self.ds.relay, &parsed, Some(frame)).await? {
            pipeline::send_up(&self.lease, &self.agent, frame, received, held).await;
        }
        Ok(())
    }

    /// Applies the ownership rules to a message before it goes anywhere:
    /// an ordinary agent speaks for exactly one uid (the one in its first
    /// message, or one the server assigned it) and sends no gateway-capability
    /// custom messages; only a trusted downstream gateway may do either.
    fn learn_uid(&mut self, parsed: &AgentFrame) -> Result<uid_guard::Passed, CloseReason> {
        let outcome = uid_guard::check(&self.ds.relay, &self.agent, &mut self.uids, parsed);
        if let Err(refusal) = &outcome {
            self.offending_uid = parsed.uid.clone().filter(|u| !u.is_empty());
            refusal.record(self.agent.id, &self.admit.remote_addr, "websocket");
        }
        outcome.map_err(|r| r.close_reason())
    }

    /// What to tell the agent before closing it, where OpAMP has a word for
    /// it: `BAD_REQUEST` for what it sent, `UNAVAILABLE` + `retry_info` for
    /// "come back later".
    fn parting_message(&self, reason: CloseReason) -> Option<Bytes> {
        if self.agent.identity().is_gateway() {
            return None; // its agents are told by the gateway below
        }
        let uid = self.uids.first().map(|u| u.as_bytes().clone()).or_else(|| self.offending_uid.clone())?;
        let retry_after = self.ds.settings.retry_after;
        let (kind, text) = match reason {
            CloseReason::Protocol => (ErrorKind::BadRequest, "malformed message"),
            CloseReason::TextFrame => (ErrorKind::BadRequest, "OpAMP messages are binary WebSocket frames"),
            CloseReason::UidMismatch => {
                (ErrorKind::BadRequest, "this connection already speaks for another instance_uid")
            }
            CloseReason::UidInUse => (ErrorKind::BadRequest, "instance_uid is in use by another connection"),
            CloseReason::ForgedHandshake => (ErrorKind::BadRequest, "gateway custom messages are not accepted here"),
            CloseReason::NoUpstream => (ErrorKind::Unavailable { retry_after }, "no upstream server link is available"),
            CloseReason::Shutdown => (ErrorKind::Unavailable { retry_after }, "the gateway is shutting down"),
            CloseReason::SlowConsumer => {
                (ErrorKind::Unavailable { retry_after }, "the agent read too slowly and fell behind")
            }
            _ => return None,
        };
        Some(compose::error_response(&uid, kind, text, self.lease.link().server_capabilities()))
    }

    /// A server message for this agent.
    async fn deliver<S: AgentIo>(&mut self, ws: &mut WebSocketStream<S>, msg: Inbound) -> Result<(), CloseReason> {
        pipeline::capture_down(&self.ds, &msg.frame, crate::policy::Transport::WebSocket);
        let Some(frame) = pipeline::downstream_frame(&self.ds.relay, &self.agent, &msg).await? else {
            return Ok(());
        };
        let len = frame.len();
        match deadline::within(self.ds.settings.write_timeout, ws.send(Message::Binary(frame))).await {
            Ok(Ok(())) => {
                pipeline::delivered(len, msg.received);
                // Given back after the agent's next message: its answer to
                // a large config usually comes at once.
                self.buffers_grown |= len > READ_BUFFER;
                Ok(())
            }
            Ok(Err(_)) => Err(CloseReason::Peer),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    async fn keepalive<S: AgentIo>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), CloseReason> {
        let keepalive = self.ds.settings.keepalive;
        if !self.reading() {
            // Its pongs wait unread because of us, not because it is gone.
            self.last_seen = Instant::now();
        } else if self.last_seen.elapsed() > keepalive * 2 {
            return Err(CloseReason::Dead);
        }
        match deadline::within(self.ds.settings.write_timeout, ws.send(Message::Ping(Bytes::new()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::Peer),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    /// The link died: start the failover, unless it is running.
    fn on_link_change(&mut self) {
        if self.lease.is_stale() && self.failover.is_none() {
            self.failover = Some(failover(self.ds.relay.clone(), self.admit.clone()));
        }
    }

    /// The failover's outcome: the agent moves to its new link (and what it
    /// sent meanwhile follows), or is closed.
    async fn on_failover(&mut self, admitted: Result<Admission, AdmitError>) -> Result<(), CloseReason> {
        let from = self.lease.index();
        let outcome = match &admitted {
            Ok(_) => "moved",
            Err(AdmitError::Rejected(_)) => "rejected",
            Err(_) => "no_upstream",
        };
        metrics::counter!(m::AGENT_MIGRATIONS, "outcome" => outcome).increment(1);
        match admitted {
            Ok(admission) => {
                tracing::debug!(
                    agent = self.agent.id,
                    from,
                    to = admission.lease.index(),
                    "agent moved to another link"
                );
                self.adopt(admission.lease).await
            }
            Err(AdmitError::Rejected(_)) => Err(CloseReason::Rejected),
            Err(e) => {
                tracing::info!(agent = self.agent.id, from, error = %e, "no link could take the agent; closing it");
                Err(CloseReason::NoUpstream)
            }
        }
    }

    /// The rebalancer asked this agent to leave its (live, crowded) link,
    /// or the reroute pass to follow its new route. The old lease is kept
    /// until the new link has accepted the agent, so a failed move leaves it
    /// where it was. Within one upstream no goodbye is sent on the old link:
    /// the agent did not leave, and the server follows its uid. Leaving for
    /// another upstream, the old server is told each uid is gone.
    async fn planned_move(&mut self) -> Result<(), CloseReason> {
        if self.lease.is_stale() {
            self.agent.move_done(true); // failover moves it anyway
            return Ok(());
        }
        let from = self.lease.index();
        let kind = self.agent.move_kind();
        let relay = self.ds.relay.clone();
        let moved = tokio::select! {
            r = relay.admit_move(&self.admit, from, kind) => r,
            _ = self.ds.shutdown.cancelled() => return Err(CloseReason::Shutdown),
        };
        let here = self.lease.link().upstream;
        let to = moved.to;
        if kind == MoveKind::Reroute || to != here {
            let outcome = match &moved.result {
                Ok(Some(_)) => "moved",
                Ok(None) => "stayed",
                Err(AdmitError::Rejected(_)) => "rejected",
                Err(_) => "failed",
            };
            let name = relay.links.upstreams().get(to).map_or_else(String::new, |u| u.name.to_string());
            metrics::counter!(m::UPSTREAM_MIGRATIONS, "upstream" => name, "outcome" => outcome).increment(1);
        } else {
            let outcome = match &moved.result {
                Ok(Some(_)) => "moved",
                Ok(None) => "stayed",
                Err(_) => "failed",
            };
            metrics::counter!(m::REBALANCE_MOVES, "outcome" => outcome).increment(1);
        }
        match moved.result {
            Ok(Some(admission)) => {
                let old = std::mem::replace(&mut self.lease, admission.lease);
                tracing::debug!(agent = self.agent.id, from = ?old, to = ?self.lease, "agent moved");
                self.agent.move_done(true);
                let adopted = self.adopted().await;
                if old.link().upstream != self.lease.link().upstream {
                    for (uid, said_goodbye) in self.uids.iter() {
                        if !said_goodbye {
                            pipeline::report_gone(&old, uid).await;
                        }
                    }
                }
                adopted
            }
            Ok(None) => {
                self.agent.move_done(false);
                Ok(())
            }
            Err(e) => {
                if let Some(skipped) = MOVE_REFUSALS.check(matches!(e, AdmitError::Rejected(_))) {
                    let to = relay.links.upstreams().get(to).map(|u| u.name.clone());
                    tracing::warn!(
                        agent = self.agent.id,
                        from = ?self.lease,
                        to = ?to,
                        error = %e,
                        similar_since_last_line = skipped,
                        "planned move failed; the agent stays where it is \
                         (see opampgateway_upstream_migrations_total, opampgateway_rebalance_moves_total)"
                    );
                }
                self.agent.move_done(false);
                Ok(())
            }
        }
    }

    /// Switches to a lease on another link the server accepted us on.
    async fn adopt(&mut self, lease: LinkLease) -> Result<(), CloseReason> {
        self.lease = lease; // drops the old lease: its load goes down
        self.adopted().await
    }

    /// The session has just taken its new lease: watch it, ask for full
    /// state, replay what waited.
    async fn adopted(&mut self) -> Result<(), CloseReason> {
        self.agent.set_link(self.lease.index());
        check_link(&self.agent, &self.lease);
        self.request_full_state();
        self.resend_returned().await
    }

    /// After a move the server on the new link may know nothing of this
    /// agent, and opamp-go agents send only deltas after a reconnect: ask
    /// each uid on this connection for its full state.
    fn request_full_state(&self) {
        let caps = self.lease.link().server_capabilities();
        for (uid, said_goodbye) in self.uids.iter() {
            if said_goodbye {
                continue;
            }
            let frame = compose::request_full_state(uid.as_bytes(), caps);
            // Marked as carrying capabilities so no replay is spliced in.
            let msg = Inbound { frame, link: self.lease.index(), has_capabilities: true, received: Instant::now() };
            if self.agent.offer(msg).is_ok() {
                metrics::counter!(m::FULL_STATE_REQUESTS).increment(1);
            }
        }
    }

    async fn resend_returned(&mut self) -> Result<(), CloseReason> {
        pipeline::resend_returned(&self.lease, &self.agent).await;
        Ok(())
    }

    /// Forgets the agent's routes and tells the server about every uid that
    /// left without `agent_disconnect`: behind a gateway the server's stream
    /// stays open, so it cannot notice on its own. Only uids this connection
    /// still owns are reported: one the agent took over on a newer
    /// connection is alive, and a goodbye would make the server drop it.
    async fn release(&mut self) {
        self.ds.relay.forwarded.forget(self.agent.id);
        // Uids first: a server-assigned alias the agent adopted is one of
        // them, and must be reported; the rest of the aliases just go.
        for (uid, said_goodbye) in self.uids.take() {
            let owned = self.ds.relay.routes.remove(uid.as_bytes(), self.agent.id);
            if owned && !said_goodbye {
                pipeline::report_gone(&self.lease, &uid).await;
            }
        }
        for alias in self.agent.take_aliases() {
            self.ds.relay.routes.remove(&alias, self.agent.id);
        }
        // Frames still waiting for a link can no longer be delivered.
        let left = self.agent.take_returned().len() + usize::from(self.waiting.take().is_some());
        if left > 0 {
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "agent_closed")
                .increment(left as u64);
        }
    }
}

/// The name of the upstream `lease` is on, as policies know it.
pub(super) fn upstream_name(relay: &Relay, lease: &LinkLease) -> String {
    relay.links.upstreams().get(lease.link().upstream).map_or_else(String::new, |u| u.name.to_string())
}

/// Rings the agent's `LINK_LOST` if its lease is already stale. Called
/// after the session listed itself with the rebalancer or took a new lease:
/// a link lost before that was swept without it, so it looks for itself
/// (the other half of [`crate::relay::rebalance::Movable::link_lost`]'s
/// ordering argument; the fences pair).
fn check_link(agent: &AgentShared, lease: &LinkLease) {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if lease.is_stale() {
        agent.ring_link_lost();
    }
}

/// Re-runs the handshake on a live link with the original headers. With
/// every link down (a server restart) it waits, up to `server.failover_wait`,
/// for one to come back rather than disconnecting the whole fleet. Boxed: a
/// whole handshake is large, and most sessions never fail over.
fn failover(relay: Arc<Relay>, admit: Arc<AdmitRequest>) -> Failover {
    Box::pin(async move {
        let deadline = Instant::now() + relay.settings.failover_wait;
        loop {
            // Subscribed before the attempt, so a link that comes up during
            // it still counts as a reason to try again.
            let mut ups = relay.links.link_ups();
            match relay.admit(&admit).await {
                Err(AdmitError::NoUpstream)
                    if matches!(tokio::time::timeout_at(deadline, ups.changed()).await, Ok(Ok(()))) =>
                {
                    continue
                }
                other => return other,
            }
        }
    })
}

/// Resolves with the failover's outcome; pending while there is none.
async fn run_failover(failover: &mut Option<Failover>) -> Result<Admission, AdmitError> {
    match failover {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Resolves when the waiting message has its share of the budget.
async fn wait_room(waiting: &mut Option<Box<(Bytes, Instant, budget::Wait)>>) -> Held {
    match waiting.as_deref_mut() {
        Some((_, _, wait)) => wait.await,
        None => std::future::pending().await,
    }
}

/// How long a close the gateway started waits for the agent's echo.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// After sending a close frame, reads (and discards) until the agent echoes
/// it or the time is up. Closing the socket with the agent's pongs or last
/// frames still unread would make the kernel send a reset, which can destroy
/// the close frame, and its code, before the agent reads it (RFC 6455 §7.1.1:
/// the server closes TCP after the closing handshake).
async fn linger<S: AgentIo>(ws: &mut WebSocketStream<S>, limit: std::time::Duration) {
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = tokio::time::timeout(limit, drain).await;
}

/// Why reading from an agent failed. A peer that vanished (TCP reset, EOF
/// mid-handshake) is the peer's doing, not a protocol error.
fn read_error_reason(e: &WsError) -> CloseReason {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooBig,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::Peer,
        WsError::Protocol(_) => CloseReason::Protocol,
        _ => CloseReason::Peer,
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_link_lost_before_the_session_looks_still_moves_the_session() {
        use crate::relay::rebalance::Movable;
        let (links, _rx) = crate::relay::links::Links::new(1, 8);
        links.get(0).unwrap().mark_connected();
        let live = links.lease(None).unwrap();
        let (agent, _inbox) = AgentShared::new(1, 4, 4, Identity::agent(crate::relay::identity::Credential::none()));
        agent.set_link(live.index());
        check_link(&agent, &live);
        let rung = |a: &AgentShared| a.rung().now_or_never();
        assert_eq!(rung(&agent), None, "a live link is quiet");

        // Lost and back before the session listed itself: no sweep saw it.
        links.get(0).unwrap().mark_lost();
        links.get(0).unwrap().mark_connected();
        check_link(&agent, &live);
        assert_eq!(rung(&agent), Some(Rings::LINK_LOST), "the loss is not missed");

        // Listed: the link task's sweep rings it.
        let movable = Movable::default();
        let admit = Arc::new(AdmitRequest {
            headers: Vec::new(),
            remote_addr: String::new(),
            transport: crate::policy::Transport::WebSocket,
        });
        movable.register(&agent, &admit);
        movable.link_lost(1);
        assert_eq!(rung(&agent), None, "another link's loss is not this agent's");
        movable.link_lost(0);
        assert_eq!(rung(&agent), Some(Rings::LINK_LOST));
    }

    #[test]
    fn a_reset_is_the_peers_doing() {
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(read_error_reason(&reset), CloseReason::Peer);
        let io = WsError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(read_error_reason(&io), CloseReason::Peer);
        assert_eq!(read_error_reason(&WsError::Protocol(ProtocolError::NonZeroReservedBits)), CloseReason::Protocol);
        let big = WsError::Capacity(CapacityError::MessageTooLong { size: 2, max_size: 1 });
        assert_eq!(read_error_reason(&big), CloseReason::TooBig);
    }
}
