//! One connected WebSocket agent.
//!
//! A single task owns the socket and selects over: the agent's frames, the
//! agent's queue of server messages, its link's state (to migrate when the
//! link dies), frames a dead link handed back, keepalive, and shutdown.
//! Nothing else writes to the socket, so there are no locks on the hot path.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{pipeline, Downstream};
use crate::protocol::handshake::ConnectRequest;
use crate::protocol::{AgentFrame, InstanceUid, UidError};
use crate::relay::{Admission, AdmitError, AdmitRequest, AgentShared, CloseReason, Inbound, LinkLease, LinkState};
use crate::telemetry::metrics as m;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

pub struct Session {
    ds: Arc<Downstream>,
    agent: Arc<AgentShared>,
    inbox: mpsc::Receiver<Inbound>,
    lease: LinkLease,
    link_state: watch::Receiver<LinkState>,
    /// Kept to re-run the handshake on another link.
    admit: AdmitRequest,
    /// Every uid this connection spoke for, and whether it said goodbye.
    uids: Vec<(InstanceUid, bool)>,
    /// Handshakes a chained gateway forwarded through us (request uids).
    forwarded: Vec<Bytes>,
    last_seen: Instant,
}

impl Session {
    pub fn new(ds: Arc<Downstream>, admission: Admission, admit: AdmitRequest) -> Self {
        let (agent, inbox) = AgentShared::new(ds.next_id(), ds.relay.settings.agent_queue);
        let mut link_state = admission.lease.link().subscribe();
        link_state.mark_unchanged();
        Self {
            ds,
            agent,
            inbox,
            lease: admission.lease,
            link_state,
            admit,
            uids: Vec::new(),
            forwarded: Vec::new(),
            last_seen: Instant::now(),
        }
    }

