//! The WebSocket frame path of one agent session, over an in-memory socket.
//!
//! A real `Session` (uid rules, pipeline, parting message, close) runs on
//! the server end of a `tokio::io::duplex`; the fuzz input is a script of
//! client frames, encoded here (masked, as a client must) so malformed and
//! fragmented frames reach tungstenite's server side too.
//!
//! Input: `[role][op][len lo][len hi][payload]...` where `role & 1` makes the
//! connection a trusted downstream gateway, and `op & 7` is
//! 0 binary, 1 text, 2 ping, 3 pong, 4 close, 5 a server frame dispatched
//! to the agent through the relay, 6 raw bytes written as they are,
//! 7 binary with the OpAMP header (0x00) prepended; `op & 8` clears FIN.

#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opamp_gateway::downstream::express::SharedSocket;
use opamp_gateway::downstream::session::Session;
use opamp_gateway::policy::{AdmitTicket, Transport};
use opamp_gateway::relay::{Admission, AdmitRequest, Credential, Identity, Role};
use opamp_gateway_fuzz::{runtime, Core, MAX_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// One client frame, masked.
fn client_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// The bytes the client writes, and the frames the server sends meanwhile.
fn script(mut data: &[u8]) -> (Vec<u8>, Vec<(usize, Bytes)>) {
    let mut wire = Vec::new();
    let mut server = Vec::new();
    while let Some((&[op, lo, hi], rest)) = data.split_first_chunk::<3>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        data = rest;
        let fin = op & 8 == 0;
        match op & 7 {
            0 => client_frame(&mut wire, fin, 0x2, payload),
            1 => client_frame(&mut wire, fin, 0x1, payload),
            2 => client_frame(&mut wire, true, 0x9, payload),
            3 => client_frame(&mut wire, true, 0xa, payload),
            4 => client_frame(&mut wire, true, 0x8, payload),
            5 => server.push((wire.len(), Bytes::copy_from_slice(payload))),
            6 => wire.extend_from_slice(payload),
            _ => {
                let mut framed = vec![0u8];
                framed.extend_from_slice(payload);
                client_frame(&mut wire, fin, 0x2, &framed);
            }
        }
    }
    (wire, server)
}

async fn run(role: Role, wire: Vec<u8>, server: Vec<(usize, Bytes)>) {
    let core = Core::new(true);
    let lease = core.lease().expect("a connected link");
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    // As the gateway configures it: tungstenite buffers no writes.
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    // Shared with the express lane, as in the gateway: server frames
    // dispatched below may be written by it, between the session's writes.
    let socket = SharedSocket::new(server_end);
    let ws = WebSocketStream::from_raw_socket(socket.clone(), WsRole::Server, Some(config)).await;
    let admit =
        AdmitRequest { headers: Vec::new(), remote_addr: "192.0.2.1:4000".into(), transport: Transport::WebSocket };
    let identity = Identity { credential: Credential::none(), role };
    let admission = Admission { lease, response_headers: BTreeMap::new(), ticket: AdmitTicket::none() };
    let session =
        tokio::spawn(Session::new(core.ds.clone(), admission, admit, identity).with_express(socket).run(ws));

    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 8192];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut written = 0;
    for (at, frame) in server {
        if wr.write_all(&wire[written..at]).await.is_err() {
            break;
        }
        written = at;
        tokio::task::yield_now().await;
        let _ = core.relay.dispatch(&core.link, frame, Instant::now());
    }
    let _ = wr.write_all(&wire[written..]).await;
    let _ = wr.shutdown().await;
    drop(wr);

    // Paused time: this only elapses if the session is stuck for good.
    tokio::time::timeout(Duration::from_secs(3600), session)
        .await
        .expect("the session ends once its socket is closed")
        .expect("the session task does not panic");
    reader.abort();
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, rest)) = data.split_first() else { return };
    let role = if role & 1 == 1 { Role::Gateway } else { Role::Agent };
    let (wire, server) = script(rest);
    runtime().block_on(run(role, wire, server));
});
