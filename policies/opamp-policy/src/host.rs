//! A host-side [`Message`], so a policy's `filter` can be unit-tested with
//! `cargo test` on the build machine.
//!
//! In a component, `Message` is a resource the gateway owns, and reading it
//! is a call into the host. Off wasm there is no host: this type holds the
//! encoded bytes itself and answers the same questions from them, with the
//! same rules (the last occurrence of a singular field wins, and repeated
//! fields come back in wire order).
//!
//! ```
//! use opamp_policy::proto::{AgentToServer, AgentDescription};
//! use opamp_policy::{fields, Message};
//!
//! let msg = Message::from_proto(&AgentToServer {
//!     agent_description: Some(AgentDescription::default()),
//!     ..Default::default()
//! });
//! assert!(msg.has(fields::agent_to_server::AGENT_DESCRIPTION));
//! ```

use crate::wire::{self, Value};
use crate::FieldValue;

/// One OpAMP message (bare protobuf, no WebSocket header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    encoded: Vec<u8>,
}

impl Message {
    /// Wraps an encoded message. Malformed bytes are accepted, as the
    /// gateway would have refused them before a policy saw them: reads stop
    /// at the first broken field.
    pub fn new(encoded: impl Into<Vec<u8>>) -> Self {
        Self { encoded: encoded.into() }
    }

    /// Encodes a prost message, e.g. an [`AgentToServer`](crate::proto::AgentToServer).
    pub fn from_proto(message: &impl prost::Message) -> Self {
        Self::new(message.encode_to_vec())
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> u32 {
        self.encoded.len() as u32
    }

    /// True for a message with no fields at all.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// A copy of the whole encoded message.
    pub fn bytes(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// Whether top-level field `number` is present.
    pub fn has(&self, number: u32) -> bool {
        self.occurrences(number).next().is_some()
    }

    /// The last occurrence of top-level field `number`.
    pub fn field(&self, number: u32) -> Option<FieldValue> {
        self.occurrences(number).last()
    }

    /// Every occurrence of top-level field `number`, in wire order.
    pub fn fields(&self, number: u32) -> Vec<FieldValue> {
        self.occurrences(number).collect()
    }

    fn occurrences(&self, number: u32) -> impl Iterator<Item = FieldValue> + '_ {
        wire::fields(&self.encoded).map_while(Result::ok).filter(move |f| f.number == number).map(|f| match f.value {
            Value::Varint(v) => FieldValue::Varint(v),
            Value::Fixed64(v) => FieldValue::Fixed64(v),
            Value::Fixed32(v) => FieldValue::Fixed32(v),
            Value::Bytes(b) => FieldValue::Bytes(b.to_vec()),
        })
    }
}

/// Off wasm, log lines go to stderr (where `cargo test` shows them for a
/// failing test), tagged with their level.
pub(crate) fn log(level: crate::log::Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AgentToServer, ServerToAgent};
    use crate::{fields, Decode};

    #[test]
    fn answers_like_the_host() {
        // Field 5 twice: `field` gives the last, `fields` both in order.
        let raw = [0x08, 0x01, 0x2a, 1, b'a', 0x2a, 1, b'b'];
        let m = Message::new(raw.to_vec());
        assert_eq!(m.len(), 8);
        assert!(m.has(1) && m.has(5) && !m.has(2));
        assert_eq!(m.field(1), Some(FieldValue::Varint(1)));
        assert_eq!(m.field(5), Some(FieldValue::Bytes(b"b".to_vec())));
        assert_eq!(m.fields(5), vec![FieldValue::Bytes(b"a".to_vec()), FieldValue::Bytes(b"b".to_vec())]);
        assert_eq!(m.bytes(), raw);
    }

    #[test]
    fn decodes_an_embedded_field_by_its_generated_number() {
        let sent = ServerToAgent { instance_uid: vec![7; 16], flags: 1, ..Default::default() };
        let m = Message::from_proto(&sent);
        assert_eq!(m.field(fields::server_to_agent::FLAGS), Some(FieldValue::Varint(1)));
        let outer = Message::from_proto(&AgentToServer {
            agent_description: Some(crate::proto::AgentDescription::default()),
            ..Default::default()
        });
        let got: crate::proto::AgentDescription =
            outer.decode(fields::agent_to_server::AGENT_DESCRIPTION).expect("present").expect("decodes");
        assert_eq!(got, crate::proto::AgentDescription::default());
        assert!(outer.decode::<crate::proto::AgentDescription>(fields::agent_to_server::HEALTH).is_none());
    }
}
