//! Connect handshakes a downstream gateway forwarded through us, by request
//! uid, so the server's `connectResult` finds its way back down.
//!
//! Request uids are chosen by the connection below us, so they get a map of
//! their own: a request uid that happens to equal some agent's instance uid
//! must not be able to touch that agent's route. Each connection may have a
//! bounded number in flight, so a gateway connection cannot make the server
//! run unbounded authentication checks on its behalf.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::agent::AgentShared;

#[derive(Default)]
pub(crate) struct ForwardedHandshakes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_request: HashMap<String, Arc<AgentShared>>,
    /// In-flight count per connection (agent id).
    per_agent: HashMap<u64, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForwardRefused {
    #[error("{0} forwarded handshakes already in flight on this connection")]
    TooMany(usize),
    #[error("request_uid is already in flight")]
    Duplicate,
}

impl Inner {
    fn release(&mut self, agent_id: u64) {
        if let Some(n) = self.per_agent.get_mut(&agent_id) {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(&agent_id);
            }
        }
    }
}

impl ForwardedHandshakes {
    /// Remembers that `agent` forwarded `request_uid`, within `max` in flight.
    pub(crate) fn register(
        &self,
        request_uid: String,
        agent: &Arc<AgentShared>,
        max: usize,
    ) -> Result<(), ForwardRefused> {
        let mut inner = self.inner.lock();
        let n = inner.per_agent.get(&agent.id).copied().unwrap_or(0);
        if n >= max {
            return Err(ForwardRefused::TooMany(n));
        }
        if inner.by_request.contains_key(&request_uid) {
            return Err(ForwardRefused::Duplicate);
        }
        inner.by_request.insert(request_uid, agent.clone());
        *inner.per_agent.entry(agent.id).or_default() += 1;
        Ok(())
    }

    /// The connection waiting for `request_uid`'s answer, forgotten as it is
    /// returned (an answer is delivered once).
    pub(crate) fn take(&self, request_uid: &str) -> Option<Arc<AgentShared>> {
        let mut inner = self.inner.lock();
        let agent = inner.by_request.remove(request_uid)?;
        inner.release(agent.id);
        Some(agent)
    }

    /// Forgets what a closing connection still had in flight.
    pub(crate) fn forget(&self, agent_id: u64) {
        let mut inner = self.inner.lock();
        if inner.per_agent.remove(&agent_id).is_some() {
            inner.by_request.retain(|_, a| a.id != agent_id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().by_request.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::identity::{Credential, Identity};

    #[test]
    fn bounded_per_connection_and_delivered_once() {
        let f = ForwardedHandshakes::default();
        let a = AgentShared::new(1, 4, 4, Identity::agent(Credential::none())).0;
        let b = AgentShared::new(2, 4, 4, Identity::agent(Credential::none())).0;
        f.register("r1".into(), &a, 2).unwrap();
        assert_eq!(f.register("r1".into(), &b, 2), Err(ForwardRefused::Duplicate));
        f.register("r2".into(), &a, 2).unwrap();
        assert_eq!(f.register("r3".into(), &a, 2), Err(ForwardRefused::TooMany(2)));
        f.register("r3".into(), &b, 2).unwrap();
        assert_eq!(f.take("r1").unwrap().id, 1);
        assert!(f.take("r1").is_none());
        f.register("r4".into(), &a, 2).unwrap();
        f.forget(1);
        assert_eq!(f.len(), 1);
        assert_eq!(f.take("r3").unwrap().id, 2);
        assert!(f.is_empty());
    }
}
