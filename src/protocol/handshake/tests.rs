use std::collections::BTreeMap;

use proptest::prelude::*;

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
    let r = ConnectResult::parse(br#"{"request_uid":"x","accept":false}"#).unwrap();
    assert_eq!(r.reject_status(), 401);
    let frame = ServerFrame::parse_ws(&r.to_frame()).unwrap();
    let back = ConnectResult::from_custom(&frame.custom_message().unwrap()).unwrap().unwrap();
    assert_eq!(back, r);
    let odd = ConnectResult { http_status_code: 1200, ..r.clone() };
    assert_eq!(odd.reject_status(), 502, "not an HTTP status: the server's answer is bad");
    for s in [100, 101, 200, 204, 302, 399, 600] {
        let r = ConnectResult { http_status_code: s, ..r.clone() };
        assert_eq!(r.reject_status(), 502, "{s} is no refusal: the server's answer is bad");
    }
    for s in [400, 403, 429, 503, 599] {
        assert_eq!(ConnectResult { http_status_code: s, ..r.clone() }.reject_status(), s, "passed through");
    }
}

/// What the reference's own test server sends to accept an agent
/// (`encoding/json` of the result struct with no headers set).
#[test]
fn go_accept_with_nil_headers_parses() {
    let go = r#"{"request_uid":"5d1c8f0e-2b7a-4c1e-9e57-3f7c2a9b8d10","accept":true,"http_status_code":200,"response_headers":null}"#;
    let r = ConnectResult::parse(go.as_bytes()).unwrap();
    assert!(r.accept);
    assert_eq!(r.http_status_code, 200);
    assert!(r.response_headers.is_empty());
    assert_eq!(r.to_go_json(), go, "the Go encoder reproduces it byte for byte");
}

#[test]
fn go_encoding_is_byte_exact() {
    let r = ConnectResult {
        request_uid: String::new(),
        accept: false,
        http_status_code: 403,
        response_headers: BTreeMap::from([
            ("X-B".to_owned(), "<b> & \"q\" \\ \u{2028}".to_owned()),
            ("X-A".to_owned(), "tab\there\u{1}\u{8}\u{c}\u{7f}é".to_owned()),
        ]),
    };
    assert_eq!(
        r.to_go_json(),
        r#"{"accept":false,"http_status_code":403,"response_headers":{"X-A":"tab\there\u0001\b\f"#.to_owned()
            + "\u{7f}é"
            + r#"","X-B":"\u003cb\u003e \u0026 \"q\" \\ \u2028"}}"#
    );
    assert_eq!(ConnectResult::parse(r.to_go_json().as_bytes()).unwrap(), r);
}

