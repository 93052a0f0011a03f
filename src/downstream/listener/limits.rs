//! The listener's socket budget: every open agent socket holds a permit, and
//! one source may hold only so many sockets that are not agents yet. What is
//! refused is answered (plain HTTP), counted and logged (rate-limited).
//! Sockets that are not agents yet also take turns (`max_handshaking`): a
//! connect storm waits in the kernel's buffers instead of allocating request
//! buffers and TLS state for every socket at once, which the allocator keeps.
//! One source gets at most half of the turns (at least one), and its sockets
//! queue for its own share first: a slow client trickling requests from one
//! address (slowloris) cannot hold every turn, while a fleet behind one
//! address (a load balancer without PROXY headers) still gets half.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::downstream::log_every::{LogEvery, REFUSAL_LOG_EVERY as LOG_EVERY};
use crate::telemetry::metrics as m;

/// Refusals being answered at once; beyond, a refused socket is just closed
/// (a flood must not turn the answers into a socket budget of their own).
const ANSWERING: usize = 256;
/// Time to write a refusal and let the client read it.
const ANSWER_TIME: Duration = Duration::from_secs(2);

/// Why a connection was turned away or closed before becoming an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Refusal {
    MaxConnections,
    PerSource,
    HeaderTimeout,
    TlsHandshakeTimeout,
    TlsHandshakeFailed,
    /// `listener.proxy_protocol`: no valid PROXY header.
    ProxyHeader,
}

impl Refusal {
    /// The `reason` label, named after the setting that decided it.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerSource => "max_handshaking_per_source",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::TlsHandshakeTimeout => "tls_handshake_timeout",
            Refusal::TlsHandshakeFailed => "tls_handshake_failed",
            Refusal::ProxyHeader => "proxy_header",
        }
    }

    /// The HTTP answer (status, its label, text) where one is given.
    fn answer(self) -> Option<(StatusCode, &'static str, &'static str)> {
        match self {
            Refusal::MaxConnections => {
                Some((StatusCode::SERVICE_UNAVAILABLE, "503", "gateway at its connection limit"))
            }
            Refusal::PerSource => {
                Some((StatusCode::TOO_MANY_REQUESTS, "429", "too many connections from this address still connecting"))
            }
            _ => None,
        }
    }
}

/// A socket's share of the budget, held for the socket's whole life; the
/// source slot and the turn only until it becomes an agent.
pub(super) struct Admitted {
    pub permit: OwnedSemaphorePermit,
    pub source: SourceSlot,
    pub turn: Option<Turn>,
}

/// A socket's turn in the TLS/HTTP phase: its source's share and one of the
/// gateway-wide turns. Dropped at the socket's first answer.
pub(super) struct Turn {
    _global: OwnedSemaphorePermit,
    source: Option<OwnedSemaphorePermit>,
    key: IpAddr,
    shares: Arc<Shares>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.source.take());
        self.shares.forget_idle(self.key);
    }
}

/// Each source's share of the turns.
struct Shares {
    per_source: usize,
    sources: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// Sources remembered before the idle ones are swept: a wait cancelled
/// (at shutdown) leaves its source behind.
const SHARES_SWEEP: usize = 1024;

impl Shares {
    fn of(&self, key: IpAddr) -> Arc<Semaphore> {
        let mut sources = self.sources.lock();
        if sources.len() >= SHARES_SWEEP {
            sources.retain(|_, s| Arc::strong_count(s) > 1);
        }
        sources.entry(key).or_insert_with(|| Arc::new(Semaphore::new(self.per_source))).clone()
    }

