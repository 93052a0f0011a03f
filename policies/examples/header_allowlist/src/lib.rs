//! `header_allowlist`: forward only the headers an operator lists.
//!
//! The connect handshake carries the agent's request headers to the OpAMP
//! server, which authenticates the agent from them. Everything else an agent
//! (or a proxy in front of the gateway) sends — cookies, tracing headers,
//! internal routing hints — leaks upstream unless someone stops it.
//!
//! ```yaml
//! # header_allowlist.yaml
//! allow: [authorization, user-agent, x-tenant]   # case-insensitive
//! ```
//!
//! Hook: `forward-headers`. An empty or missing `allow` forwards nothing,
//! which is almost never what you want, so it is refused at load.

use opamp_policy::config::Config;
use opamp_policy::{export_policy, ForwardHeaders, Headers, Policy};

pub struct HeaderAllowlist {
    /// Lower-case names.
    allow: Vec<String>,
}

impl Policy for HeaderAllowlist {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["allow"])?;
        let allow: Vec<String> =
            config.list("allow").unwrap_or_default().iter().map(|h| h.to_ascii_lowercase()).collect();
        if allow.is_empty() {
            return Err("`allow` must list at least one header, e.g. `allow: [authorization]`".into());
        }
        Ok(Self { allow })
    }
}

impl ForwardHeaders for HeaderAllowlist {
    fn forward_headers(&self, headers: Headers) -> Headers {
        // Names arrive lower-case, but say so in code rather than trust it.
        headers.into_iter().filter(|(name, _)| self.allow.iter().any(|a| a.eq_ignore_ascii_case(name))).collect()
    }
}

export_policy!(HeaderAllowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::{hooks_of, Hooks};

    #[test]
    fn keeps_only_allowed_headers() {
        let p = HeaderAllowlist::new("allow: [Authorization, x-tenant]").unwrap();
        let h = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let out = p.forward_headers(vec![h("authorization", "Secret"), h("cookie", "c"), h("X-Tenant", "t")]);
        assert_eq!(out, vec![h("authorization", "Secret"), h("X-Tenant", "t")]);
        assert!(HeaderAllowlist::new("").is_err());
        assert!(HeaderAllowlist::new("alow: [x]").is_err());
        assert_eq!(hooks_of!(HeaderAllowlist), Hooks::FORWARD_HEADERS);
    }
}
