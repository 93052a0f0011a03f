//! Connect handshakes awaiting the server's `connectResult`, by request uid.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::protocol::handshake::ConnectResult;

/// Why a handshake ended without a usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoResult {
    /// The link died, so no answer can come: try another link.
    LinkLost,
    /// The server answered with a connectResult that cannot be read.
    Unreadable(String),
}

type Answer = Result<ConnectResult, NoResult>;
type Waiter = oneshot::Sender<Answer>;

#[derive(Default)]
pub(crate) struct PendingConnects {
    map: Arc<Mutex<HashMap<String, (u32, Waiter)>>>,
}

/// Removes the entry when the waiter gives up (timeout, cancelled request).
pub(crate) struct PendingGuard {
    map: Arc<Mutex<HashMap<String, (u32, Waiter)>>>,
    request_uid: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.request_uid);
    }
}

impl PendingConnects {
    pub(crate) fn register(&self, request_uid: String, link: u32) -> (PendingGuard, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        self.map.lock().insert(request_uid.clone(), (link, tx));
        (PendingGuard { map: self.map.clone(), request_uid }, rx)
    }

    /// Delivers a result; false if nobody waits for it (late or unknown).
    pub(crate) fn resolve(&self, result: ConnectResult) -> bool {
        let waiter = self.map.lock().remove(&result.request_uid);
        match waiter {
            Some((_, tx)) => tx.send(Ok(result)).is_ok(),
            None => false,
        }
    }

    /// Fails the handshake `request_uid` because its answer cannot be read;
    /// false if nobody waits for it.
    pub(crate) fn fail(&self, request_uid: &str, reason: String) -> bool {
        let waiter = self.map.lock().remove(request_uid);
        match waiter {
            Some((_, tx)) => tx.send(Err(NoResult::Unreadable(reason))).is_ok(),
            None => false,
        }
    }

    /// Fails every handshake in flight on `link` (its connection died, so no
    /// answer can come).
    pub(crate) fn fail_link(&self, link: u32) {
        let mut map = self.map.lock();
        let lost: Vec<String> = map.iter().filter(|(_, (l, _))| *l == link).map(|(k, _)| k.clone()).collect();
        for k in lost {
            if let Some((_, tx)) = map.remove(&k) {
                let _ = tx.send(Err(NoResult::LinkLost));
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolve_fail_and_cleanup() {
        let p = PendingConnects::default();
        let (_g1, rx1) = p.register("a".into(), 0);
        let (_g2, rx2) = p.register("b".into(), 1);
        let (_g4, rx4) = p.register("d".into(), 1);
        assert!(p.fail("d", "bad JSON".into()));
        assert_eq!(rx4.await.unwrap(), Err(NoResult::Unreadable("bad JSON".into())));
        assert!(!p.fail("d", "again".into()), "a failed handshake is forgotten");
        assert!(p.resolve(ConnectResult { request_uid: "a".into(), accept: true, ..Default::default() }));
        assert!(rx1.await.unwrap().unwrap().accept);
        p.fail_link(1);
        assert_eq!(rx2.await.unwrap(), Err(NoResult::LinkLost));
        let (g3, _rx3) = p.register("c".into(), 0);
        drop(g3);
        assert!(p.is_empty());
        assert!(!p.resolve(ConnectResult { request_uid: "c".into(), ..Default::default() }));
    }
}
