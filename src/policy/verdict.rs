//! Host-side checks of what a policy answers, on plain Rust types.
//!
//! Header names and values must be valid HTTP (they end up in a request to
//! the server); a replacement message must be well-formed protobuf that keeps
//! the agent's uid (routing depends on it); a `set-field` edit may not touch
//! the uid. Kept apart from the Wasm host so they build (and are fuzzed)
//! without wasmtime.

// Only the Wasm host checks answers; light builds keep them for fuzz/.
#![cfg_attr(not(feature = "wasm"), allow(dead_code))]

use bytes::Bytes;

use super::HookError;
use crate::protocol::wire::{last, set_field, walk, Wire};

/// Field 1 of both `AgentToServer` and `ServerToAgent`.
const INSTANCE_UID: u32 = 1;

/// Header names are lower-cased (the relay's convention) and both halves
/// must be valid HTTP.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub fn check_header((name, value): (String, String)) -> Result<(String, String), HookError> {
    // The http crate's rules: a token name, and a value of visible bytes,
    // spaces and tabs (no CR, LF, NUL or other control bytes).
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(HookError::Invalid(format!("invalid header name {name:?}")));
    }
    if http::HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(HookError::Invalid(format!("invalid value for header {name:?}")));
    }
    Ok((name.to_ascii_lowercase(), value))
}

/// Applies a `set-field` answer (`None` removes the field). The original was
/// validated by the relay, so the result is well-formed; only the uid is off
/// limits.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub fn apply_edit(original: &Bytes, number: u32, value: Option<Wire<'_>>) -> Result<Bytes, HookError> {
    if number == INSTANCE_UID || number == 0 || number >= 1 << 29 {
        return Err(HookError::Invalid(format!("set-field cannot set field {number}")));
    }
    set_field(original, number, value)
        .map(Bytes::from)
        .map_err(|m| HookError::Invalid(format!("the message is not a valid protobuf (byte {})", m.offset)))
}

/// A replacement must parse at the top level and keep the original uid.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub fn check_replacement(original: &Bytes, replacement: Vec<u8>) -> Result<Bytes, HookError> {
    // One walk validates the whole replacement and finds its uid.
    let mut new_uid: Option<Vec<u8>> = None;
    let walked = walk(&replacement, |n, v| {
        if let (INSTANCE_UID, Wire::Bytes(u)) = (n, v) {
            new_uid = Some(u.to_vec());
        } else if n == INSTANCE_UID {
            new_uid = None; // not bytes: no usable uid
        }
        true
    });
    if let Err(m) = walked {
        return Err(HookError::Invalid(format!("replacement is not a valid protobuf (byte {})", m.offset)));
    }
    let old_uid = match last(original, INSTANCE_UID) {
        Some(Wire::Bytes(u)) => Some(u),
        _ => None,
    };
    if old_uid != new_uid.as_deref() {
        return Err(HookError::Invalid("replacement changes the instance_uid".into()));
    }
    Ok(Bytes::from(replacement))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_and_lowercased() {
        assert_eq!(check_header(("X-Tenant".into(), "a".into())).unwrap(), ("x-tenant".into(), "a".into()));
        assert!(check_header(("bad name".into(), "a".into())).is_err());
        assert!(check_header(("".into(), "a".into())).is_err());
        assert!(check_header(("x".into(), "a\r\nInjected: 1".into())).is_err());
        for control in ["a\u{1}b", "a\u{7f}", "a\0"] {
            assert!(check_header(("x".into(), control.into())).is_err(), "{control:?}");
        }
        assert!(check_header(("x".into(), "tab\tand space é".into())).is_ok(), "HTAB and obs-text are allowed");
    }

    #[test]
    fn field_edits_are_applied_by_the_host() {
        let orig = Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 1]);
        let set = |number, value| apply_edit(&orig, number, value);
        assert_eq!(set(5, None).unwrap(), Bytes::from_static(&[0x0a, 2, 1, 2, 0x10, 1]));
        assert_eq!(
            set(5, Some(Wire::Bytes(b"xy"))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 2, b'x', b'y', 0x10, 1])
        );
        assert_eq!(
            set(2, Some(Wire::Varint(5))).unwrap(),
            Bytes::from_static(&[0x0a, 2, 1, 2, 0x2a, 1, b'p', 0x10, 5])
        );
        assert!(matches!(set(1, None), Err(HookError::Invalid(_))), "the uid is off limits");
        assert!(matches!(set(0, None), Err(HookError::Invalid(_))));
        assert!(matches!(set(1 << 29, None), Err(HookError::Invalid(_))));
    }

    #[test]
    fn replacement_keeps_uid_and_parses() {
        let orig = Bytes::from_static(&[0x0a, 2, 1, 2, 0x10, 1]);
        assert!(check_replacement(&orig, vec![0x0a, 2, 1, 2]).is_ok());
        assert!(matches!(check_replacement(&orig, vec![0x0a, 2, 9, 9]), Err(HookError::Invalid(_))));
        assert!(matches!(check_replacement(&orig, vec![0x10]), Err(HookError::Invalid(_))));
        assert!(matches!(check_replacement(&orig, vec![0x10, 1]), Err(HookError::Invalid(_))));
    }
}
