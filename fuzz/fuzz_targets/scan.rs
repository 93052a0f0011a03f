//! The protobuf scanner, uids and the frame composers on arbitrary bytes.
//!
//! Input: `[field number][value kind][8 bytes scalar][message...]`; the
//! prefix picks what `set_field` / `with_flags` are asked to do.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opamp_gateway::protocol::compose::{self, ErrorKind};
use opamp_gateway::protocol::wire::{last, set_field, walk, Wire};
use opamp_gateway::protocol::{framing, AgentFrame, InstanceUid, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let Some((&[number, kind], rest)) = data.split_first_chunk::<2>() else { return };
    let Some((scalar, msg)) = rest.split_first_chunk::<8>() else { return };
    let scalar = u64::from_le_bytes(*scalar);
    let number = if number == 255 { 1 << 29 } else { u32::from(number) };
    let frame = Bytes::copy_from_slice(msg);

    if let Ok(a) = AgentFrame::parse_ws(&frame) {
        let _ = a.custom_message();
        if let Ok(uid) = InstanceUid::parse(a.uid.clone()) {
            let _ = uid.to_string();
        }
    }
    if let Ok(s) = ServerFrame::parse_ws(&frame) {
        let _ = (s.custom_message(), s.new_instance_uid(), s.custom_capabilities_raw());
    }
    let _ = InstanceUid::parse(Some(frame.clone())).map(|u| u.to_string());

    // Everything below needs a well-formed top level.
    let Ok(payload) = framing::payload(&frame) else { return };
    if walk(&payload, |_, _| true).is_err() {
        assert!(AgentFrame::parse_payload(payload.clone()).is_err(), "scanner accepted what walk refused");
        assert!(set_field(&payload, number.max(1), None).is_err());
        return;
    }
    // The agent scanner refuses exactly one more thing than the walk: a
    // custom_message (field 13) given more than once.
    let mut custom_messages = 0;
    let _ = walk(&payload, |n, _| {
        custom_messages += usize::from(n == 13);
        true
    });
    assert_eq!(
        AgentFrame::parse_payload(payload.clone()).is_ok(),
        custom_messages <= 1,
        "scanner and walk disagree"
    );

    let bytes_value = &msg[..(scalar as usize % (msg.len() + 1))];
    let value = match kind % 5 {
        0 => None,
        1 => Some(Wire::Varint(scalar)),
        2 => Some(Wire::Fixed64(scalar)),
        3 => Some(Wire::Fixed32(scalar as u32)),
        _ => Some(Wire::Bytes(bytes_value)),
    };
    if (1..1 << 29).contains(&number) {
        let out = set_field(&payload, number, value).expect("a valid message stays editable");
        walk(&out, |_, _| true).expect("set_field output walks cleanly");
        assert_eq!(last(&out, number), value, "set_field sets field {number}");
        // Every other field survives, in order.
        let others = |b: &[u8]| {
            let mut v = Vec::new();
            walk(b, |n, w| {
                if n != number {
                    v.push((n, format!("{w:?}")));
                }
                true
            })
            .unwrap();
            v
        };
        assert_eq!(others(&payload), others(&out));
    }

    let flagged = compose::with_flags(&payload, scalar);
    let f = ServerFrame::parse_ws(&flagged).expect("with_flags output parses");
    let flags = match last(&f.payload, 6) {
        Some(Wire::Varint(v)) => v,
        other => panic!("flags field is {other:?}"),
    };
    assert_eq!(flags & scalar, scalar, "with_flags keeps the requested bits");
    ServerFrame::parse_ws(&compose::with_capabilities(&payload, scalar)).expect("with_capabilities output parses");
    ServerFrame::parse_ws(&compose::with_custom_capabilities(&payload, bytes_value))
        .expect("with_custom_capabilities output parses");

    let text = String::from_utf8_lossy(bytes_value);
    let kind = if scalar & 1 == 0 {
        ErrorKind::BadRequest
    } else {
        ErrorKind::Unavailable { retry_after: std::time::Duration::from_nanos(scalar) }
    };
    for composed in [
        compose::error_response(bytes_value, kind, &text, scalar),
        compose::empty_reply(bytes_value, scalar),
        compose::request_full_state(bytes_value, scalar),
    ] {
        let s = ServerFrame::parse_ws(&composed).expect("composed message parses");
        assert_eq!(s.uid.as_deref().unwrap_or_default(), bytes_value);
    }
});
