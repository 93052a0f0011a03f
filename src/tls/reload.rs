//! A value rebuilt from files without a restart (`reload_interval`,
//! `client_ca_file_reload`).
//!
//! Reloads are lazy, as configtls does them: the first handshake after the
//! interval (or after a watched file changed) re-reads the files. No task,
//! no runtime needed, nothing to shut down. A failed reload (say a
//! half-written file) keeps the previous value and is retried at the next
//! interval or file change; configtls fails the handshake instead.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::TlsError;

type Loader<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// What identifies a file's version without reading it.
type Stamp = Option<(SystemTime, u64)>;

pub(crate) struct Reloading<T> {
    what: String,
    current: ArcSwap<T>,
    load: Loader<T>,
    every: Option<Duration>,
    watch: Vec<PathBuf>,
    state: Mutex<State>,
}

struct State {
    next: Instant,
    stamps: Vec<Stamp>,
}

impl<T> Reloading<T> {
    /// Loads once now (errors are the caller's); then again every `every`
    /// (zero = never) and whenever a file in `watch` changes.
    pub(super) fn new(
        what: impl Into<String>,
        every: Option<Duration>,
        watch: Vec<PathBuf>,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let every = every.filter(|d| !d.is_zero());
        // Stamp before loading: a change racing the load is then seen later.
        let stamps = stamps(&watch);
        let first = load()?;
        Ok(Self {
            what: what.into(),
            current: ArcSwap::from_pointee(first),
            load: Box::new(load),
            state: Mutex::new(State { next: Instant::now() + every.unwrap_or_default(), stamps }),
            every,
            watch,
        })
    }

    /// Whether this value can ever change.
    pub(super) fn reloads(&self) -> bool {
        self.every.is_some() || !self.watch.is_empty()
    }

    /// The current value, reloaded first if due.
    pub(super) fn get(&self) -> Arc<T> {
        if self.reloads() {
            self.reload_if_due();
        }
        self.current.load_full()
    }

    fn reload_if_due(&self) {
        // Another handshake is already reloading: use the current value.
        let Some(mut state) = self.state.try_lock() else { return };
        let now = Instant::now();
        let mut due = false;
        if let Some(every) = self.every {
            if now >= state.next {
                state.next = now + every;
                due = true;
            }
        }
        if !self.watch.is_empty() {
            let stamps = stamps(&self.watch);
            if stamps != state.stamps {
                state.stamps = stamps;
                due = true;
            }
        }
        if !due {
            return;
        }
        match (self.load)() {
            Ok(v) => {
                self.current.store(Arc::new(v));
                tracing::debug!(what = %self.what, "TLS files reloaded");
            }
            Err(e) => tracing::warn!(what = %self.what, error = %e, "TLS reload failed; keeping the previous one"),
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("what", &self.what).field("every", &self.every).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_keeps_the_previous_value_and_a_change_retries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "first").unwrap();
        let p = path.clone();
        let load = move || match std::fs::read_to_string(&p).unwrap() {
            s if s.starts_with("bad") => Err(TlsError::Invalid { field: "test", reason: s }),
            s => Ok(s),
        };
        let r = Reloading::new("test", None, vec![path.clone()], load).unwrap();
        assert_eq!(*r.get(), "first");
        std::fs::write(&path, "bad!!!!").unwrap();
        assert_eq!(*r.get(), "first", "a broken file is not taken");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(*r.get(), "second", "the next change is");
        assert!(!Reloading::new("static", Some(Duration::ZERO), Vec::new(), || Ok(1)).unwrap().reloads());
    }
}
