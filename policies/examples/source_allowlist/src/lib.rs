//! `source_allowlist`: refuses agents whose address is outside the allowed
//! networks, with `403 Forbidden`, before the handshake: the server never
//! hears of them.
//!
//! ```yaml
//! # source_allowlist.yaml
//! allow: [10.0.0.0/8, "fd00::/8", 192.0.2.7]   # CIDRs or addresses, v4 and v6
//! ```
//!
//! Hook: `admit`. An IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`) is matched
//! as the IPv4 address it carries. An address that does not parse is
//! refused (the gateway always passes `ip:port`).

use std::net::{IpAddr, SocketAddr};

use opamp_policy::config::Config;
use opamp_policy::{export_policy, Admit, AdmitVerdict, AssignInput, Policy};

/// One allowed network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => same_prefix(u32::from(n).into(), u32::from(a).into(), self.prefix, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(u128::from(n), u128::from(a), self.prefix, 128),
            _ => false,
        }
    }
}

fn same_prefix(net: u128, addr: u128, prefix: u8, bits: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (net >> shift) == (addr >> shift)
}

#[derive(Debug)]
pub struct SourceAllowlist {
    allow: Vec<Cidr>,
}

impl SourceAllowlist {
    pub fn allows(&self, remote: &str) -> bool {
        let ip = match remote.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => match remote.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return false,
            },
        };
        self.allow.iter().any(|c| c.contains(ip))
    }
}

impl Policy for SourceAllowlist {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["allow"])?;
        let list = config.list("allow").ok_or("`allow` must list the allowed networks (CIDRs)")?;
        let allow = list.iter().map(|c| Cidr::parse(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow })
    }
}

impl Admit for SourceAllowlist {
    fn admit(&self, input: &AssignInput) -> AdmitVerdict {
        if self.allows(&input.remote_address) {
            AdmitVerdict::Allow
        } else {
            AdmitVerdict::reject(403, "this network may not connect to the OpAMP gateway")
        }
    }
}

export_policy!(SourceAllowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::{hooks_of, Hooks, Transport};

    fn policy(allow: &str) -> SourceAllowlist {
        SourceAllowlist::new(&format!("allow: {allow}\n")).unwrap()
    }

    fn input(remote: &str) -> AssignInput {
        AssignInput {
            headers: vec![],
            remote_address: remote.into(),
            transport: Transport::Websocket,
            upstreams: vec![],
        }
    }

    #[test]
    fn announces_admit_only() {
        assert_eq!(hooks_of!(SourceAllowlist), Hooks::ADMIT);
    }

    #[test]
    fn ipv4_and_ipv6_networks() {
        let p = policy(r#"[10.0.0.0/8, 192.0.2.7, "2001:db8::/32", "::1"]"#);
        for ok in ["10.1.2.3:4000", "10.255.255.255:1", "192.0.2.7:9", "[2001:db8::5]:443", "[::1]:80"] {
            assert!(p.allows(ok), "{ok}");
        }
        for no in ["11.0.0.1:1", "192.0.2.8:9", "[2001:db9::1]:443", "[::2]:80", "nonsense", ""] {
            assert!(!p.allows(no), "{no}");
        }
        assert!(p.allows("[::ffff:10.9.9.9]:1"), "an IPv4-mapped address is its IPv4 address");
        assert!(policy("[0.0.0.0/0]").allows("203.0.113.1:1"));
        assert!(!policy("[0.0.0.0/0]").allows("[2001:db8::1]:1"), "a v4 network holds no v6 address");
    }

    #[test]
    fn rejects_with_403() {
        let p = policy("[10.0.0.0/8]");
        assert_eq!(p.admit(&input("10.0.0.1:1")), AdmitVerdict::Allow);
        match p.admit(&input("172.16.0.1:1")) {
            AdmitVerdict::Reject(r) => assert_eq!(r.status, 403),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_entry() {
        assert!(SourceAllowlist::new("").unwrap_err().contains("allow"));
        assert!(SourceAllowlist::new("allow: [10.0.0.0/33]").unwrap_err().contains("0-32"));
        assert!(SourceAllowlist::new("allow: [example.com]").unwrap_err().contains("example.com"));
        assert!(SourceAllowlist::new("allow: [10.0.0.0/8]\nmode: shadow\non_error: closed").is_ok());
    }

    #[test]
    fn the_example_yaml_loads() {
        let p = SourceAllowlist::new(include_str!("../source_allowlist.yaml")).unwrap();
        assert!(p.allows("127.0.0.1:5") && p.allows("[::1]:5") && !p.allows("8.8.8.8:53"));
    }
}
