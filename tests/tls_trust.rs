//! The OS trust store for upstream TLS, through the real binary: trust
//! store variables are process-wide, so each case is its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_opamp-gateway");

#[path = "support/test_ca.rs"]
mod test_ca;
use test_ca::Ca;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An upstream reference server serving a `localhost` certificate from `ca`.
async fn upstream(ca: &Ca) -> (ReferenceServer, String) {
    let (cert, key) = ca.leaf("localhost", false);
    let server = ReferenceServer::start(ReferenceServerConfig {
        tls: Some((cert.into_bytes(), key.into_bytes())),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("wss://localhost:{}/v1/opamp", server.addr().port());
    (server, url)
}

struct Gw {
    child: Child,
    listener: SocketAddr,
    metrics: SocketAddr,
}

impl Gw {
    /// Runs the binary with `yaml` appended to a base config (one link,
    /// loopback listener and metrics), with only `env` as trust store variables.
    async fn spawn(dir: &Path, upstream: &str, yaml: &str, env: &[(&str, &Path)]) -> Self {
        let config = write(
            dir,
            "gateway.yaml",
            &format!(
                "server:\n  endpoint: {upstream}\n  connections: 1\n  reconnect: {{ initial_interval: 50ms, max_interval: 200ms }}\n\
                 {yaml}telemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\npolicies:\n  directory: /nonexistent/policies\n"
            ),
        );
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config).env("OPAMP_GATEWAY_LOG", "warn");
        cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(T, lines.next_line()).await.unwrap().unwrap().expect("a ready line");
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().parse().unwrap()
        };
        Self { listener: field("listener="), metrics: field("metrics="), child }
    }

    async fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        buf
    }

    /// Polls /metrics (the only signal from outside) until `done`, bounded.
    async fn wait_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let body = self.metrics().await;
            if done(&body) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what} never happened:\n{body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn link_up(&self) {
        self.wait_metrics("upstream link connected", |b| {
            sample(b, "opampgateway_connections", &[("direction", "upstream")]) == Some(1.0)
        })
        .await;
    }

    /// Waits for a failed dial, checks no link came up, and returns the log.
    async fn link_refused(mut self) -> String {
        let body = self
            .wait_metrics("a failed upstream dial", |b| {
                sample(b, "opampgateway_upstream_reconnects_total", &[("outcome", "failure")]).is_some_and(|v| v >= 1.0)
            })
            .await;
        assert_eq!(sample(&body, "opampgateway_upstream_reconnects_total", &[("outcome", "success")]), None, "{body}");
        self.child.kill().await.unwrap();
        let mut log = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
        log
    }
}

/// The value of the first sample of `name` carrying all `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_upstream_tls_trusts_the_system_store() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA in the system store");
    let (_server, url) = upstream(&ca).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let trust_dir = dir.path().join("certs");
    std::fs::create_dir(&trust_dir).unwrap();
    write(&trust_dir, "private-ca.pem", &ca.pem());

    Gw::spawn(dir.path(), &url, "", &[("SSL_CERT_FILE", &ca_file)]).await.link_up().await;
    Gw::spawn(dir.path(), &url, "", &[("SSL_CERT_DIR", &trust_dir)]).await.link_up().await;

    // The machine's own store (or the bundled roots) does not know that CA.
    let log = Gw::spawn(dir.path(), &url, "", &[]).await.link_refused().await;
    assert!(log.contains("UnknownIssuer"), "the dial failed on the certificate:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_system_ca_certs_pool_adds_the_system_store_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (system, private) = (Ca::new("system CA"), Ca::new("private CA"));
    let (server, url) = upstream(&system).await;
    let system_file = write(dir.path(), "system.pem", &system.pem());
    let private_file = write(dir.path(), "private.pem", &private.pem());
    let (cert, key) = private.leaf("localhost", false);
    let (cert, key) = (write(dir.path(), "gw.pem", &cert), write(dir.path(), "gw.key", &key));
    let yaml = |include: bool| {
        let (p, c, k) = (private_file.display(), cert.display(), key.display());
        format!(
            "  tls:\n    ca_file: {p}\n    include_system_ca_certs_pool: {include}\n\
             listener:\n  endpoint: 127.0.0.1:0\n  tls:\n    cert_file: {c}\n    key_file: {k}\n    \
             client_ca_file: {p}\n    include_system_ca_certs_pool: {include}\n"
        )
    };
    // An agent trusting the private CA, with a certificate from the system CA.
    let (id_cert, id_key) = system.leaf("agent", true);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(private.pem().as_bytes()).unwrap()).unwrap();
    let agent_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(opamp_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id_cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id_key.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let agent = |gw: &Gw| {
        let mut o = AgentOptions::new(format!("wss://localhost:{}/v1/opamp", gw.listener.port()));
        o.tls = Some(agent_tls.clone());
        SimAgent::connect(o)
    };

    let env = [("SSL_CERT_FILE", system_file.as_path())];
    let gw = Gw::spawn(dir.path(), &url, &yaml(true), &env).await;
    gw.link_up().await;
    let mut a = agent(&gw).await.expect("client certificate from a system CA accepted");
    let report = a.status_report();
    a.send(report).await.unwrap();
    let uid = a.uid().as_bytes().clone();
    server.wait_until(T, |s| s.agent(&uid).is_some()).await.expect("the agent reached the server");
    drop(gw);

    // Without it, ca_file / client_ca_file replace the system store.
    let gw = Gw::spawn(dir.path(), &url, &yaml(false), &env).await;
    assert!(agent(&gw).await.is_err(), "a system-CA client certificate is refused");
    let log = gw.link_refused().await;
    assert!(log.contains("UnknownIssuer"), "{log}");
}
