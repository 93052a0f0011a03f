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

/// Case-insensitive, with `-` and `_` alike.
fn norm(c: u8) -> u8 {
    if c == b'_' {
        b'-'
    } else {
        c.to_ascii_lowercase()
    }
}

/// The listed keys, normalised once (see [`norm`]), with the bytes they can
/// end in: most separators in a config follow a name that is no key, and
/// its last byte rules it out before the name is walked and compared.
pub struct Keys {
    names: Vec<Vec<u8>>,
    last: [bool; 256],
}

impl Keys {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        let names: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().bytes().map(norm).collect()).collect();
        let mut last = [false; 256];
        for (byte, slot) in (0..=u8::MAX).zip(last.iter_mut()) {
            *slot = names.iter().any(|n| n.last() == Some(&norm(byte)));
        }
        Self { names, last }
    }

    fn may_end_with(&self, c: u8) -> bool {
        self.last[usize::from(c)]
    }

    fn contains(&self, word: &[u8]) -> bool {
        self.names.iter().any(|n| n.len() == word.len() && n.iter().zip(word).all(|(&k, &c)| k == norm(c)))
    }
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

/// If the word just before the separator at `sep` is a listed key (with
/// optional quote and blanks between), where that word starts. Looks no
/// further back than `floor`.
fn key_before(text: &str, floor: usize, sep: usize, keys: &Keys) -> Option<usize> {
    let b = text.as_bytes();
    let mut end = sep;
    while end > floor && (b[end - 1] == b' ' || b[end - 1] == b'\t') {
        end -= 1;
    }
    if end > floor && (b[end - 1] == b'"' || b[end - 1] == b'\'') {
        end -= 1;
    }
    if end == floor || !keys.may_end_with(b[end - 1]) {
        return None;
    }
    let mut start = end;
    while start > floor && is_word(b[start - 1]) {
        start -= 1;
    }
    // A whole word only: `password` must not match `my_password`.
    let whole = start == 0 || !is_word(b[start - 1]);
    (start < end && whole && keys.contains(&b[start..end])).then_some(start)
}

/// Separators (`:` and `=`) in `text` from `from` on.
fn separators(text: &str, from: usize) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr2_iter(b':', b'=', &text.as_bytes()[from..]).map(move |i| from + i)
}

/// Finds the first listed key in `line` at or after `from`; returns where
/// it starts and the index just past its separator.
fn find_key(line: &str, from: usize, keys: &Keys) -> Option<(usize, usize)> {
    separators(line, from).find_map(|sep| Some((key_before(line, from, sep, keys)?, sep + 1)))
}

