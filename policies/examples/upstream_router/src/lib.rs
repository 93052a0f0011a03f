//! `upstream_router`: sends agents to named upstreams (OpAMP servers) by a
//! request header, with an optional percentage canary.
//!
//! ```yaml
//! # upstream_router.yaml
//! header: x-tenant          # which request header decides (the default)
//! route: [acme=green]       # header value = upstream name; everything else: no opinion
//! canary: green=10          # optional: this percentage of the remaining agents goes to green
//! ```
//!
//! Hook: `assign`, answering an upstream without a link (the gateway picks
//! its least-loaded one). For each agent, in order:
//! 1. the header's value (exact, case-sensitive; the first if repeated) is
//!    a `route` key: its upstream;
//! 2. else, with `canary: <upstream>=<percent>`: that upstream for
//!    `percent` % of the agents, chosen by a stable hash (64-bit FNV-1a) of
//!    the header's value, or of the agent's IP address (port left out) when
//!    it sends no header. Stable across instances, restarts and gateway
//!    replicas, so a reload with the same config moves nobody, and raising
//!    the percentage only adds agents;
//! 3. else no opinion: the next policy, then the default upstream.
//!
//! The chosen upstream must be one the gateway has (`server:` is "default",
//! the others are keys of `upstreams:`) with at least one connected link;
//! otherwise the answer is no opinion, so the agent lands on (or, after a
//! reload, goes back to) the default upstream rather than being refused
//! while its upstream is away. An upstream the gateway does not have at all
//! is a config mistake: logged once per instance at warn.

use std::sync::atomic::{AtomicBool, Ordering};

use opamp_policy::config::Config;
use opamp_policy::{export_policy, Assign, AssignInput, Policy, Route};

pub struct UpstreamRouter {
    /// Lower-case header name.
    header: String,
    /// (header value, upstream), in config order.
    routes: Vec<(String, String)>,
    canary: Option<Canary>,
    /// An unknown upstream was already logged by this instance.
    warned: AtomicBool,
}

/// `canary: <upstream>=<percent>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub upstream: String,
    /// 0 to 100.
    pub percent: u8,
}

/// 64-bit FNV-1a (Rust's `HashMap` hasher is randomly seeded: not that).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `key=value`, both sides trimmed and non-empty.
fn pair<'a>(key: &str, item: &'a str) -> Result<(&'a str, &'a str), String> {
    match item.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => Ok((k.trim(), v.trim())),
        _ => Err(format!("`{key}`: expected `<name>=<value>`, got `{item}`")),
    }
}

fn parse_canary(text: &str) -> Result<Canary, String> {
    let (upstream, percent) = pair("canary", text)?;
    let percent = percent
        .strip_suffix('%')
        .unwrap_or(percent)
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("`canary`: the percentage must be a whole number from 0 to 100, got `{percent}`"))?;
    Ok(Canary { upstream: upstream.to_owned(), percent })
}

/// The IP of an `ip:port` or `[ipv6]:port` address (the whole text when it
/// has no port).
pub fn ip_of(remote: &str) -> &str {
    if let Some(rest) = remote.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match remote.rsplit_once(':') {
        // One colon: v4 with a port. More: a bare v6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => remote,
    }
}

impl Policy for UpstreamRouter {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["header", "route", "canary"])?;
        let header = config.str("header")?.unwrap_or("x-tenant").to_ascii_lowercase();
        if header.is_empty() {
            return Err("`header` must not be empty".into());
        }
        let mut routes: Vec<(String, String)> = Vec::new();
        for item in config.list("route").unwrap_or_default() {
            let (value, upstream) = pair("route", &item)?;
            if routes.iter().any(|(v, _)| v == value) {
                return Err(format!("`route`: `{value}` is listed twice"));
            }
            routes.push((value.to_owned(), upstream.to_owned()));
        }
        let canary = config.str("canary")?.map(parse_canary).transpose()?;
        if routes.is_empty() && canary.is_none() {
            return Err(
                "nothing to do: set `route: [<value>=<upstream>, ...]` and/or `canary: <upstream>=<percent>`".into()
            );
        }
        Ok(Self { header, routes, canary, warned: AtomicBool::new(false) })
    }
}

impl UpstreamRouter {
    /// The upstream this agent belongs on by the config alone.
    pub fn choose(&self, input: &AssignInput) -> Option<&str> {
        let value = input.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(&self.header)).map(|(_, v)| v);
        if let Some(value) = value {
            if let Some((_, upstream)) = self.routes.iter().find(|(v, _)| v == value) {
                return Some(upstream);
            }
        }
        let canary = self.canary.as_ref()?;
        let key = value.map_or_else(|| ip_of(&input.remote_address), String::as_str);
        (fnv1a(key.as_bytes()) % 100 < u64::from(canary.percent)).then_some(canary.upstream.as_str())
    }
}

impl Assign for UpstreamRouter {
    fn assign(&self, input: &AssignInput) -> Option<Route> {
        let name = self.choose(input)?;
        let Some(upstream) = input.upstream(name) else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                let known: Vec<&str> = input.upstreams.iter().map(|u| u.name.as_str()).collect();
                opamp_policy::warn!(
                    "upstream `{name}` is not configured in the gateway (it has: {}); no opinion",
                    known.join(", ")
                );
            }
            return None;
        };
        upstream.connected().then(|| Route::upstream(name))
    }
}

