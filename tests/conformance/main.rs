//! Conformance with the reference gateway (observIQ/bindplane-otel-contrib,
//! `extension/opampgateway`): each scenario of its own test files, restated
//! in our words and run against our gateway on loopback, once per JSON
//! encoding of the reference server (`::rust` and `::go`; the Go one writes
//! `connectResult` byte for byte as a Go server does, `null` headers and all).
//!
//! Each test names the reference test it restates. Where we behave
//! differently on purpose (agents migrate on link loss instead of being
//! disconnected, vanished agents are reported upstream, a plain GET is not an
//! agent), the test asserts our documented behaviour and says so.

mod common;

mod capabilities;
mod gateway;
mod handshake;
mod message_reader;
mod tls;
mod upstream_dial;
