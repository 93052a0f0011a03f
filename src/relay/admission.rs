//! The connect handshake: choose a link, ask the server, wait for its verdict.
//!
//! Used for an agent's first connect and again when its link dies and it is
//! moved to another one (with the same headers, so the server decides again).

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::links::{LinkLease, Outbound};
use super::pending::NoResult;
use super::Relay;
use crate::policy::{AssignDecision, AssignInput, HeaderList, Refused, Transport};
use crate::protocol::handshake::{ConnectRequest, ConnectResult};

/// Everything the server is told about a connecting agent.
#[derive(Debug, Clone)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct AdmitRequest {
    /// Request headers as received, names lower-case.
    pub headers: HeaderList,
    pub remote_addr: String,
    pub transport: Transport,
}

/// An accepted agent: its link, and headers the server wants sent back.
#[derive(Debug)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Admission {
    pub lease: LinkLease,
    pub response_headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("no upstream link is connected")]
    NoUpstream,
    #[error("the server did not answer the connect request in time")]
    Timeout,
    #[error("the server rejected the agent with status {}", .0.reject_status())]
    Rejected(ConnectResult),
    /// The server answered with a connectResult that cannot be read: the
    /// agent is answered at once rather than left to time out.
    #[error("the server's connectResult could not be read: {0}")]
    BadResult(String),
    #[error(transparent)]
    PolicyRefused(#[from] Refused),
}

impl AdmitError {
    /// Label for the handshake metric.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            AdmitError::NoUpstream => "unavailable",
            AdmitError::Timeout => "timeout",
            AdmitError::Rejected(_) => "rejected",
            AdmitError::BadResult(_) => "bad_result",
            AdmitError::PolicyRefused(_) => "policy_refused",
        }
    }

    /// The HTTP status an agent is answered with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            AdmitError::NoUpstream | AdmitError::PolicyRefused(_) => 503,
            AdmitError::Timeout => 504,
            AdmitError::BadResult(_) => 502,
            AdmitError::Rejected(r) => r.reject_status(),
        }
    }
}

impl Relay {
    pub(crate) async fn admit(&self, req: &AdmitRequest) -> Result<Admission, AdmitError> {
        let deadline = Instant::now() + self.settings.auth_timeout;
        let (preferred, headers) = self.apply_policies(req).await?;
        self.handshake(req, preferred, &headers, deadline).await
    }

    /// A planned move off link `from` (rebalancing): asks the policy chain
    /// again and hands the agent to the link it names, or to the
    /// least-loaded one. `Ok(None)`: that is `from` itself, so the agent
    /// stays and no handshake is made.
    pub(crate) async fn admit_move(&self, req: &AdmitRequest, from: u32) -> Result<Option<Admission>, AdmitError> {
        let deadline = Instant::now() + self.settings.auth_timeout;
        let (preferred, headers) = self.apply_policies(req).await?;
        let target = match preferred {
            Some(link) if link == from => return Ok(None),
            Some(link) => link,
            // Least connections; a move that would not narrow the spread
            // (loads changed since the rebalancer asked) is not made.
            // Leaving a retiring link: anywhere else will do.
            None if self.links.get(from).is_some_and(|l| l.is_retiring()) => match self.links.rotation_target(from) {
                Some(link) => link,
                None => return Ok(None),
            },
            None => match self.links.relief_for(from) {
                Some(link) => link,
                None => return Ok(None),
            },
        };
        self.handshake(req, Some(target), &headers, deadline).await.map(Some)
    }

    async fn handshake(
        &self,
        req: &AdmitRequest,
        mut preferred: Option<u32>,
        headers: &HeaderList,
        deadline: Instant,
    ) -> Result<Admission, AdmitError> {
        // Each retry follows a link loss mid-handshake; there are at most as
        // many distinct links to try as slots.
        for _ in 0..=self.links.len() {
            // A link lost mid-handshake is marked disconnected before its
            // waiters are failed, so the next lease cannot pick it again.
            let lease = self.links.lease(preferred).ok_or(AdmitError::NoUpstream)?;
            let request_uid = uuid::Uuid::new_v4().to_string();
            let (_guard, answer) = self.pending.register(request_uid.clone(), lease.index());
            if lease.is_stale() {
                // Lost between lease and register: fail_link may have missed us.
                preferred = None;
                continue;
            }
            let frame = ConnectRequest::new(
                request_uid,
                req.remote_addr.clone(),
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .to_frame();
            let out = Outbound {
                frame,
                generation: lease.generation(),
                agent: None,
                received: Instant::now(),
                held: Default::default(),
            };
            match tokio::time::timeout_at(deadline, lease.link().send(out)).await {
                Err(_) => return Err(AdmitError::Timeout),
                Ok(Err(_)) => return Err(AdmitError::NoUpstream), // link task gone: shutting down
                Ok(Ok(())) => {}
            }
            match tokio::time::timeout_at(deadline, answer).await {
                Err(_) => return Err(AdmitError::Timeout),
                Ok(Ok(Ok(result))) if result.accept => {
                    return Ok(Admission { lease, response_headers: result.response_headers });
                }
                Ok(Ok(Ok(result))) => return Err(AdmitError::Rejected(result)),
                Ok(Ok(Err(NoResult::Unreadable(why)))) => return Err(AdmitError::BadResult(why)),
                Ok(Ok(Err(NoResult::LinkLost)) | Err(_)) => {
                    tracing::debug!(link = lease.index(), "link lost during handshake; trying another");
                    preferred = None;
                }
            }
        }
        Err(AdmitError::NoUpstream)
    }

    /// Runs the `assign` and `forward-headers` phases in one turn of the
    /// policy gate (skipped entirely with no policies, the default relay).
    async fn apply_policies(&self, req: &AdmitRequest) -> Result<(Option<u32>, HeaderList), Refused> {
        let set = self.policies.snapshot();
        if set.is_empty() {
            return Ok((None, req.headers.clone()));
        }
        let links = self.links.snapshot();
        let input = AssignInput {
            headers: &req.headers,
            remote_addr: &req.remote_addr,
            transport: req.transport,
            links: &links,
        };
        let (decision, headers) = self.policies.admit(&set, &input, req.headers.clone()).await?;
        let preferred = match decision {
            AssignDecision::Link(i) => Some(i),
            AssignDecision::Default => None,
        };
        Ok((preferred, headers))
    }
}
