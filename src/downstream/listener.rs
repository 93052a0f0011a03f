//! Accepting agent connections: TCP, optional TLS, HTTP/1.1, with the
//! boundary's limits: a socket budget (`max_connections`), a per-source cap
//! on sockets that are not agents yet, and deadlines for the TLS handshake,
//! the request headers and keep-alive idle ([`conn`]). Behind a TCP load
//! balancer (`proxy_protocol`), the PROXY header is read first, before TLS,
//! and its source is the agent's address from then on.

mod conn;
mod limits;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::proxy_protocol;
use super::trust::PeerCertificate;
use super::Downstream;
use crate::config::{ListenEndpoint, ListenHost, ListenerConfig, ServerTlsConfig};
use crate::tls::{self, BoxedIo, TlsError};
pub(crate) use conn::Tracked;
use limits::{Admitted, Limits, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("{field}: cannot resolve {host:?}: {source}; expected a name this machine resolves, or an IP address")]
    Resolve { field: String, host: String, source: std::io::Error },
    #[error("{field}: cannot listen on {addr}: {source}")]
    Bind { field: String, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The `listener` settings the accept loop enforces.
#[derive(Debug, Clone)]
pub(crate) struct ListenerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_handshaking_per_source: usize,
    pub max_handshaking: usize,
    pub proxy_protocol: bool,
}

impl ListenerLimits {
    pub(crate) fn from_config(l: &ListenerConfig) -> Self {
        Self {
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
            tls_handshake_timeout: l.tls_handshake_timeout,
            max_connections: l.max_connections,
            max_handshaking_per_source: l.max_handshaking_per_source,
            max_handshaking: l.max_handshaking,
            proxy_protocol: l.proxy_protocol,
        }
    }
}

/// A bound listener, not yet serving.
pub(crate) struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ListenerLimits,
}

/// Binds `endpoint` (`field` names it in errors). A host name is resolved
/// now and, as Go does, one of its addresses is listened on (IPv4 first);
/// an empty host or `[::]` listens on every interface, IPv4 and IPv6.
pub(crate) async fn bind(
    endpoint: &ListenEndpoint,
    field: &str,
    tls: Option<&ServerTlsConfig>,
    settings: ListenerLimits,
) -> Result<Listener, ListenerError> {
    let tls = tls.map(tls::server_config).transpose()?.map(TlsAcceptor::from);
    let port = endpoint.port;
    let candidates: Vec<SocketAddr> = match &endpoint.host {
        ListenHost::Any => vec![(Ipv6Addr::UNSPECIFIED, port).into(), (Ipv4Addr::UNSPECIFIED, port).into()],
        ListenHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        ListenHost::Name(name) => {
            let resolve_error = |source| ListenerError::Resolve { field: field.to_owned(), host: name.clone(), source };
            let mut addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), port)).await.map_err(resolve_error)?.collect();
            addrs.sort_by_key(SocketAddr::is_ipv6); // stable: IPv4 first, in resolver order
            if addrs.is_empty() {
                return Err(resolve_error(std::io::Error::other("no addresses")));
            }
            addrs
        }
    };
    let mut last = None;
    for addr in candidates {
        match listen(addr) {
            Ok(tcp) => return Ok(Listener { tcp, tls, settings }),
            Err(source) => last = Some(ListenerError::Bind { field: field.to_owned(), addr, source }),
        }
    }
    Err(last.expect("at least one candidate address"))
}

/// Serves a socket the caller bound (an embedding application, socket
/// activation): `listener.endpoint` is not used.
pub(crate) fn from_tcp(
    tcp: TcpListener,
    tls: Option<&ServerTlsConfig>,
    settings: ListenerLimits,
) -> Result<Listener, ListenerError> {
    let tls = tls.map(tls::server_config).transpose()?.map(TlsAcceptor::from);
    Ok(Listener { tcp, tls, settings })
}

