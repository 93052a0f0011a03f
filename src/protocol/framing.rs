//! The OpAMP-over-WebSocket message header.
//!
//! Every binary WebSocket message is `varint header || protobuf`. The header is
//! 0 today, so it is the single byte `0x00`. Agents written before the header
//! existed send the bare protobuf; that is still recognisable because a valid
//! protobuf never begins with `0x00` (it would be field number 0).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// The only header value the protocol defines.
pub const HEADER: u8 = 0x00;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty WebSocket message")]
    Empty,
}

/// Strips the header, if present, and returns the protobuf payload without
/// copying. A missing header (legacy agent) returns the frame unchanged; a
/// non-zero "header" is left in place and fails protobuf validation later
/// (its first byte encodes field number 0).
pub fn payload(frame: &Bytes) -> Result<Bytes, FrameError> {
    match frame.first() {
        None => Err(FrameError::Empty),
        Some(&HEADER) => Ok(frame.slice(1..)),
        Some(_) => Ok(frame.clone()),
    }
}

/// Whether `frame` already carries the header, so it can be forwarded as is.
pub fn has_header(frame: &[u8]) -> bool {
    frame.first() == Some(&HEADER)
}

/// Prefixes `payload` with the header.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 1);
    out.put_u8(HEADER);
    out.put_slice(payload);
    out.freeze()
}

/// Encodes a message as a complete WebSocket payload (header + protobuf).
pub fn encode<M: Message>(msg: &M) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.encoded_len() + 1);
    out.put_u8(HEADER);
    msg.encode(&mut out).expect("BytesMut grows, so encoding cannot run out of space");
    out.freeze()
}

/// Returns a frame ready to forward: the original bytes when they already
/// carry the header (the common case: zero copies), otherwise header + payload.
pub fn normalized(frame: Bytes) -> Bytes {
    if has_header(&frame) {
        frame
    } else {
        self::frame(&frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_stripped_without_copy() {
        let f = Bytes::from_static(&[0x00, 0x0a, 0x01, 0x41]);
        let p = payload(&f).unwrap();
        assert_eq!(&p[..], &[0x0a, 0x01, 0x41]);
    }

    #[test]
    fn legacy_frame_is_payload() {
        let f = Bytes::from_static(&[0x0a, 0x01, 0x41]);
        assert_eq!(payload(&f).unwrap(), f);
        assert_eq!(&normalized(f)[..], &[0x00, 0x0a, 0x01, 0x41]);
    }

    #[test]
    fn empty_frame_is_an_error() {
        assert_eq!(payload(&Bytes::new()), Err(FrameError::Empty));
    }
}
