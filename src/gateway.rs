//! Wires the layers together and owns the lifecycle.
//!
//! Start: policies → link slots → bind the listener and the metrics endpoint
//! → link tasks (dialing) → accept loop. Nothing is spawned before the last
//! step that can fail. [`Gateway::start`] reads everything from a config;
//! [`Gateway::builder`] also takes a pre-bound listener, native policies and
//! a shutdown future (mini-redis's `run(listener, shutdown)`).
//! Shutdown (SIGTERM): `/readyz` turns 503 → keep accepting for
//! `listener.drain_delay` (load balancers stop sending agents) → stop
//! accepting → close every agent with 1001 (each session first reports uids
//! that never said goodbye) → wait for sessions (bounded) → close upstream
//! links with a close frame → done.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::downstream::{self, Downstream, DownstreamSettings, ListenerError};
use crate::policy::runtime::PolicyRuntime;
use crate::policy::wasm::PolicyError;
use crate::policy::Policy;
use crate::relay::rebalance::{self, RebalanceSettings};
use crate::relay::reroute;
use crate::relay::rotation::{self, RotationSettings};
use crate::relay::{Links, Relay, RelaySettings, RelayView};
use crate::telemetry::TelemetryError;
use crate::upstream::dial::DialerError;
use crate::upstream::{spawn_links, Dialer, LinkSettings};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Upstream(#[from] DialerError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A running gateway.
pub struct Gateway {
    listen_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls: bool,
    relay: Arc<Relay>,
    downstream: Arc<Downstream>,
    /// Cancelled when shutdown begins: `/readyz` says 503 from then on.
    draining: CancellationToken,
    drain_delay: Duration,
    /// Stops the listener and the sessions.
    agents_shutdown: CancellationToken,
    /// Stops the upstream links, after the sessions are gone.
    links_shutdown: CancellationToken,
    link_tasks: Vec<JoinHandle<()>>,
    listener_task: JoinHandle<()>,
    shutdown_timeout: Duration,
    policies: PolicyRuntime,
}

/// A gateway configured in code: see [`Gateway::builder`].
pub struct GatewayBuilder {
    config: Config,
    listener: Option<TcpListener>,
    metrics: Option<PrometheusHandle>,
    native: Vec<Arc<dyn Policy>>,
}

impl GatewayBuilder {
    /// Serve agents on this socket, bound by the caller (a port chosen by
    /// the application, socket activation); `listener.endpoint` is then
    /// unused. `listener.tls` still applies.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The installed Prometheus recorder's handle: `/metrics` and the health
    /// endpoints are served when it and `telemetry.metrics.endpoint` are set.
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Adds a native policy. Native policies head the chain, in the order
    /// added, before the Wasm policies of `policies.directory`; they stay
    /// through every Wasm reload, under the same containment (circuit
    /// breaker, answer caps, `policies.concurrency` gate).
    /// `policies.required` still asks for a Wasm policy: natives do not
    /// count.
    pub fn policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.native.push(policy);
        self
    }

    /// Starts the gateway; stop it with [`Gateway::shutdown`].
    pub async fn start(self) -> Result<Gateway, GatewayError> {
        Gateway::start_parts(&self.config, self.metrics, self.listener, self.native).await
    }

    /// Starts the gateway, serves until `shutdown` resolves, then shuts down
    /// gracefully (drain delay included) and returns once that is done.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let gateway = self.start().await?;
        shutdown.await;
        gateway.shutdown().await;
        Ok(())
    }
}

