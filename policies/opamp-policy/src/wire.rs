//! Top-level protobuf surgery without decoding: the [`opamp_wire`] crate,
//! which the gateway itself uses too.
//!
//! Decoding a whole `ServerToAgent` with prost and re-encoding it would drop
//! fields this crate's proto does not know (a newer server's additions) and
//! cost a full copy each way. These helpers walk only the top level and copy
//! the untouched fields byte for byte.

pub use opamp_wire::*;
