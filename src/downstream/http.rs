//! OpAMP over plain HTTP: each `POST` carries one `AgentToServer` and is
//! answered with one `ServerToAgent`, over the same upstream pool as the
//! WebSocket agents.
//!
//! An HTTP agent has no connection to hold its state, so the gateway keeps a
//! small record per uid ([`HttpAgent`]): its link lease, its queue of server
//! messages waiting for the next poll, and when it was last authenticated.
//! - The connect handshake runs on the first poll, again when the agent's
//!   headers change, when its link died, and at least every
//!   `auth_cache_ttl` — so a revoked credential stops working within that time.
//! - Each poll waits up to `response_wait` for the server's reply; otherwise
//!   it gets an empty `ServerToAgent` carrying its uid. Messages that arrive
//!   between polls wait in the agent's queue and go out on the next polls.
//! - An agent silent for `idle_timeout` is forgotten and reported upstream
//!   with a synthesized `agent_disconnect`; one that sends its own goodbye is
//!   released at once.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::headers::{forwarded_headers, list_elements};
use super::respond::{plain, refuse, Body};
use super::session::upstream_name;
use super::trust::PeerCertificate;
use super::uid_guard::Refusal;
use super::{pipeline, Downstream};
use crate::policy::lifecycle::SessionTicket;
use crate::policy::Transport;
use crate::protocol::{compose, framing, handshake, AgentFrame, InstanceUid};
use crate::relay::agent::Inbox;
use crate::relay::{budget, AdmitError, AdmitRequest, AgentShared, Claimed, CloseReason, Held, Identity, LinkLease};
use crate::telemetry::metrics as m;

pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// Settings of the HTTP transport (`listener.http`).
#[derive(Debug, Clone)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct HttpSettings {
    pub enabled: bool,
    pub response_wait: Duration,
    pub idle_timeout: Duration,
    pub auth_cache_ttl: Duration,
    pub queue_size: usize,
}

/// One HTTP agent between polls.
pub(crate) struct HttpAgent {
    uid: InstanceUid,
    shared: Arc<AgentShared>,
    /// Server messages waiting for the next poll. The async lock also keeps
    /// concurrent polls of one agent from taking each other's replies.
    inbox: tokio::sync::Mutex<Inbox>,
    state: Mutex<AgentState>,
    /// The policies' `on-disconnect` when it is released.
    lifecycle: Mutex<SessionTicket>,
}

struct AgentState {
    lease: Arc<LinkLease>,
    authenticated: Instant,
    headers_digest: [u8; 32],
    last_poll: Instant,
    /// It moved to another link: ask it for its full state in the next reply.
    full_state_due: bool,
}

/// All HTTP agents, by uid.
#[derive(Default)]
pub(crate) struct HttpAgents {
    map: Mutex<HashMap<Bytes, Arc<HttpAgent>>>,
}

impl HttpAgents {
    fn get(&self, uid: &InstanceUid) -> Option<Arc<HttpAgent>> {
        self.map.lock().get(uid.as_bytes()).cloned()
    }

    /// Removes the agent if it is still the registered one.
    fn remove(&self, agent: &Arc<HttpAgent>) -> bool {
        let removed = {
            let mut map = self.map.lock();
            let ours = map.get(agent.uid.as_bytes()).is_some_and(|a| Arc::ptr_eq(a, agent));
            ours && map.remove(agent.uid.as_bytes()).is_some()
        };
        // Outside the lock: the recorder may take locks of its own.
        if removed {
            metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "http").decrement(1.0);
        }
        removed
    }

    fn idle(&self, now: Instant, idle_timeout: Duration) -> Vec<Arc<HttpAgent>> {
        let map = self.map.lock();
        map.values().filter(|a| now.duration_since(a.state.lock().last_poll) > idle_timeout).cloned().collect()
    }
}

