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

#[path = "../support/observe.rs"]
mod observe;
mod support;

mod garbage;
mod half_open;
mod stalled_server;
