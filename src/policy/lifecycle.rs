//! `on-connect` / `on-disconnect`: session events, delivered after the fact
//! on one worker thread, never on the relay's path.
//!
//! The relay gets an [`AdmitTicket`] from the `admit` phase. Starting a
//! session turns it into a [`SessionTicket`] (queues `on-connect`); ending
//! the session queues `on-disconnect` with the close reason. A ticket
//! dropped unstarted (a later policy or the server refused the agent)
//! queues `on-disconnect` with [`NOT_ADMITTED`] for the policies that
//! allowed it, so a counter kept in `admit` is always given back.
//!
//! Events go to the policies of the set current when they are delivered
//! (a reloaded policy of the same name keeps its state, so it can undo what
//! its predecessor counted). A policy that announces `admit` hears only of
//! the agents it allowed. The queue is bounded ([`QUEUE`]); an event that
//! does not fit is dropped and counted
//! ([`POLICY_LIFECYCLE_DROPPED`](m::POLICY_LIFECYCLE_DROPPED)).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::Mutex;

use super::set::PolicySet;
use super::{HeaderList, SessionEvent, Transport, NOT_ADMITTED};
use crate::telemetry::metrics as m;

/// Events waiting for the worker; beyond, they are dropped.
pub(crate) const QUEUE: usize = 4096;

/// One queued event.
pub(crate) struct Job {
    pub(crate) event: SessionEvent,
    /// `None`: on-connect; else on-disconnect with this reason.
    pub(crate) reason: Option<String>,
    /// Names of the `admit` policies that allowed the agent.
    pub(crate) admitted: Arc<[Arc<str>]>,
}

/// The sending side of the worker's queue; the worker starts on the first
/// event and ends when the last sender is gone.
pub struct Lifecycle {
    current: Weak<ArcSwap<PolicySet>>,
    tx: Mutex<Option<SyncSender<Job>>>,
}

impl Lifecycle {
    pub(crate) fn new(current: &Arc<ArcSwap<PolicySet>>) -> Arc<Self> {
        Arc::new(Self { current: Arc::downgrade(current), tx: Mutex::new(None) })
    }

    fn send(&self, job: Job) {
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (sender, rx) = sync_channel(QUEUE);
            let current = self.current.clone();
            let started =
                std::thread::Builder::new().name("policy-lifecycle".into()).spawn(move || worker(current, rx));
            if let Err(e) = started {
                tracing::warn!(error = %e, "could not start the policy lifecycle thread; events dropped");
                metrics::counter!(m::POLICY_LIFECYCLE_DROPPED).increment(1);
                return;
            }
            *tx = Some(sender);
        }
        let sender = tx.as_ref().expect("set above");
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!(m::POLICY_LIFECYCLE_DROPPED).increment(1);
                static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        queue = QUEUE,
                        "policy lifecycle events dropped: the queue is full \
                         (further drops: opampgateway_policy_lifecycle_dropped_total only)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                *tx = None;
                metrics::counter!(m::POLICY_LIFECYCLE_DROPPED).increment(1);
            }
        }
    }
}

fn worker(current: Weak<ArcSwap<PolicySet>>, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let Some(current) = current.upgrade() else { return };
        let set = current.load_full();
        drop(current);
        set.deliver(&job);
    }
}

/// What the `admit` phase hands the relay: dropped unstarted, it tells the
/// policies that allowed the agent that it never got a session.
#[must_use]
pub struct AdmitTicket {
    inner: Option<Pending>,
}

struct Pending {
    lifecycle: Arc<Lifecycle>,
    admitted: Arc<[Arc<str>]>,
    headers: HeaderList,
    remote_addr: String,
    transport: Transport,
}

impl AdmitTicket {
    /// No policy to notify.
    pub fn none() -> Self {
        Self { inner: None }
    }

    pub(crate) fn new(
        lifecycle: Arc<Lifecycle>,
        admitted: Vec<Arc<str>>,
        headers: HeaderList,
        remote_addr: String,
        transport: Transport,
    ) -> Self {
        let inner = Pending { lifecycle, admitted: admitted.into(), headers, remote_addr, transport };
        Self { inner: Some(inner) }
    }

    /// The session began: queues `on-connect`.
    pub fn start(mut self, session: u64, uid: Option<Bytes>, upstream: String) -> SessionTicket {
        let Some(p) = self.inner.take() else { return SessionTicket { inner: None } };
        let event = SessionEvent {
            session,
            uid,
            headers: p.headers,
            remote_addr: p.remote_addr,
            transport: p.transport,
            upstream,
        };
        p.lifecycle.send(Job { event: event.clone(), reason: None, admitted: p.admitted.clone() });
        SessionTicket { inner: Some(Box::new(Started { lifecycle: p.lifecycle, admitted: p.admitted, event })) }
    }
}

impl Drop for AdmitTicket {
    fn drop(&mut self) {
        let Some(p) = self.inner.take() else { return };
        if p.admitted.is_empty() {
            return;
        }
        let event = SessionEvent {
            session: 0,
            uid: None,
            headers: p.headers,
            remote_addr: p.remote_addr,
            transport: p.transport,
            upstream: String::new(),
        };
        p.lifecycle.send(Job { event, reason: Some(NOT_ADMITTED.to_owned()), admitted: p.admitted });
    }
}

impl std::fmt::Debug for AdmitTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitTicket").field("pending", &self.inner.is_some()).finish()
    }
}

/// A started session; [`SessionTicket::end`] queues `on-disconnect`.
#[derive(Default)]
pub struct SessionTicket {
    /// Boxed: every session holds a ticket for its whole life, and with no
    /// lifecycle hook loaded (the default) it is empty.
    inner: Option<Box<Started>>,
}

struct Started {
    lifecycle: Arc<Lifecycle>,
    admitted: Arc<[Arc<str>]>,
    event: SessionEvent,
}

impl SessionTicket {
    /// The session ended for `reason` (a close-reason label). `uid`: the
    /// agent's, when learnt after the start; `upstream`: where it ended.
    pub fn end(mut self, reason: &str, uid: Option<Bytes>, upstream: Option<String>) {
        let Some(started) = self.inner.take() else { return };
        let Started { lifecycle, admitted, mut event } = *started;
        if event.uid.is_none() {
            event.uid = uid;
        }
        if let Some(u) = upstream {
            event.upstream = u;
        }
        lifecycle.send(Job { event, reason: Some(reason.to_owned()), admitted });
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        // Ended without a word (a task torn down): still a disconnect.
        if let Some(started) = self.inner.take() {
            let Started { lifecycle, admitted, event } = *started;
            lifecycle.send(Job { event, reason: Some("error".to_owned()), admitted });
        }
    }
}
