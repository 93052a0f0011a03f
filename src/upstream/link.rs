//! One task per upstream link slot.
//!
//! Lifecycle: dial → serve (pump both directions) → on loss: mark the slot
//! lost (its agents start migrating), fail handshakes in flight on it, hand
//! every queued agent frame back to its agent → back off → redial.
//! Rotation (`server.max_link_age`): close cleanly once the link's agents
//! have moved away → redial at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::dial::Dialer;
use crate::config::BackoffConfig;
use crate::relay::deadline;
use crate::relay::dispatch::Dispatch;
use crate::relay::{AgentShared, Held, Link, Outbound, Relay};
use crate::telemetry::metrics as m;
use crate::tls::BoxedIo;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Frames written this recently are handed back if the link dies: a write
/// can succeed into a socket the server has already closed, so "written"
/// is not "received". Bounded in frames and bytes per link.
const REPLAY_WINDOW: Duration = Duration::from_secs(1);
const REPLAY_MAX_FRAMES: usize = 4096;
const REPLAY_MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    pub keepalive: Duration,
    pub write_timeout: Duration,
    pub backoff: BackoffConfig,
}

/// Starts one task per slot of one upstream (`slots`: each with its send
/// queue's receiver). They run until `shutdown` is cancelled.
pub(crate) fn spawn_links(
    relay: Arc<Relay>,
    slots: Vec<(Arc<Link>, mpsc::Receiver<Outbound>)>,
    dialer: Arc<Dialer>,
    settings: LinkSettings,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    slots
        .into_iter()
        .map(|(link, rx)| {
            let task = LinkTask {
                link,
                rx,
                relay: relay.clone(),
                dialer: dialer.clone(),
                settings: settings.clone(),
                shutdown: shutdown.clone(),
            };
            tokio::spawn(task.run())
        })
        .collect()
}

struct LinkTask {
    link: Arc<Link>,
    rx: mpsc::Receiver<Outbound>,
    relay: Arc<Relay>,
    dialer: Arc<Dialer>,
    settings: LinkSettings,
    shutdown: CancellationToken,
}

/// Why `serve` returned.
enum End {
    Shutdown,
    Lost(String),
    /// Closed for rotation; redial without backoff.
    Rotated,
}

impl LinkTask {
    async fn run(mut self) {
        let id = self.link.id();
        let upstream = self.link.upstream_name().to_string();
        let mut backoff = Backoff::new(self.settings.backoff.clone());
        loop {
            let dialed = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = self.dialer.dial(self.link.local) => r,
            };
            match dialed {
                Ok(ws) => {
                    metrics::counter!(m::UPSTREAM_RECONNECTS, "upstream" => upstream.clone(), "outcome" => "success")
                        .increment(1);
                    backoff.reset();
                    let generation = self.link.mark_connected();
                    let connected_at = Instant::now();
                    tracing::info!(upstream, link = %id, endpoint = %self.dialer.endpoint(), "upstream link connected");
                    let gauge = metrics::gauge!(m::CONNECTIONS, "direction" => m::UPSTREAM);
                    gauge.increment(1.0);
                    let end = self.serve(ws, generation).await;
                    gauge.decrement(1.0);
                    self.lose();
                    match end {
                        End::Shutdown => break,
                        End::Rotated => {
                            metrics::counter!(m::LINK_ROTATIONS).increment(1);
                            tracing::info!(link = %id, age = ?connected_at.elapsed(), "upstream link rotated (server.max_link_age); redialing");
                            continue;
                        }
                        End::Lost(why) => {
                            metrics::counter!(m::UPSTREAM_LINK_LOSSES, "upstream" => upstream.clone()).increment(1);
                            tracing::warn!(upstream, link = %id, reason = %why, "upstream link lost; moving its agents");
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!(m::UPSTREAM_RECONNECTS, "upstream" => upstream.clone(), "outcome" => "failure")
                        .increment(1);
                    tracing::warn!(upstream, link = %id, error = %e, "upstream dial failed");
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(link = %id, ?delay, "redialing after backoff");
            if !self.idle(delay).await {
                break;
            }
        }
        self.lose();
        tracing::debug!(link = %id, "upstream link task stopped");
    }

    /// Marks the slot lost and returns everything queued on it.
    fn lose(&mut self) {
        if self.link.state().connected {
            self.link.mark_lost();
            self.relay.movable.link_lost(self.link.index);
        }
        self.relay.pending.fail_link(self.link.index);
        while let Ok(out) = self.rx.try_recv() {
            hand_back(out);
        }
    }

    /// Waits out a backoff delay, handing back anything queued meanwhile (a
    /// disconnected slot must never sit on an agent's frames). False on shutdown.
    async fn idle(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = &mut sleep => return true,
                out = self.rx.recv() => match out {
                    Some(out) => hand_back(out),
                    None => return false,
                },
            }
        }
    }

    async fn serve(&mut self, ws: WebSocketStream<BoxedIo>, generation: u64) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut recent = Recent::default();
        let end = self.pump(&mut sink, &mut stream, generation, &mut recent).await;
        if let End::Lost(_) = end {
            recent.hand_back_all();
        }
        end
    }