/// Where the first line at or after `from` (a line start) that mentions a
/// listed key begins. Configs have far fewer separators than bytes, so this
/// skips the lines that need no work at memchr speed.
fn next_key_line(text: &str, from: usize, keys: &Keys) -> Option<usize> {
    let sep = separators(text, from).find(|&sep| key_before(text, from, sep, keys).is_some())?;
    Some(memchr::memrchr(b'\n', &text.as_bytes()[from..sep]).map_or(from, |i| from + i + 1))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

/// What to do with one line: values to replace, and maybe a value that
/// continues on the following lines.
#[derive(Default)]
struct LineEdits {
    /// `(start, end)` of each value to replace, in order.
    values: Vec<(usize, usize)>,
    /// `(indent of the key, where the value starts)` when the value is a
    /// block below the key.
    block: Option<(usize, usize)>,
}

impl LineEdits {
    fn find(&mut self, line: &str, keys: &Keys) {
        self.values.clear();
        self.block = None;
        let mut from = 0;
        while let Some((key_start, after)) = find_key(line, from, keys) {
            let depth = line[..key_start].bytes().fold(0i32, |d, c| match c {
                b'{' | b'[' => d + 1,
                b'}' | b']' => d - 1,
                _ => d,
            });
            match value_span(line, after, depth > 0) {
                // A block scalar: `key: |` then indented lines.
                Some((s, e)) if line[s..e].starts_with(['|', '>']) && depth == 0 => {
                    self.block = Some((indent(line), s));
                    return;
                }
                Some((s, e)) => {
                    let value = &line[s..e];
                    if value != MARK && !value.is_empty() {
                        self.values.push((s, e));
                    }
                    from = e.max(after);
                }
                // `key:` alone: the value is the indented block below.
                None => {
                    self.block = Some((indent(line), line.len()));
                    return;
                }
            }
        }
    }
}

/// `body` with every listed key's value replaced by [`MARK`]; `None` when
/// nothing changed (or the body is not UTF-8).
///
/// Runs on every effective config an agent reports: lines without a key
/// are skipped at memchr speed and never copied one by one, a body without
/// secrets allocates nothing, and one with secrets is rebuilt into a single
/// buffer.
pub fn redact(body: &[u8], keys: &Keys) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    // Created at the first change; `text[..copied]` is in it.
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut edits = LineEdits::default();
    let mut from = 0; // always a line start
    while let Some(line_at) = next_key_line(text, from, keys) {
        let full_end = memchr::memchr(b'\n', &text.as_bytes()[line_at..]).map_or(text.len(), |i| line_at + i + 1);
        let full = &text[line_at..full_end];
        let (line, eol) = match full.strip_suffix('\n') {
            Some(l) => match l.strip_suffix('\r') {
                Some(l2) => (l2, "\r\n"),
                None => (l, "\n"),
            },
            None => (full, ""),
        };
        edits.find(line, keys);
        // The lines that make up a block value: deeper-indented or blank.
        let mut swallowed = false;
        let mut block_end = full_end;
        if let Some((key_indent, _)) = edits.block {
            for next in text[full_end..].split_inclusive('\n') {
                let t = next.trim_end_matches(['\n', '\r']);
                if !t.trim().is_empty() && indent(t) <= key_indent {
                    break;
                }
                swallowed |= !t.trim().is_empty();
                block_end += next.len();
            }
        }
        from = block_end;
        if edits.values.is_empty() && !swallowed {
            continue;
        }
        let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
        out.push_str(&text[copied..line_at]);
        let mut at = 0;
        for &(s, e) in &edits.values {
            out.push_str(&line[at..s]);
            out.push_str(MARK);
            at = e;
        }
        match edits.block {
            Some((_, value_at)) if swallowed => {
                out.push_str(line[at..value_at].trim_end());
                out.push(' ');
                out.push_str(MARK);
                out.push_str(eol);
                copied = block_end;
            }
            // No block, or only blank lines below the key: they stay.
            _ => {
                out.push_str(&line[at..]);
                out.push_str(eol);
                copied = full_end;
            }
        }
    }
    let mut out = out?;
    out.push_str(&text[copied..]);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&["api-key", "password", "token"])
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
    fn blank_lines_after_an_empty_key_are_kept() {
        assert_eq!(r("token:\n\npassword: p\n"), "token:\n\npassword: <redacted>\n");
        assert_eq!(r("a: 1\npassword: p\nb: 2"), "a: 1\npassword: <redacted>\nb: 2");
        assert!(redact(b"a: 1\ntoken:\n\nb: 2\n", &keys()).is_none());
    }

    #[test]
    fn untouched_lines_between_edits_are_kept_exactly() {
        assert_eq!(
            r("a: 1\r\npassword: x\r\nb:\r\n  token: |\r\n    t\r\nc: 2\r\nurl: http://h:1/?token=q"),
            "a: 1\r\npassword: <redacted>\r\nb:\r\n  token: <redacted>\r\nc: 2\r\nurl: http://h:1/?token=<redacted>"
        );
        assert!(redact(b"receivers:\n  otlp: {}\nurl: http://x:4317\n", &keys()).is_none());
    }

    #[test]
    fn listed_keys_are_normalised_like_the_text() {
        let keys = Keys::new(&["API_Key", "x"]);
        let r = |s: &str| redact(s.as_bytes(), &keys).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(r("api-key: a\nAPI_KEY=b\n").as_deref(), Some("api-key: <redacted>\nAPI_KEY=<redacted>\n"));
        assert_eq!(r("X: 1\nax: 2\nkey: 3\n").as_deref(), Some("X: <redacted>\nax: 2\nkey: 3\n"));
        assert_eq!(r("api-keys: a\nmy_api_key: b\n"), None);
    }

    #[test]
    fn non_utf8_is_left_alone() {
        assert!(redact(&[0xff, b'p'], &keys()).is_none());
    }
}
