//! TLS on both sides (reference: gateway_test.go's TestGatewayTLSConnection
//! and TestGatewayUpstreamTLSConnection, factory_test.go's
//! TestCreateOpAMPGatewayInvalidUpstreamTLSConfig). Certificates are minted
//! here with rcgen, as tests/relay/tls.rs does.

use std::path::PathBuf;
use std::sync::Arc;

use opamp_gateway::config::{ClientTlsConfig, ServerTlsConfig};
use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{JsonEncoding, ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::common::{both_encodings, config, server_config, Harness, T};

both_encodings!(tls_listener_serves_wss_and_refuses_plain_ws, wss_upstream_with_a_private_ca_connects);

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "conformance test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir: tempfile::tempdir().unwrap(), ca }
    }

    /// A server certificate for `localhost` / 127.0.0.1: (cert PEM, key PEM).
    fn server_leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        (params.signed_by(&key, &self.ca).unwrap().pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca.pem().as_bytes()).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(opamp_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// Restates TestGatewayTLSConnection: with a TLS listener an agent trusting
/// the CA round-trips over `wss://`, and a plain `ws://` dial to the same
/// port fails.
async fn tls_listener_serves_wss_and_refuses_plain_ws(json: JsonEncoding) {
    let pki = Pki::new();
    let (cert, key) = pki.server_leaf();
    let (cert_file, key_file) = (pki.write("gw.pem", &cert), pki.write("gw.key", &key));
    let h = Harness::with(server_config(json), |c| {
        c.server.connections = 1;
        c.listener.tls =
            Some(ServerTlsConfig { cert_file: Some(cert_file), key_file: Some(key_file), ..Default::default() });
    })
    .await;
    let port = h.gateway.listen_addr().port();
    let mut opts = AgentOptions::new(format!("wss://localhost:{port}/v1/opamp"));
    opts.tls = Some(pki.client());
    let mut a = SimAgent::connect(opts).await.expect("wss agent connects");
    h.announce(&mut a).await;
    let got = h.push(&mut a, ServerToAgent { capabilities: 77, ..Default::default() }).await;
    assert_eq!(got.capabilities, 77);

    let plain = SimAgent::connect(AgentOptions::new(format!("ws://127.0.0.1:{port}/v1/opamp"))).await;
    assert!(plain.is_err(), "plain ws:// against the TLS listener fails");
}

/// Restates TestGatewayUpstreamTLSConnection: the configured CA is used to
/// verify a `wss://` server signed by a private CA.
async fn wss_upstream_with_a_private_ca_connects(json: JsonEncoding) {
    let pki = Pki::new();
    let (cert, key) = pki.server_leaf();
    let server = ReferenceServer::start(ReferenceServerConfig {
        tls: Some((cert.into_bytes(), key.into_bytes())),
        ..server_config(json)
    })
    .await
    .unwrap();
    let mut cfg = config(&format!("wss://localhost:{}/v1/opamp", server.addr().port()));
    cfg.server.connections = 1;
    cfg.server.tls = Some(ClientTlsConfig { ca_file: Some(pki.write("ca.pem", &pki.ca.pem())), ..Default::default() });
    let gateway = Gateway::start(&cfg, None).await.unwrap();
    assert!(gateway.wait_for_links(1, T).await, "TLS link established against the private CA");
    let h = Harness { server, gateway };
    let mut a = h.agent().await;
    assert_eq!(h.push(&mut a, ServerToAgent { capabilities: 5, ..Default::default() }).await.capabilities, 5);
}

/// Restates TestCreateOpAMPGatewayInvalidUpstreamTLSConfig: an unreadable
/// `server.tls.ca_file` stops the gateway from starting, and the error says
/// which setting is wrong (the reference: "load upstream TLS config").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_upstream_ca_file_fails_start() {
    let mut cfg = config("wss://localhost:4320/v1/opamp");
    cfg.server.tls = Some(ClientTlsConfig {
        ca_file: Some("/nonexistent/opamp-gateway-conformance/does-not-exist.pem".into()),
        ..Default::default()
    });
    let err = match Gateway::start(&cfg, None).await {
        Ok(_) => panic!("a gateway with an unreadable CA file must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ca_file") || err.contains("does-not-exist.pem"), "error names the setting: {err}");
}