/// Handles one `POST`.
pub(crate) async fn handle(ds: Arc<Downstream>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    if !ds.settings.http.enabled {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "OpAMP over plain HTTP is disabled here (listener.http.enabled)");
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(PROTOBUF) {
        return refused(
            "content_type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type: {PROTOBUF}"),
        );
    }
    let gzip_in = header_has(&req, CONTENT_ENCODING, "gzip");
    let gzip_out = header_has(&req, ACCEPT_ENCODING, "gzip");
    let headers = forwarded_headers(req.headers());
    let peer_cert = req.extensions().get::<PeerCertificate>().cloned();
    let max = ds.settings.max_message_size;
    // A declared length over the limit is refused before reading a byte.
    // (gzip bodies are checked again after decompression.)
    let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    // The body's share of listener.max_buffered_bytes, taken before reading
    // it when its length is declared (topped up below if it grows). A poll
    // cannot wait for room the way a socket can, so no room is a 503.
    let budget = &ds.relay.budget;
    let mut held = match declared.map(|n| budget.try_take(n as usize)) {
        Some(Some(held)) => held,
        Some(None) => return over_budget(&ds),
        None => Held::default(),
    };

    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(max),
        Err(_) => return refused("protocol_error", StatusCode::BAD_REQUEST, "could not read the request body"),
    };
    let body = if gzip_in {
        match gunzip(&body, max) {
            Ok(Some(b)) => b,
            Ok(None) => return too_large(max),
            Err(e) => return refused("protocol_error", StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")),
        }
    } else {
        body
    };
    if let Some(more) = body.len().checked_sub(held.bytes()).filter(|&n| n > 0) {
        match budget.try_take(more) {
            Some(h) => held.merge(h),
            None => return over_budget(&ds),
        }
    }
    let parsed = match AgentFrame::parse_payload(body) {
        Ok(p) => p,
        Err(e) => {
            return refused("protocol_error", StatusCode::BAD_REQUEST, format!("not an AgentToServer protobuf: {e}"))
        }
    };
    let uid = match InstanceUid::parse(parsed.uid.clone()) {
        Ok(u) => u,
        Err(e) => return refused("protocol_error", StatusCode::BAD_REQUEST, e.to_string()),
    };
    // HTTP agents are never gateways: they speak for themselves only.
    if parsed.custom_message().is_some_and(|m| m.capability == handshake::CAPABILITY) {
        Refusal::ForgedHandshake.record(0, &remote.to_string(), "http");
        return plain(StatusCode::FORBIDDEN, Refusal::ForgedHandshake.to_string());
    }

    let agent = match admitted(&ds, &uid, headers, peer_cert.as_ref(), remote).await {
        Ok(a) => a,
        Err(Polled::Refused(e)) => return refuse(&ds, e, remote, Transport::Http),
        Err(Polled::UidInUse) => {
            Refusal::UidInUse.record(0, &remote.to_string(), "http");
            metrics::counter!(m::AGENTS_CLOSED, "reason" => CloseReason::UidInUse.as_str(), "transport" => "http")
                .increment(1);
            return plain(StatusCode::CONFLICT, Refusal::UidInUse.to_string());
        }
    };
    let lease = agent.lease();
    let received = Instant::now();
    pipeline::resend_returned(&lease, &agent.shared).await;
    pipeline::capture_up(&ds, &parsed, Transport::Http);
    match pipeline::upstream_frame(&ds.relay, &parsed, None).await {
        Ok(Some(frame)) => pipeline::send_up(&lease, &agent.shared, frame, received, held).await,
        Ok(None) => {}
        Err(_) => {
            release(&ds, &agent, false).await;
            return plain(StatusCode::FORBIDDEN, "closed by gateway policy");
        }
    }
    if parsed.disconnect {
        release(&ds, &agent, true).await;
        return reply(compose::empty_reply(uid.as_bytes(), lease.link().server_capabilities()), gzip_out);
    }
    let mut frame = next_reply(&ds, &agent).await;
    let full_state_due = {
        let mut st = agent.state.lock();
        st.last_poll = Instant::now();
        std::mem::take(&mut st.full_state_due)
    };
    if full_state_due {
        frame = compose::with_flags(&framing::payload(&frame).unwrap_or_default(), compose::REPORT_FULL_STATE);
        metrics::counter!(m::FULL_STATE_REQUESTS).increment(1);
    }
    reply(frame, gzip_out)
}

