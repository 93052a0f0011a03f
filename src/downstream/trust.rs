//! Who an accepted connection is: its credential digest, and whether it is a
//! downstream gateway trusted by `listener.downstream_gateways`.
//!
//! Trust is explicit. A connection is a gateway only if the server accepted
//! its handshake *and* it matches a configured rule (a header value only the
//! gateways hold, and/or a SAN of the client certificate verified by
//! `listener.tls.client_ca_file`). Everything else is an ordinary agent: one
//! uid, and no gateway-capability custom messages.

use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

use crate::config::{DownstreamGatewaysConfig, GatewayRule};
use crate::relay::identity::CREDENTIAL_HEADERS;
use crate::relay::{Credential, Identity, Role};

/// The verified client certificate of a TLS connection, put into each
/// request's extensions by the listener.
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificate(pub CertificateDer<'static>);

/// `listener.downstream_gateways`, prepared once.
#[derive(Debug, Clone)]
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub struct GatewayTrust {
    rules: Vec<Rule>,
    /// `listener.credential_headers`.
    credential_headers: Vec<String>,
}

impl Default for GatewayTrust {
    fn default() -> Self {
        Self { rules: Vec::new(), credential_headers: CREDENTIAL_HEADERS.iter().map(|s| s.to_string()).collect() }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    /// Lower-case name and the SHA-256 of the expected value: the secret is
    /// not kept in memory longer than the config, and comparing digests does
    /// not leak how much of a guess was right.
    header: Option<(String, [u8; 32])>,
    san: Option<String>,
}

impl From<&GatewayRule> for Rule {
    fn from(r: &GatewayRule) -> Self {
        Rule {
            header: r.header.as_ref().map(|h| (h.name.to_ascii_lowercase(), Sha256::digest(h.value.as_bytes()).into())),
            san: r.client_cert_san.clone(),
        }
    }
}

impl GatewayTrust {
    pub(crate) fn from_config(cfg: &DownstreamGatewaysConfig, credential_headers: &[String]) -> Self {
        Self { rules: cfg.trusted.iter().map(Rule::from).collect(), credential_headers: credential_headers.to_vec() }
    }

    /// The digest of a connection's credentials (`listener.credential_headers`
    /// and the client certificate), for uid ownership.
    pub(crate) fn credential(&self, headers: &[(String, String)], cert: Option<&PeerCertificate>) -> Credential {
        Credential::from_headers(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &self.credential_headers,
            cert.map(|c| c.0.as_ref()),
        )
    }

    /// The identity of a connection the server accepted, from its forwarded
    /// headers (names lower-case) and verified client certificate.
    pub(crate) fn identify(&self, headers: &[(String, String)], cert: Option<&PeerCertificate>) -> Identity {
        let credential = self.credential(headers, cert);
        let gateway = self.rules.iter().any(|r| r.matches(headers, cert));
        Identity { credential, role: if gateway { Role::Gateway } else { Role::Agent } }
    }
}

impl Rule {
    fn matches(&self, headers: &[(String, String)], cert: Option<&PeerCertificate>) -> bool {
        let header_ok = self.header.as_ref().is_none_or(|(name, want)| {
            headers.iter().any(|(k, v)| k == name && <[u8; 32]>::from(Sha256::digest(v.as_bytes())) == *want)
        });
        let san_ok = self.san.as_ref().is_none_or(|san| cert.is_some_and(|c| cert_has_san(&c.0, san)));
        header_ok && san_ok
    }
}

/// Whether `cert` names `san` among its subject alternative names (DNS name
/// or IP address), by webpki's rules.
fn cert_has_san(cert: &CertificateDer<'_>, san: &str) -> bool {
    let Ok(name) = ServerName::try_from(san) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderRule;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn header_rule_needs_the_exact_value() {
        let cfg = DownstreamGatewaysConfig {
            trusted: vec![GatewayRule {
                header: Some(HeaderRule { name: "X-Gateway-Token".into(), value: "t0k3n".into() }),
                client_cert_san: None,
            }],
            ..Default::default()
        };
        let trust = GatewayTrust::from_config(&cfg, &[]);
        assert!(trust.identify(&headers(&[("x-gateway-token", "t0k3n")]), None).is_gateway());
        assert!(!trust.identify(&headers(&[("x-gateway-token", "t0k3")]), None).is_gateway());
        assert!(!trust.identify(&headers(&[("authorization", "t0k3n")]), None).is_gateway());
        assert!(!GatewayTrust::default().identify(&headers(&[("x-gateway-token", "t0k3n")]), None).is_gateway());
    }

    #[test]
    fn san_rule_checks_the_client_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw-east.internal".into()]).unwrap().self_signed(&key).unwrap();
        let peer = PeerCertificate(cert.der().clone());
        let rule = |san: &str| {
            let cfg = DownstreamGatewaysConfig {
                trusted: vec![GatewayRule { header: None, client_cert_san: Some(san.into()) }],
                ..Default::default()
            };
            GatewayTrust::from_config(&cfg, &[])
        };
        assert!(rule("gw-east.internal").identify(&[], Some(&peer)).is_gateway());
        assert!(!rule("gw-west.internal").identify(&[], Some(&peer)).is_gateway());
        assert!(!rule("gw-east.internal").identify(&[], None).is_gateway(), "no certificate, no trust");
    }
}
