//! A connectResult written byte for byte as Go's `encoding/json` writes the
//! reference's struct, hand-built so it owes nothing to serde's choices: the
//! struct's field order and names, `request_uid` left out when empty
//! (`omitempty`), a nil map as `null`, map keys sorted, and Go's string
//! escaping (HTML-safe by default). json-iterator's default config writes the
//! same bytes except that it does not sort map keys and spells `\b` and `\f`
//! as `\u0008` and `\u000c`.

use std::fmt::Write as _;

use super::ConnectResult;

impl ConnectResult {
    /// The JSON a Go server would send for this result. Our model has no
    /// nil-vs-empty distinction: no response headers is written as Go writes
    /// a map it never set, `null`.
    pub fn to_go_json(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push('{');
        if !self.request_uid.is_empty() {
            out.push_str("\"request_uid\":");
            push_go_string(&mut out, &self.request_uid);
            out.push(',');
        }
        let _ = write!(out, "\"accept\":{},\"http_status_code\":{},", self.accept, self.http_status_code);
        out.push_str("\"response_headers\":");
        if self.response_headers.is_empty() {
            out.push_str("null");
        } else {
            out.push('{');
            // A BTreeMap iterates in byte order of its keys: Go's sort order.
            for (i, (k, v)) in self.response_headers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_go_string(&mut out, k);
                out.push(':');
                push_go_string(&mut out, v);
            }
            out.push('}');
        }
        out.push('}');
        out
    }
}

/// A JSON string as `encoding/json` writes it with HTML escaping (the
/// `json.Marshal` default): `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes,
/// control characters as `\n`-style short escapes where JSON has one (Go 1.22
/// added `\b` and `\f`), else `\u00xx` in lower-case hex.
pub(super) fn push_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