/// Why a poll was not admitted.
enum Polled {
    /// The handshake failed: answered with the server's (or our) status.
    Refused(AdmitError),
    /// The uid belongs to a live agent with other credentials.
    UidInUse,
}

/// The agent's record, running the connect handshake when it is new, its
/// headers changed, its link died or its authentication is older than the TTL.
///
/// A uid belongs to the agent that first polled with it, as on WebSocket:
/// a poll naming a live agent's uid with other credentials is refused before
/// the server is asked anything, so one agent can neither read another's
/// queued messages nor make the server test credentials for it.
async fn admitted(
    ds: &Arc<Downstream>,
    uid: &InstanceUid,
    headers: Vec<(String, String)>,
    peer_cert: Option<&PeerCertificate>,
    remote: SocketAddr,
) -> Result<Arc<HttpAgent>, Polled> {
    let digest = digest(&headers, peer_cert);
    let identity = Identity::agent(ds.settings.gateways.credential(&headers, peer_cert));
    let existing = ds.http.get(uid);
    if let Some(agent) = &existing {
        if !agent.shared.closing().is_cancelled() && agent.shared.identity().credential != identity.credential {
            return Err(Polled::UidInUse);
        }
        let fresh = {
            let st = agent.state.lock();
            st.headers_digest == digest
                && !st.lease.is_stale()
                && st.authenticated.elapsed() < ds.settings.http.auth_cache_ttl
        };
        if fresh && !agent.shared.closing().is_cancelled() {
            return Ok(agent.clone());
        }
    }
    let request = AdmitRequest { headers, remote_addr: remote.to_string(), transport: Transport::Http };
    let started = Instant::now();
    // `admit` is asked when the agent is new, not when it re-authenticates.
    let admission = match &existing {
        Some(a) if !a.shared.closing().is_cancelled() => ds.relay.admit(&request).await,
        _ => ds.relay.admit_new(&request).await,
    };
    metrics::histogram!(m::HANDSHAKE_SECONDS).record(started.elapsed().as_secs_f64());
    pipeline::capture_connect(ds, &request, admission.is_ok());
    let admission = match admission {
        Ok(a) => a,
        Err(e) => {
            // A revoked credential ends the agent's session: the same headers
            // it was admitted with are now refused. Different headers that
            // are refused end nothing: they may not be the agent's at all.
            if let (Some(agent), AdmitError::Rejected(_)) = (&existing, &e) {
                let same_headers = agent.state.lock().headers_digest == digest;
                if same_headers {
                    release(ds, agent, false).await;
                }
            }
            return Err(Polled::Refused(e));
        }
    };
    metrics::counter!(m::HANDSHAKES, "outcome" => "accepted", "status" => "200", "transport" => "http").increment(1);
    let now = Instant::now();
    let ticket = admission.ticket;
    let mut state = AgentState {
        lease: Arc::new(admission.lease),
        authenticated: now,
        headers_digest: digest,
        last_poll: now,
        full_state_due: false,
    };
    match existing {
        // Same agent, re-authenticated (and possibly moved): keep its queue.
        Some(agent) if !agent.shared.closing().is_cancelled() => {
            // Re-authenticated onto another upstream (the policies route it
            // elsewhere now): the old server is told it left.
            let left = {
                let mut st = agent.state.lock();
                let moved = st.lease.is_stale() || st.lease.index() != state.lease.index();
                state.full_state_due = st.full_state_due || moved;
                let left = (st.lease.link().upstream != state.lease.link().upstream).then(|| st.lease.clone());
                *st = state;
                left
            };
            if let Some(old) = left {
                pipeline::report_gone(&old, &agent.uid).await;
            }
            Ok(agent)
        }
        stale => {
            if let Some(old) = stale {
                release(ds, &old, true).await; // its queue overflowed: start afresh
            }
            let (shared, inbox) =
                AgentShared::new(ds.next_id(), ds.settings.http.queue_size, ds.relay.settings.failover_queue, identity);
            let upstream = upstream_name(&ds.relay, &state.lease);
            // The agent outlives this poll: its uid gets bytes of its own,
            // not a slice keeping the request body.
            let uid = uid.detached();
            let agent = Arc::new(HttpAgent {
                uid: uid.clone(),
                shared,
                inbox: tokio::sync::Mutex::new(inbox),
                state: Mutex::new(state),
                lifecycle: Mutex::new(SessionTicket::default()),
            });
            // Decided under the map lock; counted after it is released.
            let claimed = {
                let mut map = ds.http.map.lock();
                match map.get(uid.as_bytes()) {
                    // A concurrent poll registered first: it is this agent
                    // only if it has the same credentials.
                    Some(racer) if racer.shared.identity().credential == identity.credential => {
                        return Ok(racer.clone());
                    }
                    Some(_) => return Err(Polled::UidInUse),
                    None => match ds.relay.routes.claim(uid.as_bytes(), &agent.shared) {
                        Ok(claimed) => {
                            map.insert(uid.as_bytes().clone(), agent.clone());
                            claimed
                        }
                        Err(_) => return Err(Polled::UidInUse), // a WebSocket agent owns it
                    },
                }
            };
            // Registered: its session begins (a ticket dropped on the paths
            // above tells the policies it never got one).
            let session = ticket.start(agent.shared.id, Some(uid.as_bytes().clone()), upstream);
            *agent.lifecycle.lock() = session;
            if let Claimed::TookOver(old) = claimed {
                old.close(CloseReason::Superseded);
                metrics::counter!(m::UID_TAKEOVERS).increment(1);
            }
            metrics::gauge!(m::CONNECTIONS, "direction" => m::DOWNSTREAM, "transport" => "http").increment(1.0);
            Ok(agent)
        }
    }
}

