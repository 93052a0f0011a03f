//! Where WebSocket messages end in the byte stream an agent sends (RFC 6455
//! §5.2), from the frame headers alone.
//!
//! The WebSocket library under a session keeps its read buffer at the size
//! of the largest frame it ever held: one 16 KiB effective config at
//! connect, and the agent holds 16 KiB for as long as it stays connected.
//! The library cannot shrink it, but the session can swap the library's
//! state for a fresh one, and that is safe only when the library holds no
//! byte it has not yet yielded as part of a message, and no fragment of a
//! message still to come. The socket feeds every byte it hands the library
//! through [`MessageBoundaries::observe`]; the session counts the messages
//! the library yields (data and control alike), and asks
//! [`MessageBoundaries::drained`] with that count.
//!
//! Only headers are parsed: payloads are skipped by length, so the cost is a
//! few comparisons per frame.

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Tracks frame and message ends in a byte stream, in the order observed.
/// About 48 bytes, held by every WebSocket agent: no allocation.
#[derive(Debug, Default)]
pub struct MessageBoundaries {
    /// Bytes observed so far.
    seen: u64,
    /// Offset at which the last frame that completes a message ended (a
    /// control frame, or a data frame with FIN).
    last_end: u64,
    /// Messages observed whole (data and control alike), wrapping: only
    /// equality with the count taken matters, and that never runs ahead.
    completed: u32,
    /// The header being read, and how much of it has arrived.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload bytes of the current frame still to come (after its header).
    payload_left: u64,
    /// The current frame completes a message.
    completes: bool,
    /// A data message has begun (a frame without FIN) and not yet ended.
    fragmented: bool,
}

impl MessageBoundaries {
    /// Bytes the socket handed the WebSocket library, in order.
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                self.seen += n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 {
                    self.frame_ended();
                }
                continue;
            }
            // Header bytes, one at a time: at most 14 per frame.
            self.header[usize::from(self.header_len)] = bytes[0];
            self.header_len += 1;
            self.seen += 1;
            bytes = &bytes[1..];
            if usize::from(self.header_len) == header_size(&self.header[..usize::from(self.header_len)]) {
                self.header_read();
            }
        }
    }

    /// With `taken` messages yielded by the library so far: every byte
    /// observed belongs to a message already taken, and no data message is
    /// half received, so the library holds nothing unread. (With every
    /// whole message taken, the last one ends where the stream observed so
    /// far ends, or bytes of another are buffered.)
    pub fn drained(&self, taken: u32) -> bool {
        taken == self.completed && self.last_end == self.seen && !self.fragmented
    }

    fn header_read(&mut self) {
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let control = opcode & 0x08 != 0;
        self.payload_left = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.completes = control || fin;
        if !control {
            // A data frame without FIN opens (or continues) a fragmented
            // message; one with FIN ends it.
            self.fragmented = !fin;
        }
        self.header_len = 0;
        if self.payload_left == 0 {
            self.frame_ended();
        }
    }

    fn frame_ended(&mut self) {
        if self.completes {
            self.completed = self.completed.wrapping_add(1);
            self.last_end = self.seen;
        }
    }
}

