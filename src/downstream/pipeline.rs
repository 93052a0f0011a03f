//! The per-message steps both transports share (WebSocket and HTTP), so the
//! two cannot drift apart: agent→server filtering and forwarding, and
//! server→agent capability replay and filtering.
//!
//! The filter phase runs in a turn of the policy [`Gate`]: it may wait
//! (asynchronously) while `policies.concurrency` chains run. With no policy
//! filtering a direction, that direction never reaches the gate.
//!
//! [`Gate`]: crate::policy::gate::Gate

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::Downstream;
use crate::policy::{Direction, FilterOutcome, Transport};
use crate::protocol::wire::{self, Wire};
use crate::protocol::{compose, framing, AgentFrame, InstanceUid};
use crate::relay::{AdmitRequest, AgentShared, CloseReason, Held, Inbound, LinkLease, Outbound, Relay};
use crate::telemetry::metrics as m;

/// Runs the agent→server filter phase. `frame` is what the agent sent if it
/// already is a complete WebSocket payload (forwarded as is when no policy
/// changes it); `None` for HTTP bodies. Returns the frame to forward, or
/// `None` if a policy dropped the message.
pub(crate) async fn upstream_frame(
    relay: &Relay,
    parsed: &AgentFrame,
    frame: Option<Bytes>,
) -> Result<Option<Bytes>, CloseReason> {
    let original = || frame.clone().map(framing::normalized).unwrap_or_else(|| framing::frame(&parsed.payload));
    let set = relay.policies.snapshot();
    // Most messages reach no filter (none, or none wanting their fields):
    // asked here, they skip the gate's future and the payload's clone.
    if !set.filters_message(Direction::AgentToServer, &parsed.payload, 0) {
        return Ok(Some(original()));
    }
    let uid = parsed.uid.as_deref().unwrap_or_default();
    // Boxed: the gate's future would otherwise take room in every agent's
    // task, idle or not; a message that reaches a policy pays far more
    // than one allocation for the call itself.
    let outcome = Box::pin(relay.policies.filter(&set, Direction::AgentToServer, uid, parsed.payload.clone())).await;
    judged(outcome, Direction::AgentToServer, &parsed.payload, original)
}

/// The frame a filter phase's outcome leaves to forward: `unchanged` when
/// the policies gave `payload` back as it was, a new frame around what they
/// replaced it with, `None` (counted) when one dropped it.
fn judged(
    outcome: FilterOutcome,
    direction: Direction,
    payload: &Bytes,
    unchanged: impl FnOnce() -> Bytes,
) -> Result<Option<Bytes>, CloseReason> {
    match outcome {
        // The same buffer, in the common case: no byte compare.
        FilterOutcome::Forward(p) if p.as_ptr() == payload.as_ptr() && p.len() == payload.len() || p == payload => {
            Ok(Some(unchanged()))
        }
        FilterOutcome::Forward(p) => Ok(Some(framing::frame(&p))),
        FilterOutcome::Drop => {
            let label = match direction {
                Direction::AgentToServer => m::UPSTREAM,
                Direction::ServerToAgent => m::DOWNSTREAM,
            };
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => label, "reason" => "policy").increment(1);
            Ok(None)
        }
        FilterOutcome::Close => Err(CloseReason::Policy),
    }
}

/// Queues a frame on the agent's link. Waiting here is the back-pressure a
/// slow server exerts. If the link has died, the frame waits with the agent
/// until it has a new one. `held`, its share of the buffer budget, goes with it,
/// grown first if a policy made the frame larger than what was read.
pub(crate) async fn send_up(lease: &LinkLease, agent: &Arc<AgentShared>, frame: Bytes, received: Instant, held: Held) {
    let held = held.cover(frame.len()).await;
    if lease.is_stale() {
        agent.hand_back(frame, held);
        return;
    }
    let out = Outbound { frame, generation: lease.generation(), agent: Some(agent.clone()), received, held };
    if lease.link().send(out).await.is_err() {
        // The link task is gone: the gateway is shutting down.
        metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "shutdown").increment(1);
    }
}

/// Re-sends frames a dead link handed back, on the agent's current link.
pub(crate) async fn resend_returned(lease: &LinkLease, agent: &Arc<AgentShared>) {
    if lease.is_stale() {
        return; // the agent moves first
    }
    for (frame, held) in agent.take_returned() {
        send_up(lease, agent, frame, Instant::now(), held).await;
    }
}