impl HttpAgent {
    fn lease(&self) -> Arc<LinkLease> {
        self.state.lock().lease.clone()
    }

    fn empty_reply(&self) -> Bytes {
        compose::empty_reply(self.uid.as_bytes(), self.lease().link().server_capabilities())
    }
}

/// The first deliverable server message within `response_wait`, or an empty
/// reply naming the agent.
async fn next_reply(ds: &Downstream, agent: &HttpAgent) -> Bytes {
    let deadline = Instant::now() + ds.settings.http.response_wait;
    let mut inbox = agent.inbox.lock().await;
    loop {
        let msg = match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(msg)) => msg,
            _ => return agent.empty_reply(),
        };
        pipeline::capture_down(ds, &msg.frame, Transport::Http);
        match pipeline::downstream_frame(&ds.relay, &agent.shared, &msg).await {
            Ok(Some(frame)) => {
                pipeline::delivered(frame.len(), msg.received);
                return frame;
            }
            Ok(None) => continue, // dropped by a policy: wait for the next
            Err(_) => return agent.empty_reply(),
        }
    }
}

/// Forgets an agent; reports it upstream unless it said goodbye itself.
async fn release(ds: &Downstream, agent: &Arc<HttpAgent>, said_goodbye: bool) {
    if !ds.http.remove(agent) {
        return;
    }
    // Still ours? A newer connection with the same credentials may have
    // taken the uid over; it is alive, so no goodbye for it.
    let owned = ds.relay.routes.remove(agent.uid.as_bytes(), agent.shared.id);
    for alias in agent.shared.take_aliases() {
        ds.relay.routes.remove(&alias, agent.shared.id);
    }
    agent.shared.close(CloseReason::Peer);
    if owned && !said_goodbye {
        let lease = agent.lease();
        pipeline::report_gone(&lease, &agent.uid).await;
    }
    let reason = if said_goodbye { CloseReason::Peer } else { CloseReason::Dead };
    let upstream = upstream_name(&ds.relay, &agent.lease());
    std::mem::take(&mut *agent.lifecycle.lock()).end(reason.as_str(), None, Some(upstream));
    metrics::counter!(m::AGENTS_CLOSED, "reason" => reason.as_str(), "transport" => "http").increment(1);
}

