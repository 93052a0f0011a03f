//! instance uid → agent session, for routing server→agent messages, and the
//! ownership rule that keeps one agent from speaking for another.
//!
//! One map for all links: a uid is global, and after a migration the server
//! may still answer on the old link for a moment; either way it arrives.
//!
//! **Ownership.** A uid belongs to the connection that first spoke for it,
//! while that connection lives ([`Routes::claim`]). A second live connection
//! naming the same uid is refused, with one exception: the agent itself
//! reconnecting before its old socket is known dead. That connection
//! authenticated with the same credentials (compared as digests), so it takes
//! the uid over and the old connection is closed. Only the owner's release
//! removes a route ([`Routes::remove`] checks), so a connection that lost its
//! uid never says goodbye for it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::agent::AgentShared;

#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<Bytes, Arc<AgentShared>>>,
}

/// A successful [`Routes::claim`].
#[derive(Debug)]
pub(crate) enum Claimed {
    /// The uid was free, or already this agent's.
    Owned,
    /// The same credentials reconnected: the uid moved here from this older
    /// connection, which the caller must close.
    TookOver(Arc<AgentShared>),
}

/// The uid is owned by another live connection with other credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("instance_uid is in use by another connection")]
pub(crate) struct UidInUse;

impl Routes {
    /// Makes `agent` the owner of `uid` if the ownership rule allows it.
    pub(crate) fn claim(&self, uid: &Bytes, agent: &Arc<AgentShared>) -> Result<Claimed, UidInUse> {
        let mut map = self.map.lock();
        match map.get(uid) {
            Some(owner) if owner.id == agent.id => Ok(Claimed::Owned),
            // A closing owner is leaving anyway; its release will find the
            // route no longer its own and stay quiet.
            Some(owner) if !owner.closing().is_cancelled() => {
                // Only the very same identity may take over, and never from
                // a gateway: closing its link would drop every agent behind it.
                if owner.identity() != agent.identity() || owner.identity().is_gateway() {
                    return Err(UidInUse);
                }
                let old = map.insert(detached(uid), agent.clone()).expect("checked above");
                Ok(Claimed::TookOver(old))
            }
            _ => {
                map.insert(detached(uid), agent.clone());
                Ok(Claimed::Owned)
            }
        }
    }

    /// Points `uid` at `agent` unconditionally. Only for uids the server
    /// itself assigned (`new_instance_uid`): the server is the authority.
    pub(crate) fn assign(&self, uid: Bytes, agent: &Arc<AgentShared>) {
        self.map.lock().insert(detached(&uid), agent.clone());
    }

    pub(crate) fn get(&self, uid: &[u8]) -> Option<Arc<AgentShared>> {
        self.map.lock().get(uid).cloned()
    }

    /// Whether `uid` currently routes to `agent_id`.
    #[cfg(test)]
    fn is_owner(&self, uid: &[u8], agent_id: u64) -> bool {
        self.map.lock().get(uid).is_some_and(|a| a.id == agent_id)
    }

    /// Removes `uid` only if it still points at `agent_id`; true if it did.
    /// A false return means the uid moved on: its new owner is alive, so no
    /// goodbye may be sent for it.
    pub(crate) fn remove(&self, uid: &[u8], agent_id: u64) -> bool {
        let mut map = self.map.lock();
        if map.get(uid).is_some_and(|a| a.id == agent_id) {
            map.remove(uid);
            true
        } else {
            false
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// A key kept as long as its route: its own 16 or 26 bytes, not a slice
/// that keeps the whole message it was read from.
fn detached(uid: &Bytes) -> Bytes {
    Bytes::copy_from_slice(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::identity::{Credential, Identity};

    fn agent(id: u64, key: &str) -> Arc<AgentShared> {
        let cred = Credential::from_headers([("authorization", key)], crate::relay::identity::CREDENTIAL_HEADERS, None);
        AgentShared::new(id, 4, 4, Identity::agent(cred)).0
    }

    /// A uid is a 16-byte slice of the message it came in; kept as a
    /// route's key, the slice would keep the whole message (here 16 KiB,
    /// the WebSocket read buffer it was split from) for the agent's life.
    #[test]
    fn a_routed_uid_does_not_keep_the_message_it_came_in() {
        let routes = Routes::default();
        let message = Bytes::from(vec![7u8; 16 * 1024]);
        let (claimed, assigned) = (message.slice(100..116), message.slice(200..216));
        routes.claim(&claimed, &agent(1, "key-a")).unwrap();
        routes.assign(assigned, &agent(2, "key-b"));
        let within = message.as_ptr_range();
        for key in routes.map.lock().keys() {
            assert!(!within.contains(&key.as_ptr()), "a key still points into the message");
        }
    }

    #[test]
    fn first_speaker_owns_until_it_closes() {
        let routes = Routes::default();
        let uid = Bytes::from_static(&[1; 16]);
        let (a, b) = (agent(1, "key-a"), agent(2, "key-b"));
        assert!(matches!(routes.claim(&uid, &a), Ok(Claimed::Owned)));
        assert!(matches!(routes.claim(&uid, &a), Ok(Claimed::Owned)));
        assert_eq!(routes.claim(&uid, &b).unwrap_err(), UidInUse, "other credentials cannot take it");
        assert_eq!(routes.get(&uid).unwrap().id, 1);
        assert!(!routes.remove(&uid, 2), "only the owner removes");

        a.close(crate::relay::CloseReason::Peer);
        assert!(matches!(routes.claim(&uid, &b), Ok(Claimed::Owned)), "a closing owner gives way");
        assert!(!routes.remove(&uid, 1), "the old owner's release finds it gone");
        assert!(routes.is_owner(&uid, 2));
    }

    #[test]
    fn same_credentials_take_over() {
        let routes = Routes::default();
        let uid = Bytes::from_static(&[2; 16]);
        let (old, new) = (agent(1, "key-a"), agent(2, "key-a"));
        routes.claim(&uid, &old).unwrap();
        match routes.claim(&uid, &new) {
            Ok(Claimed::TookOver(prev)) => assert_eq!(prev.id, 1),
            other => panic!("expected a takeover, got {other:?}"),
        }
        assert!(!routes.remove(&uid, 1));
        assert!(routes.remove(&uid, 2));
    }
}
