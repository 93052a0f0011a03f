//! A small parser for policy config files: the subset of YAML that flat
//! settings need, in a few hundred bytes of code instead of a YAML library
//! (which would add ~200 KiB to every component and to every instance's
//! start-up).
//!
//! Supported, at the top level only:
//!
//! ```yaml
//! # comments, blank lines, an optional leading `---`
//! header: x-tenant            # plain, 'single' or "double" quoted scalars
//! allow: [authorization, "x-api-key"]   # flow lists of scalars
//! keys:                       # block lists of scalars
//!   - password
//!   - token
//! ```
//!
//! Anything else (nested mappings, multi-line scalars, anchors) is an error
//! naming the line, so a config is never half-understood. The gateway's own
//! keys (`on_error`, `mode`, `state`, `call_timeout`, `memory_limit`, `quarantine_*`,
//! `filter_agent_to_server`, `filter_server_to_agent`, `visible_headers`) are
//! parsed like any other; [`Config::expect_keys`] ignores them.

use std::fmt;

/// Top-level keys read by the gateway itself, not by the policy.
pub const GATEWAY_KEYS: [&str; 13] = [
    "on_error",
    "mode",
    "state",
    "call_timeout",
    "memory_limit",
    "quarantine_after",
    "quarantine_rate",
    "quarantine_window",
    "quarantine_backoff",
    "quarantine_max_backoff",
    "filter_agent_to_server",
    "filter_server_to_agent",
    "visible_headers",
];

/// One value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Scalar(String),
    List(Vec<String>),
}

/// A parsed config: keys in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, Value)>,
}

/// A parse or validation error, with its 1-based line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

fn err(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError { line: Some(line), message: message.into() }
}

/// Strips a trailing ` # comment` outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return s[..i].trim_end(),
            _ => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    s.trim_end()
}

fn scalar(raw: &str, line: usize) -> Result<String, ConfigError> {
    let raw = raw.trim();
    for q in ['"', '\''] {
        if let Some(rest) = raw.strip_prefix(q) {
            let inner = rest.strip_suffix(q).ok_or_else(|| err(line, "unterminated quoted string"))?;
            if q == '"' && inner.contains('\\') {
                return Err(err(line, "escape sequences are not supported; use single quotes"));
            }
            return Ok(inner.to_owned());
        }
    }
    if raw.starts_with(['{', '&', '*', '!', '|', '>']) {
        return Err(err(line, format!("unsupported YAML value {raw:?} (only scalars and lists of scalars)")));
    }
    Ok(raw.to_owned())
}

fn flow_list(raw: &str, line: usize) -> Result<Vec<String>, ConfigError> {
    let inner = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| err(line, "a `[` list must close on the same line"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    // Split on commas outside quotes.
    let mut items = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                items.push(scalar(&inner[start..i], line)?);
                start = i + 1;
            }
            (None, '[') => return Err(err(line, "nested lists are not supported")),
            _ => {}
        }
    }
    items.push(scalar(&inner[start..], line)?);
    Ok(items)
}