/// Forgets agents that stopped polling. Runs until shutdown.
pub(crate) async fn reap_idle(ds: Arc<Downstream>) {
    let idle_timeout = ds.settings.http.idle_timeout;
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = ds.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for agent in ds.http.idle(Instant::now(), idle_timeout) {
            tracing::debug!(uid = %agent.uid, "HTTP agent stopped polling; reporting it gone");
            release(&ds, &agent, false).await;
        }
    }
    // Shutting down: every HTTP agent leaves this gateway.
    let all: Vec<_> = ds.http.map.lock().values().cloned().collect();
    for agent in all {
        release(&ds, &agent, false).await;
    }
}

fn reply(frame: Bytes, gzip: bool) -> Response<Body> {
    let payload = framing::payload(&frame).unwrap_or_default();
    let mut builder = Response::builder().status(StatusCode::OK).header(CONTENT_TYPE, PROTOBUF);
    let body = if gzip {
        builder = builder.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut enc = GzEncoder::new(Vec::with_capacity(payload.len() / 2 + 32), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &payload).expect("writing to a Vec cannot fail");
        Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
    } else {
        payload
    };
    builder.body(Body::new(body)).expect("valid response")
}

/// Decompresses at most `max` bytes; `Ok(None)` if the result is larger.
fn gunzip(body: &[u8], max: usize) -> std::io::Result<Option<Bytes>> {
    let mut out = Vec::new();
    GzDecoder::new(body).take(max as u64 + 1).read_to_end(&mut out)?;
    Ok((out.len() <= max).then(|| Bytes::from(out)))
}

/// No room in `listener.max_buffered_bytes`: 503 with `Retry-After`,
/// counted, and logged at most once per interval.
fn over_budget(ds: &Downstream) -> Response<Body> {
    let budget = &ds.relay.budget;
    if let Some(suppressed) = budget.log_refusal() {
        tracing::warn!(
            in_flight = budget.in_flight(),
            max_buffered_bytes = budget.capacity(),
            suppressed,
            "HTTP agent polls refused with 503: listener.max_buffered_bytes is full (logged at most every {:?})",
            budget::REFUSAL_LOG_INTERVAL
        );
    }
    let mut r = refused("buffer_budget", StatusCode::SERVICE_UNAVAILABLE, "the gateway's message buffers are full");
    let secs = ds.settings.retry_after.as_secs().max(1).to_string();
    r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
    r
}

fn too_large(max: usize) -> Response<Body> {
    refused("message_too_big", StatusCode::PAYLOAD_TOO_LARGE, format!("message larger than the limit of {max} bytes"))
}

/// A poll refused for what it is (size, type, malformed body): counted as a
/// dropped agent message with `reason`; the volume is in the counter, so
/// nothing is logged above debug.
fn refused(reason: &'static str, status: StatusCode, text: impl Into<String>) -> Response<Body> {
    metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => reason).increment(1);
    let text = text.into();
    tracing::debug!(status = status.as_u16(), reason, %text, "HTTP agent request refused");
    plain(status, text)
}

/// Whether a `name` list names `token`, parameters (`;q=..`) ignored.
fn header_has<B>(req: &Request<B>, name: http::HeaderName, token: &str) -> bool {
    list_elements(req.headers(), name)
        .any(|t| t.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(token))
}

/// What decides whether a poll must be re-authenticated: a SHA-256 over
/// the sorted headers, so two header sets cannot be made to collide.
fn digest(headers: &[(String, String)], peer_cert: Option<&PeerCertificate>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<_> = headers
        .iter()
        // Per-request noise must not force a new handshake on every poll.
        .filter(|(k, _)| !matches!(k.as_str(), "content-length" | "content-encoding" | "accept-encoding" | "date"))
        .collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (k, v) in sorted {
        for part in [k.as_bytes(), v.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    if let Some(cert) = peer_cert {
        h.update(b"client-cert");
        h.update(cert.0.as_ref());
    }
    h.finalize().into()
}
