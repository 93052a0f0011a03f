//! Redaction of `key: value` / `key = value` / `"key": "value"` in text.
//!
//! A key matches when it appears as a whole word (not inside a longer name:
//! `password` does not match `password_file`, but does match
//! `db.password`), case-insensitively, with `-`
//! and `_` treated alike, optionally quoted, followed by `:` or `=`. The
//! value is what follows on the same line:
//! - a quoted value: everything inside the quotes (the quotes stay);
//! - inside a `{...}` or `[...]` on that line: up to the next `,` `}` `]`;
//! - otherwise: up to the end of the line or a ` #` comment.
//!
//! Block scalars (`password: |` + indented lines) and values on the next line
//! are replaced as a whole by `<redacted>`, up to the next line indented no
//! deeper than the key. Bodies that are not UTF-8 are left alone.

/// The replacement text.
pub const MARK: &str = "<redacted>";

fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
            norm(x) == norm(y)
        })
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Where the value of a matched key starts and ends within `line`.
fn value_span(line: &str, after_sep: usize, in_flow: bool) -> Option<(usize, usize)> {
    let b = line.as_bytes();
    let mut start = after_sep;
    while start < b.len() && (b[start] == b' ' || b[start] == b'\t') {
        start += 1;
    }
    if start >= b.len() {
        return None; // value on the following lines
    }
    if b[start] == b'"' || b[start] == b'\'' {
        let q = b[start];
        let mut i = start + 1;
        while i < b.len() && b[i] != q {
            if b[i] == b'\\' && q == b'"' {
                i += 1;
            }
            i += 1;
        }
        return Some((start + 1, i.min(b.len())));
    }
    let mut end = b.len();
    for (i, &c) in b.iter().enumerate().skip(start) {
        if in_flow && (c == b',' || c == b'}' || c == b']') {
            end = i;
            break;
        }
        if c == b'#' && i > start && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
            end = i;
            break;
        }
    }
    while end > start && (b[end - 1] == b' ' || b[end - 1] == b'\t') {
        end -= 1;
    }
    Some((start, end))
}

/// Finds the first listed key in `line` at or after `from`; returns the
/// index just past its separator (`:` or `=`).
fn find_key(line: &str, from: usize, keys: &[String]) -> Option<(usize, usize)> {
    let b = line.as_bytes();
    let mut i = from;
    while i < b.len() {
        if !is_word(b[i]) || (i > 0 && is_word(b[i - 1])) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_word(b[j]) {
            j += 1;
        }
        let word = &line[i..j];
        if keys.iter().any(|k| same_key(k, word)) {
            let mut k = j;
            if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
                k += 1;
            }
            while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
                k += 1;
            }
            if k < b.len() && (b[k] == b':' || b[k] == b'=') {
                return Some((i, k + 1));
            }
        }
        i = j;
    }
    None
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

