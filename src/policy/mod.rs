//! Hook points, pingora-style: each phase has a name and a clear default.
//!
//! | phase             | when                                      | default (no policy)                  |
//! |-------------------|-------------------------------------------|--------------------------------------|
//! | `admit`           | an agent connects, before the handshake   | allow                                |
//! | `assign`          | an agent connects: which upstream, link   | default upstream, least-connections  |
//! | `forward-headers` | building the connect handshake            | forward every header                 |
//! | `filter`          | every message, in announced directions    | forward unchanged                    |
//! | `on-connect`, `on-disconnect` | a session starts / ends (after the fact, off the relay's path) | nothing |
//!
//! A [`Policy`] may implement any subset. Policies are applied as an ordered
//! chain ([`PolicySet`]); the relay only ever sees the chain, through
//! [`Policies`], an atomically swappable snapshot. The Wasm host
//! ([`wasm`]) is one implementation of [`Policy`]; the relay never names it.
//!
//! Public: the [`Policy`] trait and its types, the chain ([`PolicySet`],
//! [`Policies`]: a policy author runs it as the relay does), [`config`],
//! [`runtime`] and [`wasm`]. The rest is the chain's machinery.
//!
//! Modules:
//! - `set`: the chain, its failure modes and the caps on what a policy's
//!   answer may make the gateway do;
//! - `breaker`: the per-policy circuit breaker (quarantine, half-open);
//! - `gate`: how many policy calls run at once on the relay's workers;
//! - [`filter_fields`]: the top-level fields a policy's `filter` is called
//!   for (`filter_agent_to_server` / `filter_server_to_agent` in its YAML),
//!   so heartbeats skip policies that never read them;
//! - [`visible_headers`]: the agent headers a policy's hooks are shown
//!   (`visible_headers` in its YAML), granted by the operator;
//! - `verdict`: host-side checks of answers (`replace` keeps the uid,
//!   `set-field` never touches it, headers are valid HTTP);
//! - `throttle`: rate limits on a policy's log lines;
//! - `health`: whether the policy directory is being served as configured;
//! - `state`: the per-policy shared store and clock of WIT 0.3.0;
//! - `lifecycle`: session events queued to a worker, dropped when it lags;
//! - [`config`], [`runtime`]: loading, watching and swapping the set;
//! - [`wasm`]: the WebAssembly host (cargo feature `wasm`, on by default).

pub(crate) mod breaker;
pub mod config;
pub mod filter_fields;
pub(crate) mod gate;
pub(crate) mod health;
pub(crate) mod lifecycle;
/// `policy replay`: a policy over a `telemetry.capture` file, offline.
#[cfg(feature = "wasm")]
pub mod replay;
pub mod runtime;
pub(crate) mod set;
/// The Wasm host's `host.state-*` store.
#[cfg(feature = "wasm")]
pub(crate) mod state;
pub(crate) mod throttle;
#[cfg(fuzzing)]
pub mod verdict;
#[cfg(not(fuzzing))]
pub(crate) mod verdict;
pub mod visible_headers;
/// Without the `wasm` feature only its error type and WIT names remain.
pub mod wasm;

use bytes::Bytes;

pub use config::{BreakerConfig, PoliciesConfig, PolicyLimits};
pub use gate::Gate;
pub use health::PolicyHealth;
pub use lifecycle::{AdmitTicket, Lifecycle};
pub use set::{AdmitOutcome, AssignDecision, Containment, FilterOutcome, Policies, PolicySet, Refused};

/// Header list as `(name, value)` pairs, names lower-case, in request order.
pub type HeaderList = Vec<(String, String)>;

/// How an agent reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Http,
}

/// One upstream link as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    /// Agents currently assigned to this link.
    pub load: u32,
    pub connected: bool,
}

/// The name of the upstream configured under `server:`.
pub const DEFAULT_UPSTREAM: &str = "default";

