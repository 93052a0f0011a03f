//! The rules every agent message passes before it is forwarded: what a
//! connection may speak for, and who may send gateway handshakes.
//!
//! With valid credentials of its own, an agent must affect nothing but its
//! own session. So:
//! - an ordinary agent speaks for exactly one uid: the one in its first
//!   message, or one the server assigned it (`new_instance_uid`);
//! - a uid owned by another live connection is refused, unless the same
//!   credentials reconnected (then the old connection is superseded);
//! - gateway-capability custom messages (`connect`) come only from
//!   downstream gateways trusted by `listener.downstream_gateways`, whose
//!   in-flight handshakes are bounded.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::handshake::{self, ConnectRequest, ConnectResult};
use crate::protocol::{AgentFrame, InstanceUid, UidError};
use crate::relay::{AgentShared, Claimed, CloseReason, ForwardRefused, Relay};
use crate::telemetry::metrics as m;

/// The uids one connection speaks for, and whether each said goodbye: one
/// for an ordinary agent (a byte compare per message), any number for a
/// trusted gateway (a hash lookup, however many agents it carries).
#[derive(Debug, Default)]
pub(crate) struct SpokenFor {
    first: Option<(InstanceUid, bool)>,
    more: HashMap<InstanceUid, bool>,
}

impl SpokenFor {
    fn said_goodbye_mut(&mut self, uid: &InstanceUid) -> Option<&mut bool> {
        match &mut self.first {
            Some((u, bye)) if u == uid => Some(bye),
            _ => self.more.get_mut(uid),
        }
    }

    fn insert(&mut self, uid: InstanceUid, said_goodbye: bool) {
        match self.first {
            None => self.first = Some((uid, said_goodbye)),
            Some(_) => {
                self.more.insert(uid, said_goodbye);
            }
        }
    }

    /// The uid this connection first spoke for.
    pub(crate) fn first(&self) -> Option<&InstanceUid> {
        self.first.as_ref().map(|(u, _)| u)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Every uid with whether it said goodbye.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&InstanceUid, bool)> {
        self.first.iter().map(|(u, b)| (u, *b)).chain(self.more.iter().map(|(u, b)| (u, *b)))
    }

    /// Empties the set, returning what it held.
    pub(crate) fn take(&mut self) -> Vec<(InstanceUid, bool)> {
        self.first.take().into_iter().chain(std::mem::take(&mut self.more)).collect()
    }
}

/// A message that passed: forward it, or answer it here instead.
#[derive(Debug)]
pub(crate) enum Passed {
    Forward,
    /// Do not forward; queue this frame back to the sender (a gateway's
    /// forwarded handshake refused by the in-flight cap).
    Answer(Bytes),
}

/// Why a message was refused; every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("message names an instance_uid this connection does not speak for")]
    UidMismatch,
    #[error("instance_uid is owned by another live connection with other credentials")]
    UidInUse,
    #[error("gateway custom message from a connection that is not a trusted downstream gateway")]
    ForgedHandshake,
    #[error("invalid instance_uid: {0}")]
    BadUid(UidError),
    #[error("message without instance_uid that is not a forwarded connect handshake")]
    NotAHandshake,
}

impl Refusal {
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self {
            Refusal::UidMismatch => CloseReason::UidMismatch,
            Refusal::UidInUse => CloseReason::UidInUse,
            Refusal::ForgedHandshake => CloseReason::ForgedHandshake,
            Refusal::BadUid(_) | Refusal::NotAHandshake => CloseReason::Protocol,
        }
    }

    /// Counts the refused message and logs it once (no headers, no secrets).
    pub(crate) fn record(&self, agent: u64, remote: &str, transport: &'static str) {
        let reason = self.close_reason().as_str();
        metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => reason).increment(1);
        tracing::info!(agent, %remote, transport, reason, error = %self, "agent message refused");
    }
}

/// Checks `parsed` from `agent`, whose uids so far are `uids`, and records a
/// newly owned uid there.
pub(crate) fn check(
    relay: &Relay,
    agent: &Arc<AgentShared>,
    uids: &mut SpokenFor,
    parsed: &AgentFrame,
) -> Result<Passed, Refusal> {
    let gateway = agent.identity().is_gateway();
    let custom = parsed.custom_message().filter(|m| m.capability == handshake::CAPABILITY);
    if custom.is_some() && !gateway {
        return Err(Refusal::ForgedHandshake);
    }
    let uid = match InstanceUid::parse(parsed.uid.clone()) {
        Ok(uid) => uid,
        Err(UidError::Missing) if gateway => {
            // A gateway below us forwards its agents' handshakes.
            let request = custom.and_then(|m| ConnectRequest::from_custom(&m)).and_then(Result::ok);
            return match request {
                Some(r) => Ok(forward_handshake(relay, agent, r.request_uid)),
                None => Err(Refusal::NotAHandshake),
            };
        }
        Err(UidError::Missing) => return Err(Refusal::NotAHandshake),
        Err(e) => return Err(Refusal::BadUid(e)),
    };
    if let Some(said_goodbye) = uids.said_goodbye_mut(&uid) {
        *said_goodbye |= parsed.disconnect;
        return Ok(Passed::Forward);
    }
    if !gateway && !uids.is_empty() && !agent.has_alias(uid.as_bytes()) {
        return Err(Refusal::UidMismatch);
    }
    match relay.routes.claim(uid.as_bytes(), agent) {
        Ok(Claimed::Owned) => {}
        Ok(Claimed::TookOver(old)) => {
            old.close(CloseReason::Superseded);
            metrics::counter!(m::UID_TAKEOVERS).increment(1);
            tracing::info!(%uid, old = old.id, new = agent.id, "agent reconnected with the same credentials; old connection superseded");
        }
        Err(_) => return Err(Refusal::UidInUse),
    }
    // Kept for the connection's life: its own bytes, not the message's.
    uids.insert(uid.detached(), parsed.disconnect);
    Ok(Passed::Forward)
}

/// Registers a gateway's forwarded handshake, or answers it with a 503
/// rejection when that connection already has too many in flight (so the
/// gateway below answers its agent with 503 instead of waiting).
fn forward_handshake(relay: &Relay, agent: &Arc<AgentShared>, request_uid: String) -> Passed {
    let max = relay.settings.max_forwarded_handshakes;
    match relay.forwarded.register(request_uid.clone(), agent, max) {
        Ok(()) => Passed::Forward,
        Err(e) => {
            let reason = match e {
                ForwardRefused::TooMany(_) => "handshakes_in_flight",
                ForwardRefused::Duplicate => "duplicate_request_uid",
            };
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => reason).increment(1);
            tracing::info!(agent = agent.id, error = %e, "forwarded handshake refused");
            let answer = ConnectResult { request_uid, accept: false, http_status_code: 503, ..Default::default() };
            Passed::Answer(answer.to_frame())
        }
    }
}
