//! Who a connection is, as far as uid ownership is concerned.
//!
//! The gateway makes no authentication decision, but it must keep one
//! authenticated agent from speaking for another. It does so by remembering,
//! per connection, a digest of the credentials the server accepted it with,
//! and whether the connection is a trusted downstream gateway (the only kind
//! allowed to speak for several uids).

use sha2::{Digest, Sha256};

/// The request headers whose values count as credentials by default
/// (`listener.credential_headers`). A reconnecting agent may take over its
/// own uid from a connection not yet known dead only if these match; see
/// `Routes::claim`.
pub(crate) const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "cookie", "x-api-key", "x-secret-key", "x-bindplane-secret-key"];

/// A SHA-256 digest of a connection's credentials. The headers themselves are
/// never kept, so a credential cannot leak from here into logs or dumps.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Credential([u8; 32]);

impl Credential {
    /// Digests the values of the headers named in `names` (any case), in a
    /// canonical order, plus the verified client certificate when there is
    /// one.
    pub(crate) fn from_headers<'a, N: AsRef<str>>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        names: &[N],
        client_cert: Option<&[u8]>,
    ) -> Self {
        let counts = |k: &str| names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(k));
        let mut parts: Vec<(&str, &str)> = headers.into_iter().filter(|(k, _)| counts(k)).collect();
        parts.sort_unstable();
        let mut h = Sha256::new();
        for (k, v) in parts {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            for part in [k.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        if let Some(cert) = client_cert {
            h.update(b"client-cert");
            h.update(Sha256::digest(cert));
        }
        Self(h.finalize().into())
    }

    /// For tests and the simulator: the digest of no credentials at all.
    #[cfg_attr(not(fuzzing), allow(unreachable_pub, dead_code))]
    pub fn none() -> Self {
        Self::from_headers(std::iter::empty(), CREDENTIAL_HEADERS, None)
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to tell two apart in a debug dump.
        write!(f, "Credential({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// What a connection is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub enum Role {
    /// An ordinary agent: exactly one uid, no gateway custom messages.
    Agent,
    /// A downstream gateway trusted by `listener.downstream_gateways`: may
    /// speak for many uids and forward connect handshakes.
    Gateway,
}

/// Everything the core needs to know about who is on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct Identity {
    pub credential: Credential,
    pub role: Role,
}

impl Identity {
    pub(crate) fn agent(credential: Credential) -> Self {
        Self { credential, role: Role::Agent }
    }

    pub(crate) fn is_gateway(&self) -> bool {
        self.role == Role::Gateway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_credentials_only() {
        let d = |h: &[(&str, &str)], cert: Option<&[u8]>| {
            Credential::from_headers(h.iter().copied(), CREDENTIAL_HEADERS, cert)
        };
        let a = d(&[("authorization", "Secret-Key a"), ("user-agent", "x")], None);
        let a2 = d(&[("user-agent", "y"), ("Authorization", "Secret-Key a")], None);
        let b = d(&[("authorization", "Secret-Key b")], None);
        assert_eq!(a, a2, "non-credential headers and name case do not matter");
        assert_ne!(a, b);
        assert_ne!(a, d(&[("authorization", "Secret-Key a")], Some(b"cert")));
        assert_ne!(d(&[("x-api-key", "ab"), ("cookie", "c")], None), d(&[("x-api-key", "a"), ("cookie", "bc")], None));
        // A server that authenticates by another header: name it in the list.
        assert_eq!(d(&[("x-tenant-token", "t1")], None), d(&[("x-tenant-token", "t2")], None), "not one by default");
        let custom = |v| Credential::from_headers([("x-tenant-token", v)], &["X-Tenant-Token"], None);
        assert_ne!(custom("t1"), custom("t2"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credential::from_headers([("authorization", "Secret-Key hunter2")], CREDENTIAL_HEADERS, None);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
