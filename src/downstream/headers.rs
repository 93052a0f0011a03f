//! Which of an agent's request headers reach the server, for both
//! transports.

use http::header::CONNECTION;

/// The request's headers as the server should see them: Go-style, without
/// `Host` (Go's `http.Request.Header`, what the reference forwards, leaves
/// it out), and without what belongs to this hop rather than to the agent —
/// hop-by-hop headers (RFC 9110 §7.6.1, including those the `Connection`
/// header names), the WebSocket handshake's own, and the gateway's own
/// `X-Opamp-Gateway-*`, which an agent must not be able to forge.
pub(crate) fn forwarded_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let named_by_connection: Vec<String> =
        list_elements(h, CONNECTION).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect();
    h.iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            !(HOP_BY_HOP.contains(&n)
                || n.starts_with("sec-websocket-")
                || n.starts_with("x-opamp-gateway-")
                || named_by_connection.iter().any(|c| c == n))
        })
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect()
}

/// The elements of every `name` header read as a comma-separated list (RFC
/// 9110 §5.6.1), trimmed, empty ones included; a value that is not visible
/// ASCII is skipped.
pub(crate) fn list_elements(h: &http::HeaderMap, name: http::HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Never forwarded: `Host`, and the hop-by-hop headers of RFC 9110 §7.6.1
/// plus the proxy ones RFC 2616 listed.
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];
