//! Fault injection (issue 14.3), on loopback against a real gateway, the
//! reference server (`opamp_gateway::sim`) and simulated agents.
//!
//! | fault | what the gateway does | what is lost | test |
//! |---|---|---|---|
//! | server sends non-protobuf binary frames | drops each, link stays up | the frame, counted `messages_dropped{reason="malformed"}` | `garbage::garbage_is_counted_logged_once_and_misroutes_nothing_on_a_link_that_survives` |
//! | `ServerToAgent` for an unknown uid | drops it, link stays up | the frame, counted `reason="unknown_agent"` | same |
//! | `connectResult` for an unknown request uid | drops it, link stays up | the frame, counted `reason="stale_handshake"` | same |
//! | duplicate `connectResult` (a refusal for an admitted agent) | drops it; the agent is untouched | the frame, counted `reason="stale_handshake"` | same |
//! | text frame | drops it, link stays up | the frame, counted `reason="text_frame"` | same |
//! | (all of the above) | one warning per reason per connection, then debug | — | same |
//! | frame over `server.max_message_size` | the link is lost (the frame cannot be skipped) and redialed; agents move | nothing of the agents'; counted `upstream_link_losses_total` | `garbage::an_oversized_frame_costs_the_link_which_is_redialed_and_agents_move` |
//! | half-open link (a proxy eats every byte, closes nothing) | no traffic for two `server.keepalive` intervals: link lost, redialed; agents move | nothing: frames written in the last second are replayed; counted `upstream_link_losses_total` | `half_open::keepalive_notices_a_blackholed_link_and_its_agents_move` |
//! | server stops reading, 120 agents keep sending | held bytes stay within `listener.max_buffered_bytes` (gauge `opampgateway_buffered_bytes`); sessions stop reading their agents (TCP back-pressure) | nothing: every message arrives in order after the server reads again; no agent closed | `stalled_server::a_server_that_stops_reading_costs_bounded_memory_and_loses_nothing` |
//! | `connectResult` naming no request (repeated) | dropped, link stays up | the frame, counted `reason="malformed"`; one warning per connection | `garbage::garbage_is_counted_logged_once_and_misroutes_nothing_on_a_link_that_survives` |
//! | unreadable `connectResult` for a waiting handshake | its agent gets 502 at once | nothing else; one warning per connection (`bad_handshake`), then debug | unit `relay::dispatch::tests::go_nil_headers_resolve_and_unreadable_answers_fail_at_once` |
//! | policies folder: a directory named `x.wasm`, a 200 MB module, a symlink loop, the folder replaced by a file | reload refused, naming the file; the serving set keeps serving; a module over `policies.limits.max_module_size` is never read | nothing; one error line per distinct reason | `policy_folder::whatever_lands_in_the_folder_the_serving_set_keeps_serving` |
//! | policies folder: 1,000 files that are no policy | ignored; the set is unchanged | nothing | same |
//! | compile cache directory unwritable | one warning; policies load and are compiled each time | the cache only | `policy_folder::an_unwritable_compile_cache_only_costs_the_cache` |
//! | hostile policy: deep recursion | the engine's stack limit traps the call; a fresh instance takes the next | nothing (`on_error: open` forwards); counted `policy_errors_total{kind="trap"}`, the log names the stack | `hostile_policy::hostile_answers_are_contained_counted_and_logged` |
//! | hostile policy: a 50 MiB `replace` | over the receiving side's `max_message_size`: invalid, the original goes; under it, it takes its share of `listener.max_buffered_bytes` before it is queued | nothing; counted `kind="invalid"` | same, and unit `relay::budget` |
//! | hostile policy: `replace` with another agent's uid | invalid; the server never sees the forged uid | nothing; counted `kind="invalid"` | same |
//! | hostile policy: `assign` answers `u32::MAX` | the default choice applies | nothing; counted `policy_invalid_assign_total`, a warning at most every `log_interval` | same |
//! | hostile policy: 10,000 headers, invalid names | invalid answer (`policies.limits`); `on_error` applies | counted `kind="invalid"` | `policy_containment::forwarded_headers_are_capped`, `policy_sandbox::invalid_answers_are_errors` |
//! | hostile policy: megabytes of log per call | lines cut to 1 KiB, 16 per call, `log_lines` per interval | the rest, counted `policy_log_lines_suppressed_total`; one warning per interval | `hostile_policy::a_loud_policy_is_cut_to_size` |

#[path = "../support/observe.rs"]
mod observe;
#[path = "../policy_support/mod.rs"]
mod policy_support;
mod support;

mod garbage;
mod half_open;
mod hostile_policy;
mod policy_folder;
mod server_restart;
mod stalled_server;
