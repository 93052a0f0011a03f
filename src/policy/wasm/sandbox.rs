//! What an instance can touch: its [`HostState`].
//!
//! - WASI is linked (Rust's std for `wasm32-wasip2` imports it) but denies
//!   everything: no preopened directories, no environment, no arguments, no
//!   sockets or name lookups, stdin closed, both clocks frozen at zero.
//!   Random numbers stay available: they grant no authority and std's
//!   `HashMap` seeds itself from them.
//! - stdout/stderr go to a small per-instance memory buffer that the pool
//!   drains after each call into the log, line by line, rate-limited per
//!   policy (a panic message ends up in the error). Guest output never
//!   reaches the gateway's own stdout/stderr.
//! - WASI's blocking I/O calls never block and never enter an async
//!   runtime ([`add_wasi_to_linker`]): calls run synchronously on the
//!   relay's tokio threads, where wasmtime-wasi's sync bridge (`block_on`)
//!   panics.
//! - `host.log` and output lines share one per-policy budget
//!   ([`GuestLog`]): `policies.limits.log_lines` per `log_interval`, then
//!   one "suppressed N lines" summary.
//! - Memory growth beyond the policy's limit is refused by [`Limiter`], which
//!   remembers the refusal so a subsequent trap is reported as `Memory`.
//! - The `host.log` import, routed to `tracing` with the policy's name.
//! - The current call's CPU-time deadline ([`CallClock`]).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::deadline::CallClock;
use crate::policy::state::StateStore;
use crate::policy::throttle::Throttle;
use crate::telemetry::metrics as m;

/// Bytes of stdout/stderr kept per call; the rest is discarded.
const OUTPUT_CAP: usize = 4096;
/// Longest `host.log` line kept, bytes.
const LOG_LINE_CAP: usize = 1024;
/// `host.log` lines kept per call.
const LOG_LINES_PER_CALL: u32 = 16;

/// The `T` of every policy `Store<T>`.
pub(crate) struct HostState {
    pub policy: Arc<str>,
    guest: Arc<GuestLog>,
    pub table: ResourceTable,
    wasi: WasiCtx,
    pub limiter: Limiter,
    output: OutputBuffer,
    logs_this_call: u32,
    /// The current call's deadline (see `deadline`).
    pub clock: CallClock,
    /// The policy's shared state store (see `crate::policy::state`).
    pub state: Arc<StateStore>,
}

impl HostState {
    pub(crate) fn new(guest: Arc<GuestLog>, state: Arc<StateStore>, memory_limit: u64) -> Self {
        let output = OutputBuffer::default();
        let mut b = WasiCtx::builder();
        b.stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Self {
            policy: guest.policy.clone(),
            guest,
            table: ResourceTable::new(),
            wasi: b.build(),
            limiter: Limiter::new(memory_limit),
            output,
            logs_this_call: 0,
            clock: CallClock::default(),
            state,
        }
    }

    /// Resets per-call state before a call with CPU-time `budget`; `hook`:
    /// a hook call (on the relay's path), not `init`.
    pub(crate) fn begin_call(&mut self, budget: Duration, hook: bool) {
        self.clock.start(budget, hook);
        self.logs_this_call = 0;
        self.limiter.hit = false;
        self.output.clear();
    }

    /// What the guest printed during the call, lossily decoded.
    pub(crate) fn take_output(&mut self) -> Option<String> {
        let bytes = self.output.take();
        if bytes.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(&bytes).trim_end().to_owned())
    }

    /// Logs what a healthy call printed, a line at a time, within the
    /// policy's log budget.
    pub(crate) fn log_output(&mut self) {
        let Some(out) = self.take_output() else { return };
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            if self.guest.admit() {
                tracing::debug!(target: "opamp_gateway::policy::guest", policy = &*self.policy, stream = "stdio", "{line}");
            }
        }
    }
}

