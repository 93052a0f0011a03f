//! The protobuf wire format, top level only: tags, lengths and scalar
//! values, without decoding nested messages or copying anything. The relay's
//! scanner and the policy host's `message` resource both stand on this.

/// The OpAMP field numbers read or written without decoding the message
/// (proto/opamp.proto), named once here.
pub mod field {
    /// `instance_uid`, in `AgentToServer` and `ServerToAgent` alike.
    pub const INSTANCE_UID: u32 = 1;

    /// `AgentToServer`.
    pub mod agent {
        pub const AGENT_DISCONNECT: u32 = 9;
        pub const CUSTOM_MESSAGE: u32 = 13;
    }

    /// `ServerToAgent`.
    pub mod server {
        pub const FLAGS: u32 = 6;
        pub const CAPABILITIES: u32 = 7;
        pub const AGENT_IDENTIFICATION: u32 = 8;
        pub const CUSTOM_CAPABILITIES: u32 = 10;
        pub const CUSTOM_MESSAGE: u32 = 11;
    }
}

/// One top-level field, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The protobuf was cut short or used a wire type we do not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub offset: usize,
}

/// The varint at `buf[*pos..]` (prost's decoder), advancing `pos` past it.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut rest = buf.get(*pos..)?;
    let value = prost::encoding::decode_varint(&mut rest).ok()?;
    *pos = buf.len() - rest.len();
    Some(value)
}

/// Walks the top-level fields of `buf`, calling `each(number, value)`; stops
/// early when `each` returns `false`. Groups (wire types 3/4) are rejected:
/// proto3 OpAMP never uses them.
pub fn walk<'a>(buf: &'a [u8], mut each: impl FnMut(u32, Wire<'a>) -> bool) -> Result<(), Malformed> {
    walk_raw(buf, |n, v, _| each(n, v))
}

/// [`walk`], also passing each field's whole encoding (tag, length, value).
fn walk_raw<'a>(buf: &'a [u8], mut each: impl FnMut(u32, Wire<'a>, &'a [u8]) -> bool) -> Result<(), Malformed> {
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let bad = Malformed { offset: start };
        let key = varint(buf, &mut pos).ok_or(bad)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad)?;
        if number == 0 {
            return Err(bad);
        }
        let value = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos).ok_or(bad)?),
            1 => {
                let b: [u8; 8] = buf.get(pos..pos + 8).ok_or(bad)?.try_into().map_err(|_| bad)?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(b))
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos).ok_or(bad)?).map_err(|_| bad)?;
                let end = pos.checked_add(len).ok_or(bad)?;
                let b = buf.get(pos..end).ok_or(bad)?;
                pos = end;
                Wire::Bytes(b)
            }
            5 => {
                let b: [u8; 4] = buf.get(pos..pos + 4).ok_or(bad)?.try_into().map_err(|_| bad)?;
                pos += 4;
                Wire::Fixed32(u32::from_le_bytes(b))
            }
            _ => return Err(bad),
        };
        if !each(number, value, &buf[start..pos]) {
            return Ok(());
        }
    }
    Ok(())
}

/// The last occurrence of field `number`. On a malformed message, what was
/// found before the damage.
pub fn last(buf: &[u8], number: u32) -> Option<Wire<'_>> {
    let mut found = None;
    let _ = walk(buf, |n, v| {
        if n == number {
            found = Some(v);
        }
        true
    });
    found
}

/// Appends field `number` holding `value`, in `value`'s wire type.
pub fn put_field(out: &mut Vec<u8>, number: u32, value: Wire<'_>) {
    use prost::encoding::encode_varint;
    let tag = |wire_type: u64| (u64::from(number) << 3) | wire_type;
    match value {
        Wire::Varint(v) => {
            encode_varint(tag(0), out);
            encode_varint(v, out);
        }
        Wire::Fixed64(v) => {
            encode_varint(tag(1), out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Wire::Bytes(b) => {
            encode_varint(tag(2), out);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Wire::Fixed32(v) => {
            encode_varint(tag(5), out);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `buf` with top-level field `number` set to `value`, where its first
/// occurrence was (appended if absent; later occurrences, which protobuf
/// would merge in, are dropped), or removed everywhere when `value` is
/// `None`. Every other field is copied byte for byte.
pub fn set_field(buf: &[u8], number: u32, value: Option<Wire<'_>>) -> Result<Vec<u8>, Malformed> {
    let extra = match value {
        Some(Wire::Bytes(b)) => b.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(buf.len() + extra + 16);
    let mut placed = value.is_none();
    walk_raw(buf, |n, _, raw| {
        if n != number {
            out.extend_from_slice(raw);
        } else if let (false, Some(v)) = (placed, value) {
            put_field(&mut out, number, v);
            placed = true;
        }
        true
    })?;
    if let (false, Some(v)) = (placed, value) {
        put_field(&mut out, number, v);
    }
    Ok(out)
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
    fn walks_each_wire_type_and_stops_early() {
        // field 1 varint 150, field 2 bytes "hi", field 3 fixed32, field 4 fixed64
        let buf = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 0, 0, 0, 0x21, 2, 0, 0, 0, 0, 0, 0, 0];
        let mut seen = Vec::new();
        walk(&buf, |n, v| {
            seen.push((n, v));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            [(1, Wire::Varint(150)), (2, Wire::Bytes(b"hi")), (3, Wire::Fixed32(1)), (4, Wire::Fixed64(2))]
        );
        let mut count = 0;
        walk(&buf, |_, _| {
            count += 1;
            false
        })
        .unwrap();
        assert_eq!(count, 1);
        assert_eq!(last(&buf, 2), Some(Wire::Bytes(b"hi")));
        assert_eq!(walk(&[0x0b], |_, _| true), Err(Malformed { offset: 0 }), "groups are rejected");
        assert_eq!(walk(&[0x12, 0x05, 1], |_, _| true), Err(Malformed { offset: 0 }), "length past the end");
    }

    #[test]
    fn sets_and_removes_fields_keeping_the_rest() {
        // 1: varint 7, 5: "ab", 2: "x", 5: "cd"
        let buf = [0x08, 7, 0x2a, 2, b'a', b'b', 0x12, 1, b'x', 0x2a, 2, b'c', b'd'];
        assert_eq!(
            set_field(&buf, 5, Some(Wire::Bytes(b"Z"))).unwrap(),
            [0x08, 7, 0x2a, 1, b'Z', 0x12, 1, b'x'],
            "first occurrence replaced in place, the later one dropped"
        );
        assert_eq!(set_field(&buf, 5, None).unwrap(), [0x08, 7, 0x12, 1, b'x']);
        assert_eq!(set_field(&buf, 9, None).unwrap(), buf, "removing an absent field changes nothing");
        assert_eq!(set_field(&buf, 3, Some(Wire::Varint(300))).unwrap()[buf.len()..], [0x18, 0xac, 0x02]);
        assert_eq!(set_field(&buf, 4, Some(Wire::Fixed32(1))).unwrap()[buf.len()..], [0x25, 1, 0, 0, 0]);
        assert_eq!(set_field(&buf, 4, Some(Wire::Fixed64(1))).unwrap()[buf.len()..], [0x21, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(set_field(&[0x2a, 9], 5, None).is_err());
    }
}