export_policy!(UpstreamRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::{hooks_of, Hooks, Link, Transport, Upstream, DEFAULT_UPSTREAM};

    const CONFIG: &str = "header: X-Tenant\nroute: [acme=green, 'globex=blue']\ncanary: green=10\n";

    fn upstream(name: &str, connected: bool) -> Upstream {
        Upstream { name: name.into(), links: vec![Link { index: 0, load: 0, connected }] }
    }

    fn input(tenant: Option<&str>, remote: &str, green_up: bool) -> AssignInput {
        AssignInput {
            headers: tenant.map(|t| ("x-tenant".to_owned(), t.to_owned())).into_iter().collect(),
            remote_address: remote.into(),
            transport: Transport::Websocket,
            upstreams: vec![upstream(DEFAULT_UPSTREAM, true), upstream("green", green_up), upstream("blue", true)],
        }
    }

    fn answer(p: &UpstreamRouter, tenant: Option<&str>) -> Option<String> {
        p.assign(&input(tenant, "10.0.0.1:4000", true)).map(|r| {
            assert_eq!(r.link, None, "an upstream, not a link");
            r.upstream
        })
    }

    #[test]
    fn parses_its_config() {
        let p = UpstreamRouter::new(CONFIG).unwrap();
        assert_eq!(p.header, "x-tenant");
        assert_eq!(p.routes, [("acme".into(), "green".into()), ("globex".into(), "blue".into())]);
        assert_eq!(p.canary, Some(Canary { upstream: "green".into(), percent: 10 }));
        let p = UpstreamRouter::new("route: acme=green\n").unwrap();
        assert_eq!((p.header.as_str(), p.canary), ("x-tenant", None), "defaults");
        assert_eq!(UpstreamRouter::new("canary: green=100%\n").unwrap().canary.unwrap().percent, 100);
        for (bad, why) in [
            ("", "nothing to do"),
            ("header: x\n", "nothing to do"),
            ("route: [acme]\n", "<name>=<value>"),
            ("route: [=green]\n", "<name>=<value>"),
            ("route: [acme=]\n", "<name>=<value>"),
            ("route: [a=x, a=y]\n", "twice"),
            ("canary: green\n", "<name>=<value>"),
            ("canary: green=101\n", "0 to 100"),
            ("canary: green=-1\n", "0 to 100"),
            ("canary: green=ten\n", "0 to 100"),
            ("canary: [green=1, blue=2]\n", "single value"),
            ("header: ''\nroute: [a=b]\n", "empty"),
            ("route: [a=b]\nroutes: [c=d]\n", "unknown key"),
        ] {
            let e = UpstreamRouter::new(bad).err().unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(UpstreamRouter::new("route: [a=b]\non_error: open\n").is_ok(), "gateway keys are ignored");
    }

    #[test]
    fn routes_by_header_then_canary_else_no_opinion() {
        let p = UpstreamRouter::new(CONFIG).unwrap();
        assert_eq!(answer(&p, Some("acme")).as_deref(), Some("green"));
        assert_eq!(answer(&p, Some("globex")).as_deref(), Some("blue"));
        // Without a route: 10 % of tenants go to green, the same ones every time.
        let tenants: Vec<String> = (0..2000).map(|i| format!("tenant-{i}")).collect();
        let green: Vec<&String> = tenants.iter().filter(|t| answer(&p, Some(t)).is_some()).collect();
        assert!((150..250).contains(&green.len()), "about 10 % of 2000: {}", green.len());
        for t in &green {
            assert_eq!(answer(&p, Some(t)).as_deref(), Some("green"));
            assert!(fnv1a(t.as_bytes()) % 100 < 10);
        }
        // Raising the percentage only adds agents.
        let more = UpstreamRouter::new("route: [acme=green]\ncanary: green=30\n").unwrap();
        assert!(green.iter().all(|t| answer(&more, Some(t)).is_some()));
        // No canary: no opinion for everyone else.
        let only = UpstreamRouter::new("route: [acme=green]\n").unwrap();
        assert_eq!(answer(&only, Some("tenant-1")), None);
        assert_eq!(answer(&only, None), None);
        assert_eq!(answer(&only, Some("ACME")), None, "values are case-sensitive");
    }

    #[test]
    fn without_the_header_the_canary_hashes_the_ip() {
        let p = UpstreamRouter::new("canary: green=50\n").unwrap();
        let pick = |remote: &str| p.assign(&input(None, remote, true)).is_some();
        for i in 0..50 {
            let ip = format!("10.1.{}.{}", i / 250, i % 250);
            assert_eq!(pick(&format!("{ip}:1000")), pick(&format!("{ip}:2000")), "the port does not count");
            assert_eq!(pick(&format!("{ip}:1000")), fnv1a(ip.as_bytes()) % 100 < 50);
        }
        assert_eq!(ip_of("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(ip_of("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(ip_of("2001:db8::1"), "2001:db8::1");
        assert_eq!(ip_of("host"), "host");
    }

    #[test]
    fn an_upstream_that_is_missing_or_down_gets_no_opinion() {
        let p = UpstreamRouter::new("route: [acme=green, initech=red]\n").unwrap();
        assert_eq!(p.assign(&input(Some("acme"), "10.0.0.1:1", false)), None, "green is down");
        assert_eq!(p.assign(&input(Some("initech"), "10.0.0.1:1", true)), None, "no upstream named red");
        assert_eq!(p.assign(&input(Some("acme"), "10.0.0.1:1", true)), Some(Route::upstream("green")));
        assert_eq!(hooks_of!(UpstreamRouter), Hooks::ASSIGN);
    }
}