    /// Forgets a source no socket holds or waits for a share of.
    fn forget_idle(&self, key: IpAddr) {
        let mut sources = self.sources.lock();
        if sources.get(&key).is_some_and(|s| Arc::strong_count(s) == 1) {
            sources.remove(&key);
        }
    }
}

pub(super) struct Limits {
    budget: Arc<Semaphore>,
    max_connections: usize,
    sources: Arc<Sources>,
    answering: Arc<Semaphore>,
    turns: Arc<Semaphore>,
    shares: Arc<Shares>,
    log: LogEvery<Refusal>,
}

impl Limits {
    pub(super) fn new(max_connections: usize, max_handshaking_per_source: usize, max_handshaking: usize) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            sources: Arc::new(Sources { max: max_handshaking_per_source, counts: Mutex::default() }),
            answering: Arc::new(Semaphore::new(ANSWERING)),
            turns: Arc::new(Semaphore::new(max_handshaking)),
            shares: Arc::new(Shares { per_source: (max_handshaking / 2).max(1), sources: Mutex::default() }),
            log: LogEvery::new(LOG_EVERY),
        }
    }

    /// A newly accepted socket's permit and source slot, if both are free.
    pub(super) fn admit(&self, ip: IpAddr) -> Result<Admitted, Refusal> {
        let source = self.source(ip)?;
        Ok(Admitted { permit: self.permit()?, source, turn: None })
    }

    /// A turn in the TLS/HTTP phase for a socket from `ip`: first a share
    /// of its source's, then a gateway-wide one. Waits (counted once) while
    /// either is taken.
    pub(super) async fn turn(&self, ip: IpAddr) -> Turn {
        let key = source_key(ip);
        let share = self.shares.of(key);
        let (source, global) = match (share.clone().try_acquire_owned(), self.turns.clone().try_acquire_owned()) {
            (Ok(source), Ok(global)) => (source, global),
            (source, _) => {
                metrics::counter!(m::LISTENER_HANDSHAKE_WAITS).increment(1);
                let source = match source {
                    Ok(s) => s,
                    Err(_) => share.acquire_owned().await.expect("a share semaphore is never closed"),
                };
                let global = self.turns.clone().acquire_owned().await.expect("the turn semaphore is never closed");
                (source, global)
            }
        };
        Turn { _global: global, source: Some(source), key, shares: self.shares.clone() }
    }

    /// The budget share alone: behind a PROXY header the source is known
    /// only once the header is read.
    pub(super) fn permit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.budget.clone().try_acquire_owned().map_err(|_| Refusal::MaxConnections)
    }

    pub(super) fn source(&self, ip: IpAddr) -> Result<SourceSlot, Refusal> {
        self.sources.try_acquire(ip).ok_or(Refusal::PerSource)
    }

    /// Turns a socket away: on a plain listener with a short HTTP answer
    /// (`Retry-After` included), on TLS by closing it (a handshake is what an
    /// overloaded gateway should not spend).
    pub(super) fn refuse(&self, tcp: TcpStream, remote: SocketAddr, why: Refusal, tls: bool, retry_after: Duration) {
        let slot = if tls { None } else { self.answering.clone().try_acquire_owned().ok() };
        match (why.answer(), slot) {
            (Some((status, label, text)), Some(slot)) => {
                self.note(why, remote, label);
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(ANSWER_TIME, answer(tcp, status, text, retry_after)).await;
                });
            }
            _ => self.note(why, remote, "none"),
        }
    }

    /// Counts a connection closed before it became an agent, and logs the
    /// first of each reason per [`LOG_EVERY`].
    pub(super) fn note(&self, why: Refusal, remote: SocketAddr, status: &'static str) {
        metrics::counter!(m::HANDSHAKES, "outcome" => "refused", "reason" => why.reason(), "status" => status)
            .increment(1);
        let Some(since_last) = self.log.check(why) else { return };
        let limit = match why {
            Refusal::MaxConnections => self.max_connections,
            Refusal::PerSource => self.sources.max,
            _ => 0,
        };
        tracing::info!(
            reason = why.reason(),
            source = %remote.ip(),
            limit,
            suppressed_since_last = since_last,
            "agent connection refused (logged at most once per {}s per reason)",
            LOG_EVERY.as_secs()
        );
    }
}

/// Writes the answer, then reads until the client closes: closing with its
/// request unread would reset the connection and could destroy the answer
/// before the client reads it.
async fn answer(mut tcp: TcpStream, status: StatusCode, text: &str, retry_after: Duration) -> io::Result<()> {
    let reason = status.canonical_reason().unwrap_or("");
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nRetry-After: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        status.as_str(),
        retry_after.as_secs().max(1),
        text.len() + 1,
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await?;
    let mut sink = [0u8; 1024];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Sockets per source that are not agents yet.
struct Sources {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut counts = self.counts.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { sources: self.clone(), key })
    }
}

/// One not-yet-agent socket of a source; dropped when the socket becomes an
/// agent or closes.
pub(super) struct SourceSlot {
    sources: Arc<Sources>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.sources.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// IPv4 by address; IPv6 by /64, the block one host is usually given.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_slots_are_returned() {
        let limits = Limits::new(10, 2, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).err(), Some(Refusal::PerSource));
        assert!(limits.admit("192.0.2.2".parse().unwrap()).is_ok(), "another source has its own share");
        drop(a.source);
        assert!(limits.admit(ip).is_ok(), "a slot comes back when its socket is no longer connecting");
    }

    #[test]
    fn budget_permits_are_returned() {
        let limits = Limits::new(1, 10, 10);
        let a = limits.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(limits.admit("192.0.2.2".parse().unwrap()).err(), Some(Refusal::MaxConnections));
        drop(a);
        let _b = limits.admit("192.0.2.2".parse().unwrap()).unwrap();
        let counts = limits.sources.counts.lock();
        assert_eq!(counts.get(&"192.0.2.2".parse().unwrap()), Some(&1), "the refusal returned its source slot");
        assert_eq!(counts.len(), 1, "a source with no connecting socket is forgotten");
    }

    #[tokio::test]
    async fn sockets_take_turns_beyond_max_handshaking() {
        use futures_util::FutureExt;
        let limits = Limits::new(10, 10, 1);
        let ip = "192.0.2.1".parse().unwrap();
        let first = limits.turn(ip).await;
        assert!(limits.turn("192.0.2.2".parse().unwrap()).now_or_never().is_none(), "a second socket waits");
        drop(first);
        assert!(limits.turn(ip).now_or_never().is_some(), "a returned turn goes to the next socket");
        assert!(!limits.shares.sources.lock().contains_key(&ip), "a source with no turn is forgotten");
    }

    #[tokio::test]
    async fn one_source_cannot_hold_every_turn() {
        use futures_util::FutureExt;
        let limits = Limits::new(100, 100, 16);
        let slow: IpAddr = "192.0.2.66".parse().unwrap();
        let held: Vec<_> = (0..8).map(|_| limits.turn(slow).now_or_never().expect("its share")).collect();
        assert!(limits.turn(slow).now_or_never().is_none(), "a source's ninth socket waits: half of 16");
        let others: Vec<_> = (1..=8u8)
            .map(|i| limits.turn(IpAddr::from([198, 51, 100, i])).now_or_never().expect("other sources get turns"))
            .collect();
        assert_eq!(held.len() + others.len(), 16);
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
    }
}
