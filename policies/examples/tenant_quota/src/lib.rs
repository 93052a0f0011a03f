//! `tenant_quota`: at most `max_agents` connected agents per tenant (the
//! value of a header); beyond, new agents get `429 Too Many Requests`
//! before the server is asked anything, and a slot frees when an agent
//! disconnects.
//!
//! ```yaml
//! # tenant_quota.yaml
//! header: x-tenant     # the default
//! max_agents: 100
//! missing: allow       # agents without the header: allow (uncounted) or reject (403)
//! ```
//!
//! Hooks: `admit`, `lifecycle`. The count is a counter in the gateway's
//! shared state (`tenant/<value>`), taken in `admit` (atomic across
//! instances, so a burst cannot overshoot) and given back in
//! `on-disconnect`, including `not-admitted` (a later policy or the server
//! refused the agent). The count carries a TTL refreshed on each change
//! (`slot_ttl`, default 24h): should a disconnect event be dropped (the
//! gateway was overloaded), the tenant's count heals once its agents have
//! been quiet that long, instead of staying high for good.
//!
//! Place it after other `admit` policies (file-name order): an agent it
//! counted that a later policy refuses still frees its slot, but not
//! before the event is delivered.

use opamp_policy::config::Config;
use opamp_policy::{export_policy, state, Admit, AdmitVerdict, AssignInput, Lifecycle, Policy, SessionEvent};

#[derive(Debug)]
pub struct TenantQuota {
    header: String,
    max_agents: i64,
    reject_missing: bool,
    slot_ttl_ms: u64,
}

impl TenantQuota {
    fn tenant<'a>(&self, headers: &'a [(String, String)]) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&self.header)).map(|(_, v)| v.as_str())
    }

    fn key(tenant: &str) -> String {
        format!("tenant/{tenant}")
    }

    /// The tenant's connected agents, as counted.
    pub fn count(tenant: &str) -> i64 {
        state::get(&Self::key(tenant)).and_then(|b| b.try_into().ok()).map_or(0, i64::from_le_bytes)
    }
}

impl Policy for TenantQuota {
    fn new(config: &str) -> Result<Self, String> {
        let config = Config::parse(config)?;
        config.expect_keys(&["header", "max_agents", "missing", "slot_ttl"])?;
        let header = config.str("header")?.unwrap_or("x-tenant").to_ascii_lowercase();
        if header.is_empty() {
            return Err("`header` must not be empty".into());
        }
        let max_agents = config
            .str("max_agents")?
            .ok_or("`max_agents` is required")?
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or("`max_agents` must be a number >= 0")?;
        let reject_missing = match config.str("missing")?.unwrap_or("allow") {
            "allow" => false,
            "reject" => true,
            other => return Err(format!("`missing` must be `allow` or `reject`, not `{other}`")),
        };
        let slot_ttl_ms = config.millis("slot_ttl")?.unwrap_or(24 * 3600 * 1000);
        Ok(Self { header, max_agents, reject_missing, slot_ttl_ms })
    }
}

impl Admit for TenantQuota {
    fn admit(&self, input: &AssignInput) -> AdmitVerdict {
        let Some(tenant) = self.tenant(&input.headers) else {
            return if self.reject_missing {
                AdmitVerdict::reject(403, format!("the {} header is required", self.header))
            } else {
                AdmitVerdict::Allow
            };
        };
        let key = Self::key(tenant);
        match state::add(&key, 1, Some(self.slot_ttl_ms)) {
            Ok(n) if n <= self.max_agents => AdmitVerdict::Allow,
            Ok(_) => {
                // Not admitted: no disconnect will come for it, give the slot back now.
                let _ = state::add(&key, -1, None);
                AdmitVerdict::reject(429, format!("tenant {tenant} has its {} agents connected", self.max_agents))
            }
            // The store is full: fail open, as a policy bug would.
            Err(e) => {
                opamp_policy::warn!("tenant_quota: cannot count tenant {tenant}: {e:?}");
                AdmitVerdict::Allow
            }
        }
    }
}

