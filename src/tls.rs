//! rustls configurations built from the config's file paths.
//!
//! We pin the `ring` provider explicitly so no process-wide default has to
//! be installed (and no C toolchain is needed for aws-lc).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientTlsConfig, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {path}: {reason}")]
    File { field: &'static str, path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File { field, path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates found".into()));
    }
    Ok(certs)
}

fn key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        field,
        path: path.display().to_string(),
        reason: format!("{e}; expected a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
    })
}

fn roots(field: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(field, path)? {
        store.add(c).map_err(|e| TlsError::Invalid { field, reason: e.to_string() })?;
    }
    Ok(store)
}

/// Agent-facing TLS (`listener.tls`).
pub fn server_config(cfg: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs("listener.tls.cert_file", &cfg.cert_file)?;
    let key = key("listener.tls.key_file", &cfg.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid { field: "listener.tls", reason: e.to_string() })?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("listener.tls.client_ca_file", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Invalid { field: "listener.tls.client_ca_file", reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Invalid {
        field: "listener.tls",
        reason: format!("certificate and key do not match: {e}"),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Upstream TLS (`server.tls`); `None` settings mean the web PKI roots.
pub fn client_config(cfg: Option<&ClientTlsConfig>) -> Result<Arc<ClientConfig>, TlsError> {
    let default = ClientTlsConfig::default();
    let cfg = cfg.unwrap_or(&default);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid { field: "server.tls", reason: e.to_string() })?;
    let builder = if cfg.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
    } else {
        let store = match &cfg.ca_file {
            Some(ca) => roots("server.tls.ca_file", ca)?,
            None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        };
        builder.with_root_certificates(store)
    };
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certs("server.tls.cert_file", c)?, key("server.tls.key_file", k)?)
            .map_err(|e| TlsError::Invalid {
                field: "server.tls",
                reason: format!("client certificate and key do not match: {e}"),
            })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name to verify for `host`, honouring `server_name_override`.
pub fn server_name(host: &str, cfg: Option<&ClientTlsConfig>) -> Result<ServerName<'static>, TlsError> {
    let name = cfg.and_then(|c| c.server_name_override.as_deref()).unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned()).map_err(|e| TlsError::Invalid {
        field: "server.endpoint",
        reason: format!("invalid TLS server name {name:?}: {e}"),
    })
}

/// `insecure_skip_verify`: checks signatures (so the handshake is sound)
/// but trusts any certificate. Only for testing.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
