//! Upstream links through an HTTP CONNECT proxy (`server.proxy_url`).
//!
//! The upstream is named `opamp.test`, which does not resolve here: only the
//! proxy fixture (which sends every target to 127.0.0.1) can reach it, so a
//! link that connects went through the proxy.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use opamp_gateway::config::{ClientTlsConfig, Config};
use opamp_gateway::sim::proxy::{ConnectProxy, ConnectProxyConfig, ProxyState};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::upstream::{DialError, Dialer};
use opamp_gateway::Gateway;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::{config, Harness, T};

/// `url` with its loopback host replaced by a name only the proxy resolves.
fn via_name(url: &str) -> String {
    url.replace("127.0.0.1", "opamp.test").replace("localhost", "opamp.test")
}

fn port_of(server: &ReferenceServer) -> u16 {
    server.addr().port()
}

/// Every CONNECT the proxy saw went to `target` and none was refused.
fn all_to(state: &ProxyState, target: &str) -> bool {
    state.requests.iter().all(|r| r.target == target && r.status == 200)
}

/// One dial attempt with `cfg`, which must fail.
async fn dial_error(cfg: &Config) -> DialError {
    match Dialer::from_config(cfg).unwrap().dial(0).await {
        Ok(_) => panic!("the dial should have failed"),
        Err(e) => e,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// A test CA, and leaf certificates it signs.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "opamp-gateway proxy test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { dir: tempfile::tempdir().unwrap(), ca }
    }

    /// `(certificate PEM, key PEM)` for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (params.signed_by(&key, &self.ca).unwrap().pem(), key.serialize_pem())
    }

    /// `server.tls` trusting this CA.
    fn trust(&self) -> ClientTlsConfig {
        let path: PathBuf = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        ClientTlsConfig { ca_file: Some(path), ..Default::default() }
    }

    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.leaf(names);
        Arc::new(
            rustls::ServerConfig::builder_with_provider(opamp_gateway::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        )
    }

    /// A reference server serving `wss://` as `opamp.test`.
    async fn wss_server(&self) -> ReferenceServer {
        let (cert, key) = self.leaf(&["opamp.test"]);
        let tls = Some((cert.into_bytes(), key.into_bytes()));
        ReferenceServer::start(ReferenceServerConfig { tls, ..Default::default() }).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_links_through_proxy_url() {
    let proxy = ConnectProxy::start(ConnectProxyConfig::default()).await.unwrap();
    let h = Harness::with(ReferenceServerConfig::default(), |cfg| {
        cfg.server.endpoint = via_name(&cfg.server.endpoint);
        cfg.server.proxy_url = Some(proxy.url());
    })
    .await;
    let target = format!("opamp.test:{}", port_of(&h.server));
    let state = proxy.state();
    assert_eq!(state.requests.len(), 3, "one CONNECT per link: {state:?}");
    assert!(all_to(&state, &target), "{state:?}");
    assert_eq!(state.open_tunnels, 3);
    // Real traffic flows through the tunnels.
    let mut a = h.agent().await;
    crate::common::round_trip(&mut a).await;
    h.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_links_through_proxy_url() {
    let pki = Pki::new();
    let server = pki.wss_server().await;
    let proxy = ConnectProxy::start(ConnectProxyConfig::default()).await.unwrap();
    let mut cfg = config(&via_name(&server.url()));
    cfg.server.tls = Some(pki.trust());
    cfg.server.proxy_url = Some(proxy.url());
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await, "wss links through the proxy: {:?}", proxy.state());
    assert!(all_to(&proxy.state(), &format!("opamp.test:{}", server.addr().port())));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_verified_and_carries_wss() {
    let pki = Pki::new();
    let server = pki.wss_server().await;
    let proxy =
        ConnectProxy::start(ConnectProxyConfig { tls: Some(pki.server_config(&["localhost"])), ..Default::default() })
            .await
            .unwrap();
    assert!(proxy.url().starts_with("https://localhost:"));
    let mut cfg = config(&via_name(&server.url()));
    cfg.server.tls = Some(pki.trust());
    cfg.server.proxy_url = Some(proxy.url());
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await, "TLS to the proxy, then TLS to the server inside: {:?}", proxy.state());
    assert!(all_to(&proxy.state(), &format!("opamp.test:{}", server.addr().port())));
    g.shutdown().await;

    // The proxy's certificate must name the proxy's host.
    let wrong = ConnectProxy::start(ConnectProxyConfig {
        tls: Some(pki.server_config(&["proxy.elsewhere"])),
        ..Default::default()
    })
    .await
    .unwrap();
    cfg.server.proxy_url = Some(wrong.url());
    let err = dial_error(&cfg).await;
    assert!(matches!(err, DialError::Tls { ref host, .. } if host.starts_with("proxy ")), "{err}");
    assert!(wrong.state().requests.is_empty(), "no CONNECT before the proxy is verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_url() {
    let (user, password) = ("alice", "p@ss:w0rd");
    let proxy = ConnectProxy::start(ConnectProxyConfig {
        basic_auth: Some((user.into(), password.into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let with_userinfo = |userinfo: &str| proxy.url().replace("http://", &format!("http://{userinfo}@"));

    // Percent-encoded in the URL, decoded on the wire.
    let h = Harness::with(ReferenceServerConfig::default(), |cfg| {
        cfg.server.endpoint = via_name(&cfg.server.endpoint);
        cfg.server.proxy_url = Some(with_userinfo("alice:p%40ss%3Aw0rd"));
    })
    .await;
    assert!(proxy.state().requests.iter().all(|r| r.authorization.as_deref() == Some(&basic(user, password))));
    h.gateway.shutdown().await;

    // Wrong credentials: refused, retried, never connected; never logged.
    let before = proxy.state().requests.len();
    let mut cfg = config(&via_name(&h.server.url()));
    cfg.server.connections = 1;
    cfg.server.proxy_url = Some(with_userinfo("alice:hunter2"));
    let err = dial_error(&cfg).await;
    assert!(matches!(err, DialError::ProxyRefused { status: 407, .. }), "{err}");
    let shown = format!("{err} {err:?} {:?}", Dialer::from_config(&cfg).unwrap());
    assert!(!shown.contains("hunter2") && !shown.contains("alice"), "credentials leaked: {shown}");

    let g = Gateway::start(&cfg, None).await.unwrap();
    proxy.wait_until(T, |s| s.requests.len() >= before + 3).await.expect("the link keeps redialing");
    let wrong = basic(user, "hunter2");
    let state = proxy.state();
    assert!(state.requests[before..].iter().all(|r| r.status == 407 && r.authorization.as_deref() == Some(&wrong)));
    assert_eq!(g.inspect().connected_links(), 0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_proxy_surfaces_its_status_and_links_recover() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let proxy = ConnectProxy::start(ConnectProxyConfig::default()).await.unwrap();
    proxy.set_refusal(Some(403));
    let mut cfg: Config = config(&via_name(&server.url()));
    cfg.server.proxy_url = Some(proxy.url());

    let err = dial_error(&cfg).await;
    let shown = err.to_string();
    assert!(matches!(err, DialError::ProxyRefused { status: 403, .. }), "{shown}");
    assert!(shown.contains(&proxy.url()) && shown.contains("403 Forbidden"), "{shown}");

    let g = Gateway::start(&cfg, None).await.unwrap();
    // More CONNECTs than links: refused links are redialed.
    proxy.wait_until(T, |s| s.requests.len() > 1 + 2 * cfg.server.connections).await.expect("links keep retrying");
    assert_eq!(g.inspect().connected_links(), 0);
    assert!(server.state().connections.is_empty());

    proxy.set_refusal(None);
    assert!(g.wait_for_links(3, T).await, "links connect once the proxy lets them through");
    g.shutdown().await;
}
