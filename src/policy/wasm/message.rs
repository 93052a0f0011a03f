//! The `message` resource: a filter's view of one OpAMP message.
//!
//! The host keeps the message as a shared `Bytes` and answers field queries
//! by walking the top level of the protobuf (tags and lengths only; nothing
//! is decoded or copied until the guest asks for a field). A policy that
//! checks one field per message therefore pays for one short scan and one
//! small copy, not for the whole message.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::sandbox::HostState;
pub(crate) use crate::protocol::wire::{last, walk, Wire};

/// What a `Resource<MessageHandle>` points at in the store's table.
// The generated bindings re-export it (`with:` in bindings.rs).
#[allow(unreachable_pub)]
pub struct MessageHandle {
    pub bytes: Bytes,
}

// The `message` methods, for every WIT version (`host_imports!` in
// bindings.rs turns a `Wire` into that version's `field-value` with `to`).

fn handle<'a>(state: &'a HostState, r: &Resource<MessageHandle>) -> wasmtime::Result<&'a Bytes> {
    Ok(&state.table.get(r)?.bytes)
}

pub(crate) fn len(state: &HostState, r: &Resource<MessageHandle>) -> wasmtime::Result<u32> {
    Ok(u32::try_from(handle(state, r)?.len()).unwrap_or(u32::MAX))
}

pub(crate) fn bytes(state: &HostState, r: &Resource<MessageHandle>) -> wasmtime::Result<Vec<u8>> {
    Ok(handle(state, r)?.to_vec())
}

pub(crate) fn has(state: &HostState, r: &Resource<MessageHandle>, number: u32) -> wasmtime::Result<bool> {
    let mut found = false;
    let _ = walk(handle(state, r)?, |n, _| {
        found = n == number;
        !found
    });
    Ok(found)
}

pub(crate) fn field<T>(
    state: &HostState,
    r: &Resource<MessageHandle>,
    number: u32,
    to: fn(Wire<'_>) -> T,
) -> wasmtime::Result<Option<T>> {
    Ok(last(handle(state, r)?, number).map(to))
}

pub(crate) fn fields<T>(
    state: &HostState,
    r: &Resource<MessageHandle>,
    number: u32,
    to: fn(Wire<'_>) -> T,
) -> wasmtime::Result<Vec<T>> {
    let mut out = Vec::new();
    let _ = walk(handle(state, r)?, |n, v| {
        if n == number {
            out.push(to(v));
        }
        true
    });
    Ok(out)
}

pub(crate) fn delete(state: &mut HostState, r: Resource<MessageHandle>) -> wasmtime::Result<()> {
    state.table.delete(r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::Malformed;

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
