//! The load generator: many simulated agents, paced or flat out, with
//! per-message round-trip latency in an HDR histogram.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentOptions, SimAgent};
use tokio::sync::Semaphore;

pub(crate) struct Storm {
    pub agents: Vec<SimAgent>,
    pub elapsed: Duration,
    pub errors: usize,
    /// Per-agent connect + first round trip, microseconds.
    pub connect: Histogram<u64>,
}

/// Loopback source addresses the fleet connects from, agent `i` from
/// `127.0.0.(1 + i % SOURCES)`: a fleet of 19,000 needs more than one
/// address's ports, and real agents do not share one address.
pub(crate) const SOURCES: u8 = 8;

/// Connects `n` agents (at most `concurrency` handshakes in flight), each
/// completing the handshake and a first status round trip. In header values,
/// `{i}` becomes the agent's index (e.g. a tenant per agent).
pub(crate) async fn storm(url: &str, n: usize, concurrency: usize, headers: &[(String, String)]) -> Storm {
    storm_from(url, n, concurrency, headers, SOURCES, 0, None).await
}

/// [`storm`] from `sources` loopback addresses, `127.0.0.1` up, with the
/// first status report's effective config padded to `config_bytes` (as a
/// real collector reports its whole config at connect; 0: the sim's own),
/// and `tls` as the agents' client configuration for a `wss://` URL.
pub(crate) async fn storm_from(
    url: &str,
    n: usize,
    concurrency: usize,
    headers: &[(String, String)],
    sources: u8,
    config_bytes: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Storm {
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let gate = gate.clone();
            let mut opts = AgentOptions::new(url);
            opts.headers = headers.iter().map(|(k, v)| (k.clone(), v.replace("{i}", &i.to_string()))).collect();
            opts.bind = Some(std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % sources.max(1) as usize) as u8).into());
            opts.tls = tls.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore open");
                let t = Instant::now();
                let mut a = SimAgent::connect(opts).await.ok()?;
                let report = a.status_report_sized(config_bytes);
                a.send(report).await.ok()?;
                a.recv(Duration::from_secs(60)).await.ok()?;
                Some((a, t.elapsed()))
            })
        })
        .collect();
    let mut agents = Vec::with_capacity(n);
    let mut connect = histogram();
    let mut errors = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some((a, d)) => {
                connect.saturating_record(d.as_micros() as u64);
                agents.push(a);
            }
            None => errors += 1,
        }
    }
    Storm { agents, elapsed: started.elapsed(), errors, connect }
}

pub(crate) struct Run {
    pub agents: Vec<SimAgent>,
    pub rtt: Histogram<u64>,
    pub round_trips: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// Every agent sends a heartbeat and waits for the reply, spacing sends so
/// that the fleet offers `total_rate` messages/s (`None`: flat out).
pub(crate) async fn drive(agents: Vec<SimAgent>, total_rate: Option<f64>, duration: Duration) -> Run {
    let n = agents.len().max(1);
    let interval = total_rate.map(|r| Duration::from_secs_f64(n as f64 / r));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                // Spread agents over the first interval so sends do not align.
                if let Some(iv) = interval {
                    tokio::time::sleep(iv.mul_f64(i as f64 / n as f64)).await;
                }
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let sent = a.send(AgentToServer::default()).await;
                    match (sent, a.recv(Duration::from_secs(10)).await) {
                        (Ok(()), Ok(_)) => {
                            h.saturating_record(t.elapsed().as_micros() as u64);
                            ok += 1;
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                    if let Some(iv) = interval {
                        next += iv;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                (a, h, ok, errors)
            })
        })
        .collect();
    let mut run = Run { agents: Vec::new(), rtt: histogram(), round_trips: 0, errors: 0, elapsed: Duration::ZERO };
    for t in tasks {
        if let Ok((a, h, ok, e)) = t.await {
            run.rtt.add(h).expect("same bounds");
            run.round_trips += ok;
            run.errors += e;
            run.agents.push(a);
        }
    }
    run.elapsed = started.elapsed();
    run
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}
