//! The gateway's store shared by all instances of this policy, and its
//! clock (WIT 0.3.0 `host.state-*`, `host.now-ms`).
//!
//! The store is per policy name and per gateway process: lost on restart,
//! kept across reloads of the same policy unless its yaml says
//! `state: reset`. Its total size (keys + values, a counter counts 8 bytes)
//! is bounded by the gateway's `policies.limits.state_bytes`: a write
//! beyond is refused with [`StateError::Full`].
//!
//! Off wasm (host-side unit tests) the same functions work on an in-memory
//! store per test thread, with a clock the test moves ([`set_now_ms`]).
//!
//! ```
//! use opamp_policy::state;
//! assert_eq!(state::add("agents/acme", 1, None), Ok(1));
//! assert_eq!(state::add("agents/acme", 1, None), Ok(2));
//! assert_eq!(state::get("agents/acme"), Some(2i64.to_le_bytes().to_vec()));
//! ```

pub use crate::StateError;

#[cfg(target_arch = "wasm32")]
use crate::bindings::opamp_gateway::policy::host;

/// The value at `key`, unless absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    return host::state_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return mock::get(key);
}

/// Sets `key`, replacing its value and TTL (`ttl_ms`: expire after that
/// many milliseconds; `None`: never).
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), StateError> {
    #[cfg(target_arch = "wasm32")]
    return host::state_set(key, value, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return mock::set(key, value, ttl_ms);
}

/// Adds `delta` to the counter at `key` (absent or expired: 0) and returns
/// the new value, atomically across the policy's instances. `ttl_ms`
/// replaces the entry's TTL when given. A counter reads through [`get`] as
/// 8 bytes, little-endian.
pub fn add(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
    #[cfg(target_arch = "wasm32")]
    return host::state_add(key, delta, ttl_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return mock::add(key, delta, ttl_ms);
}

/// Removes `key` (nothing happens when it is absent).
pub fn delete(key: &str) {
    #[cfg(target_arch = "wasm32")]
    host::state_delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    mock::delete(key);
}

/// Milliseconds since the gateway started: monotonic and coarse. (WASI's
/// clocks read zero in a policy.)
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return mock::now();
}

/// Off wasm: sets what [`now_ms`] returns on this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_now_ms(ms: u64) {
    mock::NOW.with(|n| n.set(ms));
}

/// Off wasm: empties this thread's store.
#[cfg(not(target_arch = "wasm32"))]
pub fn clear() {
    mock::STORE.with(|s| s.borrow_mut().clear());
}

#[cfg(not(target_arch = "wasm32"))]
mod mock {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::StateError;

    /// A value and when it expires.
    type Entry = (Vec<u8>, Option<u64>);

    thread_local! {
        pub(super) static NOW: Cell<u64> = const { Cell::new(0) };
        pub(super) static STORE: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
    }

    pub(super) fn now() -> u64 {
        NOW.with(Cell::get)
    }

    fn live(key: &str) -> Option<Entry> {
        let now = now();
        STORE.with(|s| {
            let mut s = s.borrow_mut();
            match s.get(key) {
                Some((_, Some(t))) if *t <= now => {
                    s.remove(key);
                    None
                }
                other => other.cloned(),
            }
        })
    }

    pub(super) fn get(key: &str) -> Option<Vec<u8>> {
        live(key).map(|(v, _)| v)
    }

    pub(super) fn set(key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), StateError> {
        let expires = ttl.map(|t| now() + t);
        STORE.with(|s| s.borrow_mut().insert(key.to_owned(), (value.to_vec(), expires)));
        Ok(())
    }

    pub(super) fn add(key: &str, delta: i64, ttl: Option<u64>) -> Result<i64, StateError> {
        let (value, expires) = match live(key) {
            Some((v, e)) => (i64::from_le_bytes(v.try_into().map_err(|_| StateError::NotACounter)?), e),
            None => (0, None),
        };
        let sum = value.wrapping_add(delta);
        let expires = ttl.map(|t| now() + t).or(expires);
        STORE.with(|s| s.borrow_mut().insert(key.to_owned(), (sum.to_le_bytes().to_vec(), expires)));
        Ok(sum)
    }

    pub(super) fn delete(key: &str) {
        STORE.with(|s| s.borrow_mut().remove(key));
    }
}