/// One upstream (`server`, or an entry of `upstreams`) as a policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    pub name: String,
    /// Its links in index order; indices count from 0 within the upstream.
    pub links: Vec<LinkInfo>,
}

/// Input of the `assign` phase.
#[derive(Debug, Clone, Copy)]
pub struct AssignInput<'a> {
    pub headers: &'a [(String, String)],
    pub remote_addr: &'a str,
    pub transport: Transport,
    /// Every upstream, the default (`server`) first.
    pub upstreams: &'a [UpstreamInfo],
}

impl AssignInput<'_> {
    /// The default upstream's links: all that a policy built against WIT
    /// 0.2.0 sees.
    pub fn links(&self) -> &[LinkInfo] {
        self.upstreams.first().map_or(&[], |u| &u.links)
    }
}

/// An `assign` answer: an upstream and, optionally, one of its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None`: the default upstream.
    pub upstream: Option<String>,
    /// `None`: the upstream's least-loaded link.
    pub link: Option<u32>,
}

impl Route {
    /// Link `index` of the default upstream (a WIT 0.2.0 answer).
    pub fn default_link(index: u32) -> Self {
        Self { upstream: None, link: Some(index) }
    }

    /// The upstream named `name`, least-loaded link.
    pub fn upstream(name: impl Into<String>) -> Self {
        Self { upstream: Some(name.into()), link: None }
    }

    /// The same upstream, link `index` of it.
    pub fn with_link(self, index: u32) -> Self {
        Self { link: Some(index), ..self }
    }
}

/// Which way a message is travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AgentToServer,
    ServerToAgent,
}

impl Direction {
    /// 0 or 1, for per-direction arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Direction::AgentToServer => 0,
            Direction::ServerToAgent => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AgentToServer => "agent_to_server",
            Direction::ServerToAgent => "server_to_agent",
        }
    }
}

/// A filter's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
    /// Forward these bytes (a complete protobuf, no WebSocket header) instead.
    Replace(Bytes),
    /// Close the agent's session.
    Close,
}

/// Largest `admit` rejection body, bytes.
pub const MAX_REJECTION_BODY: usize = 1024;

/// An `admit` refusal: the HTTP answer the agent gets instead of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400-599, never 401 (checked by the chain).
    pub status: u16,
    pub headers: HeaderList,
    pub body: String,
}

/// An `admit` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitVerdict {
    Allow,
    Reject(Rejection),
}

/// One agent session, as `on-connect` and `on-disconnect` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// 0 for `not-admitted`.
    pub session: u64,
    pub uid: Option<Bytes>,
    pub headers: HeaderList,
    pub remote_addr: String,
    pub transport: Transport,
    /// Empty for `not-admitted`.
    pub upstream: String,
}

/// The `on-disconnect` reason of an agent a policy admitted that never got
/// a session.
pub const NOT_ADMITTED: &str = "not-admitted";

/// Whether a policy's verdicts are applied (`mode:` in its YAML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    /// Called as usual; verdicts only counted and logged at debug.
    Shadow,
}

/// What a policy failure means for the traffic it was judging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Skip the policy for this call (availability first).
    #[default]
    Open,
    /// Drop the message / refuse the agent with 503 (safety first).
    Closed,
}

/// Why one hook call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its time budget")]
    Timeout,
    #[error("exceeded its memory limit")]
    Memory,
    #[error("returned an invalid answer: {0}")]
    Invalid(String),
    /// Not called: its circuit breaker has it quarantined.
    #[error("is quarantined after repeated failures")]
    Quarantined,
    /// Not called: `policies.queue` callers were already waiting for a turn.
    #[error("was not called: too many policy calls waiting (policies.queue)")]
    Overloaded,
}

impl HookError {
    /// Label for the `kind` metric dimension.
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::Trap(_) => "trap",
            HookError::Timeout => "timeout",
            HookError::Memory => "memory",
            HookError::Invalid(_) => "invalid",
            HookError::Quarantined => "quarantined",
            HookError::Overloaded => "overloaded",
        }
    }
}

