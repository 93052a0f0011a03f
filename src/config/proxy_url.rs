//! `server.proxy_url`: the parsed form of an HTTP CONNECT proxy URL, a
//! config value that config validation and the upstream dialer (environment
//! variables included) share. `Display` and `Debug` never show credentials.

use std::fmt;

use base64::Engine as _;
use http::Uri;
use percent_encoding::percent_decode_str;

/// The form `server.proxy_url` must take, for error messages.
const EXPECTED: &str = "expected http://[user:password@]host[:port] or https://[user:password@]host[:port]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    Http,
    /// TLS to the proxy itself, then CONNECT inside it.
    Https,
}

/// A parsed proxy URL. `Display` and `Debug` never show the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub scheme: ProxyScheme,
    /// As written in the URL (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// Percent-decoded user and password from the URL's userinfo.
    credentials: Option<(String, String)>,
}

impl ProxyUrl {
    /// Parses `server.proxy_url`: scheme, host and optional port, nothing else.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_inner(s, true)
    }

    /// Parses a proxy variable's value, which may carry a path or query
    /// (Go ignores them).
    pub(crate) fn parse_lenient(s: &str) -> Result<Self, String> {
        Self::parse_inner(s, false)
    }

    /// `strict` rejects a path or query; environment values may carry one
    /// (Go ignores it), so they are parsed leniently.
    fn parse_inner(s: &str, strict: bool) -> Result<Self, String> {
        let bad = |why: &str| format!("{why}; {EXPECTED}, got {:?}", redact(s));
        let uri: Uri = s.parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => ProxyScheme::Http,
            Some("https") => ProxyScheme::Https,
            _ => return Err(bad("unsupported scheme")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if strict && (!matches!(uri.path(), "" | "/") || uri.query().is_some()) {
            return Err(bad("a proxy URL has no path or query"));
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            ProxyScheme::Http => 80,
            ProxyScheme::Https => 443,
        });
        let credentials = match authority.as_str().rsplit_once('@') {
            None => None,
            Some((userinfo, _)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |v: &str| {
                    percent_decode_str(v)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| bad("userinfo is not UTF-8"))
                };
                Some((decode(user)?, decode(password)?))
            }
        };
        Ok(Self { scheme, host: host.to_ascii_lowercase(), port, credentials })
    }

    /// The `Proxy-Authorization` value, when the URL carries credentials.
    pub(crate) fn authorization(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        })
    }

    /// `host:port` to connect to (IPv6 without brackets).
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", unbracket(&self.host), self.port)
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self}{})", if self.credentials.is_some() { ", with credentials" } else { "" })
    }
}

/// `s` with any userinfo replaced, so an error can quote it.
fn redact(s: &str) -> String {
    let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// An IPv6 host without its URL brackets.
pub(crate) fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_url_form() {
        let p = ProxyUrl::parse("https://alice:p%40ss%3Aw0rd@proxy.corp:8443").unwrap();
        assert_eq!(p.scheme, ProxyScheme::Https);
        assert_eq!(p.to_string(), "https://proxy.corp:8443");
        assert_eq!(format!("{p:?}"), "ProxyUrl(https://proxy.corp:8443, with credentials)");
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:p@ss:w0rd");
        assert_eq!(p.authorization(), Some(format!("Basic {expected}")));
        assert_eq!(
            ProxyUrl::parse("http://bob@p").unwrap().authorization(),
            ProxyUrl::parse("http://bob:@p").unwrap().authorization()
        );
        assert_eq!(ProxyUrl::parse("http://p:3128/").unwrap().authorization(), None);

        for bad in ["proxy.corp:3128", "socks5://p:1", "http://p:1/path", "http://p:1?q", "http://:1", "not a url"] {
            let err = ProxyUrl::parse(bad).unwrap_err();
            assert!(err.contains("expected http://[user:password@]host[:port]"), "{bad}: {err}");
        }
        let err = ProxyUrl::parse("ftp://alice:hunter2@p:1").unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("***@p:1"), "credentials must not be echoed: {err}");
    }
}
