//! Every metric the gateway records, named in one place.
//!
//! The first four mirror the reference extension's instruments
//! (`opampgateway.connections`, `.messages`, `.messages.bytes`,
//! `.messages.latency`, each with `direction` = upstream|downstream) in
//! Prometheus spelling, so existing dashboards translate one to one.

/// Gauge: open connections. `direction`: upstream (links) | downstream (agents).
pub const CONNECTIONS: &str = "opampgateway_connections";
/// Counter: relayed messages. `direction`: upstream (agent→server) | downstream.
pub const MESSAGES: &str = "opampgateway_messages_total";
/// Counter: relayed bytes, same labels as [`MESSAGES`].
pub const MESSAGE_BYTES: &str = "opampgateway_message_bytes_total";
/// Histogram (seconds): time a message spent inside the gateway.
pub const MESSAGE_LATENCY: &str = "opampgateway_message_latency_seconds";
/// Counter: connect handshakes by outcome (`accepted`, `rejected`, `timeout`,
/// `unavailable`, `policy_refused`) and `status` (HTTP status answered).
/// Sockets the listener turns away before a request (`refused`) also carry a
/// `reason`: the setting that decided (`max_connections`, `header_timeout`...).
pub const HANDSHAKES: &str = "opampgateway_handshakes_total";
/// Counter: sockets that waited for a turn in the TLS/HTTP phase
/// (`listener.max_handshaking`, or their source's share of it).
pub const LISTENER_HANDSHAKE_WAITS: &str = "opampgateway_listener_handshake_waits_total";
/// Histogram (seconds): connect handshake round trip to the server.
pub const HANDSHAKE_SECONDS: &str = "opampgateway_handshake_seconds";
/// Gauge: agents assigned to each upstream link, by `upstream` and `link`.
pub const LINK_AGENTS: &str = "opampgateway_link_agents";
/// Gauge: agents on each upstream (`default` is `server`), by `upstream`.
pub const UPSTREAM_AGENTS: &str = "opampgateway_upstream_agents";
/// Counter: agents asked to follow a new route after a policy reload (and
/// any planned move that crossed upstreams), by destination `upstream` and
/// `outcome` (moved|stayed|rejected|failed).
pub const UPSTREAM_MIGRATIONS: &str = "opampgateway_upstream_migrations_total";
/// Counter: upstream link (re)connect attempts by `upstream` and `outcome`
/// (success|failure).
pub const UPSTREAM_RECONNECTS: &str = "opampgateway_upstream_reconnects_total";
/// Counter: upstream links lost after being connected, by `upstream`.
pub const UPSTREAM_LINK_LOSSES: &str = "opampgateway_upstream_link_losses_total";
/// Counter: agents moved to another link after a link loss, by `outcome`.
pub const AGENT_MIGRATIONS: &str = "opampgateway_agent_migrations_total";
/// Counter: planned moves asked by the rebalancer, by `outcome`
/// (moved|stayed|failed).
pub const REBALANCE_MOVES: &str = "opampgateway_rebalance_moves_total";
/// Counter: upstream links closed and redialed because they reached
/// `server.max_link_age`.
pub const LINK_ROTATIONS: &str = "opampgateway_link_rotations_total";
/// Gauge: agents on the busiest connected link minus on the idlest, by
/// `upstream`.
pub const LINK_IMBALANCE: &str = "opampgateway_link_imbalance";
/// Counter: agent sessions closed by the gateway or peer, by `reason`.
pub const AGENTS_CLOSED: &str = "opampgateway_agents_closed_total";
/// Counter: WebSocket agents whose buffers, grown by a large message, were
/// swapped for small ones once idle.
pub const AGENT_BUFFERS_RELEASED: &str = "opampgateway_agent_buffers_released_total";
/// Counter: messages the gateway could not deliver, by `direction` and `reason`.
pub const MESSAGES_DROPPED: &str = "opampgateway_messages_dropped_total";
/// Gauge: bytes of agent messages read and not yet written upstream
/// (bounded by `listener.max_buffered_bytes`), read when `/metrics` is scraped.
pub const BUFFERED_BYTES: &str = "opampgateway_buffered_bytes";
/// Counter: agent messages that waited for room in `listener.max_buffered_bytes`
/// (their session stopped reading meanwhile). HTTP polls are refused instead,
/// counted in [`MESSAGES_DROPPED`] with `reason="buffer_budget"`.
pub const BUFFER_WAITS: &str = "opampgateway_buffer_budget_waits_total";
/// Counter: agent frames re-sent after their link died (at-least-once).
pub const MESSAGES_REPLAYED: &str = "opampgateway_messages_replayed_total";
/// Counter: `agent_disconnect` messages the gateway synthesized.
pub const SYNTHESIZED_DISCONNECTS: &str = "opampgateway_synthesized_disconnects_total";
/// Counter: uids taken over by the same agent reconnecting (same
/// credentials) before its old connection was known dead.
pub const UID_TAKEOVERS: &str = "opampgateway_uid_takeovers_total";
/// Counter: `ReportFullState` requests sent to agents after they moved link.
pub const FULL_STATE_REQUESTS: &str = "opampgateway_full_state_requests_total";
/// Counter: custom capabilities replayed into an agent's first message.
pub const CAPABILITIES_REPLAYED: &str = "opampgateway_custom_capabilities_replayed_total";
/// Gauge: live tokio tasks, read when `/metrics` is scraped (a leak of
/// per-session tasks shows here first).
pub const RUNTIME_ALIVE_TASKS: &str = "opampgateway_runtime_alive_tasks";

