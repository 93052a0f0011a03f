//! The gateway handshake carried in OpAMP custom messages.
//!
//! Before upgrading an agent, the gateway asks the upstream server whether to
//! let it in: an `AgentToServer` whose only field is a custom message of
//! capability [`CAPABILITY`], type [`CONNECT`], JSON [`ConnectRequest`]. The
//! server answers with type [`CONNECT_RESULT`], JSON [`ConnectResult`],
//! correlated by `request_uid` (the reply's own instance uid is meaningless).
//! This matches the Bindplane server and its `opampgateway` extension.
//!
//! The reference's Go structs (json-iterator on the gateway side,
//! `encoding/json` in its test server), in field order:
//!
//! - connect: `request_uid` string `omitempty`, `remote_address` string,
//!   `headers` `http.Header` (`map[string][]string`);
//! - connectResult: `request_uid` string `omitempty`, `accept` bool,
//!   `http_status_code` int, `response_headers` `map[string]string` — `null`
//!   when the server sets none, as the reference's own test server does.
//!
//! Both are read as Go reads them (`go_decode`): every field optional, `null`
//! anywhere a Go value may be nil, names case-insensitive, unknown fields
//! ignored. `go_encode` writes a connectResult byte for byte as Go does, for
//! the reference server's Go mode.

mod go_decode;
mod go_encode;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::framing;
use super::proto::{AgentToServer, CustomMessage, ServerToAgent};

pub use go_decode::{describe_error, request_uid_hint};

pub const CAPABILITY: &str = "com.bindplane.opamp-gateway";
pub const CONNECT: &str = "connect";
pub const CONNECT_RESULT: &str = "connectResult";

/// What the gateway tells the server about a connecting agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConnectRequest {
    pub request_uid: String,
    /// `ip:port` of the agent as the gateway saw it.
    pub remote_address: String,
    /// Request headers, names in Go's canonical form (`X-Api-Key`), because
    /// the reference server reads them as a Go `http.Header`.
    pub headers: BTreeMap<String, Vec<String>>,
}

/// The server's verdict on a [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConnectResult {
    pub request_uid: String,
    pub accept: bool,
    pub http_status_code: u16,
    pub response_headers: BTreeMap<String, String>,
}

impl ConnectResult {
    /// The status to answer a rejected agent with: the server's if it is a
    /// 4xx or 5xx, 401 if it gave none, else 502 (a 101 or 2xx would tell
    /// the agent it was admitted, a 3xx send it elsewhere).
    pub fn reject_status(&self) -> u16 {
        match self.http_status_code {
            0 => 401,
            s @ 400..=599 => s,
            _ => 502,
        }
    }
}

impl ConnectRequest {
    /// Builds the request from `(name, value)` pairs, grouping repeated names.
    pub fn new<'a>(
        request_uid: String,
        remote_address: String,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            map.entry(canonical_header_name(name)).or_default().push(value.to_owned());
        }
        Self { request_uid, remote_address, headers: map }
    }

    /// Parses a connect payload as a Go peer writes it (see `go_decode`).
    pub fn parse(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&String::from_utf8_lossy(data))
    }

    /// The complete WebSocket payload to send upstream.
    pub fn to_frame(&self) -> Bytes {
        framing::encode(&AgentToServer {
            custom_message: Some(CustomMessage {
                capability: CAPABILITY.into(),
                r#type: CONNECT.into(),
                data: serde_json::to_vec(self).expect("plain data serializes").into(),
            }),
            ..Default::default()
        })
    }

    /// Recognises a connect request (used by the reference server).
    pub fn from_custom(msg: &CustomMessage) -> Option<Result<Self, serde_json::Error>> {
        (msg.capability == CAPABILITY && msg.r#type == CONNECT).then(|| Self::parse(&msg.data))
    }
}

impl ConnectResult {
    /// Parses a connectResult payload as a Go peer writes it (see
    /// `go_decode`). Invalid UTF-8 becomes U+FFFD, as in Go.
    pub fn parse(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&String::from_utf8_lossy(data))
    }

    /// Recognises a connectResult; `None` if the message is something else.
    pub fn from_custom(msg: &CustomMessage) -> Option<Result<Self, serde_json::Error>> {
        (msg.capability == CAPABILITY && msg.r#type == CONNECT_RESULT).then(|| Self::parse(&msg.data))
    }

    /// The complete WebSocket payload a server sends back.
    pub fn to_frame(&self) -> Bytes {
        Self::frame_with(serde_json::to_vec(self).expect("plain data serializes").into())
    }

    /// A `ServerToAgent` carrying `data` as a connectResult, whatever it holds.
    pub fn frame_with(data: Bytes) -> Bytes {
        framing::encode(&ServerToAgent {
            custom_message: Some(CustomMessage { capability: CAPABILITY.into(), r#type: CONNECT_RESULT.into(), data }),
            ..Default::default()
        })
    }
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `x-api-key` → `X-Api-Key`.
/// Names with characters outside the token set are returned unchanged, as Go does.
pub fn canonical_header_name(name: &str) -> String {
    let valid = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}