/// One policy's log budget, shared by all its instances.
pub(crate) struct GuestLog {
    pub policy: Arc<str>,
    throttle: Throttle,
    /// One "lines beyond the per-call cap" warning per interval.
    over_cap: Throttle,
    suppressed: OnceLock<metrics::Counter>,
}

impl GuestLog {
    pub(crate) fn new(policy: Arc<str>, lines: u32, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            policy,
            throttle: Throttle::new(lines, interval),
            over_cap: Throttle::new(1, interval),
            suppressed: OnceLock::new(),
        })
    }

    /// Whether one more line may be logged now (a line that may not is
    /// counted as suppressed); says how many were suppressed before it, once.
    fn admit(&self) -> bool {
        match self.throttle.admit(tokio::time::Instant::now()) {
            Some(0) => true,
            Some(n) => {
                tracing::info!(
                    target: "opamp_gateway::policy::guest",
                    policy = &*self.policy,
                    suppressed = n,
                    "{n} policy log lines suppressed (policies.limits.log_lines)"
                );
                true
            }
            None => {
                self.suppress();
                false
            }
        }
    }

    /// Counts one line that is not logged.
    fn suppress(&self) {
        self.suppressed
            .get_or_init(|| metrics::counter!(m::POLICY_LOG_SUPPRESSED, "policy" => self.policy.to_string()))
            .increment(1);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `host.level`, the same in every WIT version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl HostState {
    /// `host.log` (every WIT version's import calls this).
    pub(crate) fn guest_log(&mut self, level: GuestLevel, mut message: String) {
        use GuestLevel as Level;
        self.logs_this_call += 1;
        if self.logs_this_call > LOG_LINES_PER_CALL {
            // Counted as suppressed; warned about once per interval, or a
            // policy logging on every call would warn on every call.
            self.guest.suppress();
            if self.logs_this_call == LOG_LINES_PER_CALL + 1
                && self.guest.over_cap.admit(tokio::time::Instant::now()).is_some()
            {
                tracing::warn!(
                    policy = &*self.policy,
                    "policy log lines beyond {LOG_LINES_PER_CALL} in one call dropped"
                );
            }
            return;
        }
        truncate(&mut message, LOG_LINE_CAP);
        // The guest SDK reports panics here instead of on stderr; keep the
        // text with the call's output so a trap's error names its cause.
        if level == Level::Error && message.starts_with("panic: ") {
            self.output.append(message.as_bytes());
            self.output.append(b"\n");
        }
        if !self.guest.admit() {
            return;
        }
        let policy = &*self.policy;
        match level {
            Level::Trace => tracing::trace!(target: "opamp_gateway::policy::guest", policy, "{message}"),
            Level::Debug => tracing::debug!(target: "opamp_gateway::policy::guest", policy, "{message}"),
            Level::Info => tracing::info!(target: "opamp_gateway::policy::guest", policy, "{message}"),
            Level::Warn => tracing::warn!(target: "opamp_gateway::policy::guest", policy, "{message}"),
            Level::Error => tracing::error!(target: "opamp_gateway::policy::guest", policy, "{message}"),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Memory and table limits of one store.
pub(crate) struct Limiter {
    memory_limit: usize,
    /// Set when a growth was refused during the current call.
    pub hit: bool,
}

/// Table elements allowed per table (function pointers for indirect calls);
/// generous for any real program, small enough to bound host memory.
const TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    fn new(memory_limit: u64) -> Self {
        Self { memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX), hit: false }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > TABLE_ELEMENTS {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A Rust policy component holds a handful of core instances.
        64
    }

    fn memories(&self) -> usize {
        8
    }

    fn tables(&self) -> usize {
        16
    }
}

/// Both WASI clocks, stopped at the epoch: policies must not depend on time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// stdout and stderr of one instance: a bounded buffer. Writes beyond the cap
/// are accepted and discarded, so printing can never fail or grow the host.
#[derive(Clone, Default)]
struct OutputBuffer(Arc<Mutex<Vec<u8>>>);

impl OutputBuffer {
    fn append(&self, bytes: &[u8]) {
        let mut buf = self.0.lock();
        let room = OUTPUT_CAP.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn clear(&self) {
        self.0.lock().clear();
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl IsTerminal for OutputBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputBuffer {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for OutputBuffer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always writable: excess is discarded in `append`.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputBuffer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputBuffer {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Links WASI for policies: wasmtime-wasi's synchronous bindings, with
/// `wasi:io/streams` and `wasi:io/poll` replaced by [`NoBlockIo`].
///
/// The sync bindings run every blocking stream call (`blocking-write-and-
/// flush`, which Rust's `println!` uses, and even dropping a stream) through
/// `block_on` on the ambient tokio runtime. Policy calls run synchronously
/// on the relay's tokio worker threads, where that panics ("Cannot start a
/// runtime from within a runtime"), failing the call. Async WASI would need
/// an async call path through the relay; instead, since nothing a policy
/// can reach ever needs to wait (its stdout/stderr are memory buffers that
/// are always ready, stdin is closed, files and sockets are denied), the
/// replacements poll the operation once and call it a trap if it would wait.
pub(crate) fn add_wasi_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    sync_poll::add_to_linker::<HostState, NoBlock>(linker, |s| NoBlockIo(&mut s.table))?;
    sync_streams::add_to_linker::<HostState, NoBlock>(linker, |s| NoBlockIo(&mut s.table))?;
    linker.allow_shadowing(false);
    Ok(())
}

struct NoBlock;

impl HasData for NoBlock {
    type Data<'a> = NoBlockIo<'a>;
}

/// `wasi:io` over the store's resource table, without a runtime.
pub(crate) struct NoBlockIo<'a>(&'a mut ResourceTable);

const WOULD_BLOCK: &str = "a policy cannot wait on WASI I/O (the operation would block)";

/// Polls `f` once: the operations policies can reach complete at once.
fn at_once<F: Future>(f: F) -> Option<F::Output> {
    wasmtime_wasi::runtime::poll_noop(pin!(f))
}

fn now<T>(f: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    at_once(f).unwrap_or_else(|| Err(wasmtime::Error::msg(WOULD_BLOCK)))
}

fn stream_now<T>(f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    at_once(f).unwrap_or_else(|| Err(StreamError::trap(WOULD_BLOCK)))
}

impl sync_poll::Host for NoBlockIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now(async_poll::Host::poll(self.0, pollables))
    }
}

impl sync_poll::HostPollable for NoBlockIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(async_poll::HostPollable::ready(self.0, pollable))
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(async_poll::HostPollable::block(self.0, pollable))
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl sync_streams::Host for NoBlockIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(self.0, err)
    }
}

impl sync_streams::HostOutputStream for NoBlockIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now(async_streams::HostOutputStream::drop(self.0, stream))
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes))
    }
    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len))
    }
    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_flush(self.0, stream))
    }
    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_now(async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len))
    }
}

impl sync_streams::HostInputStream for NoBlockIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(async_streams::HostInputStream::drop(self.0, stream))
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, stream, len)
    }
    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        stream_now(async_streams::HostInputStream::blocking_read(self.0, stream, len))
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_now(async_streams::HostInputStream::blocking_skip(self.0, stream, len))
    }
    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "ééé".to_owned(); // 6 bytes
        truncate(&mut s, 3);
        assert_eq!(s, "é…");
        let mut s = "short".to_owned();
        truncate(&mut s, 10);
        assert_eq!(s, "short");
    }

    #[test]
    fn output_is_bounded() {
        let out = OutputBuffer::default();
        out.append(&vec![b'x'; OUTPUT_CAP + 10]);
        out.append(b"more");
        assert_eq!(out.take().len(), OUTPUT_CAP);
        assert!(out.take().is_empty());
    }

    #[test]
    fn limiter_refuses_and_remembers() {
        let mut l = Limiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!l.hit);
        assert!(!l.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(l.hit);
    }
}
