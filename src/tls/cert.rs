//! Our own certificate and key, served from a [`Reloading`] value so a
//! renewed pair on disk is used without a restart.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::pem_source::PemSource;
use super::reload::Reloading;
use super::{provider, TlsError};

#[derive(Debug)]
pub(crate) struct CertResolver(Reloading<CertifiedKey>);

impl CertResolver {
    /// Loads `cert` + `key` now; re-reads them every `every` if either is a file.
    pub(super) fn new(
        prefix: &'static str,
        cert: PemSource,
        key: PemSource,
        every: Option<Duration>,
    ) -> Result<Self, TlsError> {
        let every = every.filter(|_| cert.path().is_some() || key.path().is_some());
        let load = move || {
            CertifiedKey::from_der(cert.certs()?, key.key()?, &provider()).map_err(|e| TlsError::Invalid {
                field: prefix,
                reason: format!("certificate and key do not match or the key is unusable: {e}"),
            })
        };
        Ok(Self(Reloading::new(format!("{prefix} certificate"), every, Vec::new(), load)?))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
