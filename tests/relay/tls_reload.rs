//! Certificates and CAs re-read from disk without a restart
//! (`reload_interval`, `client_ca_file_reload`).

use std::future::Future;
use std::time::Duration;

use opamp_gateway::config::{ClientTlsConfig, ServerTlsConfig};
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::{tls, Gateway};

use crate::common::{config, round_trip, T};
use crate::tls::{handshake, tls_server, Pki};

const RELOAD: Duration = Duration::from_millis(50);

/// Retries `attempt` until it succeeds, bounded by `T`; the files changed
/// on disk and the next handshake after the interval picks them up.
async fn until_ok<R, E: std::fmt::Debug, F: Future<Output = Result<R, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> R {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match attempt().await {
            Ok(r) => return r,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{what}: still failing: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wss(g: &Gateway) -> String {
    format!("wss://localhost:{}/v1/opamp", g.listen_addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificate_from_another_ca_is_served_after_reload() {
    let (old_ca, new_ca) = (Pki::new(), Pki::new());
    let old = old_ca.leaf(&["localhost"], false);
    let (cert_file, key_file) = (old_ca.write("gw.pem", &old.cert), old_ca.write("gw.key", &old.key));
    let upstream = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let mut cfg = config(&upstream.url());
    cfg.listener.tls = Some(ServerTlsConfig {
        cert_file: Some(cert_file.clone()),
        key_file: Some(key_file.clone()),
        reload_interval: Some(RELOAD),
        ..Default::default()
    });
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await);
    let trusting = |pki: &Pki| {
        let mut o = AgentOptions::new(wss(&g));
        o.tls = Some(pki.client(None));
        o
    };
    assert!(SimAgent::connect(trusting(&new_ca)).await.is_err(), "the new CA's client cannot connect yet");
    round_trip(&mut SimAgent::connect(trusting(&old_ca)).await.unwrap()).await;

    let new = new_ca.leaf(&["localhost"], false);
    std::fs::write(&cert_file, &new.cert).unwrap();
    std::fs::write(&key_file, &new.key).unwrap();
    let mut a = until_ok("client trusting only the new CA", || SimAgent::connect(trusting(&new_ca))).await;
    round_trip(&mut a).await;
    assert!(SimAgent::connect(trusting(&old_ca)).await.is_err(), "the old certificate is no longer served");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_file_reload_trusts_a_new_client_ca_when_the_file_changes() {
    let (server_pki, old_ca, new_ca) = (Pki::new(), Pki::new(), Pki::new());
    let client_ca_file = old_ca.write("clients.pem", &old_ca.ca_pem());
    let upstream = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let mut cfg = config(&upstream.url());
    cfg.listener.tls = Some(ServerTlsConfig {
        client_ca_file: Some(client_ca_file.clone()),
        client_ca_file_reload: true,
        ..server_pki.server_tls()
    });
    let g = Gateway::start(&cfg, None).await.unwrap();
    assert!(g.wait_for_links(3, T).await);
    let id = new_ca.leaf(&["agent-new"], true);
    let opts = || {
        let mut o = AgentOptions::new(wss(&g));
        o.tls = Some(server_pki.client(Some(&id)));
        o
    };
    assert!(SimAgent::connect(opts()).await.is_err(), "an unknown client CA is refused");

    // No reload_interval: the change itself is the trigger.
    // A change is seen by mtime and size; the header line makes the size
    // differ even where mtimes are coarse (two test CAs' PEMs are equally long).
    std::fs::write(&client_ca_file, format!("# rotated\n{}", new_ca.ca_pem())).unwrap();
    let mut a = until_ok("agent with a certificate from the new client CA", || SimAgent::connect(opts())).await;
    round_trip(&mut a).await;
    g.shutdown().await;
}

#[tokio::test]
async fn upstream_ca_file_and_client_certificate_are_reloaded() {
    let (old_ca, new_ca) = (Pki::new(), Pki::new());
    // The server is signed by the new CA and accepts clients of the new CA.
    let server = tls::server_config(&ServerTlsConfig {
        client_ca_file: Some(new_ca.write("clients.pem", &new_ca.ca_pem())),
        ..new_ca.server_tls()
    })
    .unwrap();
    let addr = tls_server(server).await;

    let old_id = old_ca.leaf(&["gateway"], true);
    let ca_file = old_ca.write("ca.pem", &old_ca.ca_pem());
    let (cert_file, key_file) = (old_ca.write("id.pem", &old_id.cert), old_ca.write("id.key", &old_id.key));
    let client = tls::client_config(Some(&ClientTlsConfig {
        ca_file: Some(ca_file.clone()),
        cert_file: Some(cert_file.clone()),
        key_file: Some(key_file.clone()),
        reload_interval: Some(RELOAD),
        ..Default::default()
    }))
    .unwrap();
    assert!(handshake(addr, client.clone()).await.is_err(), "old CA, old identity: refused");

    let new_id = new_ca.leaf(&["gateway"], true);
    std::fs::write(&ca_file, new_ca.ca_pem()).unwrap();
    std::fs::write(&cert_file, &new_id.cert).unwrap();
    std::fs::write(&key_file, &new_id.key).unwrap();
    // The same ClientConfig object, as the dialer keeps it.
    until_ok("the reloaded CA and identity", || handshake(addr, client.clone())).await;
}
