//! Connect storms over TLS (`wss://`): the gateway as shipped (one worker
//! thread per CPU) beside `runtime.worker_threads: 1`. Not a bar: it is what
//! the default thread count buys, the other side of the CPU-per-message
//! bars, which measure both settings (issue 13).
//!
//! A fleet reconnecting after a restart is the gateway's heaviest moment,
//! and with TLS most of it is the server's handshake work, which runs on
//! the worker threads. The figure that carries to a bigger host is the
//! gateway's CPU per connecting agent: one worker can take at most one
//! core's worth of them per second, however many cores the host has.

use std::fmt::Write as _;
use std::sync::Arc;

use opamp_gateway::sim::server::ReferenceServer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::cpu_rounds::median;
use crate::gateway_proc::GatewayProc;
use crate::load;
use crate::report::joined;
use crate::suite::{wait_links, Scale, LINKS};
use crate::test_ca::Ca;

/// Handshakes in flight at once, as in the plain connect storm.
const CONCURRENCY: usize = 512;

/// The two settings compared: a row name and `runtime.worker_threads`.
const SETTINGS: [(&str, Option<usize>); 2] =
    [("gateway as shipped (one worker thread per CPU)", None), (crate::suite::ONE_WORKER, Some(1))];

/// One storm on a fresh gateway.
struct Sample {
    seconds: f64,
    connected: usize,
    errors: usize,
    /// The gateway's user + system CPU seconds over the storm.
    cpu_seconds: f64,
    p99_ms: f64,
}

impl Sample {
    fn cpu_us_per_agent(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.connected.max(1) as f64
    }
}

/// A server certificate the storms run against, in a folder of its own.
struct Certificate {
    /// What the rows say of it.
    key: &'static str,
    dir: tempfile::TempDir,
}

/// The listener's certificates: ECDSA P-256 (rcgen's own), and RSA 2048
/// where `openssl` can make the key (many enterprise PKIs issue RSA, and
/// its signature is the dearer handshake); the second value says why RSA
/// is missing when it is.
fn certificates(ca: &Ca) -> anyhow::Result<(Vec<Certificate>, Option<String>)> {
    // An IP address as the name: the agents dial 127.0.0.1 (rcgen makes an
    // IP SAN of it), and no resolver sits in the path.
    const NAME: &str = "127.0.0.1";
    let write = |key: &'static str, (cert, pem): (String, String)| -> anyhow::Result<Certificate> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), pem)?;
        Ok(Certificate { key, dir })
    };
    let mut certs = vec![write("ECDSA P-256", ca.leaf(NAME, false))?];
    let rsa = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output();
    let missing = match rsa {
        Ok(out) if out.status.success() => {
            let key = rcgen::KeyPair::from_pem(std::str::from_utf8(&out.stdout)?)?;
            certs.push(write("RSA 2048", ca.leaf_with(NAME, false, key))?);
            None
        }
        Ok(out) => Some(format!("no RSA rows: `openssl genpkey` failed ({})", out.status)),
        Err(e) => Some(format!("no RSA rows: `openssl` could not run ({e})")),
    };
    Ok((certs, missing))
}

/// Runs the phase; its figures as JSON for [`crate::report`].
pub(crate) async fn run(server: &ReferenceServer, scale: &Scale) -> anyhow::Result<Value> {
    let ca = Ca::new("bench CA");
    let (certs, missing) = certificates(&ca)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
    let mut client = rustls::ClientConfig::builder_with_provider(opamp_gateway::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every agent shares this config, and with it rustls' session cache: a
    // later agent would resume on an earlier one's ticket and skip the
    // server's signature. After a gateway restart no agent holds a ticket
    // the new process knows, so each storm handshake is a full one.
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);

    let n = scale.tls_storm;
    // samples[certificate][setting]
    let mut samples: Vec<Vec<Vec<Sample>>> =
        certs.iter().map(|_| SETTINGS.iter().map(|_| Vec::new()).collect()).collect();
    for round in 0..scale.tls_storm_rounds {
        for (c, cert) in certs.iter().enumerate() {
            for k in 0..SETTINGS.len() {
                let i = (k + round) % SETTINGS.len();
                let (name, workers) = SETTINGS[i];
                eprintln!(
                    "[bench] TLS storm: {n} agents, {}, {name}, round {}/{}",
                    cert.key,
                    round + 1,
                    scale.tls_storm_rounds
                );
                samples[c][i].push(one(server, cert, workers, n, &client).await?);
            }
        }
    }
    let mut rows = Vec::new();
    for (cert, by_setting) in certs.iter().zip(&samples) {
        for ((name, workers), runs) in SETTINGS.iter().zip(by_setting) {
            let cpu_us = median(runs.iter().map(Sample::cpu_us_per_agent).collect());
            rows.push(json!({
                "name": name,
                "key": cert.key,
                "worker_threads": workers,
                "seconds": runs.iter().map(|s| s.seconds).collect::<Vec<_>>(),
                "median_seconds": median(runs.iter().map(|s| s.seconds).collect()),
                "median_p99_ms": median(runs.iter().map(|s| s.p99_ms).collect()),
                "median_cpu_us_per_agent": cpu_us,
                "one_core_agents_per_second": 1e6 / cpu_us.max(f64::EPSILON),
                "errors": runs.iter().map(|s| s.errors).sum::<usize>(),
            }));
        }
    }
    Ok(json!({"agents": n, "concurrency": CONCURRENCY, "rounds": scale.tls_storm_rounds, "rows": rows,
              "missing": missing}))
}

