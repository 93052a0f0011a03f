//! Watches the policy directory and calls back, debounced, when it changes.
//!
//! A std thread owns the `notify` watcher (inotify on Linux) and the
//! debounce loop: after the first relevant event it waits for [`QUIET`] of
//! silence (a copy in progress keeps producing events), at most [`SETTLE`],
//! then calls `on_change` on that same thread. Compiling happens there too,
//! so the async runtime never blocks on a reload.
//!
//! Relevant: creation, removal, renames and completed writes of `*.wasm`,
//! `*.yaml`, `*.yml`, and Kubernetes' atomic `..data` symlink swap. Opens and
//! reads are not (the reload itself reads the files). A missing directory is
//! watched through its parent and picked up when it appears; a removed one
//! unloads nothing (the runtime keeps the set serving and reports it
//! degraded) until it reappears, empty or not.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::error::PolicyError;

/// Silence that ends a burst of events.
pub(crate) const QUIET: Duration = Duration::from_millis(100);
/// Longest a burst can delay a reload.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// The watcher thread. Dropping it stops the thread (after a reload in
/// progress, if any, completes).
pub(crate) struct DirWatcher {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl DirWatcher {
    pub(crate) fn start(dir: PathBuf, on_change: impl FnMut() + Send + 'static) -> Result<Self, PolicyError> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |ev| {
            let _ = events.send(Msg::Fs(ev));
        })
        .map_err(|e| PolicyError::Watch { path: dir.clone(), reason: e.to_string() })?;
        let mut state = Armed { watcher, dir, target: None };
        state.arm()?;
        let thread = std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || run(state, rx, on_change))
            .map_err(|e| PolicyError::Engine(format!("cannot start the policy watcher thread: {e}")))?;
        Ok(Self { tx, thread: Some(thread) })
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The notify watcher and what it is currently watching.
struct Armed {
    watcher: RecommendedWatcher,
    dir: PathBuf,
    /// The directory itself, or its parent while it does not exist.
    target: Option<PathBuf>,
}

impl Armed {
    /// Watches the directory if it exists, else its nearest existing parent.
    fn arm(&mut self) -> Result<(), PolicyError> {
        let want = if self.dir.is_dir() { Some(self.dir.clone()) } else { parent(&self.dir).filter(|p| p.is_dir()) };
        if want == self.target {
            return Ok(());
        }
        if let Some(old) = self.target.take() {
            let _ = self.watcher.unwatch(&old);
        }
        if let Some(path) = &want {
            self.watcher
                .watch(path, RecursiveMode::NonRecursive)
                .map_err(|e| PolicyError::Watch { path: path.clone(), reason: e.to_string() })?;
            if *path != self.dir {
                tracing::info!(dir = %self.dir.display(), "policy directory missing; watching {} for it", path.display());
            }
        } else {
            tracing::warn!(dir = %self.dir.display(), "neither the policy directory nor its parent exist; not watched");
        }
        self.target = want;
        Ok(())
    }

    fn relevant(&self, ev: &notify::Event) -> bool {
        let kind_matters = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Metadata(_)) => false,
            _ => true,
        };
        if !kind_matters {
            return false;
        }
        if ev.paths.is_empty() {
            return true; // a rescan request: something was missed
        }
        let watching_dir = self.target.as_deref() == Some(self.dir.as_path());
        ev.paths.iter().any(|p| {
            if p == &self.dir {
                return true;
            }
            if !watching_dir {
                return false; // a sibling of the missing directory
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("..") || name.ends_with(".wasm") || name.ends_with(".yaml") || name.ends_with(".yml")
        })
    }
}

fn parent(p: &Path) -> Option<PathBuf> {
    match p.parent() {
        Some(q) if q.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(q) => Some(q.to_owned()),
        None => None,
    }
}

fn run(mut state: Armed, rx: mpsc::Receiver<Msg>, mut on_change: impl FnMut()) {
    loop {
        // Wait for a relevant event.
        match rx.recv() {
            Err(_) | Ok(Msg::Stop) => return,
            Ok(Msg::Fs(Err(e))) => {
                tracing::warn!(error = %e, "policy directory watch error; reloading to be safe");
            }
            Ok(Msg::Fs(Ok(ev))) => {
                if !state.relevant(&ev) {
                    continue;
                }
            }
        }
        // Debounce: wait for the burst to end.
        let first = Instant::now();
        loop {
            let left = SETTLE.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(QUIET.min(left)) {
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) | Ok(Msg::Stop) => return,
                Ok(Msg::Fs(_)) => {}
            }
        }
        if let Err(e) = state.arm() {
            tracing::error!(error = %e, "policy directory watch lost");
        }
        on_change();
    }
}
