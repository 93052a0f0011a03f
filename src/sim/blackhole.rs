//! [`BlackholeProxy`]: a TCP relay that can turn its connections into
//! half-open ones — bytes vanish in both directions, nothing is closed — as a
//! dead NAT entry or a silently dropped route does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running proxy to one target. Dropping it stops it and its connections.
pub struct BlackholeProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// One flag per connection accepted so far: true while it is blackholed.
    flags: Mutex<Vec<watch::Sender<bool>>>,
    /// Connections accepted so far.
    accepted: watch::Sender<u64>,
}

impl BlackholeProxy {
    /// Listens on a loopback port and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<BlackholeProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { flags: Mutex::new(Vec::new()), accepted: watch::Sender::new(0) });
        let accept_task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(BlackholeProxy { addr, shared, accept_task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blackholes (or restores) every connection open now. Connections
    /// accepted later relay normally, so a redial gets through.
    pub fn set_blackhole(&self, on: bool) {
        for flag in self.shared.flags.lock().iter() {
            flag.send_replace(on);
        }
    }

    /// Changes whenever a connection is accepted; the value is the count.
    pub fn accepted(&self) -> watch::Receiver<u64> {
        self.shared.accepted.subscribe()
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let (flag, rx) = watch::channel(false);
                shared.flags.lock().push(flag);
                shared.accepted.send_modify(|n| *n += 1);
                conns.spawn(relay(client, target, rx));
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay(client: TcpStream, target: SocketAddr, blackhole: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(target).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending ends both, as a plain TCP relay would.
    tokio::select! {
        _ = copy(cr, sw, blackhole.clone()) => {}
        _ = copy(sr, cw, blackhole) => {}
    }
}

/// Copies until EOF or an error; while blackholed, reads and discards, so
/// the writer sees its bytes accepted and never hears back.
async fn copy<R, W>(mut from: R, mut to: W, blackhole: watch::Receiver<bool>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(_) if *blackhole.borrow() => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