/// A listening socket; the IPv6 wildcard also takes IPv4 (as Go's does).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    // A restarted gateway can bind its port while old connections linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Listener {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound socket has an address")
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts until shutdown; then stops accepting (sessions are closed
    /// separately, through `Downstream::shutdown`).
    pub(crate) fn serve(self, ds: Arc<Downstream>) -> JoinHandle<()> {
        let s = self.settings;
        let limits = Arc::new(Limits::new(s.max_connections, s.max_handshaking_per_source, s.max_handshaking));
        let timeouts = conn::Timeouts { header: s.header_timeout, idle: s.idle_timeout };
        tracing::info!(
            max_connections = s.max_connections,
            proxy_protocol = s.proxy_protocol,
            open_file_limit = ?crate::config::open_file_limit(),
            "listener socket budget"
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = ds.shutdown.cancelled() => break,
                    r = self.tcp.accept() => r,
                };
                let (tcp, remote) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
                let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
                let is_tls = self.tls.is_some();
                // Behind a PROXY header the source is known only once it is
                // read: the per-source share is taken then.
                let early = if s.proxy_protocol {
                    limits.permit().map(|p| (p, None))
                } else {
                    limits.admit(remote.ip()).map(|a| (a.permit, Some(a.source)))
                };
                let (permit, source) = match early {
                    Ok(a) => a,
                    Err(why) => {
                        limits.refuse(tcp, remote, why, is_tls, ds.settings.retry_after);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tls, conn_ds, limits) = (self.tls.clone(), ds.clone(), limits.clone());
                let (tls_timeout, header_timeout) = (s.tls_handshake_timeout, s.header_timeout);
                // Tracked with the sessions: shutdown waits (bounded) for the
                // handshakes and polls in flight on these connections.
                ds.sessions.spawn(async move {
                    let (mut tcp, mut remote) = (tcp, remote);
                    let source = match source {
                        Some(source) => source,
                        None => {
                            let header = tokio::select! {
                                h = proxied(&mut tcp, remote, header_timeout, &limits) => h,
                                _ = conn_ds.shutdown.cancelled() => None,
                            };
                            let Some(agent) = header else { return };
                            remote = agent;
                            match limits.source(remote.ip()) {
                                Ok(source) => source,
                                Err(why) => {
                                    drop(permit);
                                    limits.refuse(tcp, remote, why, is_tls, conn_ds.settings.retry_after);
                                    return;
                                }
                            }
                        }
                    };
                    // A turn before TLS and the request: a storm's sockets
                    // wait here, unread, instead of all allocating at once.
                    let turn = tokio::select! {
                        t = limits.turn(remote.ip()) => t,
                        _ = conn_ds.shutdown.cancelled() => return,
                    };
                    let admitted = Admitted { permit, source, turn: Some(turn) };
                    let secured = tokio::select! {
                        s = secure(tcp, remote, tls, tls_timeout, &limits) => s,
                        _ = conn_ds.shutdown.cancelled() => None,
                    };
                    let Some((io, peer_cert)) = secured else { return };
                    conn::serve(conn_ds, io, remote, admitted, peer_cert, timeouts, limits).await;
                });
            }
            tracing::info!("listener stopped accepting");
        })
    }
}

/// The agent's address from the connection's PROXY header (the TCP peer's
/// when the header carries none), or `None` when it is missing or invalid:
/// the connection is then closed.
async fn proxied(tcp: &mut TcpStream, peer: SocketAddr, timeout: Duration, limits: &Limits) -> Option<SocketAddr> {
    match proxy_protocol::read(tcp, timeout).await {
        Ok(header) => {
            let agent = header.source.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).unwrap_or(peer);
            tracing::trace!(%agent, via = %peer, destination = ?header.destination, "PROXY header read");
            Some(agent)
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection without a valid PROXY header closed");
            limits.note(Refusal::ProxyHeader, peer, "none");
            None
        }
    }
}

/// The TLS handshake, bounded (a slowloris guard of its own), and the
/// client certificate it verified; plain TCP passes through.
async fn secure(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
    limits: &Limits,
) -> Option<(BoxedIo, Option<PeerCertificate>)> {
    let Some(acceptor) = tls else { return Some((Box::new(tcp), None)) };
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| PeerCertificate(c.clone()));
            Some((Box::new(s), cert))
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "agent TLS handshake failed");
            limits.note(Refusal::TlsHandshakeFailed, remote, "none");
            None
        }
        Err(_) => {
            limits.note(Refusal::TlsHandshakeTimeout, remote, "none");
            None
        }
    }
}
