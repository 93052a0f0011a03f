//! An HTTP CONNECT proxy on loopback, for tests of egress through a proxy.
//!
//! It answers `CONNECT host:port`, optionally demands Basic credentials,
//! optionally speaks TLS itself (an `https://` proxy), and records every
//! request in a [`ProxyState`] that tests wait on. Every target host is
//! reached at 127.0.0.1, so a test can name an upstream `opamp.test` that only
//! the proxy can "resolve".

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::server::WaitTimeout;
use crate::upstream::proxy::read_head;

#[derive(Debug, Clone)]
pub struct ConnectProxyConfig {
    pub listen: SocketAddr,
    /// `(user, password)` every CONNECT must carry; otherwise 407.
    pub basic_auth: Option<(String, String)>,
    /// Serve TLS (an `https://` proxy); certificate for `localhost`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ConnectProxyConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), basic_auth: None, tls: None }
    }
}

/// One CONNECT request the proxy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRecord {
    /// The request target, `host:port` as sent.
    pub target: String,
    /// The `Proxy-Authorization` header, if any.
    pub authorization: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyState {
    pub requests: Vec<ConnectRecord>,
    /// Tunnels currently carrying bytes.
    pub open_tunnels: usize,
}

struct Shared {
    basic_auth: Option<String>,
    refuse: Mutex<Option<u16>>,
    state: watch::Sender<ProxyState>,
}

/// A running proxy. Dropping it stops it and its tunnels.
pub struct ConnectProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    accept_task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start(cfg: ConnectProxyConfig) -> io::Result<ConnectProxy> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let basic_auth = cfg
            .basic_auth
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let shared =
            Arc::new(Shared { basic_auth, refuse: Mutex::new(None), state: watch::Sender::new(ProxyState::default()) });
        let tls = cfg.tls.is_some();
        let accept_task = tokio::spawn(accept_loop(listener, cfg.tls.map(TlsAcceptor::from), shared.clone()));
        Ok(ConnectProxy { shared, addr, tls, accept_task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.addr.port()),
            false => format!("http://{}", self.addr),
        }
    }

    /// Answer every CONNECT with this status (e.g. 403) until set to `None`.
    pub fn set_refusal(&self, status: Option<u16>) {
        *self.shared.refuse.lock() = status;
    }

    pub fn state(&self) -> ProxyState {
        self.shared.state.borrow().clone()
    }

    /// Waits until `pred` holds for the state, or `timeout` passes.
    pub async fn wait_until<F>(&self, timeout: Duration, pred: F) -> Result<(), WaitTimeout>
    where
        F: Fn(&ProxyState) -> bool,
    {
        let mut rx = self.shared.state.subscribe();
        let met = tokio::time::timeout(timeout, async { rx.wait_for(|s| pred(s)).await.is_ok() }).await;
        match met {
            Ok(true) => Ok(()),
            _ => Err(WaitTimeout(timeout)),
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    // Owned here so aborting this task aborts every tunnel.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let (tls, shared) = (tls.clone(), shared.clone());
                conns.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, &shared).await;
                            }
                        }
                        None => serve(tcp, &shared).await,
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, shared: &Shared) {
    let Ok(head) = read_head(&mut client).await else { return };
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut request = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or("").to_owned());
    let authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("proxy-authorization").then(|| value.trim().to_owned())
    });
    let refusal = *shared.refuse.lock();
    let mut upstream = None;
    let status = if method != "CONNECT" {
        405
    } else if let Some(status) = refusal {
        status
    } else if shared.basic_auth.is_some() && authorization != shared.basic_auth {
        407
    } else {
        // Any host is "resolved" to loopback; the port is kept.
        let port = target.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        match port {
            Some(port) => match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => {
                    upstream = Some(s);
                    200
                }
                Err(_) => 502,
            },
            None => 400,
        }
    };
    shared.state.send_modify(|s| s.requests.push(ConnectRecord { target, authorization, status }));
    let answer = match status {
        200 => "HTTP/1.1 200 Connection established\r\n\r\n".to_owned(),
        407 => "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n".to_owned(),
        s => format!("HTTP/1.1 {s} {}\r\nContent-Length: 0\r\n\r\n", reason(s)),
    };
    if client.write_all(answer.as_bytes()).await.is_err() || client.flush().await.is_err() {
        return;
    }
    let Some(mut upstream) = upstream else { return };
    shared.state.send_modify(|s| s.open_tunnels += 1);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    shared.state.send_modify(|s| s.open_tunnels -= 1);
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        _ => "Refused",
    }
}
