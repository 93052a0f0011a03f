//! The shared state store a policy reaches through `host.state-*` (WIT
//! 0.3.0), and the clock of `host.now-ms`.
//!
//! One [`StateStore`] per policy name, shared by every instance of that
//! policy (one lock: calls are short and a policy's keys are few), kept by
//! the [`StateStores`] registry across reloads of the same name unless the
//! policy's YAML says `state: reset`. It lives in the gateway process only.
//!
//! Size: keys plus values (a counter counts 8 bytes) are bounded by
//! `policies.limits.state_bytes` per policy; a write beyond is refused with
//! `full` and changes nothing. Expired entries are dropped when a write
//! needs their room, and when read.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use tokio::time::Instant;

/// When the gateway (this process) started, for `now-ms`.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first call in this process: monotonic.
pub(crate) fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateError {
    /// Over `policies.limits.state_bytes`.
    Full,
    /// `add` on a value that is not 8 bytes.
    NotACounter,
}

struct Value {
    bytes: Vec<u8>,
    /// `now_ms()` after which it is gone.
    expires: Option<u64>,
}

impl Value {
    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|t| now < t)
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Value>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) -> Option<Value> {
        let v = self.map.remove(key)?;
        self.bytes -= key.len() + v.bytes.len();
        Some(v)
    }

    fn purge_expired(&mut self, now: u64) {
        let dead: Vec<String> = self.map.iter().filter(|(_, v)| !v.live(now)).map(|(k, _)| k.clone()).collect();
        for k in dead {
            self.remove(&k);
        }
    }
}

/// One policy's store.
pub(crate) struct StateStore {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl StateStore {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { entries: Mutex::default(), capacity })
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_at(key, now_ms())
    }

    pub(crate) fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), StateError> {
        self.set_at(key, value, ttl_ms, now_ms())
    }

    pub(crate) fn add(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
        self.add_at(key, delta, ttl_ms, now_ms())
    }

    fn get_at(&self, key: &str, now: u64) -> Option<Vec<u8>> {
        let mut e = self.entries.lock();
        match e.map.get(key) {
            Some(v) if v.live(now) => Some(v.bytes.clone()),
            Some(_) => {
                e.remove(key);
                None
            }
            None => None,
        }
    }

    fn set_at(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>, now: u64) -> Result<(), StateError> {
        let mut e = self.entries.lock();
        let old = e.map.get(key).map_or(0, |v| key.len() + v.bytes.len());
        self.make_room(&mut e, key.len() + value.len(), old, now)?;
        let expires = ttl_ms.map(|t| now.saturating_add(t));
        let Entries { map, bytes } = &mut *e;
        // In place when the key is there (still, after `make_room`): no new
        // key string, no second hash.
        if let Some(v) = map.get_mut(key) {
            *bytes = *bytes - v.bytes.len() + value.len();
            *v = Value { bytes: value, expires };
            return Ok(());
        }
        *bytes += key.len() + value.len();
        map.insert(key.to_owned(), Value { bytes: value, expires });
        Ok(())
    }

    fn add_at(&self, key: &str, delta: i64, ttl_ms: Option<u64>, now: u64) -> Result<i64, StateError> {
        let mut e = self.entries.lock();
        let expires = ttl_ms.map(|t| now.saturating_add(t));
        // A live counter is updated in place: the common case of a
        // policy counting (no new key string, no second hash).
        if let Some(v) = e.map.get_mut(key).filter(|v| v.live(now)) {
            let bytes: [u8; 8] = v.bytes.as_slice().try_into().map_err(|_| StateError::NotACounter)?;
            let sum = i64::from_le_bytes(bytes).wrapping_add(delta);
            v.bytes.copy_from_slice(&sum.to_le_bytes());
            v.expires = expires.or(v.expires);
            return Ok(sum);
        }
        // Absent or expired: a new counter from 0.
        self.make_room(&mut e, key.len() + 8, 0, now)?;
        e.remove(key);
        e.bytes += key.len() + 8;
        e.map.insert(key.to_owned(), Value { bytes: delta.to_le_bytes().to_vec(), expires });
        Ok(delta)
    }

    pub(crate) fn delete(&self, key: &str) {
        self.entries.lock().remove(key);
    }

    /// Bytes held now (keys + values), expired entries included until purged.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.entries.lock().bytes
    }

    /// Whether `need` bytes fit once `replaced` bytes go, purging expired
    /// entries when that makes the difference.
    fn make_room(&self, e: &mut Entries, need: usize, replaced: usize, now: u64) -> Result<(), StateError> {
        if e.bytes - replaced + need <= self.capacity {
            return Ok(());
        }
        e.purge_expired(now);
        let replaced = replaced.min(e.bytes);
        if e.bytes - replaced + need <= self.capacity {
            Ok(())
        } else {
            Err(StateError::Full)
        }
    }
}

