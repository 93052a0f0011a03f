//! A fleet of simulated agents for the demo and the benchmarks.
//!
//! Each agent is one task owning one [`SimAgent`]: connect (a semaphore caps
//! how many handshakes run at once, as a real fleet restarting would be
//! staggered by its orchestrator), send a status report, then heartbeat and
//! read replies until stopped. Counters are shared atomics, so the fleet costs
//! one task and one small WebSocket per agent and nothing per message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::agent::{AgentOptions, SimAgent};
use super::server::WaitTimeout;
use crate::protocol::proto::AgentToServer;
use crate::protocol::uid::InstanceUid;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub url: String,
    pub agents: usize,
    /// Interval between heartbeats (an `AgentToServer` with just the uid).
    pub heartbeat: Duration,
    /// Upgrade request headers for every agent.
    pub headers: Vec<(String, String)>,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Wait this long (plus jitter) and reconnect after losing the
    /// connection; `None` lets the agent stay gone.
    pub reconnect_delay: Option<Duration>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:4320/v1/opamp".into(),
            agents: 100,
            heartbeat: Duration::from_secs(30),
            headers: Vec::new(),
            connect_concurrency: 64,
            tls: None,
            reconnect_delay: Some(Duration::from_secs(1)),
        }
    }
}

/// A snapshot of the fleet's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    pub agents: usize,
    /// Agents connected right now.
    pub connected: u64,
    /// Messages sent (status reports, heartbeats, goodbyes).
    pub sent: u64,
    /// `ServerToAgent` messages received.
    pub replies: u64,
    /// Failed connects plus lost connections.
    pub errors: u64,
    pub reconnects: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    sent: AtomicU64,
    replies: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    /// Woken on every counter change while anyone is in [`Fleet::wait_until`].
    changed: Notify,
    /// How many are waiting; the hot path skips `Notify` (a mutex) at zero.
    watchers: AtomicUsize,
}

// SeqCst throughout: a waiter that registers after an update's `watchers`
// check is then guaranteed to see that update when it reads the counters.
impl Counters {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
        self.wake();
    }

    fn sub(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// Counts a waiter for as long as it lives.
struct Watching<'a>(&'a AtomicUsize);

impl<'a> Watching<'a> {
    fn new(watchers: &'a AtomicUsize) -> Self {
        watchers.fetch_add(1, Ordering::SeqCst);
        Self(watchers)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fleet. Dropping it aborts every agent without goodbyes.
pub struct Fleet {
    agents: usize,
    counters: Arc<Counters>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts every agent and returns once each has made its first connect
    /// attempt (successful or not), so callers can time the ramp-up.
    pub async fn start(cfg: FleetConfig) -> Fleet {
        let agents = cfg.agents;
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
        let cfg = Arc::new(cfg);
        let (attempted_tx, mut attempted_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for _ in 0..agents {
            let run = AgentRun {
                cfg: cfg.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
                gate: gate.clone(),
                uid: InstanceUid::from_uuid(uuid::Uuid::new_v4()),
            };
            tasks.spawn(run.run(attempted_tx.clone()));
        }
        drop(attempted_tx);
        // Ends early only if every task has ended, which cannot happen first.
        for _ in 0..agents {
            if attempted_rx.recv().await.is_none() {
                break;
            }
        }
        Fleet { agents, counters, stop, tasks }
    }

    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        FleetStats {
            agents: self.agents,
            connected: c.connected.load(Ordering::SeqCst),
            sent: c.sent.load(Ordering::SeqCst),
            replies: c.replies.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            reconnects: c.reconnects.load(Ordering::SeqCst),
        }
    }

    /// Waits until `pred` holds for the stats, re-checking on every change.
    pub async fn wait_until<F>(&self, timeout: Duration, pred: F) -> Result<(), WaitTimeout>
    where
        F: Fn(&FleetStats) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let _watching = Watching::new(&self.counters.watchers);
        loop {
            // Register interest before checking, so no change slips between.
            let changed = self.counters.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pred(&self.stats()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(WaitTimeout(timeout));
            }
        }
    }

    /// Every connected agent says goodbye; returns when they have (at most
    /// a few seconds), aborting stragglers.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let tasks = &mut self.tasks;
        let _ =
            tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    }
}

/// Everything one agent task needs; the config is shared.
struct AgentRun {
    cfg: Arc<FleetConfig>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    gate: Arc<Semaphore>,
    uid: InstanceUid,
}

impl AgentRun {
    async fn run(self, attempted: mpsc::UnboundedSender<()>) {
        let mut first_attempt = Some(attempted);
        loop {
            let connected = tokio::select! {
                _ = self.stop.cancelled() => return,
                c = self.connect() => c,
            };
            let c = &self.counters;
            // Count first, then report the attempt, so `start` sees the count.
            c.add(if connected.is_some() { &c.connected } else { &c.errors }, 1);
            if let Some(tx) = first_attempt.take() {
                let _ = tx.send(());
            }
            if let Some(agent) = connected {
                let lost = self.session(agent).await.is_err();
                c.sub(&c.connected, 1);
                if lost {
                    c.add(&c.errors, 1);
                }
            }
            let Some(delay) = self.cfg.reconnect_delay else {
                return;
            };
            // Jitter so a dropped gateway is not hit by the whole fleet at once.
            let jitter = Duration::from_millis(rand::random_range(0..=delay.as_millis().max(1) as u64));
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay + jitter) => {}
            }
            self.counters.add(&self.counters.reconnects, 1);
        }
    }

    async fn connect(&self) -> Option<SimAgent> {
        let _permit = self.gate.acquire().await.ok()?;
        let opts = AgentOptions {
            url: self.cfg.url.clone(),
            headers: self.cfg.headers.clone(),
            uid: self.uid.clone(),
            legacy_frames: false,
            tls: self.cfg.tls.clone(),
            bind: None,
        };
        SimAgent::connect(opts).await.ok()
    }

    /// Status report, then heartbeats and replies until stopped (Ok) or the
    /// connection fails (Err).
    async fn session(&self, mut agent: SimAgent) -> Result<(), ()> {
        let c = &self.counters;
        agent.send(agent.status_report()).await.map_err(drop)?;
        c.add(&c.sent, 1);
        // Spread the fleet's heartbeats over the interval instead of in lockstep.
        let offset = rand::random_range(0..=self.cfg.heartbeat.as_millis().max(1) as u64);
        let first = Instant::now() + Duration::from_millis(offset);
        let mut beat = tokio::time::interval_at(first, self.cfg.heartbeat.max(Duration::from_millis(1)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    if agent.say_goodbye().await.is_ok() {
                        c.add(&c.sent, 1);
                    }
                    return Ok(());
                }
                _ = beat.tick() => {
                    agent.send(AgentToServer::default()).await.map_err(drop)?;
                    c.add(&c.sent, 1);
                }
                reply = agent.next_server_message() => {
                    let reply = reply.map_err(drop)?;
                    c.add(&c.replies, 1);
                    // As opamp-go agents do: ReportFullState → a full status.
                    if reply.flags & crate::protocol::compose::REPORT_FULL_STATE != 0 {
                        agent.send(agent.status_report()).await.map_err(drop)?;
                        c.add(&c.sent, 1);
                    }
                }
            }
        }
    }
}
