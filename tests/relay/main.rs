//! End-to-end behaviour of the relay, on loopback sockets: the reference
//! upstream server, the gateway (in-process) and simulated agents.

mod common;

mod agent_buffers;
mod buffer_budget;
mod chaining;

mod framing;
mod handshake;
mod health;
mod http;
mod lifecycle;
mod link_age;
mod link_loss;
mod listener_limits;
mod liveness;
mod proxy;
mod proxy_protocol;
mod rebalance;
mod routing;
mod security;
mod server_restart;
mod tls;
mod tls_reload;
mod upstreams;
mod user_agent;
