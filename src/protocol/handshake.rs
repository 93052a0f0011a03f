//! The gateway handshake carried in OpAMP custom messages.
//!
//! Before upgrading an agent, the gateway asks the upstream server whether to
//! let it in: an `AgentToServer` whose only field is a custom message of
//! capability [`CAPABILITY`], type [`CONNECT`], JSON [`ConnectRequest`]. The
//! server answers with type [`CONNECT_RESULT`], JSON [`ConnectResult`],
//! correlated by `request_uid` (the reply's own instance uid is meaningless).
//! This matches the Bindplane server and its `opampgateway` extension.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::framing;
use super::proto::{AgentToServer, CustomMessage, ServerToAgent};

pub const CAPABILITY: &str = "com.bindplane.opamp-gateway";
pub const CONNECT: &str = "connect";
pub const CONNECT_RESULT: &str = "connectResult";

/// What the gateway tells the server about a connecting agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub request_uid: String,
    /// `ip:port` of the agent as the gateway saw it.
    pub remote_address: String,
    /// Request headers, names in Go's canonical form (`X-Api-Key`), because
    /// the reference server reads them as a Go `http.Header`.
    pub headers: BTreeMap<String, Vec<String>>,
}

/// The server's verdict on a [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConnectResult {
    pub request_uid: String,
    pub accept: bool,
    #[serde(default)]
    pub http_status_code: u16,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
}

impl ConnectResult {
    /// The status to answer a rejected agent with: the server's, or 401.
    pub fn reject_status(&self) -> u16 {
        match self.http_status_code {
            0 => 401,
            s => s,
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
        (msg.capability == CAPABILITY && msg.r#type == CONNECT).then(|| serde_json::from_slice(&msg.data))
    }
}

impl ConnectResult {
    /// Recognises a connectResult; `None` if the message is something else.
    pub fn from_custom(msg: &CustomMessage) -> Option<Result<Self, serde_json::Error>> {
        (msg.capability == CAPABILITY && msg.r#type == CONNECT_RESULT).then(|| serde_json::from_slice(&msg.data))
    }

    /// The complete WebSocket payload a server sends back.
    pub fn to_frame(&self) -> Bytes {
        framing::encode(&ServerToAgent {
            custom_message: Some(CustomMessage {
                capability: CAPABILITY.into(),
                r#type: CONNECT_RESULT.into(),
                data: serde_json::to_vec(self).expect("plain data serializes").into(),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scan::{AgentFrame, ServerFrame};

    #[test]
    fn canonical_names_match_go() {
        assert_eq!(canonical_header_name("authorization"), "Authorization");
        assert_eq!(canonical_header_name("x-API-key"), "X-Api-Key");
        assert_eq!(canonical_header_name("sec-websocket-key"), "Sec-Websocket-Key");
        assert_eq!(canonical_header_name("bad name"), "bad name");
    }

    #[test]
    fn connect_round_trip_uses_the_wire_field_names() {
        let req = ConnectRequest::new(
            "r-1".into(),
            "10.0.0.1:5555".into(),
            [("authorization", "Secret-Key a"), ("x-tag", "1"), ("X-Tag", "2")],
        );
        let json: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(json["request_uid"], "r-1");
        assert_eq!(json["remote_address"], "10.0.0.1:5555");
        assert_eq!(json["headers"]["X-Tag"], serde_json::json!(["1", "2"]));

        let frame = AgentFrame::parse_ws(&req.to_frame()).unwrap();
        assert!(frame.uid.is_none());
        let back = ConnectRequest::from_custom(&frame.custom_message().unwrap()).unwrap().unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn connect_result_defaults_to_401() {
        let r: ConnectResult = serde_json::from_str(r#"{"request_uid":"x","accept":false}"#).unwrap();
        assert_eq!(r.reject_status(), 401);
        let frame = ServerFrame::parse_ws(&r.to_frame()).unwrap();
        let back = ConnectResult::from_custom(&frame.custom_message().unwrap()).unwrap().unwrap();
        assert_eq!(back, r);
    }
}