#[test]
fn nulls_everywhere_go_can_write_them() {
    let r =
        ConnectResult::parse(br#"{"request_uid":null,"accept":null,"http_status_code":null,"response_headers":null}"#)
            .unwrap();
    assert_eq!(r, ConnectResult::default());
    assert_eq!(ConnectResult::parse(b"null").unwrap(), ConnectResult::default());
    assert_eq!(ConnectResult::parse(b"{}").unwrap(), ConnectResult::default());

    let q = ConnectRequest::parse(
        br#"{"request_uid":"r","remote_address":null,"headers":{"A":null,"B":["x",null],"C":"lone"},"tls":{"x":1}}"#,
    )
    .unwrap();
    assert_eq!(q.request_uid, "r");
    assert_eq!(q.remote_address, "");
    assert_eq!(q.headers["A"], Vec::<String>::new());
    assert_eq!(q.headers["B"], ["x", ""]);
    assert_eq!(q.headers["C"], ["lone"]);
    assert_eq!(ConnectRequest::parse(br#"{"headers":null}"#).unwrap(), ConnectRequest::default());
}

/// Go's rules for repeated and differently-cased fields.
#[test]
fn repeated_and_cased_fields_follow_go() {
    let r = ConnectResult::parse(
        br#"{"REQUEST_UID":"a","request_uid":null,"Accept":true,"accept":false,
            "response_headers":{"A":"1"},"Response_Headers":{"B":"2"},"http_status_code":7,"HTTP_status_code":401}"#,
    )
    .unwrap();
    assert_eq!(r.request_uid, "a", "null leaves a string as it was");
    assert!(!r.accept, "the last one wins");
    assert_eq!(r.http_status_code, 401);
    assert_eq!(r.response_headers.len(), 2, "a repeated map merges");
    let r = ConnectResult::parse(br#"{"response_headers":{"A":"1"},"response_headers":null}"#).unwrap();
    assert!(r.response_headers.is_empty(), "null makes a map nil");
    // U+017F (long s) folds to 's' in Go's field matching.
    let r = ConnectResult::parse("{\"reque\u{17f}t_uid\":\"k\"}".as_bytes()).unwrap();
    assert_eq!(r.request_uid, "k");
}

#[test]
fn what_go_refuses_we_refuse() {
    for bad in [
        &br#"{"accept":"yes"}"#[..],
        br#"{"http_status_code":200.0}"#,
        br#"{"http_status_code":"200"}"#,
        br#"{"http_status_code":-1}"#,
        br#"{"response_headers":{"A":1}}"#,
        br#"{"request_uid":"x"} trailing"#,
        br#"[]"#,
        br#"{"request_uid":"x""#,
    ] {
        assert!(ConnectResult::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn request_uid_is_found_in_results_that_do_not_parse() {
    assert_eq!(request_uid_hint(br#"{"request_uid":"u-1","accept":"yes"}"#).as_deref(), Some("u-1"));
    assert_eq!(request_uid_hint(br#"{"Request_Uid":"u-2","http_status_code":1e9}"#).as_deref(), Some("u-2"));
    assert_eq!(request_uid_hint(br#"{"request_uid" : "u-\"3\"","accept":tru"#).as_deref(), Some("u-\"3\""));
    assert_eq!(request_uid_hint(br#"{"accept":true}"#), None);
    assert_eq!(request_uid_hint(br#"{"request_uid":""}"#), None);
    assert_eq!(request_uid_hint(b"\xff\xfe garbage"), None);
}

#[test]
fn errors_are_described_without_quoting_the_payload() {
    let e = ConnectResult::parse(br#"{"response_headers":{"Set-Cookie":["s3cret",1]}}"#).unwrap_err();
    let why = describe_error(&e);
    assert!(!why.contains("s3cret") && why.contains("wrong type"), "{why}");
    let e = ConnectResult::parse(br#"{"accept":"s3cret"}"#).unwrap_err();
    assert!(!describe_error(&e).contains("s3cret"));
}

#[test]
fn invalid_utf8_becomes_replacement_characters_as_in_go() {
    let r = ConnectResult::parse(b"{\"request_uid\":\"a\xffb\"}").unwrap();
    assert_eq!(r.request_uid, "a\u{fffd}b");
}

// ---- property tests: generated Go-style encodings -------------------------

/// A field of the generated document.
#[derive(Debug, Clone)]
enum Field<T> {
    Absent,
    Null,
    Value(T),
}

/// A header value as a peer may write it.
#[derive(Debug, Clone)]
enum HeaderValue {
    Null,
    Str(String),
    List(Vec<Option<String>>),
}

fn field<T: std::fmt::Debug + Clone>(value: impl Strategy<Value = T>) -> impl Strategy<Value = Field<T>> {
    prop_oneof![1 => Just(Field::Absent), 1 => Just(Field::Null), 3 => value.prop_map(Field::Value)]
}

/// Text with the characters that need care in JSON, and any others.
fn text() -> impl Strategy<Value = String> {
    let special =
        prop::sample::select(vec!['"', '\\', '/', '<', '>', '&', '\n', '\u{0}', '\u{1f}', '\u{2028}', 'é', '😀']);
    let c = prop_oneof![3 => proptest::char::range('a', 'z'), 1 => special, 1 => any::<char>()];
    prop::collection::vec(c, 0..10).prop_map(|v| v.into_iter().collect())
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        Just(HeaderValue::Null),
        text().prop_map(HeaderValue::Str),
        prop::collection::vec(prop::option::weighted(0.8, text()), 0..4).prop_map(HeaderValue::List),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, HeaderValue)>> {
    prop::collection::vec((text(), header_value()), 0..5)
}

/// Deterministic choices (whitespace, escapes, order, casing) from a seed.
struct Noise(u64);

impl Noise {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*: plenty for picking among a few options.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn ws(&mut self, out: &mut String) {
        out.push_str(["", "", " ", "\n", "\t", "\r\n  "][self.next(6) as usize]);
    }

    /// A JSON string, each character written literally or escaped at random.
    fn string(&mut self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            let must_escape = c == '"' || c == '\\' || (c as u32) < 0x20;
            match (must_escape, self.next(3)) {
                (false, 0 | 1) => out.push(c),
                (true, 0) if c == '"' || c == '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                (true, 0) if c == '\n' => out.push_str("\\n"),
                _ => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{:04X}", u));
                    }
                }
            }
        }
        out.push('"');
    }

    /// A known field name in a random case Go still matches.
    fn key(&mut self, out: &mut String, name: &str) {
        let cased: String = name
            .chars()
            .map(|c| match (c, self.next(4)) {
                ('s', 0) => '\u{17f}',
                (c, 1) => c.to_ascii_uppercase(),
                (c, _) => c,
            })
            .collect();
        self.string(out, &cased);
    }

    fn header_value(&mut self, out: &mut String, v: &HeaderValue) {
        match v {
            HeaderValue::Null => out.push_str("null"),
            HeaderValue::Str(s) => self.string(out, s),
            HeaderValue::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    match item {
                        Some(s) => self.string(out, s),
                        None => out.push_str("null"),
                    }
                    self.ws(out);
                }
                out.push(']');
            }
        }
    }

    fn headers(&mut self, out: &mut String, hs: &[(String, HeaderValue)]) {
        out.push('{');
        for (i, (k, v)) in hs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.ws(out);
            self.string(out, k);
            self.ws(out);
            out.push(':');
            self.ws(out);
            self.header_value(out, v);
        }
        self.ws(out);
        out.push('}');
    }

    /// An object of `(name, value JSON)` members in a random order, with
    /// unknown members mixed in.
    fn object(&mut self, members: Vec<(&str, String)>, extras: usize) -> String {
        // Near misses of real names must be ignored, and so must real names
        // nested inside an unknown member.
        const UNKNOWN: [(&str, &str); 6] = [
            ("requestuid", "\"decoy\""),
            ("accepted", "true"),
            ("http_status", "-2.5e3"),
            ("response_header", "{\"A\":1}"),
            ("extra", "[1,{\"request_uid\":\"nested\"},null,\"s\"]"),
            ("tls", "{\"accept\":false,\"headers\":{}}"),
        ];
        let mut all: Vec<(String, String)> = Vec::new();
        for (name, value) in members {
            let mut k = String::new();
            self.key(&mut k, name);
            all.push((k, value));
        }
        for _ in 0..extras {
            let (k, v) = UNKNOWN[self.next(UNKNOWN.len() as u64) as usize];
            all.push((format!("\"{k}\""), v.to_owned()));
        }
        for i in (1..all.len()).rev() {
            all.swap(i, self.next(i as u64 + 1) as usize);
        }
        let mut out = String::new();
        self.ws(&mut out);
        out.push('{');
        for (i, (k, v)) in all.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.ws(&mut out);
            out.push_str(k);
            self.ws(&mut out);
            out.push(':');
            self.ws(&mut out);
            out.push_str(v);
            self.ws(&mut out);
        }
        out.push('}');
        self.ws(&mut out);
        out
    }
}

/// Renders a present field's value (or `null`); `None` for an absent one.
fn member<T>(f: &Field<T>, noise: &mut Noise, write: impl FnOnce(&mut Noise, &mut String, &T)) -> Option<String> {
    match f {
        Field::Absent => None,
        Field::Null => Some("null".to_owned()),
        Field::Value(v) => {
            let mut out = String::new();
            write(noise, &mut out, v);
            Some(out)
        }
    }
}

fn value_or_default<T: Clone + Default>(f: &Field<T>) -> T {
    match f {
        Field::Value(v) => v.clone(),
        _ => T::default(),
    }
}

proptest! {
    #[test]
    fn go_style_connect_results_parse_as_the_model_says(
        uid in field(text()),
        accept in field(any::<bool>()),
        status in field(any::<u16>()),
        hs in field(headers()),
        extras in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut noise = Noise(seed | 1);
        let mut members = Vec::new();
        let fields = [
            ("request_uid", member(&uid, &mut noise, |n, o, s| n.string(o, s))),
            ("accept", member(&accept, &mut noise, |_, o, b| o.push_str(&b.to_string()))),
            ("http_status_code", member(&status, &mut noise, |_, o, c| o.push_str(&c.to_string()))),
            ("response_headers", member(&hs, &mut noise, |n, o, h| n.headers(o, h))),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                members.push((name, v));
            }
        }
        let json = noise.object(members, extras);

        let mut expected = ConnectResult {
            request_uid: value_or_default(&uid),
            accept: value_or_default(&accept),
            http_status_code: value_or_default(&status),
            response_headers: BTreeMap::new(),
        };
        if let Field::Value(entries) = &hs {
            for (k, v) in entries {
                let v = match v {
                    HeaderValue::Null => String::new(),
                    HeaderValue::Str(s) => s.clone(),
                    HeaderValue::List(items) => items.iter().flatten().cloned().collect::<Vec<_>>().join(", "),
                };
                expected.response_headers.insert(k.clone(), v);
            }
        }
        let parsed = ConnectResult::parse(json.as_bytes());
        prop_assert_eq!(parsed.as_ref().ok(), Some(&expected), "JSON: {}", json);
        if !expected.request_uid.is_empty() {
            prop_assert_eq!(request_uid_hint(json.as_bytes()), Some(expected.request_uid.clone()));
        }
    }

    #[test]
    fn go_style_connect_requests_parse_as_the_model_says(
        uid in field(text()),
        remote in field(text()),
        hs in field(headers()),
        extras in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut noise = Noise(seed | 1);
        let mut members = Vec::new();
        let fields = [
            ("request_uid", member(&uid, &mut noise, |n, o, s| n.string(o, s))),
            ("remote_address", member(&remote, &mut noise, |n, o, s| n.string(o, s))),
            ("headers", member(&hs, &mut noise, |n, o, h| n.headers(o, h))),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                members.push((name, v));
            }
        }
        let json = noise.object(members, extras);

        let mut expected = ConnectRequest {
            request_uid: value_or_default(&uid),
            remote_address: value_or_default(&remote),
            headers: BTreeMap::new(),
        };
        if let Field::Value(entries) = &hs {
            for (k, v) in entries {
                let v = match v {
                    HeaderValue::Null => Vec::new(),
                    HeaderValue::Str(s) => vec![s.clone()],
                    HeaderValue::List(items) => items.iter().map(|i| i.clone().unwrap_or_default()).collect(),
                };
                expected.headers.insert(k.clone(), v);
            }
        }
        let parsed = ConnectRequest::parse(json.as_bytes());
        prop_assert_eq!(parsed.as_ref().ok(), Some(&expected), "JSON: {}", json);
    }

    /// Whatever the Go encoder writes, the parser reads back.
    #[test]
    fn go_encoder_round_trips(
        uid in text(),
        accept in any::<bool>(),
        status in any::<u16>(),
        hs in prop::collection::btree_map(text(), text(), 0..4),
    ) {
        let r = ConnectResult { request_uid: uid, accept, http_status_code: status, response_headers: hs };
        let json = r.to_go_json();
        prop_assert_eq!(ConnectResult::parse(json.as_bytes()).ok(), Some(r), "JSON: {}", json);
    }
}
