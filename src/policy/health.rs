//! [`PolicyHealth`]: what `/readyz` says about the policy set.
//!
//! The set is *degraded* while its directory cannot be read (removed,
//! unmounted, permissions): the last good set keeps serving, but the
//! operator's intent can no longer be followed. With `policies.required`,
//! readiness fails while the set is degraded or empty.

use parking_lot::Mutex;

/// What `/readyz` says about the policy set ([`PolicyRuntime::health`](super::runtime::PolicyRuntime::health)).
pub struct PolicyHealth {
    required: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    serving: usize,
    degraded: Option<String>,
}

impl PolicyHealth {
    pub(crate) fn new(required: bool) -> Self {
        Self { required, state: Mutex::default() }
    }

    /// Policies in the serving set.
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))] // the Wasm loader reports
    pub(crate) fn set_serving(&self, n: usize) {
        self.state.lock().serving = n;
    }

    /// Why the directory cannot be read, or `None` once it can.
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    pub(crate) fn set_degraded(&self, reason: Option<String>) {
        self.state.lock().degraded = reason;
    }

    pub fn is_degraded(&self) -> bool {
        self.state.lock().degraded.is_some()
    }

    /// One line for `/readyz`: `Ok` when ready as far as policies go.
    pub fn readiness(&self) -> Result<String, String> {
        let s = self.state.lock();
        let text = match &s.degraded {
            Some(why) => format!("policies degraded: {why}; the last good set ({}) keeps serving", s.serving),
            None => format!("policies: {} serving", s.serving),
        };
        if self.required && (s.degraded.is_some() || s.serving == 0) {
            Err(format!("{text} (policies.required)"))
        } else {
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_sets_fail_when_empty_or_degraded() {
        let h = PolicyHealth::new(true);
        assert!(h.readiness().is_err(), "empty");
        h.set_serving(2);
        assert_eq!(h.readiness().unwrap(), "policies: 2 serving");
        h.set_degraded(Some("dir: cannot read".into()));
        let e = h.readiness().unwrap_err();
        assert!(e.contains("degraded: dir: cannot read") && e.contains("(2) keeps serving"), "{e}");
        h.set_degraded(None);
        assert!(h.readiness().is_ok());

        let optional = PolicyHealth::new(false);
        optional.set_degraded(Some("gone".into()));
        assert!(optional.readiness().unwrap().contains("degraded"));
    }
}
