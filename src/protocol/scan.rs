//! A one-pass scanner over the top level of an OpAMP protobuf (on [`wire`]).
//!
//! The relay forwards messages unchanged, so it never needs the whole decoded
//! tree: it needs to know the message is well-formed protobuf and where a few
//! fields are (the uid, the goodbye marker, custom messages). Walking the tags
//! once does both without allocating; the payload stays a shared `Bytes`.

use bytes::Bytes;

use super::framing::{self, FrameError};
use super::proto::CustomMessage;
use super::wire::field::{agent as a2s, server as s2a, INSTANCE_UID as UID};
use super::wire::{self, Wire};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed protobuf at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

/// An agent→server message, validated at the top level.
#[derive(Debug, Clone)]
pub struct AgentFrame {
    /// The protobuf without the WebSocket header.
    pub payload: Bytes,
    /// Field 1, if present (not yet validated as a uid).
    pub uid: Option<Bytes>,
    /// Field 9 is present: the agent is saying goodbye.
    pub disconnect: bool,
    custom_message: Option<Bytes>,
}

impl AgentFrame {
    /// Parses a WebSocket payload (header optional).
    pub fn parse_ws(frame: &Bytes) -> Result<Self, ScanError> {
        Self::parse_payload(framing::payload(frame)?)
    }

    /// Parses a bare protobuf (the HTTP transport's body).
    pub fn parse_payload(payload: Bytes) -> Result<Self, ScanError> {
        let mut out = AgentFrame { payload: payload.clone(), uid: None, disconnect: false, custom_message: None };
        let mut custom_messages = 0;
        walk(&payload, |field, value| match field {
            UID => out.uid = value.cloned(),
            a2s::AGENT_DISCONNECT => out.disconnect = true,
            a2s::CUSTOM_MESSAGE => {
                custom_messages += 1;
                out.custom_message = value.cloned();
            }
            _ => {}
        })?;
        // A decoder merges repeated occurrences of a message field, so the
        // server would see a custom message that no single occurrence shows
        // (e.g. the gateway capability in one, an empty one last). No encoder
        // writes it twice: refuse it rather than judge only a part.
        if custom_messages > 1 {
            return Err(ScanError::Malformed { offset: 0, what: "custom_message (field 13) appears more than once" });
        }
        Ok(out)
    }

    /// The custom message (field 13), decoded on demand.
    pub fn custom_message(&self) -> Option<CustomMessage> {
        decode_custom(self.custom_message.as_ref())
    }
}

/// A server→agent message, validated at the top level.
#[derive(Debug, Clone)]
pub struct ServerFrame {
    pub payload: Bytes,
    pub uid: Option<Bytes>,
    /// Field 10 is present.
    pub has_custom_capabilities: bool,
    /// `capabilities` (field 7, the server's capability bits), if set.
    pub capabilities: Option<u64>,
    custom_capabilities: Option<Bytes>,
    custom_message: Option<Bytes>,
    agent_identification: Option<Bytes>,
}

impl ServerFrame {
    pub fn parse_ws(frame: &Bytes) -> Result<Self, ScanError> {
        Self::parse_payload(framing::payload(frame)?)
    }

    pub fn parse_payload(payload: Bytes) -> Result<Self, ScanError> {
        let mut out = ServerFrame {
            payload: payload.clone(),
            uid: None,
            has_custom_capabilities: false,
            capabilities: None,
            custom_capabilities: None,
            custom_message: None,
            agent_identification: None,
        };
        walk_scalars(&payload, |field, value, scalar| match field {
            UID => out.uid = value.cloned(),
            s2a::CAPABILITIES => out.capabilities = scalar,
            s2a::AGENT_IDENTIFICATION => out.agent_identification = value.cloned(),
            s2a::CUSTOM_CAPABILITIES => {
                out.has_custom_capabilities = true;
                out.custom_capabilities = value.cloned();
            }
            s2a::CUSTOM_MESSAGE => out.custom_message = value.cloned(),
            _ => {}
        })?;
        Ok(out)
    }

    /// The raw encoded `CustomCapabilities` (field 10), for replay to agents.
    pub fn custom_capabilities_raw(&self) -> Option<&Bytes> {
        self.custom_capabilities.as_ref()
    }

    /// The custom message (field 11), decoded on demand.
    pub fn custom_message(&self) -> Option<CustomMessage> {
        decode_custom(self.custom_message.as_ref())
    }

    /// `agent_identification.new_instance_uid` (field 8): the server gives
    /// the agent a new uid, which must route to the same agent from now on.
    pub fn new_instance_uid(&self) -> Option<Bytes> {
        use prost::Message;
        let raw = self.agent_identification.as_ref()?;
        let id = super::proto::AgentIdentification::decode(raw.clone()).ok()?;
        (!id.new_instance_uid.is_empty()).then_some(id.new_instance_uid)
    }
}

