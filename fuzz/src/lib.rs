//! What the fuzz targets share: a paused-time runtime and an in-memory
//! gateway core (one upstream link, answered by a fake server).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opamp_gateway::downstream::http::HttpSettings;
use opamp_gateway::downstream::trust::GatewayTrust;
use opamp_gateway::downstream::{Downstream, DownstreamSettings};
use opamp_gateway::policy::{Policies, PolicySet};
use opamp_gateway::protocol::handshake::{ConnectRequest, ConnectResult};
use opamp_gateway::protocol::AgentFrame;
use opamp_gateway::relay::{Link, LinkLease, Links, Relay, RelaySettings};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The message size limit in the harness: small, so the limits are reached.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// One current-thread runtime per process, time paused: every timer in the
/// gateway (handshake, keepalive, write timeouts, polls) fires as soon as
/// nothing else can run, so an iteration never waits on the wall clock.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime")
    })
}

/// A gateway core without sockets. Build it inside [`runtime`].
pub struct Core {
    pub links: Arc<Links>,
    pub link: Arc<Link>,
    pub relay: Arc<Relay>,
    pub ds: Arc<Downstream>,
    server: JoinHandle<()>,
}

impl Core {
    /// `connected`: whether the upstream link is up. The fake server accepts
    /// every connect request and swallows everything else.
    pub fn new(connected: bool) -> Self {
        let (links, mut receivers) = Links::new(1, 16);
        let link = links.get(0).expect("one link").clone();
        if connected {
            link.mark_connected();
        }
        let relay = Arc::new(Relay::new(
            links.clone(),
            Arc::new(Policies::new(PolicySet::default())),
            RelaySettings {
                auth_timeout: Duration::from_secs(1),
                failover_wait: Duration::from_secs(1),
                agent_queue: 16,
                max_forwarded_handshakes: 4,
                failover_queue: 16,
                max_buffered_bytes: 64 << 20,
            },
        ));
        let ds = Arc::new(Downstream::new(relay.clone(), settings(), CancellationToken::new()));
        let mut upstream = receivers.pop().expect("one receiver");
        let (r, l) = (relay.clone(), link.clone());
        let server = tokio::spawn(async move {
            while let Some(out) = upstream.recv().await {
                let Ok(frame) = AgentFrame::parse_ws(&out.frame) else { continue };
                let Some(Ok(req)) = frame.custom_message().as_ref().and_then(ConnectRequest::from_custom) else {
                    continue;
                };
                let result = ConnectResult {
                    request_uid: req.request_uid,
                    accept: true,
                    http_status_code: 200,
                    ..Default::default()
                };
                let _ = r.dispatch(&l, result.to_frame(), Instant::now());
            }
        });
        Self { links, link, relay, ds, server }
    }

    pub fn lease(&self) -> Option<LinkLease> {
        self.links.lease(None)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn settings() -> DownstreamSettings {
    DownstreamSettings {
        path: None,
        max_message_size: MAX_MESSAGE,
        keepalive: Duration::from_secs(30),
        write_timeout: Duration::from_secs(5),
        retry_after: Duration::from_secs(5),
        http: HttpSettings {
            enabled: true,
            response_wait: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            auth_cache_ttl: Duration::from_secs(60),
            queue_size: 16,
        },
        gateways: GatewayTrust::default(),
    }
}
