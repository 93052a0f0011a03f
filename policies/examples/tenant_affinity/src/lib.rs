//! `tenant_affinity`: agents of the same tenant share one upstream link.
//!
//! Some servers keep per-tenant state per connection, or an operator wants
//! one tenant's fleet to fail over together. This policy hashes the value of
//! a header (the tenant) onto the default upstream's (`server:`) connected
//! links: same value, same link, as long as the set of connected links does
//! not change. Agents without the header get no opinion, so the next policy
//! or least-connections decides. Other upstreams (`upstreams:`) are left to
//! other policies, such as `upstream_router`.
//!
//! ```yaml
//! # tenant_affinity.yaml
//! header: x-tenant   # the default
//! ```
//!
//! Hook: `assign`. The hash is FNV-1a: stable across instances, restarts and
//! gateway replicas (Rust's `HashMap` hasher is randomly seeded: not that).

use opamp_policy::config::Config;
use opamp_policy::{export_policy, Assign, AssignInput, Policy, Route};

pub struct TenantAffinity {
    header: String,
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Policy for TenantAffinity {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["header"])?;
        let header = config.str("header")?.unwrap_or("x-tenant").to_ascii_lowercase();
        if header.is_empty() {
            return Err("`header` must not be empty".into());
        }
        Ok(Self { header })
    }
}

impl Assign for TenantAffinity {
    fn assign(&self, input: &AssignInput) -> Option<Route> {
        let (_, tenant) = input.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(&self.header))?;
        // Links arrive in index order, so this list is the same for every
        // agent while the link set is stable.
        let connected: Vec<u32> = input.links().iter().filter(|l| l.connected).map(|l| l.index).collect();
        if connected.is_empty() {
            return None;
        }
        let slot = fnv1a(tenant.as_bytes()) % connected.len() as u64;
        Some(Route::default_link(connected[slot as usize]))
    }
}

export_policy!(TenantAffinity);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::{hooks_of, Hooks, Link, Transport, Upstream, DEFAULT_UPSTREAM};

    fn upstream(name: &str, connected: &[bool]) -> Upstream {
        let links = connected.iter().enumerate().map(|(i, &c)| Link { index: i as u32, load: 0, connected: c });
        Upstream { name: name.into(), links: links.collect() }
    }

    /// The default upstream with these links, and a "green" one beside it.
    fn input(tenant: Option<&str>, connected: &[bool]) -> AssignInput {
        AssignInput {
            headers: tenant.map(|t| ("X-Tenant".to_owned(), t.to_owned())).into_iter().collect(),
            remote_address: "127.0.0.1:5000".into(),
            transport: Transport::Websocket,
            upstreams: vec![upstream(DEFAULT_UPSTREAM, connected), upstream("green", &[true, true, true, true])],
        }
    }

    fn link(p: &TenantAffinity, tenant: &str, connected: &[bool]) -> Option<u32> {
        let route = p.assign(&input(Some(tenant), connected))?;
        assert_eq!(route.upstream, DEFAULT_UPSTREAM, "only the default upstream's links");
        route.link
    }

    #[test]
    fn one_tenant_one_link_while_the_link_set_is_stable() {
        let p = TenantAffinity::new("").unwrap();
        let a = link(&p, "acme", &[true, true, true]).unwrap();
        assert_eq!(link(&p, "acme", &[true, true, true]), Some(a), "stable");
        assert_eq!(a, (fnv1a(b"acme") % 3) as u32);
        // Only connected links are chosen; no header or no link: no opinion.
        assert_eq!(p.assign(&input(Some("acme"), &[false, true, false])), Some(Route::default_link(1)));
        assert_eq!(p.assign(&input(None, &[true, true])), None);
        assert_eq!(p.assign(&input(Some("acme"), &[false, false])), None);
        let spread: std::collections::BTreeSet<u32> =
            (0..32).filter_map(|i| link(&p, &format!("tenant-{i}"), &[true, true, true])).collect();
        assert_eq!(spread.len(), 3, "tenants spread over every link");
        assert!(TenantAffinity::new("header: ''").is_err());
        assert_eq!(hooks_of!(TenantAffinity), Hooks::ASSIGN);
    }
}
