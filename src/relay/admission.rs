//! The connect handshake: choose a link, ask the server, wait for its verdict.
//!
//! Used for an agent's first connect and again when its link dies and it is
//! moved to another one (with the same headers, so the server decides again).

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::links::{LinkLease, Outbound};
use super::pending::NoResult;
use super::Relay;
use crate::policy::{
    AdmitTicket, AssignDecision, AssignInput, HeaderList, Refused, Rejection, Transport, UpstreamInfo,
};
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

impl AdmitRequest {
    /// What the `admit` and `assign` phases are shown of this agent.
    pub(crate) fn assign_input<'a>(&'a self, upstreams: &'a [UpstreamInfo]) -> AssignInput<'a> {
        AssignInput { headers: &self.headers, remote_addr: &self.remote_addr, transport: self.transport, upstreams }
    }
}

/// An accepted agent: its link, and headers the server wants sent back.
#[derive(Debug)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Admission {
    pub lease: LinkLease,
    pub response_headers: BTreeMap<String, String>,
    /// The `admit` phase's ticket for lifecycle events (empty after a move).
    pub ticket: AdmitTicket,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("no link of the chosen upstream is connected")]
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
    /// A policy's `admit` refused the agent; the server was not asked.
    #[error("policy rejected the agent with status {}", .0.status)]
    PolicyRejected(Rejection),
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
            AdmitError::PolicyRejected(_) => "policy_rejected",
        }
    }

    /// The HTTP status an agent is answered with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            AdmitError::NoUpstream | AdmitError::PolicyRefused(_) => 503,
            AdmitError::Timeout => 504,
            AdmitError::BadResult(_) => 502,
            AdmitError::Rejected(r) => r.reject_status(),
            AdmitError::PolicyRejected(r) => r.status,
        }
    }
}

/// What a planned move came to.
#[derive(Debug)]
pub(crate) struct Move {
    /// The upstream the agent was routed to (its own when it stays).
    pub(crate) to: usize,
    /// `Ok(None)`: it stays where it is.
    pub(crate) result: Result<Option<Admission>, AdmitError>,
}

/// Why a connected agent is asked to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum MoveKind {
    /// Its link is crowded or retiring: another link of the same upstream,
    /// where that narrows the spread.
    Rebalance = 0,
    /// The policies were reloaded: only a route to another upstream (or
    /// another named link) moves it.
    Reroute = 1,
}

impl Relay {
    /// A new agent's admission: the policies' `admit` phase, then [`admit`].
    /// Moves and failovers call [`admit`] alone: `admit` is asked once per
    /// session. A rejected agent costs the server nothing.
    ///
    /// [`admit`]: Relay::admit
    pub(crate) async fn admit_new(&self, req: &AdmitRequest) -> Result<Admission, AdmitError> {
        let set = self.policies.snapshot();
        if set.is_empty() {
            return self.admit(req).await;
        }
        let upstreams = self.links.snapshot();
        let input = req.assign_input(&upstreams);
        let outcome = self.policies.admission(&set, &input).await?;
        if let Some(rejection) = outcome.rejection {
            return Err(AdmitError::PolicyRejected(rejection)); // the ticket tells who allowed it
        }
        let mut admission = self.admit(req).await?;
        admission.ticket = outcome.ticket;
        Ok(admission)
    }

    pub(crate) async fn admit(&self, req: &AdmitRequest) -> Result<Admission, AdmitError> {
        let deadline = Instant::now() + self.settings.auth_timeout;
        let mut asked = 0;
        loop {
            let (decision, headers) = self.apply_policies(req).await?;
            let (upstream, preferred) = self.target(decision);
            asked += 1;
            match self.handshake(req, upstream, preferred, &headers, deadline).await {
                // The chain chose from link states that changed under it
                // (the upstream it named went down meanwhile): it may choose
                // otherwise now. Without policies there is nothing to ask.
                Err(AdmitError::NoUpstream) if asked < 3 && !self.policies.snapshot().is_empty() => continue,
                other => return other,
            }
        }
    }