/// Prepares a server message for its agent: replays the link's custom
/// capabilities into the agent's first message, then runs the filter phase.
/// Returns the frame (with header) to deliver, or `None` if dropped.
pub(crate) async fn downstream_frame(
    relay: &Relay,
    agent: &AgentShared,
    msg: &Inbound,
) -> Result<Option<Bytes>, CloseReason> {
    let frame = replayed_frame(relay, agent, msg);
    let set = relay.policies.snapshot();
    if !set.filters(Direction::ServerToAgent) {
        return Ok(Some(frame));
    }
    let payload = framing::payload(&frame).unwrap_or_default();
    // The message's own uid: on a chained gateway's link, or after the
    // server assigned a new uid, it is not the connection's first.
    let uid = match wire::last(&payload, wire::field::INSTANCE_UID) {
        Some(Wire::Bytes(u)) => u,
        _ => &[],
    };
    // Boxed, as in `upstream_frame`.
    let outcome = Box::pin(relay.policies.filter(&set, Direction::ServerToAgent, uid, payload.clone())).await;
    judged(outcome, Direction::ServerToAgent, &payload, || frame)
}

/// The part of [`downstream_frame`] before the filter phase, which the
/// express lane runs alone (it is taken only with no filter to run): the
/// link's custom capabilities replayed into the agent's first message, and
/// `capabilities` on its first reply. Claims those firsts: call it only for
/// a message that will be delivered.
pub(crate) fn replayed_frame(relay: &Relay, agent: &AgentShared, msg: &Inbound) -> Bytes {
    let mut frame = msg.frame.clone();
    if msg.has_capabilities {
        agent.capabilities_delivered();
    } else if let Some(caps) = relay.links.get(msg.link).and_then(|l| l.capabilities()) {
        if agent.claim_capabilities() {
            let payload = framing::payload(&frame).unwrap_or_default();
            frame = compose::with_custom_capabilities(&payload, &caps);
            metrics::counter!(m::CAPABILITIES_REPLAYED).increment(1);
        }
    }
    if agent.claim_first_reply() {
        // The spec requires `capabilities` on the first ServerToAgent; a
        // server that relies on its stream's first message having had them
        // never sent them to this agent.
        let payload = framing::payload(&frame).unwrap_or_default();
        if wire::last(&payload, wire::field::server::CAPABILITIES).is_none() {
            let caps = relay.links.get(msg.link).map_or(compose::ACCEPTS_STATUS, |l| l.server_capabilities());
            frame = compose::with_capabilities(&payload, caps);
        }
    }
    frame
}

/// How long the gateway's goodbye on an agent's behalf may wait for room.
const REPORT_GONE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the server that `uid` left without `agent_disconnect`: behind a
/// gateway the server's stream stays open, so it cannot notice on its own.
/// Skipped when the link itself died (the server forgot that stream's agents).
pub(crate) async fn report_gone(lease: &LinkLease, uid: &InstanceUid) {
    if lease.is_stale() {
        return;
    }
    let out = Outbound {
        frame: compose::agent_disconnect(uid),
        generation: lease.generation(),
        agent: None,
        received: Instant::now(),
        held: Held::default(),
    };
    if tokio::time::timeout(REPORT_GONE_TIMEOUT, lease.link().send(out)).await.is_ok_and(|r| r.is_ok()) {
        metrics::counter!(m::SYNTHESIZED_DISCONNECTS).increment(1);
        tracing::debug!(%uid, "reported vanished agent upstream");
    } else {
        metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "synthesized_disconnect")
            .increment(1);
    }
}

/// `telemetry.capture`: what an agent sent, before any policy ran.
pub(crate) fn capture_up(ds: &Downstream, parsed: &AgentFrame, transport: Transport) {
    if ds.capture.is_enabled() {
        let uid = parsed.uid.as_deref().unwrap_or_default();
        ds.capture.message(Direction::AgentToServer.as_str(), transport_name(transport), uid, &parsed.payload);
    }
}

/// `telemetry.capture`: what the server sent an agent (`frame` with its
/// header), before any policy ran.
pub(crate) fn capture_down(ds: &Downstream, frame: &Bytes, transport: Transport) {
    if ds.capture.is_enabled() {
        let payload = framing::payload(frame).unwrap_or_default();
        let uid = match wire::last(&payload, wire::field::INSTANCE_UID) {
            Some(Wire::Bytes(u)) => u,
            _ => &[],
        };
        ds.capture.message(Direction::ServerToAgent.as_str(), transport_name(transport), uid, &payload);
    }
}

/// `telemetry.capture`: a connect handshake's headers (as the server is
/// shown them) and outcome.
pub(crate) fn capture_connect(ds: &Downstream, admit: &AdmitRequest, accepted: bool) {
    ds.capture.connect(transport_name(admit.transport), &admit.remote_addr, &admit.headers, accepted);
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::WebSocket => "websocket",
        Transport::Http => "http",
    }
}

/// Records a message delivered to an agent.
pub(crate) fn delivered(len: usize, received: Instant) {
    let relayed = m::relayed(m::DOWNSTREAM);
    relayed.messages.increment(1);
    relayed.bytes.increment(len as u64);
    relayed.latency.record(received.elapsed().as_secs_f64());
}
