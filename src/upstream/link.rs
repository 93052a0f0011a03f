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
use crate::relay::doorbell::Rings;
use crate::relay::{AgentShared, Held, Link, Outbound, Relay};
use crate::telemetry::metrics as m;
use crate::tls::BoxedIo;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// A frame written this long before the server was last heard from counts
/// as received; later ones are handed back if the link dies (see
/// [`Recent`]). Bounded in frames and bytes per link.
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
    // The link tasks learn of shutdown from their bells: waiting on the
    // token itself would take its lock on every frame.
    let bells = tokio::spawn({
        let links: Vec<Arc<Link>> = slots.iter().map(|(link, _)| link.clone()).collect();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            links.iter().for_each(|link| link.shut_down());
        }
    });
    let mut tasks: Vec<_> = slots
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
        .collect();
    tasks.push(bells);
    tasks
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
        let mut recent = Recent::new(Instant::now());
        let end = self.pump(&mut sink, &mut stream, generation, &mut recent).await;
        if let End::Lost(_) = end {
            let lost = recent.hand_back_all();
            if lost > 0 {
                tracing::warn!(
                    link = %self.link.id(),
                    frames = lost,
                    max_frames = REPLAY_MAX_FRAMES,
                    max_bytes = REPLAY_MAX_BYTES,
                    "link lost with frames beyond its replay bounds: they may not have reached the server"
                );
            }
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
        // Shutdown and rotation ring the link's bell; a ring before this
        // connection's first wait is kept until taken.
        let link = self.link.clone();
        loop {
            tokio::select! {
                biased;
                rings = link.rung() => {
                    if rings.contains(Rings::CLOSING) {
                        let close = Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "gateway shutting down".into() }));
                        let _ = tokio::time::timeout(write_timeout, sink.send(close)).await;
                        return End::Shutdown;
                    }
                    if link.rotation_requested(generation) {
                        return self.close_for_rotation(sink, stream).await;
                    }
                }
                msg = stream.next() => {
                    last_seen = Instant::now();
                    recent.heard(last_seen);
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

/// Agent frames the server may not have received, oldest first.
///
/// TCP gives no receipt, and OpAMP none of its own. A write can succeed into
/// a socket the server has already closed, and on a half-open link (a
/// middlebox that silently eats everything) writes succeed until the
/// keepalive notices, up to `2 × server.keepalive` later. What the server
/// answered or ponged after is taken as received: frames written more than
/// [`REPLAY_WINDOW`] before the server was last heard from. The rest are
/// handed back to their agents when the link dies, to be sent again on
/// another: at least once, never silently lost, within the frame and byte
/// bounds. Frames pushed out by those bounds before they count as received
/// are counted as `link_lost` drops if the link then dies.
struct Recent {
    frames: VecDeque<(Instant, Bytes, Arc<AgentShared>)>,
    bytes: usize,
    /// When this connection last brought anything from the server.
    heard: Instant,
    /// Frames pushed out by the bounds while not yet received, and when the
    /// newest of them was written.
    evicted: Option<(u64, Instant)>,
}

impl Recent {
    fn new(now: Instant) -> Self {
        Self { frames: VecDeque::new(), bytes: 0, heard: now, evicted: None }
    }

    fn heard(&mut self, at: Instant) {
        self.heard = at;
        if self.evicted.is_some_and(|(_, newest)| self.received(newest, at)) {
            self.evicted = None;
        }
    }

    /// Whether a frame written at `written` counts as received, `now`.
    fn received(&self, written: Instant, now: Instant) -> bool {
        now.min(self.heard).checked_sub(REPLAY_WINDOW).is_some_and(|cutoff| written < cutoff)
    }

    fn push(&mut self, at: Instant, frame: Bytes, agent: Arc<AgentShared>) {
        self.bytes += frame.len();
        self.frames.push_back((at, frame, agent));
        while let Some((t, f, _)) = self.frames.front() {
            let received = self.received(*t, at);
            if !(received || self.frames.len() > REPLAY_MAX_FRAMES || self.bytes > REPLAY_MAX_BYTES) {
                break;
            }
            if !received {
                let (n, _) = self.evicted.unwrap_or((0, *t));
                self.evicted = Some((n + 1, *t));
            }
            self.bytes -= f.len();
            self.frames.pop_front();
        }
    }

    /// The link died: the frames it may not have delivered, oldest first.
    fn unreceived(&mut self, now: Instant) -> Vec<(Bytes, Arc<AgentShared>)> {
        self.bytes = 0;
        let frames = std::mem::take(&mut self.frames);
        frames.into_iter().filter(|(t, _, _)| !self.received(*t, now)).map(|(_, f, a)| (f, a)).collect()
    }

    /// Hands back what the server may not have received; returns how many
    /// frames were beyond the bounds (counted as dropped here).
    fn hand_back_all(&mut self) -> u64 {
        for (frame, agent) in self.unreceived(Instant::now()) {
            metrics::counter!(m::MESSAGES_REPLAYED).increment(1);
            agent.hand_back(frame, Held::default()); // written already: its share went back then
        }
        let lost = self.evicted.take().map_or(0, |(n, _)| n);
        if lost > 0 {
            metrics::counter!(m::MESSAGES_DROPPED, "direction" => m::UPSTREAM, "reason" => "link_lost").increment(lost);
        }
        lost
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::identity::{Credential, Identity};

    fn agent() -> Arc<AgentShared> {
        AgentShared::new(1, 8, 8, Identity::agent(Credential::none())).0
    }

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn frames(v: Vec<(Bytes, Arc<AgentShared>)>) -> Vec<Bytes> {
        v.into_iter().map(|(f, _)| f).collect()
    }

    /// A half-open link: the server fell silent at `t0`, the keepalive
    /// noticed 10 s later. Everything written since then goes back, not
    /// just the last [`REPLAY_WINDOW`].
    #[test]
    fn a_silent_server_confirms_nothing_written_after_it_fell_silent() {
        let t0 = Instant::now();
        let mut recent = Recent::new(t0);
        let a = agent();
        for (i, secs) in [0.5, 3.0, 9.5].into_iter().enumerate() {
            recent.push(t0 + Duration::from_secs_f64(secs), frame(i as u8), a.clone());
        }
        assert_eq!(frames(recent.unreceived(t0 + Duration::from_secs(10))), [frame(0), frame(1), frame(2)]);
    }

    /// What the server answered after is taken as received.
    #[test]
    fn frames_written_well_before_the_server_last_spoke_count_as_received() {
        let t0 = Instant::now();
        let mut recent = Recent::new(t0);
        let a = agent();
        recent.push(t0 + Duration::from_millis(500), frame(0), a.clone());
        recent.push(t0 + Duration::from_secs(3), frame(1), a.clone());
        recent.heard(t0 + Duration::from_secs(5));
        recent.push(t0 + Duration::from_millis(4500), frame(2), a.clone());
        recent.push(t0 + Duration::from_secs(6), frame(3), a.clone());
        assert_eq!(recent.frames.len(), 2, "the received ones are let go on the next push");
        assert_eq!(frames(recent.unreceived(t0 + Duration::from_secs(20))), [frame(2), frame(3)]);
        assert_eq!(recent.hand_back_all(), 0, "nothing was beyond the bounds");
    }

    #[test]
    fn frames_beyond_the_bounds_are_counted_unless_the_server_confirms_them() {
        let t0 = Instant::now();
        let mut recent = Recent::new(t0);
        let a = agent();
        for i in 0..REPLAY_MAX_FRAMES + 3 {
            recent.push(t0 + Duration::from_micros(i as u64), frame(i as u8), a.clone());
        }
        assert_eq!(recent.frames.len(), REPLAY_MAX_FRAMES);
        assert_eq!(recent.evicted.map(|(n, _)| n), Some(3));
        // The server speaks 2 s on: the pushed-out frames were received.
        let mut confirmed = Recent { evicted: recent.evicted, ..Recent::new(t0) };
        confirmed.heard(t0 + Duration::from_secs(2));
        assert_eq!(confirmed.evicted, None);
        // It never does: the link's loss counts them.
        assert_eq!(recent.hand_back_all(), 3);
    }
}
