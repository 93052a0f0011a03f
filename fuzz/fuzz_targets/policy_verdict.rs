//! The host's checks of a policy's answers (`replace`, `set-field`,
//! forwarded headers) with arbitrary originals, replacements and edits.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opamp_gateway::policy::verdict::{apply_edit, check_header, check_replacement};
use opamp_gateway::policy::HookError;
use opamp_gateway::protocol::wire::{last, walk, Wire};

#[derive(Arbitrary, Debug)]
enum Value {
    Remove,
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    original: Vec<u8>,
    replacement: Vec<u8>,
    number: u32,
    value: Value,
    headers: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let original = Bytes::from(input.original);
    // The relay only ever hands policies messages that walked cleanly.
    let valid = walk(&original, |_, _| true).is_ok();

    if let Ok(out) = check_replacement(&original, input.replacement.clone()) {
        assert_eq!(out, input.replacement);
        walk(&out, |_, _| true).expect("an accepted replacement is well-formed");
        let uid = |b: &[u8]| match last(b, 1) {
            Some(Wire::Bytes(u)) => Some(u.to_vec()),
            _ => None,
        };
        assert_eq!(uid(&out), uid(&original), "an accepted replacement keeps the uid");
    }

    let value = match &input.value {
        Value::Remove => None,
        Value::Varint(v) => Some(Wire::Varint(*v)),
        Value::Fixed64(v) => Some(Wire::Fixed64(*v)),
        Value::Fixed32(v) => Some(Wire::Fixed32(*v)),
        Value::Bytes(b) => Some(Wire::Bytes(b)),
    };
    match apply_edit(&original, input.number, value) {
        Ok(out) => {
            assert!(input.number != 1, "set-field never touches the uid");
            walk(&out, |_, _| true).expect("an edit of a valid message is well-formed");
            assert_eq!(last(&out, 1), last(&original, 1), "the uid is unchanged");
            assert_eq!(last(&out, input.number), value);
        }
        Err(HookError::Invalid(_)) => {
            assert!(!valid || input.number == 1 || input.number == 0 || input.number >= 1 << 29)
        }
        Err(e) => panic!("unexpected error kind {e:?}"),
    }

    for header in input.headers {
        if let Ok((name, value)) = check_header(header) {
            assert!(http::HeaderName::from_bytes(name.as_bytes()).is_ok(), "{name:?} is a valid header name");
            // What matters for the connect request: no header injection.
            assert!(!value.bytes().any(|c| matches!(c, b'\r' | b'\n' | 0)), "{value:?}");
            assert_eq!(name, name.to_ascii_lowercase());
        }
    }
});
