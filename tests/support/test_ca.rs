//! A test certificate authority (rcgen) issuing server and client
//! certificates, for tests that run real TLS.
//!
//! Included with `#[path = ".../support/test_ca.rs"] mod test_ca;`.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

pub(crate) struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// `(cert PEM, key PEM)` for `name`, for a server or a client.
    pub(crate) fn leaf(&self, name: &str, client: bool) -> (String, String) {
        self.leaf_with(name, client, KeyPair::generate().unwrap())
    }

    /// [`Ca::leaf`] with a key of the caller's (an RSA key, which rcgen
    /// cannot generate with ring, read from PEM).
    pub(crate) fn leaf_with(&self, name: &str, client: bool, key: KeyPair) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        (params.signed_by(&key, &self.0).unwrap().pem(), key.serialize_pem())
    }

    /// The CA's own certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        self.0.pem()
    }
}
