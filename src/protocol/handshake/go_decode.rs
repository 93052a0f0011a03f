//! Reading handshake JSON as Go's `encoding/json` (and json-iterator, which
//! the reference gateway uses) reads it into the reference's structs.
//!
//! What Go accepts, and so do we:
//! - any field missing: its zero value;
//! - `null` for any field: a no-op for a string, bool or int (the value stays
//!   as it was), nil for a map. Go writes a nil map as `null`, so a server that
//!   accepts without headers sends `"response_headers": null`;
//! - `http.Header` entries with a nil slice (`"X-A": null`, an empty list for
//!   us) and `null` list entries (`""`, Go's zero string);
//! - field names in any case (`Request_UID`): Go matches case-insensitively;
//! - a repeated field: the last one wins, except that a repeated map merges
//!   into the first (Go decodes into the existing map);
//! - unknown fields: ignored.
//!
//! Beyond Go, a header value may be a single string where a list is expected
//! (`"X-A": "v"`), and a list where a string is expected (joined with `", "`,
//! null entries dropped): no Go peer sends these, a hand-written server might.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor};

use super::{ConnectRequest, ConnectResult};

/// Go's case-insensitive field match (`bytes.EqualFold`) against one of our
/// lower-case ASCII field names. The two non-ASCII letters that fold to ASCII
/// ones (U+212A KELVIN SIGN ~ k, U+017F LONG S ~ s) match too, as in Go.
fn field_is(key: &str, name: &str) -> bool {
    let mut key = key.chars();
    for n in name.chars() {
        let folded = match key.next() {
            None => return false,
            Some('\u{212A}') => 'k',
            Some('\u{017F}') => 's',
            Some(c) => c.to_ascii_lowercase(),
        };
        if folded != n {
            return false;
        }
    }
    key.next().is_none()
}

/// A header value list (`http.Header`): list, `null` (nil), or a lone string.
struct ValueList(Vec<String>);

impl<'de> Deserialize<'de> for ValueList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of header values, a string or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<ValueList, E> {
                Ok(ValueList(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueList, E> {
                Ok(ValueList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ValueList, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Option<String>>()? {
                    out.push(v.unwrap_or_default());
                }
                Ok(ValueList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A response header value (`map[string]string`): string, `null` (""), or a
/// list joined with ", ".
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header value string, a list of them or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                let mut parts = Vec::new();
                while let Some(v) = seq.next_element::<Option<String>>()? {
                    parts.extend(v);
                }
                Ok(Text(parts.join(", ")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's rule for a map field: `null` makes it nil, an object merges into it.
fn merge_map<K: Ord, V>(into: &mut BTreeMap<K, V>, value: Option<BTreeMap<K, V>>) {
    match value {
        None => into.clear(),
        Some(m) => into.extend(m),
    }
}

/// Go's rule for a scalar field: `null` leaves it as it was.
fn set<T>(into: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *into = v;
    }
}

impl<'de> Deserialize<'de> for ConnectResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConnectResult;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a connectResult object")
            }
            // `null` into a Go struct is a no-op: all zero values.
            fn visit_unit<E: de::Error>(self) -> Result<ConnectResult, E> {
                Ok(ConnectResult::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConnectResult, A::Error> {
                let mut r = ConnectResult::default();
                while let Some(key) = map.next_key::<String>()? {
                    if field_is(&key, "request_uid") {
                        set(&mut r.request_uid, map.next_value()?);
                    } else if field_is(&key, "accept") {
                        set(&mut r.accept, map.next_value()?);
                    } else if field_is(&key, "http_status_code") {
                        if let Some(code) = map.next_value::<Option<i64>>()? {
                            r.http_status_code = u16::try_from(code)
                                .map_err(|_| de::Error::invalid_value(Unexpected::Signed(code), &"an HTTP status"))?;
                        }
                    } else if field_is(&key, "response_headers") {
                        let value: Option<BTreeMap<String, Text>> = map.next_value()?;
                        let value = value.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect());
                        merge_map(&mut r.response_headers, value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ConnectRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConnectRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a connect object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<ConnectRequest, E> {
                Ok(ConnectRequest::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConnectRequest, A::Error> {
                let mut r = ConnectRequest::default();
                while let Some(key) = map.next_key::<String>()? {
                    if field_is(&key, "request_uid") {
                        set(&mut r.request_uid, map.next_value()?);
                    } else if field_is(&key, "remote_address") {
                        set(&mut r.remote_address, map.next_value()?);
                    } else if field_is(&key, "headers") {
                        let value: Option<BTreeMap<String, ValueList>> = map.next_value()?;
                        let value = value.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect());
                        merge_map(&mut r.headers, value);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `request_uid` of a handshake payload that does not parse as a whole,
/// so its waiter can be told at once. Tries the JSON object (any key casing,
/// last wins), then, for JSON that is not even well formed (truncated, say),
/// the first `"request_uid": "…"` in the text. `None` if there is no non-empty
/// one.
pub fn request_uid_hint(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let from_object = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
        let obj = v.as_object()?;
        obj.iter()
            .filter(|(k, _)| field_is(k, "request_uid"))
            .filter_map(|(_, v)| v.as_str())
            .next_back()
            .map(str::to_owned)
    });
    let uid = from_object.or_else(|| {
        let key = "\"request_uid\"";
        let rest = text[text.find(key)? + key.len()..].trim_start();
        let rest = rest.strip_prefix(':')?.trim_start();
        // Reads one JSON string (escapes and all) and ignores what follows.
        serde_json::Deserializer::from_str(rest).into_iter::<String>().next()?.ok()
    });
    uid.filter(|u| !u.is_empty())
}

/// Why a payload did not parse, without quoting it: serde's messages echo
/// the offending value, and a header value may be a secret.
pub fn describe_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Data => "a field has the wrong type or value",
        Category::Syntax => "not valid JSON",
        Category::Eof => "truncated JSON",
        Category::Io => "unreadable",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}
