//! `listener.endpoint` as Go's `net.Listen` takes it — `host:port`, where the
//! host may be empty (all interfaces), an IP (IPv6 in brackets) or a name
//! resolved when the listener binds — and the open-socket budget's default.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The host part of `listener.endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenHost {
    /// `:4320`: every interface, IPv4 and IPv6.
    Any,
    Ip(IpAddr),
    /// Resolved at bind time.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEndpoint {
    pub host: ListenHost,
    pub port: u16,
}

const FORMS: &str = "expected host:port such as 0.0.0.0:4320, :4320, localhost:4320 or [::]:4320";

impl FromStr for ListenEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{why}; {FORMS}, got {s:?}");
        if s.contains("://") {
            return Err(bad("a URL is not an endpoint"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest.split_once("]:").ok_or_else(|| bad("a bracketed IPv6 address needs ]:port"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address in the brackets"))?;
            (ListenHost::Ip(ip.into()), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            let host = if host.is_empty() {
                ListenHost::Any
            } else if host.contains(':') {
                return Err(bad("an IPv6 address needs brackets"));
            } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
                ListenHost::Ip(ip.into())
            } else if host.split('.').all(is_dns_label) {
                ListenHost::Name(host.to_owned())
            } else {
                return Err(bad("not an IP address or host name"));
            };
            (host, port)
        };
        let port = port.parse().map_err(|_| bad("the port must be a number from 0 to 65535"))?;
        Ok(ListenEndpoint { host, port })
    }
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !l.starts_with('-')
}

impl fmt::Display for ListenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            ListenHost::Any => write!(f, ":{}", self.port),
            ListenHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            ListenHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            ListenHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// Descriptors kept back from `listener.max_connections`'s default for the
/// upstream links, the metrics endpoint, policy files and the runtime.
const RESERVED_FDS: u64 = 1024;

/// The default socket budget: the process's open-file limit less a reserve
/// (18,976 at `ulimit -n 20000`), so the cap answers 503 before `accept`
/// starts failing with "too many open files". Each agent holds one socket.
pub fn default_max_connections() -> usize {
    let soft = open_file_limit().unwrap_or(RESERVED_FDS + 1024);
    usize::try_from(soft.saturating_sub(RESERVED_FDS).clamp(64, 1 << 20)).unwrap_or(1 << 20)
}

/// The soft `RLIMIT_NOFILE`, if there is one.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Result<ListenEndpoint, String> {
        s.parse()
    }

    #[test]
    fn go_forms() {
        assert_eq!(ep(":4320").unwrap(), ListenEndpoint { host: ListenHost::Any, port: 4320 });
        assert_eq!(ep("localhost:4320").unwrap().host, ListenHost::Name("localhost".into()));
        assert_eq!(ep("[::]:4320").unwrap().host, ListenHost::Ip(Ipv6Addr::UNSPECIFIED.into()));
        assert_eq!(ep("[::1]:0").unwrap().host, ListenHost::Ip(Ipv6Addr::LOCALHOST.into()));
        assert_eq!(ep("0.0.0.0:4320").unwrap().host, ListenHost::Ip(Ipv4Addr::UNSPECIFIED.into()));
        assert_eq!(ep("gw-1.example.com:4320").unwrap().to_string(), "gw-1.example.com:4320");
        for s in [":4320", "[::]:4320", "127.0.0.1:1"] {
            assert_eq!(ep(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refusals_say_why() {
        for (s, why) in [
            ("nowhere", "no port"),
            ("::1:4320", "brackets"),
            ("[::1]4320", "]:port"),
            ("[zz]:1", "IPv6"),
            ("host:http", "0 to 65535"),
            ("host:70000", "0 to 65535"),
            ("ws://host:4320", "not an endpoint"),
            ("a b:1", "host name"),
        ] {
            let e = ep(s).unwrap_err();
            assert!(e.contains(why) && e.contains("host:port"), "{s}: {e}");
        }
    }

    #[test]
    fn budget_leaves_room_below_the_fd_limit() {
        let n = default_max_connections() as u64;
        if let Some(limit) = open_file_limit() {
            assert!(n < limit || limit < 64 + RESERVED_FDS, "{n} vs {limit}");
        }
        assert!(n >= 64);
    }
}
