//! `telemetry.capture`: relayed messages written to a file, for replaying a
//! policy over real traffic (`opamp-gateway policy replay`).
//!
//! The relay never waits for the file: each record goes to a bounded queue
//! (at most `queue` records and `max_bytes` of payload) drained by one
//! writer thread. A record that finds the queue full is dropped and counted
//! in [`CAPTURE_DROPPED`](super::metrics::CAPTURE_DROPPED).
//!
//! # Format (version 1)
//!
//! JSON lines, one record per line, each with `ts` (RFC 3339, UTC,
//! milliseconds) and `kind`:
//!
//! - `start`: `{"kind":"start","format":1}` opens every file (and marks a
//!   gateway restart when appended to an existing one).
//! - `connect`: a connect handshake, `{"transport":"websocket"|"http",
//!   "remote":"ip:port","accepted":bool,"headers":[["name","value"],...]}`;
//!   `headers` as the server is shown them, in request order, names lower
//!   case. With `redact_headers` (the default) every value is
//!   `"<redacted>"` except those of the headers named in `keep_headers`.
//! - `message`: `{"direction":"agent_to_server"|"server_to_agent",
//!   "transport":..,"uid":"<hex>","size":n,"payload":"<base64>"}`. The payload is
//!   the bare protobuf (`AgentToServer` or `ServerToAgent`, no WebSocket
//!   header) as it reached the gateway, before any policy ran; `uid` is its
//!   `instance_uid` in hex (empty if it has none).
//!
//! Rotation: when the next line would take `path` past `max_bytes`, `path`
//! becomes `path.1` (`path.1` becomes `path.2`, ...) and a new `path` is
//! started; at most `max_files` files exist, the oldest is deleted. A
//! record larger than `max_bytes` on its own is dropped
//! (`reason="too_large"`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::metrics as m;

/// The format number of `start` records.
pub const FORMAT: u32 = 1;
/// What a redacted header value reads.
pub const REDACTED: &str = "<redacted>";

/// How a capture runs (from `telemetry.capture`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    pub path: PathBuf,
    /// Size cap of each file, and of the payload bytes queued for the writer.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: usize,
    /// Records queued for the writer at most.
    pub queue: usize,
    pub redact_headers: bool,
    /// Lower-case header names whose values are kept when redacting.
    pub keep_headers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{line}: not a capture record: {why}", path.display())]
    Format { path: PathBuf, line: usize, why: String },
}

/// The relay's handle: cheap to clone, a no-op when capture is off.
#[derive(Clone, Default)]
pub struct Capture(Option<Arc<Queue>>);

struct Queue {
    tx: SyncSender<Pending>,
    /// Payload bytes queued and not yet written.
    queued: Arc<AtomicU64>,
    max_bytes: u64,
}

/// A record on its way to the writer: the relay thread only stamps and
/// queues it; encoding happens on the writer thread.
enum Pending {
    Connect { ts: SystemTime, transport: &'static str, remote: String, accepted: bool, headers: Vec<(String, String)> },
    Message { ts: SystemTime, direction: &'static str, transport: &'static str, uid: Bytes, payload: Bytes },
}

impl Pending {
    fn payload_len(&self) -> u64 {
        match self {
            Pending::Message { payload, .. } => payload.len() as u64,
            Pending::Connect { .. } => 0,
        }
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Capture").field(&self.is_enabled()).finish()
    }
}

impl Capture {
    /// Opens (appends to) `settings.path` and starts the writer thread;
    /// `None` is capture off.
    pub fn start(settings: Option<CaptureSettings>) -> Result<Self, CaptureError> {
        let Some(settings) = settings else { return Ok(Self::default()) };
        let writer = Writer::open(settings.clone())?;
        let (capture, rx) = Self::queue(&settings);
        let queued = capture.0.as_ref().map(|q| q.queued.clone()).unwrap_or_default();
        std::thread::Builder::new()
            .name("opamp-capture".into())
            .spawn(move || writer.run(rx, &queued))
            .map_err(|source| CaptureError::Io { path: settings.path.clone(), source })?;
        Ok(capture)
    }

