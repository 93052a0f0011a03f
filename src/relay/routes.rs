//! instance uid → agent session, for routing server→agent messages.
//!
//! One map for all links: a uid is global, and after a migration the server
//! may still answer on the old link for a moment; either way it arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::agent::AgentShared;

#[derive(Default)]
pub struct Routes {
    map: Mutex<HashMap<Bytes, Arc<AgentShared>>>,
}

impl Routes {
    /// Points `uid` at `agent`. A uid that moves to a new session (agent
    /// reconnected before its old socket timed out) follows the newest.
    pub fn insert(&self, uid: Bytes, agent: &Arc<AgentShared>) {
        self.map.lock().expect("routes lock").insert(uid, agent.clone());
    }

    pub fn get(&self, uid: &[u8]) -> Option<Arc<AgentShared>> {
        self.map.lock().expect("routes lock").get(uid).cloned()
    }

    /// Removes `uid` only if it still points at `agent_id`.
    pub fn remove(&self, uid: &[u8], agent_id: u64) -> bool {
        let mut map = self.map.lock().expect("routes lock");
        if map.get(uid).is_some_and(|a| a.id == agent_id) {
            map.remove(uid);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("routes lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
