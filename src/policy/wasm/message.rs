//! The `message` resource: a filter's view of one OpAMP message.
//!
//! The host keeps the message as a shared `Bytes` and answers field queries
//! by walking the top level of the protobuf (tags and lengths only; nothing
//! is decoded or copied until the guest asks for a field). A policy that
//! checks one field per message therefore pays for one short scan and one
//! small copy, not for the whole message.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::opamp_gateway::policy::types::{FieldValue, HostMessage};
use super::sandbox::HostState;

/// What a `Resource<MessageHandle>` points at in the store's table.
pub struct MessageHandle {
    pub bytes: Bytes,
}

/// One top-level field, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl Wire<'_> {
    fn to_value(self) -> FieldValue {
        match self {
            Wire::Varint(v) => FieldValue::Varint(v),
            Wire::Fixed64(v) => FieldValue::Fixed64(v),
            Wire::Fixed32(v) => FieldValue::Fixed32(v),
            Wire::Bytes(b) => FieldValue::Bytes(b.to_vec()),
        }
    }
}

/// The protobuf was cut short or used a wire type we do not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub offset: usize,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Walks the top-level fields of `buf`, calling `each(number, value)`; stops
/// early when `each` returns `false`. Groups (wire types 3/4) are rejected:
/// proto3 OpAMP never uses them.
pub(crate) fn walk<'a>(buf: &'a [u8], mut each: impl FnMut(u32, Wire<'a>) -> bool) -> Result<(), Malformed> {
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
        if !each(number, value) {
            return Ok(());
        }
    }
    Ok(())
}

/// The last occurrence of field `number`. On a malformed message, what was
/// found before the damage.
pub(crate) fn last(buf: &[u8], number: u32) -> Option<Wire<'_>> {
    let mut found = None;
    let _ = walk(buf, |n, v| {
        if n == number {
            found = Some(v);
        }
        true
    });
    found
}

fn handle<'a>(state: &'a HostState, r: &Resource<MessageHandle>) -> wasmtime::Result<&'a Bytes> {
    Ok(&state.table.get(r)?.bytes)
}

impl HostMessage for HostState {
    fn len(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<u32> {
        Ok(u32::try_from(handle(self, &r)?.len()).unwrap_or(u32::MAX))
    }

    fn bytes(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<Vec<u8>> {
        Ok(handle(self, &r)?.to_vec())
    }

    fn has(&mut self, r: Resource<MessageHandle>, number: u32) -> wasmtime::Result<bool> {
        let mut found = false;
        let _ = walk(handle(self, &r)?, |n, _| {
            found = n == number;
            !found
        });
        Ok(found)
    }

    fn field(&mut self, r: Resource<MessageHandle>, number: u32) -> wasmtime::Result<Option<FieldValue>> {
        Ok(last(handle(self, &r)?, number).map(Wire::to_value))
    }

    fn fields(&mut self, r: Resource<MessageHandle>, number: u32) -> wasmtime::Result<Vec<FieldValue>> {
        let mut out = Vec::new();
        let _ = walk(handle(self, &r)?, |n, v| {
            if n == number {
                out.push(v.to_value());
            }
            true
        });
        Ok(out)
    }

    fn drop(&mut self, r: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl super::bindings::opamp_gateway::policy::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;

    // field 1: bytes "ab"; field 2: varint 300; field 5: fixed32; field 1 again.
    const MSG: &[u8] = &[0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02, 0x2d, 1, 0, 0, 0, 0x0a, 1, b'c'];

    #[test]
    fn walks_top_level_fields() {
        let mut seen = vec![];
        walk(MSG, |n, v| {
            seen.push((n, v));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(1, Wire::Bytes(b"ab")), (2, Wire::Varint(300)), (5, Wire::Fixed32(1)), (1, Wire::Bytes(b"c")),]
        );
        assert_eq!(last(MSG, 1), Some(Wire::Bytes(b"c")));
        assert_eq!(last(MSG, 9), None);
    }

    #[test]
    fn rejects_truncation_and_groups() {
        assert_eq!(walk(&[0x0a, 5, b'a'], |_, _| true), Err(Malformed { offset: 0 }));
        assert_eq!(walk(&[0x08], |_, _| true), Err(Malformed { offset: 0 }));
        assert_eq!(walk(&[0x08, 1, 0x0b], |_, _| true), Err(Malformed { offset: 2 }));
        assert_eq!(walk(&[0x00], |_, _| true), Err(Malformed { offset: 0 }));
        assert!(walk(&[], |_, _| true).is_ok());
        // Partial answers before the damage.
        assert_eq!(last(&[0x08, 7, 0x0a, 9], 1), Some(Wire::Varint(7)));
    }
}