/// The size of the header that begins with `so_far`, once it can be told
/// (from its second byte); until then, more than it holds.
fn header_size(so_far: &[u8]) -> usize {
    let Some(&second) = so_far.get(1) else { return 2 };
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};

    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// One client frame as an agent sends it: masked.
    fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader { is_final: fin, opcode, mask: Some([1, 2, 3, 4]), ..FrameHeader::default() };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into()).format(&mut out).expect("a frame formats into a Vec");
        out
    }

    fn binary(fin: bool, payload: &[u8]) -> Vec<u8> {
        frame(OpCode::Data(Data::Binary), fin, payload)
    }

    fn continuation(fin: bool, payload: &[u8]) -> Vec<u8> {
        frame(OpCode::Data(Data::Continue), fin, payload)
    }

    fn ping(payload: &[u8]) -> Vec<u8> {
        frame(OpCode::Control(tokio_tungstenite::tungstenite::protocol::frame::coding::Control::Ping), true, payload)
    }

    #[test]
    fn a_lone_message_read_whole_is_drained_once_taken() {
        let mut b = MessageBoundaries::default();
        let mut taken = 0;
        b.observe(&binary(true, &[7; 300]));
        assert!(!b.drained(taken), "not taken yet");
        taken += 1;
        assert!(b.drained(taken));
    }

    #[test]
    fn bytes_of_the_next_message_keep_it_undrained() {
        let mut b = MessageBoundaries::default();
        let mut taken = 0;
        let mut bytes = binary(true, &[7; 70_000]); // an 8-byte length
        let next = binary(true, b"next");
        bytes.extend_from_slice(&next[..3]); // part of the next header
        b.observe(&bytes);
        taken += 1;
        assert!(!b.drained(taken), "three bytes of the next frame are in the library's buffer");
        b.observe(&next[3..]);
        assert!(!b.drained(taken), "the next message is whole but not taken");
        taken += 1;
        assert!(b.drained(taken));
    }

    #[test]
    fn a_ping_inside_a_fragmented_message_leaves_it_undrained() {
        let mut b = MessageBoundaries::default();
        let mut taken = 0;
        b.observe(&binary(false, &[1; 200]));
        b.observe(&ping(b"are you there"));
        taken += 1; // the ping
        assert!(!b.drained(taken), "the library holds the first fragment");
        b.observe(&continuation(true, &[2; 200]));
        taken += 1;
        assert!(b.drained(taken));
    }

    #[test]
    fn empty_frames_and_split_headers_are_counted() {
        let mut b = MessageBoundaries::default();
        let mut taken = 0;
        let mut bytes = ping(b"");
        bytes.extend(binary(true, &[3; 200])); // a 2-byte length
        for byte in &bytes {
            b.observe(std::slice::from_ref(byte));
        }
        taken += 1;
        assert!(!b.drained(taken));
        taken += 1;
        assert!(b.drained(taken));
    }

    /// Hands out a byte stream in the given read sizes, telling the tracker
    /// what it handed out: as the agent's socket does.
    struct Chunked {
        bytes: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        next: usize,
        seen: MessageBoundaries,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self.bytes.len() - self.at;
            if left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let want = self.sizes[self.next % self.sizes.len()].max(1);
            self.next += 1;
            let n = want.min(left).min(buf.len());
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.seen.observe(&buf[..n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for Chunked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len()) // pongs: not what is checked
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A message the agent sends: its payload, split into fragments, with a
    /// ping after the first fragment when asked.
    fn encode(messages: &[(Vec<u8>, usize, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (payload, fragments, ping_inside) in messages {
            let parts: Vec<&[u8]> = if payload.is_empty() {
                vec![&payload[..]]
            } else {
                payload.chunks(payload.len().div_ceil((*fragments).max(1))).collect()
            };
            for (i, part) in parts.iter().enumerate() {
                let fin = i + 1 == parts.len();
                out.extend(if i == 0 { binary(fin, part) } else { continuation(fin, part) });
                if i == 0 && *ping_inside {
                    out.extend(ping(b"p"));
                }
            }
        }
        out
    }

    proptest! {
        /// The claim the session relies on: whenever the tracker says
        /// drained, a fresh WebSocket over the rest of the stream reads
        /// every message that follows, whole and in order.
        #[test]
        fn a_fresh_websocket_when_drained_loses_nothing(
            messages in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..3000), 1usize..4, any::<bool>()), 1..8),
            sizes in proptest::collection::vec(1usize..2500, 1..6),
            read_buffer in prop_oneof![Just(16usize), Just(1024), Just(4096)],
        ) {
            let stream = Chunked { bytes: encode(&messages), at: 0, sizes, next: 0, seen: MessageBoundaries::default() };
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(read_buffer);
            let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
            let mut got = Vec::new();
            let mut swaps = 0;
            let mut taken = 0;
            loop {
                match ws.read() {
                    Ok(Message::Binary(b)) => {
                        taken += 1;
                        got.push(b.to_vec());
                    }
                    Ok(Message::Ping(_)) => taken += 1,
                    Ok(other) => prop_assert!(false, "unexpected {other:?}"),
                    Err(tokio_tungstenite::tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => prop_assert!(false, "read failed: {e}"),
                }
                if ws.get_ref().seen.drained(taken) {
                    let stream = std::mem::replace(&mut ws, WebSocket::from_raw_socket(
                        Chunked { bytes: Vec::new(), at: 0, sizes: vec![1], next: 0, seen: MessageBoundaries::default() },
                        Role::Server, None)).into_inner();
                    ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
                    swaps += 1;
                }
            }
            let want: Vec<Vec<u8>> = messages.iter().map(|(p, _, _)| p.clone()).collect();
            prop_assert_eq!(got, want);
            prop_assert!(swaps >= 1, "the stream always ends drained");
        }
    }
}
