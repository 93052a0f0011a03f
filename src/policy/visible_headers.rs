//! `visible_headers` in a policy's YAML: the agent's request headers its
//! hooks are shown. The operator grants them, not the policy: a policy
//! dropped in from elsewhere need not see the agents' `authorization` or
//! `cookie` to route by `x-tenant`.
//!
//! ```yaml
//! visible_headers: [x-tenant]   # admit, assign, on-connect, on-disconnect
//!                               # and forward-headers see only this one
//! ```
//!
//! Without the key a policy sees every header. With it, `forward-headers`
//! rewrites only what it sees: the other headers go on as they came, after
//! its answer, and an answer that names one of them fails the call (a
//! policy cannot replace a header it was not shown). Seeing fewer headers
//! is also cheaper: each header is two strings copied into the guest, a
//! call into its allocator for each.

use std::sync::Arc;

#[cfg(feature = "wasm")]
use super::config::show_yaml as show;
use super::{HeaderList, HookError};

/// The header names a policy is shown (`None`: all of them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VisibleHeaders {
    /// Lowercase names.
    names: Option<Arc<[String]>>,
}

impl VisibleHeaders {
    /// Only these names (any case).
    pub fn only<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self { names: Some(names.into_iter().map(str::to_ascii_lowercase).collect()) }
    }

    /// Whether the policy is shown header `name`.
    pub fn shows(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The headers the policy is shown, borrowed for a WIT parameter.
    pub fn select<'a>(&self, headers: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
        headers.iter().filter(|(k, _)| self.shows(k)).map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// A `forward-headers` answer (already checked and lowercased) with the
    /// headers the policy was not shown put back after it, unchanged.
    pub fn complete(&self, answer: HeaderList, input: &[(String, String)]) -> Result<HeaderList, HookError> {
        if self.names.is_none() {
            return Ok(answer);
        }
        if let Some((name, _)) = answer.iter().find(|(n, _)| !self.shows(n)) {
            return Err(HookError::Invalid(format!(
                "forward-headers answered header {name:?}, which is not in its visible_headers"
            )));
        }
        // Answered as shown: the input as it came, order included (so
        // shadow mode does not count a pass-through as a change).
        if answer.iter().eq(input.iter().filter(|(n, _)| self.shows(n))) {
            return Ok(input.to_vec());
        }
        let mut out = answer;
        out.extend(input.iter().filter(|(n, _)| !self.shows(n)).cloned());
        Ok(out)
    }

    /// Reads `visible_headers` from a policy's YAML (absent: every header).
    /// Errors name the key and the expected form.
    #[cfg(feature = "wasm")]
    pub(crate) fn parse(map: &serde_yaml_ng::Mapping) -> Result<Self, String> {
        const KEY: &str = "visible_headers";
        let Some(list) = map.get(KEY) else { return Ok(Self::default()) };
        let items =
            list.as_sequence().ok_or_else(|| format!("{KEY} must be a list of header names, not {}", show(list)))?;
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            match item.as_str() {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => names.push(name),
                _ => return Err(format!("{KEY}: expected an HTTP header name such as x-tenant, not {}", show(item))),
            }
        }
        Ok(Self::only(names))
    }
}

/// As `policy check` reports it.
impl std::fmt::Display for VisibleHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.names.as_deref() {
            None => f.write_str("every agent header (no visible_headers)"),
            Some([]) => f.write_str("none (visible_headers: [])"),
            Some(names) => write!(f, "only {} (visible_headers)", names.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> HeaderList {
        [("authorization", "Secret-Key k"), ("x-tenant", "acme"), ("user-agent", "otelcol")]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .to_vec()
    }

    #[test]
    fn without_the_key_every_header_is_shown_and_an_answer_stands_as_it_is() {
        let all = VisibleHeaders::default();
        let h = headers();
        assert_eq!(all.select(&h).len(), 3);
        let answer = vec![("x-new".to_owned(), "1".to_owned())];
        assert_eq!(all.complete(answer.clone(), &h).unwrap(), answer, "nothing put back");
    }

    #[test]
    fn only_the_granted_names_any_case_and_the_rest_go_on_after_the_answer() {
        let only = VisibleHeaders::only(["X-Tenant"]);
        let h = headers();
        assert_eq!(only.select(&h), [("x-tenant", "acme")]);
        assert!(only.shows("X-TENANT") && !only.shows("authorization"));
        let answer = vec![("x-tenant".to_owned(), "ACME".to_owned())];
        assert_eq!(
            only.complete(answer, &h).unwrap(),
            [("x-tenant", "ACME"), ("authorization", "Secret-Key k"), ("user-agent", "otelcol")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        // Dropping a shown header is the policy's call; the hidden ones stay.
        assert_eq!(only.complete(vec![], &h).unwrap().len(), 2);
        // Answered as shown: the input, in its order.
        assert_eq!(only.complete(vec![h[1].clone()], &h).unwrap(), h);
        let none = VisibleHeaders::only([]);
        assert!(none.select(&h).is_empty());
    }

    #[test]
    fn an_answer_cannot_name_a_header_the_policy_was_not_shown() {
        let only = VisibleHeaders::only(["x-tenant"]);
        let forged = vec![("authorization".to_owned(), "Secret-Key mine".to_owned())];
        let e = only.complete(forged, &headers()).unwrap_err();
        assert!(matches!(&e, HookError::Invalid(m) if m.contains("authorization") && m.contains("visible_headers")));
    }

    #[cfg(feature = "wasm")]
    #[test]
    fn parse_names_the_key_and_the_expected_form() {
        let parse = |text: &str| {
            VisibleHeaders::parse(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).unwrap().as_mapping().unwrap())
        };
        assert_eq!(parse("other: 1").unwrap(), VisibleHeaders::default());
        assert_eq!(
            parse("visible_headers: [X-Tenant, user-agent]").unwrap(),
            VisibleHeaders::only(["x-tenant", "user-agent"])
        );
        assert_eq!(parse("visible_headers: []").unwrap(), VisibleHeaders::only([]));
        let e = parse("visible_headers: x-tenant").unwrap_err();
        assert!(e.contains("visible_headers must be a list"), "{e}");
        let e = parse("visible_headers: [\"bad name\"]").unwrap_err();
        assert!(e.contains("visible_headers") && e.contains("bad name"), "{e}");
        let e = parse("visible_headers: [3]").unwrap_err();
        assert!(e.contains("header name"), "{e}");
    }
}