/// Counter: policy hook calls, by `policy` and `hook`.
pub const POLICY_CALLS: &str = "opampgateway_policy_calls_total";
/// Counter: failed policy calls, by `policy`, `hook` and `kind`.
pub const POLICY_ERRORS: &str = "opampgateway_policy_errors_total";
/// Histogram (seconds): policy call duration, by `policy` and `hook`.
pub const POLICY_CALL_SECONDS: &str = "opampgateway_policy_call_seconds";
/// Counter: `assign` answers naming a missing or disconnected link.
pub const POLICY_INVALID_ASSIGN: &str = "opampgateway_policy_invalid_assign_total";
/// Counter: policy set reloads by `outcome`.
pub const POLICY_RELOADS: &str = "opampgateway_policy_reloads_total";
/// Gauge: loaded policies, by `policy` and `digest` (value 1).
pub const POLICY_LOADED: &str = "opampgateway_policy_loaded";
/// Gauge: 1 while a policy is quarantined by its circuit breaker, by `policy`.
pub const POLICY_QUARANTINED: &str = "opampgateway_policy_quarantined";
/// Counter: quarantines (breaker trips), by `policy`.
pub const POLICY_QUARANTINES: &str = "opampgateway_policy_quarantines_total";
/// Counter: hook calls skipped because the policy was quarantined, by
/// `policy` and `hook`.
pub const POLICY_SKIPPED: &str = "opampgateway_policy_quarantine_skipped_total";
/// Counter: guest log and stdout/stderr lines held back by the per-policy
/// log limit, by `policy`.
pub const POLICY_LOG_SUPPRESSED: &str = "opampgateway_policy_log_lines_suppressed_total";
/// Counter: policy chains that waited for a turn (`policies.concurrency`).
pub const POLICY_GATE_WAITS: &str = "opampgateway_policy_gate_waits_total";
/// Counter: policy chains not run because `policies.queue` callers were
/// already waiting (each policy's `on_error` applied, kind `overloaded`).
pub const POLICY_SHED: &str = "opampgateway_policy_shed_total";
/// Counter: hook calls still running at their second epoch tick (1–2 ms of
/// wall time), which then released their relay worker's other tasks and
/// offered the worker to another thread, by `policy`. A policy slow enough
/// to notice (or a host that preempted a call that long).
pub const POLICY_HANDOFFS: &str = "opampgateway_policy_handoffs_total";
/// Counter: `admit` answers, by `policy`, `verdict` (allow|reject) and
/// `status` (the rejection's HTTP status; empty for allow).
pub const POLICY_ADMISSIONS: &str = "opampgateway_policy_admissions_total";
/// Counter: verdicts of `mode: shadow` policies (counted, never applied), by
/// `policy`, `hook` and `verdict`.
pub const POLICY_SHADOW_VERDICTS: &str = "opampgateway_policy_shadow_verdicts_total";
/// Counter: `on-connect`/`on-disconnect` events dropped because the
/// lifecycle worker's queue was full.
pub const POLICY_LIFECYCLE_DROPPED: &str = "opampgateway_policy_lifecycle_dropped_total";

/// Counter: records written by `telemetry.capture`, by `kind`
/// (connect|message).
pub const CAPTURE_RECORDS: &str = "opampgateway_capture_records_total";
/// Counter: capture records not written, by `reason`: `queue_full` (the
/// writer fell behind; the relay never waits for it), `too_large` (over
/// `telemetry.capture.max_bytes`), `write_error`.
pub const CAPTURE_DROPPED: &str = "opampgateway_capture_records_dropped_total";

pub const UPSTREAM: &str = "upstream";
pub const DOWNSTREAM: &str = "downstream";

/// Handles for the per-message metrics, resolved once: the `counter!` macros
/// build and hash a key on every call, which adds up at 10k messages/s.
/// Resolved on first use, after `main` has installed the recorder.
pub(crate) struct Relayed {
    pub(crate) messages: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

pub(crate) fn relayed(direction: &'static str) -> &'static Relayed {
    use std::sync::OnceLock;
    static UP: OnceLock<Relayed> = OnceLock::new();
    static DOWN: OnceLock<Relayed> = OnceLock::new();
    let cell = if direction == UPSTREAM { &UP } else { &DOWN };
    cell.get_or_init(|| Relayed {
        messages: metrics::counter!(MESSAGES, "direction" => direction),
        bytes: metrics::counter!(MESSAGE_BYTES, "direction" => direction),
        latency: metrics::histogram!(MESSAGE_LATENCY, "direction" => direction),
    })
}