fn decode_custom(raw: Option<&Bytes>) -> Option<CustomMessage> {
    use prost::Message;
    raw.and_then(|b| CustomMessage::decode(b.clone()).ok())
}

/// Calls `visit(field, value)` for each top-level field; `value` is the
/// contents of length-delimited fields (a zero-copy slice), `None` for scalars.
fn walk(buf: &Bytes, mut visit: impl FnMut(u32, Option<&Bytes>)) -> Result<(), ScanError> {
    walk_scalars(buf, |field, value, _| visit(field, value))
}

/// As [`walk`], also passing varint values.
fn walk_scalars(buf: &Bytes, mut visit: impl FnMut(u32, Option<&Bytes>, Option<u64>)) -> Result<(), ScanError> {
    wire::walk(buf, |field, value| {
        match value {
            Wire::Bytes(b) => visit(field, Some(&buf.slice_ref(b)), None),
            Wire::Varint(v) => visit(field, None, Some(v)),
            _ => visit(field, None, None),
        }
        true
    })
    .map_err(|m| ScanError::Malformed {
        offset: m.offset,
        what: "not a valid protobuf (truncated field or unsupported wire type)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing;
    use crate::protocol::proto::{AgentDisconnect, AgentToServer, CustomCapabilities, ServerToAgent};

    #[test]
    fn finds_uid_and_disconnect() {
        let msg = AgentToServer {
            instance_uid: Bytes::from_static(&[7; 16]),
            sequence_num: 42,
            agent_disconnect: Some(AgentDisconnect {}),
            ..Default::default()
        };
        let f = AgentFrame::parse_ws(&framing::encode(&msg)).unwrap();
        assert_eq!(f.uid.as_deref(), Some(&[7u8; 16][..]));
        assert!(f.disconnect);
    }

    #[test]
    fn accepts_headerless_frames() {
        let msg = AgentToServer { instance_uid: Bytes::from_static(&[1; 16]), ..Default::default() };
        let bare = Bytes::from(prost::Message::encode_to_vec(&msg));
        let f = AgentFrame::parse_ws(&bare).unwrap();
        assert_eq!(f.uid.unwrap().len(), 16);
        assert!(!f.disconnect);
    }

    #[test]
    fn rejects_garbage_and_nonzero_header() {
        for bad in [
            &[0x01, 0x0a, 0x00][..],       // "header" 1 → field number 0
            &[0x00, 0x0a, 0x05, 0x01][..], // length past the end
            &[0x00, 0x0b][..],             // wire type 3 (groups)
            &[0x00, 0x08][..],             // truncated varint value
            &[0x00, 0xff, 0xff][..],       // truncated varint key
        ] {
            assert!(AgentFrame::parse_ws(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_repeated_custom_message_is_malformed() {
        use crate::protocol::proto::CustomMessage;
        let forged = AgentToServer {
            custom_message: Some(CustomMessage {
                capability: "com.bindplane.opamp-gateway".into(),
                r#type: "connect".into(),
                data: Bytes::new(),
            }),
            ..Default::default()
        };
        let blank = AgentToServer {
            custom_message: Some(CustomMessage { r#type: "connect".into(), ..Default::default() }),
            ..Default::default()
        };
        let mut both = prost::Message::encode_to_vec(&forged);
        both.extend(prost::Message::encode_to_vec(&blank));
        assert!(AgentFrame::parse_payload(Bytes::from(both)).is_err());
        assert!(AgentFrame::parse_payload(Bytes::from(prost::Message::encode_to_vec(&forged))).is_ok());
    }

    #[test]
    fn server_frame_exposes_capabilities_raw() {
        let msg = ServerToAgent {
            instance_uid: Bytes::from_static(&[2; 16]),
            custom_capabilities: Some(CustomCapabilities { capabilities: vec!["io.example.x".into()] }),
            ..Default::default()
        };
        let f = ServerFrame::parse_ws(&framing::encode(&msg)).unwrap();
        assert!(f.has_custom_capabilities);
        assert_eq!(f.capabilities, None);
        let with_caps = ServerToAgent { capabilities: 0x3, ..msg.clone() };
        assert_eq!(ServerFrame::parse_ws(&framing::encode(&with_caps)).unwrap().capabilities, Some(0x3));
        let raw = f.custom_capabilities_raw().unwrap();
        let caps: CustomCapabilities = prost::Message::decode(raw.clone()).unwrap();
        assert_eq!(caps.capabilities, vec!["io.example.x"]);
    }
}
