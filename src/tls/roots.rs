//! Trust anchors: the OS trust store and configured CA bundles.

use rustls::RootCertStore;

use super::pem_source::PemSource;
use super::TlsError;

/// The OS trust store, as the reference (Go's `x509.SystemCertPool`) uses it;
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` replace the platform locations.
///
/// When it yields no usable certificate (a scratch or distroless image
/// without ca-certificates, or a variable pointing nowhere) we warn and fall
/// back to the bundled Mozilla roots rather than fail every `wss://` dial:
/// that is what this gateway trusted before it read the OS store, so such
/// deployments keep working, and the warning says how to fix the store.
pub(crate) fn system() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read part of the system trust store");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "skipped unparsable certificates in the system trust store");
    }
    if added == 0 {
        tracing::warn!(
            "no usable CA certificate in the system trust store (install ca-certificates, or set SSL_CERT_FILE \
             or SSL_CERT_DIR); falling back to the bundled Mozilla roots"
        );
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    store
}

/// `base` (if any) plus the CAs read now from `extra` (if any).
pub(crate) fn store(base: Option<&RootCertStore>, extra: Option<&PemSource>) -> Result<RootCertStore, TlsError> {
    let mut store = base.cloned().unwrap_or_else(RootCertStore::empty);
    if let Some(src) = extra {
        for c in src.certs()? {
            store.add(c).map_err(|e| src.invalid(format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(store)
}