    pub async fn run(mut self, mut ws: Ws) {
        let gauge = metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "websocket");
        gauge.increment(1.0);
        let reason = self.pump(&mut ws).await;
        if reason != CloseReason::Peer {
            let frame = CloseFrame { code: CloseCode::from(reason.close_code()), reason: reason.as_str().into() };
            let _ = tokio::time::timeout(self.ds.settings.write_timeout, ws.close(Some(frame))).await;
        }
        self.release().await;
        gauge.decrement(1.0);
        metrics::counter!(m::AGENTS_CLOSED, "reason" => reason.as_str(), "transport" => "websocket").increment(1);
        tracing::debug!(agent = self.agent.id, reason = reason.as_str(), "agent session ended");
    }

    async fn pump(&mut self, ws: &mut Ws) -> CloseReason {
        let keepalive = self.ds.settings.keepalive;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let shutdown = self.ds.shutdown.clone();
        let agent = self.agent.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = agent.closing().cancelled() => Err(agent.close_reason()),
                _ = shutdown.cancelled() => Err(CloseReason::Shutdown),
                _ = self.link_state.changed() => self.on_link_change().await,
                _ = agent.returned_ready() => self.resend_returned().await,
                Some(msg) = self.inbox.recv() => self.deliver(ws, msg).await,
                msg = ws.next() => self.on_agent_message(msg).await,
                _ = ping.tick() => self.keepalive(ws).await,
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// A message from the agent: validate, learn its uid, filter, forward.
    async fn on_agent_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), CloseReason> {
        self.last_seen = Instant::now();
        let frame = match msg {
            Some(Ok(Message::Binary(frame))) => frame,
            Some(Ok(Message::Text(_))) => return Err(CloseReason::TextFrame),
            Some(Ok(Message::Close(_))) | None => return Err(CloseReason::Peer),
            Some(Ok(_)) => return Ok(()), // ping/pong: already answered by tungstenite
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                tracing::info!(agent = self.agent.id, size, max_size, "agent message over the size limit");
                return Err(CloseReason::TooBig);
            }
            Some(Err(WsError::Protocol(e))) => {
                tracing::info!(agent = self.agent.id, error = %e, "agent broke the WebSocket protocol");
                return Err(CloseReason::Protocol);
            }
            Some(Err(_)) => return Err(CloseReason::Peer),
        };
        let parsed = AgentFrame::parse_ws(&frame).map_err(|e| {
            tracing::info!(agent = self.agent.id, error = %e, "malformed agent message");
            CloseReason::Protocol
        })?;
        self.learn_uid(&parsed)?;

        if let Some(frame) = pipeline::upstream_frame(&self.ds.relay, &parsed, Some(frame))? {
            pipeline::send_up(&self.lease, &self.agent, frame, self.last_seen).await;
        }
        Ok(())
    }

    /// Registers the uid(s) this connection speaks for. A connection may
    /// carry several (a chained gateway's link), each routed back here.
    fn learn_uid(&mut self, parsed: &AgentFrame) -> Result<(), CloseReason> {
        match InstanceUid::parse(parsed.uid.clone()) {
            Ok(uid) => {
                match self.uids.iter_mut().find(|(u, _)| *u == uid) {
                    Some(entry) => entry.1 |= parsed.disconnect,
                    None => {
                        self.ds.relay.routes.insert(uid.as_bytes().clone(), &self.agent);
                        self.uids.push((uid, parsed.disconnect));
                    }
                }
                Ok(())
            }
            Err(UidError::Missing) => {
                // A gateway chained below us forwards its agents' handshakes;
                // remember where to send the answer.
                let request =
                    parsed.custom_message().and_then(|m| ConnectRequest::from_custom(&m)).and_then(Result::ok);
                match request {
                    Some(r) => {
                        let key = Bytes::from(r.request_uid.into_bytes());
                        self.ds.relay.routes.insert(key.clone(), &self.agent);
                        self.forwarded.push(key);
                        Ok(())
                    }
                    None => {
                        tracing::info!(agent = self.agent.id, "agent message without instance_uid");
                        Err(CloseReason::Protocol)
                    }
                }
            }
            Err(e) => {
                tracing::info!(agent = self.agent.id, error = %e, "invalid instance_uid");
                Err(CloseReason::Protocol)
            }
        }
    }

    /// A server message for this agent.
    async fn deliver(&mut self, ws: &mut Ws, msg: Inbound) -> Result<(), CloseReason> {
        let uid = self.uids.first().map(|(u, _)| u.as_bytes().clone()).unwrap_or_default();
        let Some(frame) = pipeline::downstream_frame(&self.ds.relay, &self.agent, &uid, &msg)? else {
            return Ok(());
        };
        let len = frame.len();
        match tokio::time::timeout(self.ds.settings.write_timeout, ws.send(Message::Binary(frame))).await {
            Ok(Ok(())) => {
                pipeline::delivered(len, msg.received);
                Ok(())
            }
            Ok(Err(_)) => Err(CloseReason::Peer),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    async fn keepalive(&mut self, ws: &mut Ws) -> Result<(), CloseReason> {
        let keepalive = self.ds.settings.keepalive;
        if self.last_seen.elapsed() > keepalive * 2 {
            return Err(CloseReason::Dead);
        }
        match tokio::time::timeout(self.ds.settings.write_timeout, ws.send(Message::Ping(Bytes::new()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::Peer),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }

    async fn on_link_change(&mut self) -> Result<(), CloseReason> {
        if !self.lease.is_stale() {
            return Ok(());
        }
        // Boxed: an async fn reserves room for its largest await point, and
        // this cold path (a whole handshake) would otherwise make every idle
        // agent's session future that large.
        Box::pin(self.migrate()).await
    }

    /// Our link died: re-run the handshake on a surviving link with the
    /// original headers. The agent's socket is not read meanwhile, so its
    /// frames wait in TCP buffers rather than being lost.
    async fn migrate(&mut self) -> Result<(), CloseReason> {
        let from = self.lease.index();
        let relay = self.ds.relay.clone();
        let failover = async {
            // All links down at once (a server restart): wait a bounded time
            // for one to return rather than disconnecting the whole fleet.
            let deadline = tokio::time::Instant::now() + relay.settings.failover_wait;
            loop {
                // Subscribed before the attempt, so a link that comes up
                // during it still counts as a reason to try again.
                let mut ups = relay.links.link_ups();
                match relay.admit(&self.admit).await {
                    Err(AdmitError::NoUpstream)
                        if matches!(tokio::time::timeout_at(deadline, ups.changed()).await, Ok(Ok(()))) =>
                    {
                        continue
                    }
                    other => return other,
                }
            }
        };
        let admitted = tokio::select! {
            r = failover => r,
            _ = self.ds.shutdown.cancelled() => return Err(CloseReason::Shutdown),
        };
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
                self.lease = admission.lease; // drops the old lease: its load goes down
                self.link_state = self.lease.link().subscribe();
                self.link_state.mark_unchanged();
                self.resend_returned().await
            }
            Err(AdmitError::Rejected(_)) => Err(CloseReason::Rejected),
            Err(e) => {
                tracing::info!(agent = self.agent.id, from, error = %e, "no link could take the agent; closing it");
                Err(CloseReason::NoUpstream)
            }
        }
    }

    async fn resend_returned(&mut self) -> Result<(), CloseReason> {
        pipeline::resend_returned(&self.lease, &self.agent).await;
        Ok(())
    }

    /// Forgets the agent's routes and tells the server about every uid that
    /// left without `agent_disconnect`: behind a gateway the server's stream
    /// stays open, so it cannot notice on its own.
    async fn release(&mut self) {
        for key in self.forwarded.drain(..).chain(self.agent.take_aliases()) {
            self.ds.relay.routes.remove(&key, self.agent.id);
        }
        for (uid, said_goodbye) in std::mem::take(&mut self.uids) {
            self.ds.relay.routes.remove(uid.as_bytes(), self.agent.id);
            if !said_goodbye {
                pipeline::report_gone(&self.lease, &uid).await;
            }
        }
        // Frames still waiting for a link can no longer be delivered.
        let left = self.agent.take_returned().len();
        if left > 0 {
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "agent_closed")
                .increment(left as u64);
        }
    }
}
