//! The gateway handshake payloads (`connect`, `connectResult`) as a Go peer
//! may write them: arbitrary bytes must never panic, and what parses must
//! survive our own encoding unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opamp_gateway::protocol::handshake::{self, ConnectRequest, ConnectResult};
use opamp_gateway::protocol::proto::CustomMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ConnectResult::parse(data) {
        let _ = r.reject_status();
        let again = ConnectResult::parse(&serde_json::to_vec(&r).unwrap()).expect("our encoding parses");
        assert_eq!(again, r, "connectResult round trip");
    }
    if let Ok(r) = ConnectRequest::parse(data) {
        let again = ConnectRequest::parse(&serde_json::to_vec(&r).unwrap()).expect("our encoding parses");
        assert_eq!(again, r, "connect round trip");
    }
    let _ = handshake::request_uid_hint(data);
    let msg = CustomMessage {
        capability: handshake::CAPABILITY.into(),
        r#type: handshake::CONNECT_RESULT.into(),
        data: bytes::Bytes::copy_from_slice(data),
    };
    let _ = ConnectResult::from_custom(&msg);
    let _ = ConnectRequest::from_custom(&CustomMessage { r#type: handshake::CONNECT.into(), ..msg });
});