impl Config {
    /// Parses `text`. Empty text is an empty config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        // The key whose block list we are reading, if any.
        let mut open_list: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(raw);
            if line.trim().is_empty() || (n == 1 && line.trim() == "---") {
                continue;
            }
            if line.starts_with('\t') {
                return Err(err(n, "tabs are not allowed for indentation"));
            }
            let indented = line.starts_with(' ');
            let content = line.trim();
            if let Some(item) = content.strip_prefix("- ").or(if content == "-" { Some("") } else { None }) {
                let idx = open_list.ok_or_else(|| err(n, "list item without a key above it"))?;
                match &mut entries[idx].1 {
                    Value::List(items) => items.push(scalar(item, n)?),
                    Value::Scalar(_) => return Err(err(n, "list item under a key that has a value")),
                }
                continue;
            }
            if indented {
                return Err(err(n, "nested mappings are not supported (only `key: value` at the top level)"));
            }
            let (key, value) = content.split_once(':').ok_or_else(|| err(n, "expected `key: value`"))?;
            let key = scalar(key, n)?;
            if key.is_empty() {
                return Err(err(n, "empty key"));
            }
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(err(n, format!("duplicate key `{key}`")));
            }
            let value = value.trim();
            open_list = None;
            let value = if value.is_empty() {
                // `key:` then either a block list or nothing (an empty list).
                open_list = Some(entries.len());
                Value::List(Vec::new())
            } else if value.starts_with('[') {
                Value::List(flow_list(value, n)?)
            } else {
                Value::Scalar(scalar(value, n)?)
            };
            entries.push((key, value));
        }
        Ok(Config { entries })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A scalar setting. Errors if `key` holds a list.
    pub fn str(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Scalar(s)) => Ok(Some(s)),
            Some(Value::List(_)) => Err(ConfigError { line: None, message: format!("`{key}` must be a single value") }),
        }
    }

    /// A duration setting in milliseconds: a whole number with a unit, `ms`,
    /// `s`, `m` or `h` (`500ms`, `30s`, `12h`); zero is refused.
    pub fn millis(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(text) = self.str(key)? else { return Ok(None) };
        let parsed = text.find(|c: char| !c.is_ascii_digit()).and_then(|split| {
            let (n, unit) = text.split_at(split);
            let per = match unit.trim() {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return None,
            };
            n.parse::<u64>().ok()?.checked_mul(per).filter(|ms| *ms > 0)
        });
        match parsed {
            Some(ms) => Ok(Some(ms)),
            None => Err(ConfigError {
                line: None,
                message: format!("`{key}` must be a duration like `500ms`, `30s` or `12h`, not `{text}`"),
            }),
        }
    }

    /// A list setting; a single scalar counts as a one-item list.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::Scalar(s) => Some(vec![s.clone()]),
            Value::List(l) => Some(l.clone()),
        }
    }

    /// Keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Fails on any key outside `known` and [`GATEWAY_KEYS`], so a typo is
    /// caught at load rather than silently ignored.
    pub fn expect_keys(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.keys().find(|k| !known.contains(k) && !GATEWAY_KEYS.contains(k)) {
            None => Ok(()),
            Some(k) => Err(ConfigError {
                line: None,
                message: format!("unknown key `{k}` (expected one of: {})", known.join(", ")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_milliseconds() {
        let c = Config::parse("a: 500ms\nb: 30s\nc: 12h\nd: 0s\ne: 5\nf: 1d\n").unwrap();
        assert_eq!(c.millis("a").unwrap(), Some(500));
        assert_eq!(c.millis("b").unwrap(), Some(30_000));
        assert_eq!(c.millis("c").unwrap(), Some(43_200_000));
        assert_eq!(c.millis("missing").unwrap(), None);
        for bad in ["d", "e", "f"] {
            assert!(c.millis(bad).unwrap_err().to_string().contains(&format!("`{bad}`")), "{bad}");
        }
    }

    #[test]
    fn parses_the_supported_subset() {
        let c = Config::parse(
            "---\n# comment\nheader: x-tenant # trailing\nallow: [authorization, 'x-a', \"x-b\"]\nkeys:\n  - password\n  - 'api-key'\nempty:\non_error: closed\nurl: http://a#b\n",
        )
        .unwrap();
        assert_eq!(c.str("header").unwrap(), Some("x-tenant"));
        assert_eq!(c.list("allow").unwrap(), ["authorization", "x-a", "x-b"]);
        assert_eq!(c.list("keys").unwrap(), ["password", "api-key"]);
        assert_eq!(c.list("empty").unwrap(), Vec::<String>::new());
        assert_eq!(c.str("url").unwrap(), Some("http://a#b"));
        assert_eq!(c.list("header").unwrap(), ["x-tenant"]);
        assert!(c.str("allow").is_err());
        assert!(c.expect_keys(&["header", "allow", "keys", "empty", "url"]).is_ok());
        assert!(c.expect_keys(&["header"]).is_err());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (text, line) in [
            ("a:\n  b: c\n", 2),
            ("- x\n", 1),
            ("a: 'open\n", 1),
            ("a: [x, y\n", 1),
            ("a: 1\na: 2\n", 2),
            ("a: {b: c}\n", 1),
            ("a: |\n", 1),
            ("no colon\n", 1),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
        }
    }
}
