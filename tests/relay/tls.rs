//! TLS on both sides, with certificates minted in the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::config::{ClientTlsConfig, Config, ServerTlsConfig, TlsVersion};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::{tls, Gateway};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ProtocolVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{config, round_trip, T};

pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

pub(crate) struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "opamp-gateway test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir: tempfile::tempdir().unwrap(), ca }
    }

    pub(crate) fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    pub(crate) fn write(&self, name: &str, pem: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// What an agent trusting this CA (optionally with a client cert) uses.
    pub(crate) fn client(&self, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
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
        cert_file: Some(pki.write("gw.pem", &gw.cert)),
        key_file: Some(pki.write("gw.key", &gw.key)),
        client_ca_file: Some(pki.write("ca.pem", &pki.ca_pem())),
        ..Default::default()
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

    // The system trust store only: the private certificate is refused…
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

/// A loopback TLS server that answers each accepted handshake with one
/// byte: in TLS 1.3 the client's handshake completes before the server has
/// judged the client certificate, so that byte is the "accepted" signal.
pub(crate) async fn tls_server(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.write_all(b"k").await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects as `localhost`; the negotiated version once the server accepted.
pub(crate) async fn handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<ProtocolVersion, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).await.map_err(|e| format!("server refused us: {e}"))?;
    Ok(s.get_ref().1.protocol_version().expect("handshake done"))
}

impl Pki {
    /// `listener.tls` serving a `localhost` certificate from this CA, inline.
    pub(crate) fn server_tls(&self) -> ServerTlsConfig {
        let leaf = self.leaf(&["localhost"], false);
        ServerTlsConfig { cert_pem: Some(leaf.cert), key_pem: Some(leaf.key), ..Default::default() }
    }

    /// `server.tls` trusting only this CA, inline.
    pub(crate) fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig { ca_pem: Some(self.ca_pem()), ..Default::default() }
    }
}