/// One policy. Every method has the no-opinion default, so an implementation
/// overrides only the phases it cares about and reports them in `hooks`.
pub trait Policy: Send + Sync + 'static {
    fn name(&self) -> &str;

    fn failure_mode(&self) -> FailureMode {
        FailureMode::Open
    }

    /// Which phases this policy implements (so the chain skips the others).
    fn hooks(&self) -> Hooks;

    /// Its own circuit-breaker settings; `None`: `policies.quarantine`.
    fn quarantine(&self) -> Option<BreakerConfig> {
        None
    }

    /// `Shadow`: called as usual, its verdicts are counted, never applied.
    fn mode(&self) -> Mode {
        Mode::Enforce
    }

    /// Before the handshake, with what `assign` sees.
    fn admit(&self, _input: &AssignInput<'_>) -> Result<AdmitVerdict, HookError> {
        Ok(AdmitVerdict::Allow)
    }

    /// `Ok(None)`: no opinion (the next policy, then the default upstream's
    /// least-loaded link, decides).
    fn assign(&self, _input: &AssignInput<'_>) -> Result<Option<Route>, HookError> {
        Ok(None)
    }

    /// The headers the connect handshake carries upstream. Borrowed: the
    /// chain keeps the input for a policy that fails open or runs in
    /// shadow, and a Wasm policy lowers it into the guest without a copy.
    fn forward_headers(&self, headers: &[(String, String)]) -> Result<HeaderList, HookError> {
        Ok(headers.to_vec())
    }

    /// `message` is the bare protobuf (no WebSocket header).
    fn filter(&self, _dir: Direction, _uid: &[u8], _message: &Bytes) -> Result<Verdict, HookError> {
        Ok(Verdict::Forward)
    }

    /// The top-level fields (bit `n`: field `n`) a message travelling `dir`
    /// must carry one of for [`filter`](Self::filter) to be called; `None`
    /// (the default): every message. See [`filter_fields`]. Asked once,
    /// when a [`PolicySet`] is built.
    fn filter_fields(&self, _dir: Direction) -> Option<filter_fields::FieldSet> {
        None
    }

    /// A session started (called on the lifecycle worker).
    fn on_connect(&self, _event: &SessionEvent) -> Result<(), HookError> {
        Ok(())
    }

    /// A session ended, or an admitted agent got none ([`NOT_ADMITTED`]).
    fn on_disconnect(&self, _event: &SessionEvent, _reason: &str) -> Result<(), HookError> {
        Ok(())
    }
}

/// The phases a policy implements. `filter` is announced per direction, so
/// a policy that only judges one direction is never called for the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    pub assign: bool,
    pub forward_headers: bool,
    pub filter_agent_to_server: bool,
    pub filter_server_to_agent: bool,
    pub admit: bool,
    /// `on-connect` and `on-disconnect`.
    pub lifecycle: bool,
}

impl Hooks {
    /// `filter` in both directions.
    pub const FILTER: Hooks = Hooks {
        assign: false,
        forward_headers: false,
        filter_agent_to_server: true,
        filter_server_to_agent: true,
        admit: false,
        lifecycle: false,
    };

    /// Whether `filter` is to be called for messages travelling `dir`.
    pub fn filters(&self, dir: Direction) -> bool {
        match dir {
            Direction::AgentToServer => self.filter_agent_to_server,
            Direction::ServerToAgent => self.filter_server_to_agent,
        }
    }

    /// The WIT names of the announced hooks, in WIT order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.assign, "assign"),
            (self.forward_headers, "forward-headers"),
            (self.filter_agent_to_server, "filter-agent-to-server"),
            (self.filter_server_to_agent, "filter-server-to-agent"),
            (self.admit, "admit"),
            (self.lifecycle, "lifecycle"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}
