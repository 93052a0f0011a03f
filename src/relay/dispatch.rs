//! One message from the server: a handshake answer, or mail for an agent.

use bytes::Bytes;
use tokio::time::Instant;

use super::agent::{CloseReason, Inbound};
use super::links::Link;
use super::Relay;
use crate::protocol::handshake::{self, ConnectResult};
use crate::protocol::{ScanError, ServerFrame};

/// What happened to a server message.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub enum Dispatch {
    /// A connectResult for a waiting handshake.
    Handshake,
    /// A connectResult that cannot be read (why): its waiter was answered 502.
    BadHandshake(String),
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
    pub(crate) fn drop_reason(&self) -> Option<&'static str> {
        match self {
            Dispatch::Handshake | Dispatch::BadHandshake(_) | Dispatch::Queued => None,
            Dispatch::StaleHandshake => Some("stale_handshake"),
            Dispatch::UnknownAgent => Some("unknown_agent"),
            Dispatch::AgentTooSlow => Some("slow_consumer"),
            Dispatch::NoUid => Some("no_uid"),
            Dispatch::Malformed(_) => Some("malformed"),
        }
    }
}

impl Relay {
    #[cfg_attr(not(fuzzing), allow(unreachable_pub))]
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
        if let Some(bits) = parsed.capabilities {
            link.set_server_capabilities(bits);
        }
        let has_capabilities = parsed.has_custom_capabilities;
        if let Some(custom) = parsed
            .custom_message()
            .filter(|m| m.capability == handshake::CAPABILITY && m.r#type == handshake::CONNECT_RESULT)
        {
            return self.handshake_answer(
                link,
                &custom.data,
                Inbound { frame, link: link.index, has_capabilities, received },
            );
        }
        let Some(uid) = parsed.uid.clone().filter(|u| !u.is_empty()) else {
            return Dispatch::NoUid;
        };
        let Some(agent) = self.routes.get(&uid) else {
            return Dispatch::UnknownAgent;
        };
        if let Some(new_uid) = parsed.new_instance_uid() {
            // Replies to the new uid may come before the agent first uses it.
            self.routes.assign(new_uid.clone(), &agent);
            agent.add_alias(new_uid);
        }
        match agent.offer(Inbound { frame, link: link.index, has_capabilities, received }) {
            Ok(()) => Dispatch::Queued,
            Err(CloseReason::SlowConsumer) => Dispatch::AgentTooSlow,
            Err(_) => Dispatch::UnknownAgent,
        }
    }

    /// A connectResult: wake its handshake, or pass it down to the chained
    /// gateway that forwarded the connect. One that cannot be read still
    /// answers its agent (502) when its request uid can be found, rather than
    /// leaving it to wait out the auth timeout.
    fn handshake_answer(&self, link: &Link, data: &[u8], msg: Inbound) -> Dispatch {
        let (request_uid, result) = match ConnectResult::parse(data) {
            Ok(r) if !r.request_uid.is_empty() => (r.request_uid.clone(), Ok(r)),
            parsed => {
                let reason = match &parsed {
                    Ok(_) => "no request_uid".to_owned(),
                    Err(e) => handshake::describe_error(e),
                };
                // Debug only: the link warns once per kind per connection
                // (a broken server sends these for every handshake).
                let Some(uid) = handshake::request_uid_hint(data) else {
                    tracing::debug!(link = %link.id(), %reason, "connectResult without a usable request_uid; no handshake can be told");
                    return Dispatch::Malformed(ScanError::Malformed { offset: 0, what: "connectResult JSON" });
                };
                tracing::debug!(link = %link.id(), request_uid = %uid, %reason, "unreadable connectResult; its handshake fails with 502");
                (uid, Err(reason))
            }
        };
        let delivered = match result {
            Ok(r) => self.pending.resolve(r).then_some(Dispatch::Handshake),
            Err(reason) => self.pending.fail(&request_uid, reason.clone()).then_some(Dispatch::BadHandshake(reason)),
        };
        if let Some(d) = delivered {
            return d;
        }
        // A gateway chained below us forwarded this handshake: the answer,
        // readable or not, goes back to it as is. Request uids have a map of
        // their own (`relay::forwarded`), never the uid routes.
        match self.forwarded.take(&request_uid) {
            Some(agent) => match agent.offer(msg) {
                Ok(()) => Dispatch::Queued,
                Err(_) => Dispatch::AgentTooSlow,
            },
            None => Dispatch::StaleHandshake,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Policies;
    use crate::relay::links::Links;
    use crate::relay::pending::NoResult;
    use crate::relay::RelaySettings;
    use std::sync::Arc;

    fn relay() -> Relay {
        let (links, _receivers) = Links::new(1, 8);
        let settings = RelaySettings {
            auth_timeout: Duration::from_secs(30),
            failover_wait: Duration::from_secs(5),
            agent_queue: 8,
            max_forwarded_handshakes: 8,
            failover_queue: 8,
            max_buffered_bytes: 1 << 20,
        };
        Relay::new(links, Arc::new(Policies::none()), settings)
    }

    fn answer(relay: &Relay, json: &'static [u8]) -> Dispatch {
        let link = relay.links.get(0).expect("link 0").clone();
        relay.dispatch(&link, ConnectResult::frame_with(Bytes::from_static(json)), Instant::now())
    }

    #[tokio::test]
    async fn go_nil_headers_resolve_and_unreadable_answers_fail_at_once() {
        let relay = relay();
        let (_g1, accepted) = relay.pending.register("u-1".into(), 0);
        let go = br#"{"request_uid":"u-1","accept":true,"http_status_code":200,"response_headers":null}"#;
        assert_eq!(answer(&relay, go), Dispatch::Handshake);
        assert!(accepted.await.unwrap().unwrap().accept);

        let (_g2, failed) = relay.pending.register("u-2".into(), 0);
        let bad = answer(&relay, br#"{"request_uid":"u-2","accept":"yes"}"#);
        assert!(matches!(&bad, Dispatch::BadHandshake(why) if !why.is_empty()), "{bad:?}");
        assert!(matches!(failed.await.unwrap(), Err(NoResult::Unreadable(_))));
        assert!(relay.pending.is_empty());
    }

    #[test]
    fn answers_without_a_request_uid_count_as_malformed() {
        let relay = relay();
        for json in [&br#"{"accept":true}"#[..], br#"{"request_uid":"","accept":true}"#, b"not json"] {
            let d = answer(&relay, json);
            assert_eq!(d.drop_reason(), Some("malformed"), "{d:?}");
        }
        assert_eq!(answer(&relay, br#"{"request_uid":"late","accept":true}"#), Dispatch::StaleHandshake);
    }
}
