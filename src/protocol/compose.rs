//! Messages the gateway writes itself, as little re-encoding as possible.

use bytes::Bytes;

use std::time::Duration;

use super::framing;
use super::proto::{
    server_error_response, AgentDisconnect, AgentToServer, RetryInfo, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent,
};
use super::uid::InstanceUid;
use super::wire::field::server as s2a;
use super::wire::{self, Wire};

/// `ServerCapabilities_AcceptsStatus`: every server MUST set it, so it is
/// what the gateway claims for a server it has not heard from yet.
pub(crate) const ACCEPTS_STATUS: u64 = 0x1;
/// `ServerToAgentFlags_ReportFullState`.
pub(crate) const REPORT_FULL_STATE: u64 = 0x1;

/// `AgentToServer{instance_uid, agent_disconnect{}}`: what the gateway sends
/// for an agent that vanished without saying goodbye. Behind a gateway the
/// upstream stream stays open, so the server would otherwise never learn.
pub(crate) fn agent_disconnect(uid: &InstanceUid) -> Bytes {
    framing::encode(&AgentToServer {
        instance_uid: uid.as_bytes().clone(),
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    })
}

/// An empty reply that only names the agent (HTTP polling, nothing to say).
/// It carries the server's `capabilities`: it may be the first
/// `ServerToAgent` the agent sees, and the spec says that one MUST.
pub fn empty_reply(uid: &[u8], capabilities: u64) -> Bytes {
    framing::encode(&ServerToAgent { instance_uid: Bytes::copy_from_slice(uid), capabilities, ..Default::default() })
}

/// Asks the agent for its full state (`ReportFullState`), as after it moved
/// to another link: opamp-go clients send only deltas after a reconnect, so
/// the server would otherwise never see the agent whole.
pub fn request_full_state(uid: &[u8], capabilities: u64) -> Bytes {
    framing::encode(&ServerToAgent {
        instance_uid: Bytes::copy_from_slice(uid),
        flags: REPORT_FULL_STATE,
        capabilities,
        ..Default::default()
    })
}

/// Why the gateway answers an agent with `error_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The agent sent something malformed or not allowed (`BAD_REQUEST`).
    BadRequest,
    /// Come back later (`UNAVAILABLE` with `retry_info`).
    Unavailable { retry_after: Duration },
}

/// A `ServerToAgent` with only `error_response` (and the capabilities the
/// spec requires of a first message), sent before the gateway closes an agent.
pub fn error_response(uid: &[u8], kind: ErrorKind, message: &str, capabilities: u64) -> Bytes {
    let (r#type, details) = match kind {
        ErrorKind::BadRequest => (ServerErrorResponseType::BadRequest, None),
        ErrorKind::Unavailable { retry_after } => (
            ServerErrorResponseType::Unavailable,
            Some(server_error_response::Details::RetryInfo(RetryInfo {
                retry_after_nanoseconds: u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX),
            })),
        ),
    };
    framing::encode(&ServerToAgent {
        instance_uid: Bytes::copy_from_slice(uid),
        error_response: Some(ServerErrorResponse { r#type: r#type as i32, error_message: message.to_owned(), details }),
        capabilities,
        ..Default::default()
    })
}

/// `frame_payload` with `bits` OR-ed into its `flags`.
pub fn with_flags(frame_payload: &[u8], bits: u64) -> Bytes {
    let current = match wire::last(frame_payload, s2a::FLAGS) {
        Some(Wire::Varint(v)) => v,
        _ => 0,
    };
    append(frame_payload, s2a::FLAGS, Wire::Varint(current | bits))
}

/// `frame_payload` with `capabilities` set, for a first message
/// to an agent that lacks it.
pub fn with_capabilities(frame_payload: &[u8], capabilities: u64) -> Bytes {
    append(frame_payload, s2a::CAPABILITIES, Wire::Varint(capabilities))
}

/// A WebSocket frame: the header, `frame_payload`, then the field. Protobuf
/// merges concatenated messages (a scalar appended later wins, a message is
/// merged into), so this sets the field without decoding or re-encoding.
fn append(frame_payload: &[u8], number: u32, value: Wire<'_>) -> Bytes {
    let extra = match value {
        Wire::Bytes(b) => b.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(1 + frame_payload.len() + 2 * 10 + extra);
    out.push(framing::HEADER);
    out.extend_from_slice(frame_payload);
    wire::put_field(&mut out, number, value);
    out.into()
}

/// Adds the encoded `custom_capabilities` to a server message that lacks it.
pub fn with_custom_capabilities(frame_payload: &[u8], raw_caps: &[u8]) -> Bytes {
    append(frame_payload, s2a::CUSTOM_CAPABILITIES, Wire::Bytes(raw_caps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::proto::CustomCapabilities;
    use prost::Message;

    #[test]
    fn appended_capabilities_decode_as_set() {
        let original = ServerToAgent { instance_uid: Bytes::from_static(&[3; 16]), flags: 1, ..Default::default() };
        let caps = CustomCapabilities { capabilities: vec!["a.b".into(), "c.d".into()] };
        let out = with_custom_capabilities(&original.encode_to_vec(), &caps.encode_to_vec());
        let decoded = ServerToAgent::decode(&out[1..]).unwrap();
        assert_eq!(decoded.custom_capabilities, Some(caps));
        assert_eq!(decoded.flags, 1);
        assert_eq!(decoded.instance_uid, original.instance_uid);
    }

    #[test]
    fn flags_are_or_ed_and_capabilities_set() {
        let original = ServerToAgent { instance_uid: Bytes::from_static(&[3; 16]), flags: 2, ..Default::default() };
        let out = with_flags(&original.encode_to_vec(), REPORT_FULL_STATE);
        let decoded = ServerToAgent::decode(&out[1..]).unwrap();
        assert_eq!(decoded.flags, 3);
        assert_eq!(decoded.instance_uid, original.instance_uid);
        let out = with_capabilities(&out[1..], 0x5);
        assert_eq!(ServerToAgent::decode(&out[1..]).unwrap().capabilities, 0x5);
    }

    #[test]
    fn error_responses_carry_type_retry_and_capabilities() {
        let kind = ErrorKind::Unavailable { retry_after: Duration::from_secs(30) };
        let m = ServerToAgent::decode(&error_response(&[1; 16], kind, "later", 1)[1..]).unwrap();
        let e = m.error_response.unwrap();
        assert_eq!(e.r#type, ServerErrorResponseType::Unavailable as i32);
        assert_eq!(
            e.details,
            Some(server_error_response::Details::RetryInfo(RetryInfo { retry_after_nanoseconds: 30_000_000_000 }))
        );
        assert_eq!(m.capabilities, 1);
        let m = ServerToAgent::decode(&error_response(&[1; 16], ErrorKind::BadRequest, "bad", 1)[1..]).unwrap();
        assert_eq!(m.error_response.unwrap().r#type, ServerErrorResponseType::BadRequest as i32);
    }

    #[test]
    fn synthesized_disconnect_names_the_agent() {
        let uid = InstanceUid::from_uuid(uuid::Uuid::from_bytes([5; 16]));
        let m = AgentToServer::decode(&agent_disconnect(&uid)[1..]).unwrap();
        assert_eq!(&m.instance_uid[..], &[5; 16]);
        assert!(m.agent_disconnect.is_some());
    }
}