/// One storm of `n` agents on a fresh gateway serving `cert`.
async fn one(
    server: &ReferenceServer,
    cert: &Certificate,
    workers: Option<usize>,
    n: usize,
    client: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sample> {
    let mut yaml = format!(
        "server:\n  endpoint: {}\n  connections: {LINKS}\nlistener:\n  endpoint: 127.0.0.1:0\n  tls:\n    \
         cert_file: {d}/cert.pem\n    key_file: {d}/key.pem\npolicies:\n  directory: {d}/none\n",
        server.url(),
        d = cert.dir.path().display()
    );
    if let Some(w) = workers {
        yaml.push_str(&format!("runtime:\n  worker_threads: {w}\n"));
    }
    let gw = GatewayProc::start_yaml(&yaml).await?;
    wait_links(server, LINKS).await;
    let url = format!("wss://127.0.0.1:{}/v1/opamp", gw.listener.port());
    let cpu0 = gw.cpu_seconds();
    let storm = load::storm_from(&url, n, CONCURRENCY, &[], load::SOURCES, 0, Some(client.clone())).await;
    let cpu_seconds = gw.cpu_seconds() - cpu0;
    let sample = Sample {
        seconds: storm.elapsed.as_secs_f64(),
        connected: storm.agents.len(),
        errors: storm.errors,
        cpu_seconds,
        p99_ms: storm.connect.value_at_quantile(0.99) as f64 / 1000.0,
    };
    drop(storm.agents);
    gw.stop().await;
    Ok(sample)
}

/// The phase's section of docs/BENCHMARKS.md.
pub(crate) fn markdown(s: &mut String, v: &Value) {
    let _ = writeln!(
        s,
        "\n## Connect storms over TLS: one worker thread, or one per CPU\n\n\
         {} agents, {} at a time over `wss://` (rustls on both sides; the listener's certificate signed by an \
         ECDSA CA, with the key named in each row), each completing TLS, the WebSocket upgrade, the connect handshake with the server and a first \
         status round trip, on a fresh gateway per run; {} rounds, the order alternating. The agents' side of \
         TLS runs in the load generator on the same 2 cores. CPU per agent is the gateway's user + system time \
         over the storm divided by the agents connected; one core's ceiling is how many such connects a single \
         worker thread could take per second, on any host. Not a bar: it is what the default thread count buys, \
         beside the CPU-per-message bars' two rows.\n",
        v["agents"], v["concurrency"], v["rounds"]
    );
    let _ = writeln!(
        s,
        "| gateway | server key | storm, median | per round (s) | connect p99, median | gateway CPU per agent | one core's ceiling | errors |\n|---|---|---|---|---|---|---|---|"
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} s | {} | {:.0} ms | {:.0} µs | {:.0} agents/s | {} |",
            r["name"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or(""),
            r["median_seconds"].as_f64().unwrap_or(0.0),
            joined(&r["seconds"], 2),
            r["median_p99_ms"].as_f64().unwrap_or(0.0),
            r["median_cpu_us_per_agent"].as_f64().unwrap_or(0.0),
            r["one_core_agents_per_second"].as_f64().unwrap_or(0.0),
            r["errors"]
        );
    }
    if let Some(m) = v["missing"].as_str() {
        let _ = writeln!(s, "\n{m}.");
    }
}
