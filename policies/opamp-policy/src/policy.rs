//! What a policy author implements: [`Policy`] to be built from config,
//! plus one trait per hook it takes part in. [`export_policy!`](crate::export_policy)
//! announces exactly the hooks whose traits the type implements, so a hook
//! cannot be written and then silently never called.

use crate::{AdmitVerdict, AssignInput, Direction, Headers, Hooks, Message, Route, SessionEvent, Verdict};

/// A policy, built from its config. Implement it, then at least one of
/// [`Admit`], [`Assign`], [`ForwardHeaders`], [`Filter`] and [`Lifecycle`].
///
/// One value is built per instance, and the gateway keeps a few instances
/// per policy (one per relay thread) and replaces one whenever a call fails.
/// Treat the value as read-only configuration: state kept in it is neither
/// shared between instances nor guaranteed to survive. State shared by all
/// instances goes in the gateway's store: [`state`](mod@crate::state).
pub trait Policy: Sized + Send + Sync + 'static {
    /// Builds the policy from the text of its `<name>.yaml` (empty if there
    /// is none). An `Err` refuses the policy at load, with your message in
    /// the gateway's log.
    fn new(config: &str) -> Result<Self, String>;
}

/// The `admit` hook: lets a connecting agent in, or answers it with an
/// HTTP rejection, before the gateway asks the server anything.
pub trait Admit: Policy {
    /// [`AdmitVerdict::Allow`], or [`AdmitVerdict::reject`] with a status
    /// of 400-599 (not 401: authentication is the server's), and a body of
    /// at most 1 KiB. Asked once per session (not again after a move). An
    /// agent you allow gets exactly one [`Lifecycle::on_disconnect`] (if you
    /// implement it), `not-admitted` when it never got a session.
    fn admit(&self, input: &AssignInput) -> AdmitVerdict;
}

/// The `on-connect` / `on-disconnect` notifications (flag `lifecycle`):
/// called after the fact on a gateway worker, never blocking the relay.
/// Events may be dropped when the gateway is behind: keep counters with a
/// TTL. Both methods default to doing nothing; implement what you need.
pub trait Lifecycle: Policy {
    /// A session started.
    fn on_connect(&self, _event: &SessionEvent) {}
    /// A session ended; `reason` is a close-reason label (`peer`,
    /// `keepalive_timeout`, `shutdown`, ...) or `not-admitted`.
    fn on_disconnect(&self, _event: &SessionEvent, _reason: &str) {}
}

/// The `assign` hook: picks the upstream (and optionally its link) for a
/// connecting agent.
pub trait Assign: Policy {
    /// Which upstream should carry this agent: [`Route::upstream`] (its
    /// least-loaded link), [`Route::default_link`] or `.with_link(i)` (one
    /// link). `None`: no opinion (the next policy decides; with none, the
    /// default upstream's least-loaded link). A route naming an unknown
    /// upstream, or a missing or disconnected link, counts as no opinion.
    ///
    /// The gateway asks again after a policy reload and moves agents whose
    /// answer changed, so answer from `input` alone: same agent, same route.
    fn assign(&self, input: &AssignInput) -> Option<Route>;
}

/// The `forward-headers` hook: rewrites the headers of the connect
/// handshake.
pub trait ForwardHeaders: Policy {
    /// The headers forwarded to the server in the connect handshake; gets
    /// the previous policy's output.
    fn forward_headers(&self, headers: Headers) -> Headers;
}

/// The `filter` hook: judges every relayed message in [`Filter::DIRECTIONS`].
pub trait Filter: Policy {
    /// The directions judged. Name only the one you need: the gateway then
    /// skips the call, and its cost, for the other.
    const DIRECTIONS: Directions = Directions::Both;

    /// One message on its way through. Read only what you need from
    /// `message`: [`Message::has`] and [`Message::field`] are cheap,
    /// [`Message::bytes`] copies the whole message.
    fn filter(&self, direction: Direction, uid: &[u8], message: &Message) -> Verdict;
}

/// The directions a [`Filter`] judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directions {
    /// `AgentToServer` messages only.
    AgentToServer,
    /// `ServerToAgent` messages only.
    ServerToAgent,
    /// Both.
    Both,
}

impl Directions {
    /// The `filter` flags announced for these directions.
    pub const fn hooks(self) -> Hooks {
        match self {
            Directions::AgentToServer => Hooks::FILTER_AGENT_TO_SERVER,
            Directions::ServerToAgent => Hooks::FILTER_SERVER_TO_AGENT,
            Directions::Both => crate::FILTER_BOTH,
        }
    }
}