    fn queue(settings: &CaptureSettings) -> (Self, Receiver<Pending>) {
        let (tx, rx) = mpsc::sync_channel(settings.queue.max(1));
        let queue = Queue { tx, queued: Arc::new(AtomicU64::new(0)), max_bytes: settings.max_bytes };
        (Self(Some(Arc::new(queue))), rx)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A connect handshake's outcome. `headers` are those the server was shown.
    pub fn connect(&self, transport: &'static str, remote: &str, headers: &[(String, String)], accepted: bool) {
        if let Some(q) = &self.0 {
            let ts = SystemTime::now();
            q.offer(Pending::Connect { ts, transport, remote: remote.to_owned(), accepted, headers: headers.to_vec() });
        }
    }

    /// One relayed message. `direction` is `agent_to_server` or
    /// `server_to_agent`; `payload` the bare protobuf.
    pub fn message(&self, direction: &'static str, transport: &'static str, uid: &[u8], payload: &Bytes) {
        if let Some(q) = &self.0 {
            let ts = SystemTime::now();
            let uid = Bytes::copy_from_slice(uid);
            q.offer(Pending::Message { ts, direction, transport, uid, payload: payload.clone() });
        }
    }
}

impl Queue {
    fn offer(&self, record: Pending) {
        let len = record.payload_len();
        if len > self.max_bytes {
            dropped("too_large");
            return;
        }
        // Reserve first, so concurrent senders cannot overshoot together.
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            dropped("queue_full");
            return;
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                dropped("queue_full");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                dropped("write_error");
            }
        }
    }
}

/// Counts a record not written; the first of each reason is logged (the
/// counter carries the rest).
fn dropped(reason: &'static str) {
    metrics::counter!(m::CAPTURE_DROPPED, "reason" => reason).increment(1);
    static LOGGED: parking_lot::Mutex<Vec<&str>> = parking_lot::const_mutex(Vec::new());
    let first = {
        let mut seen = LOGGED.lock();
        !seen.contains(&reason) && {
            seen.push(reason);
            true
        }
    };
    if first {
        tracing::warn!(
            reason,
            "capture record dropped (further drops: opampgateway_capture_records_dropped_total only)"
        );
    }
}

/// One line of a capture file, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaptureRecord {
    Start {
        ts: String,
        format: u32,
    },
    Connect {
        ts: String,
        transport: String,
        remote: String,
        accepted: bool,
        headers: Vec<(String, String)>,
    },
    Message {
        ts: String,
        direction: String,
        transport: String,
        /// Hex.
        uid: String,
        size: usize,
        /// Base64 (standard alphabet, padded).
        payload: String,
    },
}

impl CaptureRecord {
    /// A message record's uid and payload, decoded.
    pub fn decoded(&self) -> Option<(Vec<u8>, Bytes)> {
        let CaptureRecord::Message { uid, payload, .. } = self else { return None };
        let payload = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
        Some((hex_decode(uid)?, Bytes::from(payload)))
    }
}