    async fn pump<S, R>(&mut self, sink: &mut S, stream: &mut R, generation: u64, recent: &mut Recent) -> End
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
        R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let keepalive = self.settings.keepalive;
        let write_timeout = self.settings.write_timeout;
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        let mut last_seen = Instant::now();
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        // Drop reasons already logged on this connection: a server sending
        // garbage in a loop must not flood the log (the counter has the rate).
        let mut warned = Vec::new();
        let link = self.link.clone();
        let rotate = link.rotation_requested(generation);
        tokio::pin!(rotate);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let close = Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "gateway shutting down".into() }));
                    let _ = tokio::time::timeout(write_timeout, sink.send(close)).await;
                    return End::Shutdown;
                }
                _ = &mut rotate => return self.close_for_rotation(sink, stream).await,
                msg = stream.next() => {
                    last_seen = Instant::now();
                    match msg {
                        Some(Ok(Message::Binary(frame))) => {
                            let outcome = self.relay.dispatch(&self.link, frame, last_seen);
                            if let Some(reason) = outcome.drop_reason() {
                                self.dropped(&mut warned, reason, &outcome);
                            } else if let Dispatch::BadHandshake(why) = &outcome {
                                self.warn_once(&mut warned, "bad_handshake", why, "unreadable connectResult: its agent was answered 502");
                            }
                        }
                        Some(Ok(Message::Text(_))) => self.dropped(&mut warned, "text_frame", &"a text frame"),
                        Some(Ok(Message::Close(frame))) => return End::Lost(format!("server closed: {frame:?}")),
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                        Some(Err(e)) => return End::Lost(e.to_string()),
                        None => return End::Lost("connection closed".into()),
                    }
                }
                n = self.rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return End::Shutdown; // relay dropped: gateway is going away
                    }
                    // Let the other sessions that are ready in this turn of
                    // the scheduler queue theirs: one write for all of them.
                    // Woken by the first sender, this task would otherwise
                    // run next and write each frame on its own.
                    if batch.len() < WRITE_BATCH {
                        tokio::task::yield_now().await;
                        while batch.len() < WRITE_BATCH {
                            let Ok(out) = self.rx.try_recv() else { break };
                            batch.push(out);
                        }
                    }
                    if let Err(why) = self.write_batch(sink, &mut batch, generation, write_timeout, recent).await {
                        return End::Lost(why);
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > keepalive * 2 {
                        return End::Lost(format!("no traffic from the server for {:?}", last_seen.elapsed()));
                    }
                    if tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                        return End::Lost("ping write failed".into());
                    }
                }
            }
        }
    }

    /// Closes with 1000 and reads until the server's close: what it sent
    /// meanwhile (replies to agents that just moved) is still delivered.
    async fn close_for_rotation<S, R>(&mut self, sink: &mut S, stream: &mut R) -> End
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
        R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let write_timeout = self.settings.write_timeout;
        let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "link rotation".into() }));
        if tokio::time::timeout(write_timeout, sink.send(close)).await.map_or(true, |r| r.is_err()) {
            return End::Lost("close for rotation failed".into());
        }
        let drain = async {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Binary(frame) = msg {
                    let _ = self.relay.dispatch(&self.link, frame, Instant::now());
                }
            }
        };
        let _ = tokio::time::timeout(write_timeout, drain).await;
        End::Rotated
    }

    /// Counts a server message that reached no one; warns once per reason
    /// per connection, later ones only at debug.
    fn dropped(&self, warned: &mut Vec<&'static str>, reason: &'static str, what: &dyn std::fmt::Debug) {
        metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::DOWNSTREAM, "reason" => reason).increment(1);
        self.warn_once(warned, reason, what, "server message not delivered");
    }

    /// Warns the first time `reason` happens on this connection, then logs
    /// it at debug: a broken server repeats itself on every message.
    fn warn_once(&self, warned: &mut Vec<&'static str>, reason: &'static str, what: &dyn std::fmt::Debug, msg: &str) {
        if warned.contains(&reason) {
            tracing::debug!(link = %self.link.id(), reason, ?what, "{msg}");
        } else {
            warned.push(reason);
            tracing::warn!(link = %self.link.id(), reason, ?what, "{msg} (further ones with this reason on this connection: debug only)");
        }
    }

    /// Writes a batch with one flush. On failure every frame of the batch is
    /// handed back: a duplicate status report is harmless, a lost one is not.
    async fn write_batch<S>(
        &self,
        sink: &mut S,
        batch: &mut Vec<Outbound>,
        generation: u64,
        write_timeout: Duration,
        recent: &mut Recent,
    ) -> Result<(), String>
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        // Frames queued for an earlier connection of this slot go back to
        // their agents: this server connection never saw their handshake.
        let (current, stale): (Vec<_>, Vec<_>) = batch.drain(..).partition(|o| o.generation == generation);
        stale.into_iter().for_each(hand_back);
        let write = async {
            for o in &current {
                for part in fragments(&o.frame) {
                    sink.feed(part).await?;
                }
            }
            sink.flush().await
        };
        match deadline::within(write_timeout, write).await {
            Ok(Ok(())) => {
                let now = Instant::now();
                let relayed = m::relayed(m::UPSTREAM);
                relayed.messages.increment(current.len() as u64);
                for o in current {
                    relayed.bytes.increment(o.frame.len() as u64);
                    relayed.latency.record(now.duration_since(o.received).as_secs_f64());
                    if let Some(agent) = o.agent {
                        recent.push(now, o.frame, agent);
                    }
                }
                Ok(())
            }
            Ok(Err(e)) => {
                current.into_iter().for_each(hand_back);
                Err(format!("write failed: {e}"))
            }
            Err(_) => {
                current.into_iter().for_each(hand_back);
                Err(format!("write took longer than {write_timeout:?}"))
            }
        }
    }
}