/// Every policy's store, by policy name; outlives reloads.
#[derive(Default)]
pub(crate) struct StateStores {
    stores: Mutex<HashMap<String, Arc<StateStore>>>,
}

impl StateStores {
    /// The store of policy `name`: the existing one unless `reset` (or its
    /// capacity changed), else a fresh one.
    pub(crate) fn store(&self, name: &str, capacity: usize, reset: bool) -> Arc<StateStore> {
        let mut stores = self.stores.lock();
        match stores.get(name) {
            Some(s) if !reset && s.capacity == capacity => s.clone(),
            // Same entries, new bound: copied over as far as they fit.
            Some(s) if !reset => {
                let fresh = StateStore::new(capacity);
                let now = now_ms();
                {
                    let old = s.entries.lock();
                    for (k, v) in old.map.iter().filter(|(_, v)| v.live(now)) {
                        let ttl = v.expires.map(|t| t - now);
                        let _ = fresh.set_at(k, v.bytes.clone(), ttl, now);
                    }
                }
                stores.insert(name.to_owned(), fresh.clone());
                fresh
            }
            _ => {
                let fresh = StateStore::new(capacity);
                stores.insert(name.to_owned(), fresh.clone());
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_set_delete_and_counters() {
        let s = StateStore::new(1024);
        assert_eq!(s.get("a"), None);
        s.set("a", b"xy".to_vec(), None).unwrap();
        assert_eq!(s.get("a").as_deref(), Some(&b"xy"[..]));
        assert_eq!(s.add("a", 1, None), Err(StateError::NotACounter));
        assert_eq!(s.add("n", 5, None), Ok(5));
        assert_eq!(s.add("n", -7, None), Ok(-2));
        assert_eq!(s.get("n"), Some((-2i64).to_le_bytes().to_vec()));
        assert_eq!(s.bytes(), 3 + 9);
        s.delete("a");
        s.delete("missing");
        assert_eq!(s.get("a"), None);
        assert_eq!(s.bytes(), 9);
    }

    #[test]
    fn writes_beyond_the_bound_are_refused_and_change_nothing() {
        let s = StateStore::new(16);
        s.set("k", vec![0; 10], None).unwrap(); // 11 bytes
        assert_eq!(s.set("j", vec![0; 10], None), Err(StateError::Full));
        assert_eq!(s.add("counter", 1, None), Err(StateError::Full));
        assert_eq!(s.get("j"), None);
        s.set("k", vec![1; 15], None).unwrap(); // replacing frees the old value first
        assert_eq!(s.bytes(), 16);
        assert_eq!(s.set("k", vec![1; 16], None), Err(StateError::Full));
        assert_eq!(s.get("k"), Some(vec![1; 15]));
        s.set("k", vec![2; 3], None).unwrap(); // and a smaller one gives room back
        assert_eq!(s.bytes(), 4);
        s.set("j", vec![0; 10], None).unwrap();
    }

    #[test]
    fn entries_expire_and_free_their_room() {
        let s = StateStore::new(20);
        s.set_at("k", vec![0; 10], Some(100), 0).unwrap();
        assert_eq!(s.add_at("c", 1, Some(50), 0), Ok(1));
        assert_eq!(s.add_at("c", 1, None, 10), Ok(2), "the TTL is kept when none is given");
        assert_eq!(s.add_at("c", 1, None, 60), Ok(1), "an expired counter starts from 0");
        assert!(s.get_at("k", 60).is_some());
        s.set_at("o", vec![0; 9], None, 120).unwrap(); // fits only once `k` is purged
        assert_eq!(s.get_at("k", 120), None);
    }

    #[test]
    fn the_clock_is_monotonic() {
        let a = now_ms();
        assert!(now_ms() >= a);
    }

    #[test]
    fn stores_are_kept_per_name_unless_reset() {
        let all = StateStores::default();
        let a = all.store("a", 100, false);
        a.set("x", vec![1], None).unwrap();
        assert!(Arc::ptr_eq(&a, &all.store("a", 100, false)));
        assert!(all.store("b", 100, false).get("x").is_none(), "each policy has its own");
        assert_eq!(all.store("a", 200, false).get("x"), Some(vec![1]), "a new bound keeps the entries");
        assert_eq!(all.store("a", 200, true).get("x"), None);
    }
}
