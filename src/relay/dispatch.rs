//! One message from the server: a handshake answer, or mail for an agent.

use std::time::Instant;

use bytes::Bytes;

use super::agent::{CloseReason, Inbound};
use super::links::Link;
use super::Relay;
use crate::protocol::handshake::{self, ConnectResult};
use crate::protocol::{ScanError, ServerFrame};

/// What happened to a server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// A connectResult for a waiting handshake.
    Handshake,
    /// A connectResult nobody waits for (late, after a timeout).
    StaleHandshake,
    /// Queued for its agent.
    Queued,
    /// Addressed to a uid with no session here.
    UnknownAgent,
    /// The agent's queue was full; it is being closed.
    AgentTooSlow,
    /// No instance uid and not a handshake.
    NoUid,
    Malformed(ScanError),
}

impl Dispatch {
    /// Label for the drop metric, or `None` if nothing was dropped.
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self {
            Dispatch::Handshake | Dispatch::Queued => None,
            Dispatch::StaleHandshake => Some("stale_handshake"),
            Dispatch::UnknownAgent => Some("unknown_agent"),
            Dispatch::AgentTooSlow => Some("slow_consumer"),
            Dispatch::NoUid => Some("no_uid"),
            Dispatch::Malformed(_) => Some("malformed"),
        }
    }
}

impl Relay {
    pub fn dispatch(&self, link: &Link, frame: Bytes, received: Instant) -> Dispatch {
        let parsed = match ServerFrame::parse_ws(&frame) {
            Ok(p) => p,
            Err(e) => return Dispatch::Malformed(e),
        };
        // opamp-go servers send their custom capabilities once per
        // connection; remember them so each agent gets them too.
        if let Some(raw) = parsed.custom_capabilities_raw() {
            link.set_capabilities(raw.clone());
        }
        let has_capabilities = parsed.has_custom_capabilities;
        if let Some(result) = parsed
            .custom_message()
            .filter(|m| m.capability == handshake::CAPABILITY)
            .and_then(|m| ConnectResult::from_custom(&m))
        {
            let result = match result {
                Ok(r) => r,
                Err(_) => return Dispatch::Malformed(ScanError::Malformed { offset: 0, what: "connectResult JSON" }),
            };
            let key = result.request_uid.clone();
            if self.pending.resolve(result) {
                return Dispatch::Handshake;
            }
            // A gateway chained below us forwarded this handshake: route the
            // answer back to it (see `downstream::session`).
            return match self.routes.get(key.as_bytes()) {
                Some(agent) => {
                    self.routes.remove(key.as_bytes(), agent.id);
                    match agent.offer(Inbound { frame, link: link.index, has_capabilities, received }) {
                        Ok(()) => Dispatch::Queued,
                        Err(_) => Dispatch::AgentTooSlow,
                    }
                }
                None => Dispatch::StaleHandshake,
            };
        }
        let Some(uid) = parsed.uid.clone().filter(|u| !u.is_empty()) else {
            return Dispatch::NoUid;
        };
        let Some(agent) = self.routes.get(&uid) else {
            return Dispatch::UnknownAgent;
        };
        if let Some(new_uid) = parsed.new_instance_uid() {
            // Replies to the new uid may come before the agent first uses it.
            self.routes.insert(new_uid.clone(), &agent);
            agent.add_alias(new_uid);
        }
        match agent.offer(Inbound { frame, link: link.index, has_capabilities, received }) {
            Ok(()) => Dispatch::Queued,
            Err(CloseReason::SlowConsumer) => Dispatch::AgentTooSlow,
            Err(_) => Dispatch::UnknownAgent,
        }
    }
}