    /// A planned move off link `from`: asks the policy chain again and hands
    /// the agent to where it now routes. A route to another upstream always
    /// moves the agent there. Within its upstream, a named link is followed;
    /// with no link named, a rebalance takes the least-loaded link and a
    /// reroute stays. `Ok(None)`: the agent stays, no handshake is made.
    pub(crate) async fn admit_move(&self, req: &AdmitRequest, from: u32, kind: MoveKind) -> Move {
        let deadline = Instant::now() + self.settings.auth_timeout;
        let (decision, headers) = match self.apply_policies(req).await {
            Ok(answer) => answer,
            Err(refused) => {
                let here = self.links.upstream_of(from).unwrap_or(0);
                return Move { to: here, result: Err(refused.into()) };
            }
        };
        let (upstream, preferred) = self.target(decision);
        let result = match self.move_target(from, kind, upstream, preferred) {
            None => Ok(None),
            Some(target) => self.handshake(req, upstream, target, &headers, deadline).await.map(Some),
        };
        Move { to: upstream, result }
    }

    /// Where a planned move off `from` goes, given the route the policies
    /// chose: `None` to stay, else the slot to prefer (`Some(None)`: the
    /// upstream's least-loaded link).
    fn move_target(&self, from: u32, kind: MoveKind, upstream: usize, preferred: Option<u32>) -> Option<Option<u32>> {
        if Some(upstream) != self.links.upstream_of(from) {
            return Some(preferred);
        }
        match preferred {
            Some(link) if link == from => None,
            Some(link) => Some(Some(link)),
            None if kind == MoveKind::Reroute => None,
            // Leaving a retiring link: anywhere else will do.
            None if self.links.get(from).is_some_and(|l| l.is_retiring()) => {
                Some(Some(self.links.rotation_target(from)?))
            }
            // Least connections; a move that would not narrow the spread
            // (loads changed since the rebalancer asked) is not made.
            None => Some(Some(self.links.relief_for(from)?)),
        }
    }

    /// The upstream and (optionally) the slot a decision names.
    fn target(&self, decision: AssignDecision) -> (usize, Option<u32>) {
        match decision {
            AssignDecision::Route { upstream, link } => (upstream, link.and_then(|l| self.links.slot_of(upstream, l))),
            AssignDecision::Default => (0, None),
        }
    }

    /// The handshake on a link of `upstream` (`preferred`, if it is up).
    async fn handshake(
        &self,
        req: &AdmitRequest,
        upstream: usize,
        mut preferred: Option<u32>,
        headers: &HeaderList,
        deadline: Instant,
    ) -> Result<Admission, AdmitError> {
        // Each retry follows a link loss mid-handshake; there are at most as
        // many distinct links to try as slots.
        for _ in 0..=self.links.len() {
            // A link lost mid-handshake is marked disconnected before its
            // waiters are failed, so the next lease cannot pick it again.
            let lease = self.links.lease_in(upstream, preferred).ok_or(AdmitError::NoUpstream)?;
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
                    let response_headers = result.response_headers;
                    return Ok(Admission { lease, response_headers, ticket: AdmitTicket::none() });
                }
                Ok(Ok(Ok(result))) => return Err(AdmitError::Rejected(result)),
                Ok(Ok(Err(NoResult::Unreadable(why)))) => return Err(AdmitError::BadResult(why)),
                Ok(Ok(Err(NoResult::LinkLost)) | Err(_)) => {
                    tracing::debug!(link = ?lease, "link lost during handshake; trying another");
                    preferred = None;
                }
            }
        }
        Err(AdmitError::NoUpstream)
    }

    /// Runs the `assign` and `forward-headers` phases in one turn of the
    /// policy gate (skipped entirely with no policies, the default relay).
    async fn apply_policies(&self, req: &AdmitRequest) -> Result<(AssignDecision, HeaderList), Refused> {
        let set = self.policies.snapshot();
        if set.is_empty() {
            return Ok((AssignDecision::Default, req.headers.clone()));
        }
        let upstreams = self.links.snapshot();
        let input = req.assign_input(&upstreams);
        self.policies.admit(&set, &input, &req.headers).await
    }
}
