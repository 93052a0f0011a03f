//! rustls configurations built from the collector's configtls settings
//! (`server.tls` for the upstream links, `listener.tls` for agents).
//!
//! We pin the `ring` provider explicitly so no process-wide default has to
//! be installed (and no C toolchain is needed for aws-lc). Certificates and
//! CAs read from files can be reloaded (`reload_interval`,
//! `client_ca_file_reload`): the configs returned here carry resolvers and
//! verifiers that re-read them, so callers build a config once.
//!
//! [`BoxedIo`] (in `io.rs`) is the plain-or-TLS stream both edges carry.

mod cert;
mod io;
mod pem_source;
mod reload;
mod roots;
mod verify;

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::ServerName;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::config::{ClientTlsConfig, ServerTlsConfig, TlsVersion};
use cert::CertResolver;
pub use io::{BoxedIo, Io};
use pem_source::PemSource;
use reload::Reloading;
use verify::{AcceptAnyServerCert, ReloadingClientVerifier, ReloadingServerVerifier};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {path}: {reason}")]
    File { field: &'static str, path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { field, reason: reason.to_string() }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// `min_version`..=`max_version`, configtls defaults: 1.2 up to the newest.
fn versions(
    min_field: &'static str,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let (min, max) = (min.unwrap_or(TlsVersion::V1_2), max.unwrap_or(TlsVersion::V1_3));
    let all = [(TlsVersion::V1_2, &rustls::version::TLS12), (TlsVersion::V1_3, &rustls::version::TLS13)];
    let chosen: Vec<_> = all.into_iter().filter(|(v, _)| (min..=max).contains(v)).map(|(_, p)| p).collect();
    if chosen.is_empty() {
        return Err(invalid(min_field, "cannot be greater than max_version"));
    }
    Ok(chosen)
}

/// Agent-facing TLS (`listener.tls`).
pub fn server_config(cfg: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    const P: &str = "listener.tls";
    let needed = "a certificate and key are required: cert_file (or cert_pem) and key_file (or key_pem)";
    let cert = PemSource::pick(
        ("listener.tls.cert_file", cfg.cert_file.as_ref()),
        ("listener.tls.cert_pem", cfg.cert_pem.as_ref()),
    )
    .ok_or_else(|| invalid(P, needed))?;
    let key = PemSource::pick(
        ("listener.tls.key_file", cfg.key_file.as_ref()),
        ("listener.tls.key_pem", cfg.key_pem.as_ref()),
    )
    .ok_or_else(|| invalid(P, needed))?;
    let resolver = CertResolver::new(P, cert, key, cfg.reload_interval)?;

    // configtls loads a server's ca_file but Go never consults it (RootCAs
    // is a client setting): check it the same way, and say what it is not.
    if let Some(ca) =
        PemSource::pick(("listener.tls.ca_file", cfg.ca_file.as_ref()), ("listener.tls.ca_pem", cfg.ca_pem.as_ref()))
    {
        ca.certs()?;
        tracing::warn!(
            "listener.tls.ca_file/ca_pem does not verify agents (as in the collector); \
             set listener.tls.client_ca_file to require client certificates"
        );
    }

    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions("listener.tls.min_version", cfg.min_version, cfg.max_version)?)
        .map_err(|e| invalid(P, e))?;
    let builder = match &cfg.client_ca_file {
        Some(path) => {
            let src = PemSource::file("listener.tls.client_ca_file", path);
            let system = cfg.include_system_ca_certs_pool.then(roots::system);
            let build = move || -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
                let store = roots::store(system.as_ref(), Some(&src))?;
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                    .build()
                    .map_err(|e| invalid("listener.tls.client_ca_file", e))
            };
            let watch = if cfg.client_ca_file_reload { vec![path.clone()] } else { Vec::new() };
            let cas = Reloading::new("listener.tls.client_ca_file", cfg.reload_interval, watch, build)?;
            if cas.reloads() {
                builder.with_client_cert_verifier(Arc::new(ReloadingClientVerifier(cas)))
            } else {
                // Static: keep rustls's own verifier, which also sends CA hints.
                builder.with_client_cert_verifier(cas.get().as_ref().clone())
            }
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Upstream TLS (`server.tls`); `None` settings mean the system's CAs.
pub fn client_config(cfg: Option<&ClientTlsConfig>) -> Result<Arc<ClientConfig>, TlsError> {
    const P: &str = "server.tls";
    let default = ClientTlsConfig::default();
    // configtls: `insecure` without a CA yields no TLS settings at all, and
    // the reference still dials wss:// with TLS, with Go's defaults: ours.
    let cfg = match cfg {
        Some(c) if c.insecure && c.ca_file.is_none() && c.ca_pem.is_none() => {
            tracing::warn!(
                "server.tls.insecure is set: as in the collector, TLS (for wss:// or an https:// proxy) uses \
                 the defaults and ignores the other server.tls settings; use a ws:// endpoint for no TLS"
            );
            &default
        }
        Some(c) => c,
        None => &default,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions("server.tls.min_version", cfg.min_version, cfg.max_version)?)
        .map_err(|e| invalid(P, e))?;
    let verifier: Arc<dyn ServerCertVerifier> = if cfg.insecure_skip_verify {
        Arc::new(AcceptAnyServerCert(provider()))
    } else {
        let ca =
            PemSource::pick(("server.tls.ca_file", cfg.ca_file.as_ref()), ("server.tls.ca_pem", cfg.ca_pem.as_ref()));
        let every = cfg.reload_interval.filter(|_| ca.as_ref().is_some_and(|c| c.path().is_some()));
        let system = (ca.is_none() || cfg.include_system_ca_certs_pool).then(roots::system);
        let build = move || -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
            let store = roots::store(system.as_ref(), ca.as_ref())?;
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
                .build()
                .map_err(|e| invalid("server.tls", e))?;
            Ok(v)
        };
        let roots = Reloading::new("server.tls.ca_file", every, Vec::new(), build)?;
        if roots.reloads() {
            Arc::new(ReloadingServerVerifier(roots))
        } else {
            roots.get().as_ref().clone()
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let cert = PemSource::pick(
        ("server.tls.cert_file", cfg.cert_file.as_ref()),
        ("server.tls.cert_pem", cfg.cert_pem.as_ref()),
    );
    let key =
        PemSource::pick(("server.tls.key_file", cfg.key_file.as_ref()), ("server.tls.key_pem", cfg.key_pem.as_ref()));
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            builder.with_client_cert_resolver(Arc::new(CertResolver::new(P, cert, key, cfg.reload_interval)?))
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(invalid(P, "a client certificate and its key must be given together")),
    };
    Ok(Arc::new(config))
}

/// The name to verify for `host`, honouring `server_name_override`.
pub(crate) fn server_name(host: &str, cfg: Option<&ClientTlsConfig>) -> Result<ServerName<'static>, TlsError> {
    let name = cfg.and_then(|c| c.server_name_override.as_deref()).unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|e| invalid("server.endpoint", format!("invalid TLS server name {name:?}: {e}")))
}
