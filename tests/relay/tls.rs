//! TLS on both sides, with certificates minted in the test.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::{ClientTlsConfig, ServerTlsConfig};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::{config, round_trip, T};

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "opamp-gateway test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir: tempfile::tempdir().unwrap(), ca }
    }

    fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// What an agent trusting this CA (optionally with a client cert) uses.
    fn client(&self, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca_pem().as_bytes()).unwrap()).unwrap();
        let b = rustls::ClientConfig::builder_with_provider(opamp_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some(l) => b
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(l.cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_client_certificates() {
    let pki = Pki::new();
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let gw = pki.leaf(&["localhost", "127.0.0.1"], false);
    let mut cfg = config(&server.url());
    cfg.listener.tls = Some(ServerTlsConfig {
        cert_file: pki.write("gw.pem", &gw.cert),
        key_file: pki.write("gw.key", &gw.key),
        client_ca_file: Some(pki.write("ca.pem", &pki.ca_pem())),
    });
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await);
    let url = format!("wss://localhost:{}/v1/opamp", g.listen_addr().port());
    assert!(g.agent_url().starts_with("wss://"));

    let agent_id = pki.leaf(&["agent-1"], true);
    let mut opts = AgentOptions::new(url.clone());
    opts.tls = Some(pki.client(Some(&agent_id)));
    let mut a = SimAgent::connect(opts).await.expect("agent with a client certificate connects");
    round_trip(&mut a).await;

    let mut anonymous = AgentOptions::new(url);
    anonymous.tls = Some(pki.client(None));
    assert!(SimAgent::connect(anonymous).await.is_err(), "no client certificate, no connection");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_upstream_with_private_ca_or_skip_verify() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"], false);
    let server = ReferenceServer::start(ReferenceServerConfig {
        tls: Some((leaf.cert.clone().into_bytes(), leaf.key.clone().into_bytes())),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("wss://localhost:{}/v1/opamp", server.addr().port());

    // Private CA.
    let mut cfg = config(&url);
    cfg.server.tls = Some(ClientTlsConfig { ca_file: Some(pki.write("ca.pem", &pki.ca_pem())), ..Default::default() });
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await, "links verify the server against the private CA");
    let mut a = SimAgent::connect(AgentOptions::new(g.agent_url())).await.unwrap();
    round_trip(&mut a).await;
    g.shutdown().await;

    // Web roots only: the private certificate is refused…
    let mut cfg = config(&url);
    cfg.server.connections = 1;
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(!g.wait_for_links(1, Duration::from_millis(700)).await, "an untrusted server must not be accepted");
    g.shutdown().await;

    // …unless verification is explicitly switched off.
    let mut cfg = config(&url);
    cfg.server.tls = Some(ClientTlsConfig { insecure_skip_verify: true, ..Default::default() });
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await);
    g.shutdown().await;
}
