//! Accepting agent connections: TCP, optional TLS, HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{upgrade, Downstream};
use crate::config::ServerTlsConfig;
use crate::tls::{self, TlsError};
use crate::upstream::dial::BoxedIo;

/// A TLS handshake slower than this is abandoned (slowloris guard).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener.endpoint: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A bound listener, not yet serving.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

pub async fn bind(addr: SocketAddr, tls: Option<&ServerTlsConfig>) -> Result<Listener, ListenerError> {
    let tls = tls.map(tls::server_config).transpose()?.map(TlsAcceptor::from);
    let tcp = TcpListener::bind(addr).await.map_err(|source| ListenerError::Bind { addr, source })?;
    Ok(Listener { tcp, tls })
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound socket has an address")
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts until shutdown; then stops accepting (sessions are closed
    /// separately, through `Downstream::shutdown`).
    pub fn serve(self, ds: Arc<Downstream>) -> JoinHandle<()> {
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
                let _ = tcp.set_nodelay(true);
                let tls = self.tls.clone();
                let ds = ds.clone();
                tokio::spawn(async move {
                    let io: BoxedIo = match tls {
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                        {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "agent TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                        None => Box::new(tcp),
                    };
                    let service = service_fn(move |req| {
                        let ds = ds.clone();
                        async move { Ok::<_, Infallible>(upgrade::handle(ds, req, remote).await) }
                    });
                    let conn = http1::Builder::new()
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        tracing::debug!(%remote, error = %e, "agent HTTP connection ended with an error");
                    }
                });
            }
            tracing::info!("listener stopped accepting");
        })
    }
}