/// `body` with every listed key's value replaced by [`MARK`]; `None` when
/// nothing changed (or the body is not UTF-8).
pub fn redact(body: &[u8], keys: &[String]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(full) = lines.next() {
        let (line, eol) = match full.strip_suffix('\n') {
            Some(l) => match l.strip_suffix('\r') {
                Some(l2) => (l2, "\r\n"),
                None => (l, "\n"),
            },
            None => (full, ""),
        };
        let mut rebuilt = String::with_capacity(line.len());
        let mut copied = 0;
        let mut from = 0;
        // Set when the value continues on the following, deeper lines:
        // (indent of the key, where the value starts in `rebuilt`).
        let mut block: Option<(usize, usize)> = None;
        while let Some((key_start, after)) = find_key(line, from, keys) {
            let depth = line[..key_start].bytes().fold(0i32, |d, c| match c {
                b'{' | b'[' => d + 1,
                b'}' | b']' => d - 1,
                _ => d,
            });
            match value_span(line, after, depth > 0) {
                Some((s, e)) if line[s..e].starts_with(['|', '>']) && depth == 0 => {
                    // A block scalar: `key: |` then indented lines.
                    rebuilt.push_str(&line[copied..s]);
                    copied = s;
                    block = Some((indent(line), rebuilt.len()));
                    break;
                }
                Some((s, e)) => {
                    let value = &line[s..e];
                    if value != MARK && !value.is_empty() {
                        rebuilt.push_str(&line[copied..s]);
                        rebuilt.push_str(MARK);
                        copied = e;
                        changed = true;
                    }
                    from = e.max(after);
                }
                None => {
                    // `key:` alone: the value is the indented block below.
                    rebuilt.push_str(&line[copied..]);
                    copied = line.len();
                    block = Some((indent(line), rebuilt.len()));
                    break;
                }
            }
        }
        rebuilt.push_str(&line[copied..]);
        if let Some((key_indent, value_at)) = block {
            // Swallow the deeper-indented lines that make up the value.
            let mut swallowed = false;
            while let Some(next) = lines.peek() {
                let t = next.trim_end_matches(['\n', '\r']);
                if !t.trim().is_empty() && indent(t) <= key_indent {
                    break;
                }
                swallowed |= !t.trim().is_empty();
                lines.next();
            }
            if swallowed {
                rebuilt.truncate(value_at);
                let kept = rebuilt.trim_end().len();
                rebuilt.truncate(kept);
                rebuilt.push(' ');
                rebuilt.push_str(MARK);
                changed = true;
            }
        }
        out.push_str(&rebuilt);
        out.push_str(eol);
    }
    changed.then(|| out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        ["api-key", "password", "token"].map(String::from).to_vec()
    }

    fn r(s: &str) -> String {
        redact(s.as_bytes(), &keys()).map(|b| String::from_utf8(b).unwrap()).unwrap_or_else(|| s.to_owned())
    }

    #[test]
    fn yaml_values() {
        assert_eq!(r("password: hunter2\n"), "password: <redacted>\n");
        assert_eq!(r("  Password:   hunter2   # old\n"), "  Password:   <redacted>   # old\n");
        assert_eq!(r("api_key: 'a b c'\n"), "api_key: '<redacted>'\n");
        assert_eq!(r("- token: \"x\\\"y\"\n"), "- token: \"<redacted>\"\n");
        assert_eq!(r("auth: {user: bob, password: s3, x: 1}\n"), "auth: {user: bob, password: <redacted>, x: 1}\n");
        assert_eq!(r("password_file: /etc/p\nmy-token-path: x\n"), "password_file: /etc/p\nmy-token-path: x\n");
        assert_eq!(r("password: <redacted>\n"), "password: <redacted>\n");
        assert!(redact(b"password: <redacted>\n", &keys()).is_none());
    }

    #[test]
    fn json_and_properties() {
        assert_eq!(
            r(r#"{"password":"p","token": "t","n":1}"#),
            r#"{"password":"<redacted>","token": "<redacted>","n":1}"#
        );
        assert_eq!(r("db.password=hunter2\r\nuser=bob\r\n"), "db.password=<redacted>\r\nuser=bob\r\n");
        assert_eq!(r("password=hunter2\r\nuser=bob\r\n"), "password=<redacted>\r\nuser=bob\r\n");
    }

    #[test]
    fn block_values() {
        assert_eq!(
            r("a:\n  password: |\n    line1\n    line2\n  user: bob\n"),
            "a:\n  password: <redacted>\n  user: bob\n"
        );
        assert_eq!(r("token:\n  secret\nnext: 1\n"), "token: <redacted>\nnext: 1\n");
        assert_eq!(r("token:\nnext: 1\n"), "token:\nnext: 1\n");
        assert_eq!(r("token: >-\n  folded\n\n  text\nnext: 1\n"), "token: <redacted>\nnext: 1\n");
        assert_eq!(r("{\"a\": {\"password\": \"p\"}}"), "{\"a\": {\"password\": \"<redacted>\"}}");
    }

    #[test]
    fn non_utf8_is_left_alone() {
        assert!(redact(&[0xff, b'p'], &keys()).is_none());
    }
}