/// Every record of one capture file, in order.
pub fn read(path: &Path) -> Result<Vec<CaptureRecord>, CaptureError> {
    let io = |source| CaptureError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let format = |why: String| CaptureError::Format { path: path.to_owned(), line: i + 1, why };
        let record: CaptureRecord = serde_json::from_str(&line).map_err(|e| format(e.to_string()))?;
        match &record {
            CaptureRecord::Start { format: f, .. } if *f != FORMAT => {
                return Err(format(format!("format {f}; this gateway reads format {FORMAT}")))
            }
            CaptureRecord::Message { .. } if record.decoded().is_none() => {
                return Err(format("uid is not hex or payload is not base64".into()))
            }
            _ => {}
        }
        out.push(record);
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The writer thread's side: the open file, its size, rotation.
struct Writer {
    settings: CaptureSettings,
    file: BufWriter<File>,
    size: u64,
}

impl Writer {
    fn open(settings: CaptureSettings) -> Result<Self, CaptureError> {
        let path = settings.path.clone();
        let io = |source| CaptureError::Io { path: path.clone(), source };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut w = Self { settings, file: BufWriter::new(file), size };
        w.start_record().map_err(io)?;
        w.file.flush().map_err(io)?;
        Ok(w)
    }

    /// Writes records until every [`Capture`] handle is gone, flushing
    /// whenever the queue runs dry.
    fn run(mut self, rx: Receiver<Pending>, queued: &AtomicU64) {
        loop {
            let record = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => {
                    self.flush();
                    match rx.recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            queued.fetch_sub(record.payload_len(), Ordering::Relaxed);
            let kind = match &record {
                Pending::Connect { .. } => "connect",
                Pending::Message { .. } => "message",
            };
            match self.write(&self.encode(record)) {
                Ok(true) => metrics::counter!(m::CAPTURE_RECORDS, "kind" => kind).increment(1),
                Ok(false) => dropped("too_large"),
                Err(e) => {
                    dropped("write_error");
                    tracing::warn!(path = %self.settings.path.display(), error = %e, "capture record not written");
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if let Err(e) = self.file.flush() {
            tracing::warn!(path = %self.settings.path.display(), error = %e, "flushing the capture file");
        }
    }

    fn encode(&self, record: Pending) -> Vec<u8> {
        let ts = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let record = match record {
            Pending::Connect { ts: t, transport, remote, accepted, headers } => CaptureRecord::Connect {
                ts: ts(t),
                transport: transport.into(),
                remote,
                accepted,
                headers: headers.into_iter().map(|(n, v)| self.redacted(n, v)).collect(),
            },
            Pending::Message { ts: t, direction, transport, uid, payload } => CaptureRecord::Message {
                ts: ts(t),
                direction: direction.into(),
                transport: transport.into(),
                uid: hex(&uid),
                size: payload.len(),
                payload: base64::engine::general_purpose::STANDARD.encode(&payload),
            },
        };
        line(&record)
    }

    fn redacted(&self, name: String, value: String) -> (String, String) {
        let keep =
            !self.settings.redact_headers || self.settings.keep_headers.iter().any(|k| k.eq_ignore_ascii_case(&name));
        let value = if keep { value } else { REDACTED.to_owned() };
        (name, value)
    }

    fn start_record(&mut self) -> io::Result<()> {
        let start = line(&CaptureRecord::Start {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            format: FORMAT,
        });
        self.file.write_all(&start)?;
        self.size += start.len() as u64;
        Ok(())
    }

    /// Appends one line, rotating first if it would not fit. `Ok(false)`:
    /// the line cannot fit even in a new file.
    fn write(&mut self, line: &[u8]) -> io::Result<bool> {
        let len = line.len() as u64;
        if self.size + len > self.settings.max_bytes {
            self.rotate()?;
            if self.size + len > self.settings.max_bytes {
                return Ok(false);
            }
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(true)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let path = &self.settings.path;
        let numbered = |i: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let keep = self.settings.max_files.max(1);
        if keep > 1 {
            let _ = std::fs::remove_file(numbered(keep - 1));
            for i in (1..keep - 1).rev() {
                if numbered(i).exists() {
                    std::fs::rename(numbered(i), numbered(i + 1))?;
                }
            }
            // Deleted under us (an operator cleaning up): start afresh.
            if let Err(e) = std::fs::rename(path, numbered(1)) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        self.file = BufWriter::new(file);
        self.size = 0;
        self.start_record()
    }
}

fn line(record: &CaptureRecord) -> Vec<u8> {
    let mut out = serde_json::to_vec(record).expect("capture records serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64, max_files: usize) -> CaptureSettings {
        CaptureSettings {
            path: dir.join("capture.jsonl"),
            max_bytes,
            max_files,
            queue: 16,
            redact_headers: true,
            keep_headers: vec!["user-agent".into()],
        }
    }

    fn message(payload: &'static [u8]) -> Pending {
        let ts = SystemTime::now();
        let uid = Bytes::from_static(&[0xab; 16]);
        Pending::Message { ts, direction: "agent_to_server", transport: "websocket", uid, payload: payload.into() }
    }

    #[test]
    fn records_that_do_not_fit_are_dropped_and_counted() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let dir = tempfile::tempdir().unwrap();
        let s = CaptureSettings { queue: 1, ..settings(dir.path(), 16, 1) };
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (capture, _rx) = Capture::queue(&s); // no writer: nothing drains
        metrics::with_local_recorder(&recorder, || {
            let q = capture.0.as_ref().unwrap();
            q.offer(message(b"more than sixteen bytes"));
            q.offer(message(b"fits"));
            q.offer(message(b"full"));
        });
        let counts: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == m::CAPTURE_DROPPED)
            .map(|(k, _, _, v)| {
                let reason = k.key().labels().next().unwrap().value().to_owned();
                (reason, if let DebugValue::Counter(n) = v { n } else { 0 })
            })
            .collect();
        assert!(counts.contains(&("too_large".into(), 1)), "{counts:?}");
        assert!(counts.contains(&("queue_full".into(), 1)), "{counts:?}");
    }

    #[test]
    fn records_round_trip_with_headers_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 2);
        let mut w = Writer::open(s.clone()).unwrap();
        let headers = vec![("authorization".into(), "Secret-Key s3cr3t".into()), ("user-agent".into(), "otel".into())];
        let ts = SystemTime::now();
        let connect = Pending::Connect { ts, transport: "http", remote: "127.0.0.1:9".into(), accepted: true, headers };
        assert!(w.write(&w.encode(connect)).unwrap());
        assert!(w.write(&w.encode(message(b"\x0a\x10payload"))).unwrap());
        w.flush();
        let text = std::fs::read_to_string(&s.path).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        let records = read(&s.path).unwrap();
        assert!(matches!(&records[0], CaptureRecord::Start { format: FORMAT, .. }));
        let CaptureRecord::Connect { headers, accepted: true, .. } = &records[1] else { panic!("{records:?}") };
        assert_eq!(headers[0], ("authorization".into(), REDACTED.into()));
        assert_eq!(headers[1], ("user-agent".into(), "otel".into()));
        let (uid, payload) = records[2].decoded().unwrap();
        assert_eq!((uid, &payload[..]), (vec![0xab; 16], &b"\x0a\x10payload"[..]));
    }

    #[test]
    fn rotates_within_max_files_and_refuses_what_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 400, 3);
        let mut w = Writer::open(s.clone()).unwrap();
        for _ in 0..20 {
            assert!(w.write(&w.encode(message(b"0123456789"))).unwrap());
        }
        w.flush();
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["capture.jsonl", "capture.jsonl.1", "capture.jsonl.2"]);
        for n in &names {
            let path = dir.path().join(n);
            assert!(std::fs::metadata(&path).unwrap().len() <= 400);
            assert!(matches!(read(&path).unwrap()[0], CaptureRecord::Start { .. }), "{n} starts with a start record");
        }
        static BIG: [u8; 400] = [7; 400];
        assert!(!w.write(&w.encode(message(&BIG))).unwrap(), "a record over max_bytes is refused");
    }

    #[test]
    fn a_file_deleted_under_the_writer_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 400, 2);
        let mut w = Writer::open(s.clone()).unwrap();
        std::fs::remove_file(&s.path).unwrap();
        for _ in 0..10 {
            assert!(w.write(&w.encode(message(b"0123456789"))).unwrap());
        }
        w.flush();
        assert!(matches!(read(&s.path).unwrap()[0], CaptureRecord::Start { .. }));
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let s = CaptureSettings { queue: 3, ..settings(dir.path(), 25, 1) };
        let (capture, rx) = Capture::queue(&s);
        let uid = [1u8; 16];
        capture.message("agent_to_server", "http", &uid, &Bytes::from_static(&[1; 10]));
        capture.message("agent_to_server", "http", &uid, &Bytes::from_static(&[1; 10]));
        // Over the queued-bytes cap (25): dropped, not waited for.
        capture.message("agent_to_server", "http", &uid, &Bytes::from_static(&[1; 10]));
        capture.connect("http", "127.0.0.1:9", &[], true);
        // Over the record cap (3).
        capture.connect("http", "127.0.0.1:9", &[], true);
        assert_eq!(rx.try_iter().count(), 3);
        assert_eq!(capture.0.as_ref().unwrap().queued.load(Ordering::Relaxed), 20);
    }
}