#[tokio::test]
async fn min_and_max_version_on_both_sides() {
    let pki = Pki::new();
    let server = |(min_version, max_version)| {
        tls::server_config(&ServerTlsConfig { min_version, max_version, ..pki.server_tls() }).unwrap()
    };
    let client = |(min_version, max_version)| {
        tls::client_config(Some(&ClientTlsConfig { min_version, max_version, ..pki.client_tls() })).unwrap()
    };
    let (v12, v13) = (Some(TlsVersion::V1_2), Some(TlsVersion::V1_3));

    // Defaults (configtls: min 1.2, max newest) meet at 1.3.
    let any = tls_server(server((None, None))).await;
    assert_eq!(handshake(any, client((None, None))).await, Ok(ProtocolVersion::TLSv1_3));
    assert_eq!(handshake(any, client((None, v12))).await, Ok(ProtocolVersion::TLSv1_2), "client max 1.2");

    // A listener with min_version 1.3 refuses a client that speaks only 1.2.
    let modern = tls_server(server((v13, None))).await;
    let err = handshake(modern, client((None, v12))).await.expect_err("TLS 1.2 client refused");
    assert!(err.to_lowercase().contains("version"), "{err}");
    assert_eq!(handshake(modern, client((None, None))).await, Ok(ProtocolVersion::TLSv1_3));

    // A listener with max_version 1.2 negotiates 1.2 with a default client…
    let old = tls_server(server((None, v12))).await;
    assert_eq!(handshake(old, client((None, None))).await, Ok(ProtocolVersion::TLSv1_2));
    // …and a client with min_version 1.3 will not go down to it.
    assert!(handshake(old, client((v13, None))).await.is_err());
    assert_eq!(handshake(any, client((v13, v13))).await, Ok(ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn inline_pems_on_both_sides_with_client_certificates() {
    let pki = Pki::new();
    let server = tls::server_config(&ServerTlsConfig {
        client_ca_file: Some(pki.write("clients.pem", &pki.ca_pem())),
        ..pki.server_tls()
    })
    .unwrap();
    let addr = tls_server(server).await;
    let id = pki.leaf(&["gateway"], true);
    let with_cert = ClientTlsConfig { cert_pem: Some(id.cert), key_pem: Some(id.key), ..pki.client_tls() };
    assert!(handshake(addr, tls::client_config(Some(&with_cert)).unwrap()).await.is_ok());
    let anonymous = tls::client_config(Some(&pki.client_tls())).unwrap();
    assert!(handshake(addr, anonymous).await.is_err(), "the listener requires a client certificate");

    // Through the gateway: an inline listener certificate.
    let upstream = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let mut cfg = config(&upstream.url());
    cfg.listener.tls = Some(pki.server_tls());
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await);
    let mut opts = AgentOptions::new(format!("wss://localhost:{}/v1/opamp", g.listen_addr().port()));
    opts.tls = Some(pki.client(None));
    let mut a = SimAgent::connect(opts).await.expect("agent trusts the inline certificate's CA");
    round_trip(&mut a).await;
    g.shutdown().await;
}

/// The error for `yaml` (a reference-style config around a TLS section).
fn config_error(yaml: &str) -> String {
    let doc = format!("extensions:\n  opampgateway:\n{}", textwrap(yaml));
    Config::from_yaml(&doc).expect_err(yaml).to_string()
}

fn textwrap(yaml: &str) -> String {
    yaml.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn tls_settings_are_checked_with_field_names() {
    let up = "server:\n  endpoint: wss://h/v1/opamp\n  tls:\n";
    let down = "server:\n  endpoint: ws://h/v1/opamp\nlistener:\n  tls:\n    cert_pem: x\n    key_pem: y\n";
    let p = "extensions.opampgateway";
    for (yaml, want) in [
        (
            format!("{up}    ca_file: a.pem\n    ca_pem: x\n"),
            format!("{p}.server.tls.ca_pem: cannot be combined with server.tls.ca_file"),
        ),
        (
            format!("{up}    cert_file: a\n    cert_pem: x\n    key_pem: y\n"),
            format!("{p}.server.tls.cert_pem: cannot be combined with server.tls.cert_file"),
        ),
        (
            format!("{down}    key_file: k\n"),
            format!("{p}.listener.tls.key_pem: cannot be combined with listener.tls.key_file"),
        ),
        (format!("{up}    cert_pem: x\n"), format!("{p}.server.tls: a certificate (cert_file or cert_pem) and a key")),
        (
            format!("{up}    min_version: \"1.4\"\n"),
            format!("{p}.server.tls.min_version: expected \"1.2\" or \"1.3\", got \"1.4\""),
        ),
        (format!("{up}    max_version: 1.1\n"), format!("{p}.server.tls.max_version: TLS 1.1 is not supported")),
        (
            format!("{up}    min_version: 1.3\n    max_version: 1.2\n"),
            format!("{p}.server.tls.min_version: cannot be greater than max_version"),
        ),
        (
            format!("{up}    cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            format!("{p}.server.tls.cipher_suites: not configurable here: rustls's safe defaults"),
        ),
        (
            format!("{down}    curve_preferences: [X25519]\n"),
            format!("{p}.listener.tls.curve_preferences: not configurable here"),
        ),
        (
            format!("{down}    tpm: {{ enabled: true }}\n"),
            format!("{p}.listener.tls.tpm: TPM-held keys are not supported"),
        ),
        (
            "server:\n  endpoint: ws://h/v1/opamp\nlistener:\n  tls:\n    client_ca_file: ca.pem\n".to_owned(),
            format!("{p}.listener.tls: a server needs a certificate and key"),
        ),
        (
            format!("{down}    client_ca_file_reload: true\n"),
            format!("{p}.listener.tls.client_ca_file_reload: needs listener.tls.client_ca_file"),
        ),
    ] {
        let err = config_error(&yaml);
        assert!(err.starts_with(&want), "config:\n{yaml}\nerror: {err}\nwanted: {want}");
    }

    // What the collector writes is accepted: empty refused keys, tpm off,
    // unquoted versions, insecure with a plain endpoint.
    let ok = "server:\n  endpoint: ws://h/v1/opamp\n  tls:\n    insecure: true\n    min_version: 1.2\n    max_version: \"1.3\"\n    \
              cipher_suites: []\n    tpm: { enabled: false }\n    reload_interval: 1m\n    include_system_ca_certs_pool: true\n\
              listener:\n  tls:\n    cert_file: c.pem\n    key_file: k.pem\n    ca_file: ca.pem\n    client_ca_file: cc.pem\n    \
              client_ca_file_reload: true\n    min_version: \"\"\n";
    let cfg = Config::from_yaml(ok).unwrap();
    assert_eq!(cfg.server.tls.as_ref().unwrap().min_version, Some(TlsVersion::V1_2));
    assert_eq!(cfg.server.tls.as_ref().unwrap().reload_interval, Some(Duration::from_secs(60)));
    assert_eq!(cfg.listener.tls.as_ref().unwrap().min_version, None);
}

#[tokio::test]
async fn insecure_means_default_tls_settings_as_in_the_collector() {
    let pki = Pki::new();
    let addr = tls_server(tls::server_config(&pki.server_tls()).unwrap()).await;
    let client = |c: ClientTlsConfig| tls::client_config(Some(&c)).unwrap();

    assert!(handshake(addr, client(ClientTlsConfig { insecure_skip_verify: true, ..Default::default() }))
        .await
        .is_ok());
    // `insecure` without a CA drops every other setting, skip-verify too:
    // the private certificate is checked against the system store.
    let err =
        handshake(addr, client(ClientTlsConfig { insecure: true, insecure_skip_verify: true, ..Default::default() }))
            .await
            .expect_err("defaults verify the certificate");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // With a CA, configtls keeps the settings.
    assert!(handshake(addr, client(ClientTlsConfig { insecure: true, ..pki.client_tls() })).await.is_ok());
}