impl Lifecycle for TenantQuota {
    fn on_disconnect(&self, event: &SessionEvent, _reason: &str) {
        let Some(tenant) = self.tenant(&event.headers) else { return };
        let key = Self::key(tenant);
        if let Ok(n) = state::add(&key, -1, None) {
            if n <= 0 {
                state::delete(&key); // nothing kept for tenants that left
            }
        }
    }
}

export_policy!(TenantQuota);

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_policy::{hooks_of, Hooks, Transport};

    fn input(tenant: Option<&str>) -> AssignInput {
        AssignInput {
            headers: tenant.map(|t| ("x-tenant".to_owned(), t.to_owned())).into_iter().collect(),
            remote_address: "10.0.0.1:1".into(),
            transport: Transport::Websocket,
            upstreams: vec![],
        }
    }

    fn event(tenant: &str) -> SessionEvent {
        SessionEvent {
            session: 1,
            uid: None,
            headers: vec![("x-tenant".into(), tenant.into())],
            remote_address: "10.0.0.1:1".into(),
            transport: Transport::Websocket,
            upstream: "default".into(),
        }
    }

    fn status(v: AdmitVerdict) -> u16 {
        match v {
            AdmitVerdict::Allow => 200,
            AdmitVerdict::Reject(r) => r.status,
        }
    }

    #[test]
    fn announces_admit_and_lifecycle() {
        assert_eq!(hooks_of!(TenantQuota), Hooks::ADMIT | Hooks::LIFECYCLE);
    }

    #[test]
    fn n_per_tenant_then_429_until_one_leaves() {
        state::clear();
        let p = TenantQuota::new("max_agents: 2").unwrap();
        assert_eq!(status(p.admit(&input(Some("acme")))), 200);
        assert_eq!(status(p.admit(&input(Some("acme")))), 200);
        assert_eq!(status(p.admit(&input(Some("acme")))), 429);
        assert_eq!(TenantQuota::count("acme"), 2, "a refused agent takes no slot");
        assert_eq!(status(p.admit(&input(Some("other")))), 200, "tenants are counted apart");
        p.on_disconnect(&event("acme"), "peer");
        assert_eq!(status(p.admit(&input(Some("acme")))), 200, "the slot was freed");
        assert_eq!(status(p.admit(&input(None))), 200, "no header: not counted");
    }

    #[test]
    fn the_count_heals_after_the_ttl() {
        state::clear();
        state::set_now_ms(0);
        let p = TenantQuota::new("max_agents: 1\nslot_ttl: 1m").unwrap();
        assert_eq!(status(p.admit(&input(Some("a")))), 200);
        assert_eq!(status(p.admit(&input(Some("a")))), 429);
        state::set_now_ms(60_001); // its disconnect was lost
        assert_eq!(status(p.admit(&input(Some("a")))), 200);
    }

    #[test]
    fn leaving_tenants_leave_no_keys() {
        state::clear();
        let p = TenantQuota::new("max_agents: 5").unwrap();
        p.admit(&input(Some("gone")));
        p.on_disconnect(&event("gone"), "not-admitted");
        assert_eq!(state::get("tenant/gone"), None);
    }

    #[test]
    fn config() {
        assert!(TenantQuota::new("").unwrap_err().contains("max_agents"));
        assert!(TenantQuota::new("max_agents: -1").is_err());
        assert!(TenantQuota::new("max_agents: 1\nmissing: maybe").is_err());
        assert!(TenantQuota::new("max_agents: 1\nslot_ttl: soon").is_err());
        let p = TenantQuota::new("max_agents: 1\nmissing: reject\nheader: X-Org").unwrap();
        assert_eq!(status(p.admit(&input(Some("t")))), 403, "x-tenant is not x-org");
        TenantQuota::new(include_str!("../tenant_quota.yaml")).unwrap();
    }
}