impl Gateway {
    /// A gateway configured in code ([`Config::new`] gives every default):
    ///
    /// ```no_run
    /// # async fn f(policy: std::sync::Arc<dyn opamp_gateway::policy::Policy>) -> Result<(), opamp_gateway::GatewayError> {
    /// use opamp_gateway::{config::Config, Gateway};
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:4320").await.unwrap();
    /// Gateway::builder(Config::new("wss://opamp.example.com/v1/opamp"))
    ///     .listener(listener)
    ///     .policy(policy)
    ///     .run(async { tokio::signal::ctrl_c().await.ok(); })
    ///     .await
    /// # }
    /// ```
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder { config, listener: None, metrics: None, native: Vec::new() }
    }

    /// Starts everything. `metrics` is the installed Prometheus recorder's
    /// handle; `/metrics` is served only when it and an endpoint are given.
    pub async fn start(config: &Config, metrics: Option<PrometheusHandle>) -> Result<Self, GatewayError> {
        Self::start_parts(config, metrics, None, Vec::new()).await
    }

    async fn start_parts(
        config: &Config,
        metrics: Option<PrometheusHandle>,
        tcp: Option<TcpListener>,
        native: Vec<Arc<dyn Policy>>,
    ) -> Result<Self, GatewayError> {
        config.check()?;
        let (to_server, to_agent) =
            (config.server.max_message_size.as_usize(), config.listener.max_message_size.as_usize());
        let policies = PolicyRuntime::start_with(&config.policies.for_relay(to_server, to_agent), native)?;
        let upstreams = config.upstream_list();
        let dialers = upstreams
            .iter()
            .map(|(_, server, path)| Dialer::for_upstream(server, path).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let pools: Vec<_> = upstreams.iter().map(|(name, s, _)| (*name, s.connections, s.queue_size)).collect();
        let (links, receivers) = Links::with_upstreams(&pools);
        let relay = Arc::new(Relay::new(
            links.clone(),
            policies.policies(),
            RelaySettings {
                auth_timeout: config.server.auth_timeout,
                failover_wait: config.server.failover_wait,
                agent_queue: config.listener.queue_size,
                max_forwarded_handshakes: config.listener.downstream_gateways.max_handshakes_in_flight,
                failover_queue: config.server.failover_queue,
                max_buffered_bytes: config.listener.max_buffered_bytes.as_usize(),
            },
        ));

        // Every step that can fail comes before the first task is spawned,
        // so a failed start (a port in use, say) leaves nothing running.
        let links_shutdown = CancellationToken::new();
        let agents_shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let l = &config.listener;
        let limits = downstream::listener::ListenerLimits::from_config(l);
        let listener = match tcp {
            Some(tcp) => downstream::listener::from_tcp(tcp, l.tls.as_ref(), limits)?,
            None => {
                let field = config.field_path("listener.endpoint");
                downstream::bind(&config.listener_endpoint()?, &field, l.tls.as_ref(), limits).await?
            }
        };
        let listen_addr = listener.local_addr();
        let tls = listener.is_tls();
        let capture = crate::telemetry::capture::Capture::start(config.telemetry.capture.settings())
            .map_err(|e| ConfigError::field("telemetry.capture.path", e.to_string()))?;
        let ds = Downstream::new(
            relay.clone(),
            DownstreamSettings {
                path: l.path.clone(),
                max_message_size: l.max_message_size.as_usize(),
                keepalive: l.keepalive,
                write_timeout: l.write_timeout,
                retry_after: l.retry_after,
                http: downstream::http::HttpSettings {
                    enabled: l.http.enabled,
                    response_wait: l.http.response_wait,
                    idle_timeout: l.http.idle_timeout,
                    auth_cache_ttl: l.http.auth_cache_ttl,
                    queue_size: l.http.queue_size,
                },
                gateways: downstream::trust::GatewayTrust::from_config(&l.downstream_gateways, &l.credential_headers),
            },
            agents_shutdown.clone(),
        );
        let ds = Arc::new(ds.with_capture(capture));
        ds.sessions.spawn({
            let relay = relay.clone();
            let shutdown = agents_shutdown.clone();
            async move { relay.movable.close_all_on(shutdown).await }
        });

        // The last fallible step; its own task stops with the links.
        let metrics_addr = match (&config.telemetry.metrics.endpoint, metrics) {
            (Some(ep), Some(handle)) => {
                let addr: SocketAddr = ep.parse().map_err(|_| {
                    ConfigError::field("telemetry.metrics.endpoint", format!("expected host:port, got {ep:?}"))
                })?;
                let (local, _task) = admin::serve(
                    addr,
                    handle,
                    links.clone(),
                    relay.budget.clone(),
                    policies.health(),
                    draining.clone(),
                    links_shutdown.clone(),
                )
                .await?;
                Some(local)
            }
            _ => None,
        };

        let mut receivers = links.iter().cloned().zip(receivers);
        let mut link_tasks = Vec::new();
        for ((_, server, _), dialer) in upstreams.iter().zip(dialers) {
            let slots: Vec<_> = receivers.by_ref().take(server.connections).collect();
            let settings = LinkSettings {
                keepalive: server.keepalive,
                write_timeout: server.write_timeout,
                backoff: server.reconnect.clone(),
            };
            link_tasks.extend(spawn_links(relay.clone(), slots, dialer, settings, links_shutdown.clone()));
        }
        let listener_task = listener.serve(ds.clone());
        ds.sessions.spawn(downstream::http::reap_idle(ds.clone()));
        let rb = config.server.rebalance;
        let rebalance = RebalanceSettings {
            enabled: rb.enabled,
            tolerance: rb.tolerance,
            max_moves_per_second: rb.max_moves_per_second,
        };
        // Stops with the agents: no moves while they drain.
        ds.sessions.spawn(rebalance::run(relay.clone(), rebalance, agents_shutdown.clone()));
        let rotation = RotationSettings {
            max_link_age: upstreams.iter().map(|(_, s, _)| s.max_link_age).collect(),
            max_moves_per_second: rb.max_moves_per_second,
        };
        ds.sessions.spawn(rotation::run(relay.clone(), rotation, agents_shutdown.clone()));
        ds.sessions.spawn(reroute::run(relay.clone(), rb.max_moves_per_second, agents_shutdown.clone()));
        tracing::info!(
            listener = %listen_addr,
            upstream = %config.server.endpoint,
            links = config.server.connections,
            metrics = ?metrics_addr,
            "gateway started"
        );
        for (name, server, _) in upstreams.iter().skip(1) {
            tracing::info!(upstream = name, endpoint = %server.endpoint, links = server.connections, "named upstream");
        }
        Ok(Self {
            listen_addr,
            metrics_addr,
            tls,
            relay,
            downstream: ds,
            draining,
            drain_delay: l.drain_delay,
            agents_shutdown,
            links_shutdown,
            link_tasks,
            listener_task,
            shutdown_timeout: l.shutdown_timeout,
            policies,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// `ws://` or `wss://` URL agents should use (loopback when listening on
    /// every interface).
    pub fn agent_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let mut addr = self.listen_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv6() { Ipv6Addr::LOCALHOST.into() } else { Ipv4Addr::LOCALHOST.into() });
        }
        format!("{scheme}://{addr}/v1/opamp")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A read-only view of the relay core: link loads and states, routes,
    /// handshakes in flight, buffered bytes. Cheap to clone and keep.
    pub fn inspect(&self) -> RelayView {
        RelayView::new(self.relay.clone())
    }

    /// Asks every connected WebSocket agent again where it routes, and
    /// moves those whose route changed, live (as after a policy reload,
    /// which does this by itself). For native policies that read state of
    /// their own: call it when that state changes.
    pub fn reroute(&self) {
        self.relay.reroute.notify_one();
    }

    /// The policy runtime: its `subscribe()` reports every reload.
    pub fn policies(&self) -> &PolicyRuntime {
        &self.policies
    }

    /// Resolves once `n` links are connected, or after `timeout` (false).
    pub async fn wait_for_links(&self, n: usize, timeout: Duration) -> bool {
        let mut watches: Vec<_> = self.relay.links.iter().map(|l| l.subscribe()).collect();
        let wait = async {
            loop {
                if self.relay.links.connected() >= n {
                    return;
                }
                let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
                let _ = futures_util::future::select_all(changes).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// True once shutdown has begun (`/readyz` is 503).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Graceful shutdown; see the module docs for the order.
    pub async fn shutdown(self) {
        self.shutdown_with(std::future::pending()).await
    }

    /// As [`shutdown`](Self::shutdown), but `cut_delay` resolving ends the
    /// `listener.drain_delay` early (the binary: a second SIGTERM or Ctrl-C).
    pub async fn shutdown_with(self, cut_delay: impl Future<Output = ()>) {
        self.draining.cancel();
        if !self.drain_delay.is_zero() {
            tracing::info!(drain_delay = ?self.drain_delay, "shutting down: not ready; still accepting agents");
            tokio::select! {
                _ = tokio::time::sleep(self.drain_delay) => {}
                _ = cut_delay => tracing::info!("drain delay cut short"),
            }
        }
        tracing::info!("shutting down: closing agents");
        self.agents_shutdown.cancel();
        // The listening socket is closed once this task ends (so a restart
        // can bind the same port right away).
        let _ = self.listener_task.await;
        self.downstream.sessions.close();
        if tokio::time::timeout(self.shutdown_timeout, self.downstream.sessions.wait()).await.is_err() {
            tracing::warn!(timeout = ?self.shutdown_timeout, "some agent sessions did not close in time");
        }
        self.links_shutdown.cancel();
        let links = futures_util::future::join_all(self.link_tasks);
        if tokio::time::timeout(Duration::from_secs(5), links).await.is_err() {
            tracing::warn!("some upstream links did not close in time");
        }
        tracing::info!("shutdown complete");
    }
}
