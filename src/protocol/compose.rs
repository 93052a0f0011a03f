//! Messages the gateway writes itself, as little re-encoding as possible.

use bytes::{BufMut, Bytes, BytesMut};

use super::framing;
use super::proto::{AgentDisconnect, AgentToServer, ServerToAgent};
use super::uid::InstanceUid;

/// `AgentToServer{instance_uid, agent_disconnect{}}`: what the gateway sends
/// for an agent that vanished without saying goodbye. Behind a gateway the
/// upstream stream stays open, so the server would otherwise never learn.
pub fn agent_disconnect(uid: &InstanceUid) -> Bytes {
    framing::encode(&AgentToServer {
        instance_uid: uid.as_bytes().clone(),
        agent_disconnect: Some(AgentDisconnect {}),
        ..Default::default()
    })
}

/// An empty reply that only names the agent (HTTP polling, nothing to say).
pub fn empty_reply(uid: &InstanceUid) -> Bytes {
    framing::encode(&ServerToAgent { instance_uid: uid.as_bytes().clone(), ..Default::default() })
}

/// Adds `custom_capabilities` (ServerToAgent field 10) to a server message
/// that lacks it. Protobuf merges concatenated messages, so appending the
/// encoded field is the same as setting it — no decode, no re-encode.
pub fn with_custom_capabilities(frame_payload: &[u8], raw_caps: &[u8]) -> Bytes {
    const KEY: u8 = (10 << 3) | 2; // field 10, length-delimited
    let mut out = BytesMut::with_capacity(1 + frame_payload.len() + 1 + 10 + raw_caps.len());
    out.put_u8(framing::HEADER);
    out.put_slice(frame_payload);
    out.put_u8(KEY);
    prost::encoding::encode_varint(raw_caps.len() as u64, &mut out);
    out.put_slice(raw_caps);
    out.freeze()
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
    fn synthesized_disconnect_names_the_agent() {
        let uid = InstanceUid::from_uuid(uuid::Uuid::from_bytes([5; 16]));
        let m = AgentToServer::decode(&agent_disconnect(&uid)[1..]).unwrap();
        assert_eq!(&m.instance_uid[..], &[5; 16]);
        assert!(m.agent_disconnect.is_some());
    }
}