/// Messages above this go out as several WebSocket frames of this size:
/// tungstenite copies a frame whole into its write buffer, whose capacity
/// then stays with the link for good (tens of MiB after one big message).
const FRAGMENT: usize = 1 << 20;

/// One message as WebSocket frames: one, or fragments (RFC 6455 §5.4).
fn fragments(frame: &Bytes) -> impl Iterator<Item = Message> + '_ {
    let n = frame.len().div_ceil(FRAGMENT).max(1);
    (0..n).map(move |i| {
        if n == 1 {
            return Message::Binary(frame.clone());
        }
        let part = frame.slice(i * FRAGMENT..((i + 1) * FRAGMENT).min(frame.len()));
        let opcode = if i == 0 { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Continue) };
        Message::Frame(Frame::message(part, opcode, i + 1 == n))
    })
}

/// Agent frames written in the last [`REPLAY_WINDOW`], oldest first.
#[derive(Default)]
struct Recent {
    frames: VecDeque<(Instant, Bytes, Arc<AgentShared>)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, at: Instant, frame: Bytes, agent: Arc<AgentShared>) {
        self.bytes += frame.len();
        self.frames.push_back((at, frame, agent));
        while let Some((t, f, _)) = self.frames.front() {
            let expired = at.duration_since(*t) > REPLAY_WINDOW;
            if !(expired || self.frames.len() > REPLAY_MAX_FRAMES || self.bytes > REPLAY_MAX_BYTES) {
                break;
            }
            self.bytes -= f.len();
            self.frames.pop_front();
        }
    }

    /// The link died: these may never have reached the server.
    fn hand_back_all(&mut self) {
        let cutoff = Instant::now().checked_sub(REPLAY_WINDOW);
        for (t, frame, agent) in self.frames.drain(..) {
            if cutoff.is_none_or(|c| t >= c) {
                metrics::counter!(m::MESSAGES_REPLAYED).increment(1);
                agent.hand_back(frame, Held::default()); // written already: its share went back then
            }
        }
        self.bytes = 0;
    }
}

/// Returns an undelivered frame to its agent, or counts the gateway's own
/// message (a handshake whose waiter has already been failed) as dropped.
fn hand_back(out: Outbound) {
    match out.agent {
        Some(agent) => agent.hand_back(out.frame, out.held),
        None => {
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "link_lost").increment(1);
        }
    }
}
