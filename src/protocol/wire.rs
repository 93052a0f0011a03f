//! The protobuf wire format, top level only: tags, lengths and scalar
//! values, without decoding nested messages or copying anything. The
//! scanner is the `opamp-wire` crate (policies/opamp-wire), shared with the
//! policy SDK; this module re-exports it under the names the gateway uses
//! and adds the OpAMP field numbers. The relay's scanner and the policy
//! host's `message` resource both stand on it.

pub(crate) use opamp_wire::put_field;
pub use opamp_wire::{last, set_field, walk, Malformed, Value as Wire};

/// The OpAMP field numbers read or written without decoding the message
/// (proto/opamp.proto), named once here.
pub(crate) mod field {
    /// `instance_uid`, in `AgentToServer` and `ServerToAgent` alike.
    pub(crate) const INSTANCE_UID: u32 = 1;

    /// `AgentToServer`.
    pub(crate) mod agent {
        pub(crate) const AGENT_DISCONNECT: u32 = 9;
        pub(crate) const CUSTOM_MESSAGE: u32 = 13;
    }

    /// `ServerToAgent`.
    pub(crate) mod server {
        pub(crate) const FLAGS: u32 = 6;
        pub(crate) const CAPABILITIES: u32 = 7;
        pub(crate) const AGENT_IDENTIFICATION: u32 = 8;
        pub(crate) const CUSTOM_CAPABILITIES: u32 = 10;
        pub(crate) const CUSTOM_MESSAGE: u32 = 11;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_are_the_protos() {
        use crate::protocol::proto::{
            AgentDisconnect, AgentIdentification, AgentToServer, CustomCapabilities, CustomMessage, ServerToAgent,
        };
        use bytes::Bytes;
        use prost::Message;
        let numbers = |m: Vec<u8>| {
            let mut n = Vec::new();
            walk(&m, |f, _| {
                n.push(f);
                true
            })
            .unwrap();
            n
        };
        let a = AgentToServer::default;
        let s = ServerToAgent::default;
        let uid = Bytes::from_static(&[1; 16]);
        let cases = [
            (AgentToServer { instance_uid: uid.clone(), ..a() }.encode_to_vec(), field::INSTANCE_UID),
            (
                AgentToServer { agent_disconnect: Some(AgentDisconnect {}), ..a() }.encode_to_vec(),
                field::agent::AGENT_DISCONNECT,
            ),
            (
                AgentToServer { custom_message: Some(CustomMessage::default()), ..a() }.encode_to_vec(),
                field::agent::CUSTOM_MESSAGE,
            ),
            (ServerToAgent { instance_uid: uid, ..s() }.encode_to_vec(), field::INSTANCE_UID),
            (ServerToAgent { flags: 1, ..s() }.encode_to_vec(), field::server::FLAGS),
            (ServerToAgent { capabilities: 1, ..s() }.encode_to_vec(), field::server::CAPABILITIES),
            (
                ServerToAgent { agent_identification: Some(AgentIdentification::default()), ..s() }.encode_to_vec(),
                field::server::AGENT_IDENTIFICATION,
            ),
            (
                ServerToAgent { custom_capabilities: Some(CustomCapabilities::default()), ..s() }.encode_to_vec(),
                field::server::CUSTOM_CAPABILITIES,
            ),
            (
                ServerToAgent { custom_message: Some(CustomMessage::default()), ..s() }.encode_to_vec(),
                field::server::CUSTOM_MESSAGE,
            ),
        ];
        for (encoded, number) in cases {
            assert_eq!(numbers(encoded), [number]);
        }
    }

    #[test]
    fn reads_and_writes_varints_as_prost_does() {
        use prost::encoding::{decode_varint, encode_varint};
        use prost::Message;
        let values = [1, 127, 128, 300, 1 << 35, 1 << 63, u64::MAX];
        let mut cases: Vec<Vec<u8>> = values
            .iter()
            .map(|&v| {
                let mut b = Vec::new();
                encode_varint(v, &mut b);
                b
            })
            .collect();
        cases.extend([
            vec![0x80, 0x00],
            vec![0x80],
            [[0xff; 9].as_slice(), &[0x01]].concat(),
            [[0xff; 9].as_slice(), &[0x02]].concat(),
            vec![0x80; 11],
        ]);
        for varint in cases {
            let mut rest = varint.as_slice();
            let prost = decode_varint(&mut rest).ok().filter(|_| rest.is_empty());
            let ours = match last(&[&[0x08], varint.as_slice()].concat(), 1) {
                Some(Wire::Varint(v)) => Some(v),
                _ => None,
            };
            assert_eq!(ours, prost, "{varint:02x?}");
        }
        for v in values {
            let mut ours = Vec::new();
            put_field(&mut ours, field::server::FLAGS, Wire::Varint(v));
            assert_eq!(ours, crate::protocol::proto::ServerToAgent { flags: v, ..Default::default() }.encode_to_vec());
        }
    }
}
