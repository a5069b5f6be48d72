//! Audit events and the JSONL sink: one line per request, refused connection and decision.
//! Secrets appear only as token fingerprints, never as values. Under a flood, identical
//! refusals are aggregated into `summary` lines with a count ([`Aggregator`]) and the file is
//! capped by rotation (`[audit] max_bytes`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};

use serde::Serialize;

use crate::learn::Learner;

/// What happened to one token in a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenUse {
    pub fingerprint: String,
    /// `substitute`, `block`, `strip`, `invalid`, or `sigv4` (a request signed with a sealed
    /// AWS key's stand-in, re-signed with the real key).
    pub action: &'static str,
    /// Where it was found: `header:NAME`, `target`, `body`.
    #[serde(rename = "where")]
    pub location: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bound_hosts: Vec<String>,
}

/// One audit line. Fields that do not apply are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    pub time: String,
    /// `request`, `connection`, `tunnel`, `dns`, `packet`, `exec`; `summary` for a line that
    /// stands for lines left out (see [`Aggregator`]), `rotate` for the first line after a
    /// rotation.
    pub kind: &'static str,
    /// A `summary` line: the kind of the lines it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of: Option<&'static str>,
    /// A `summary` line: how many lines it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The exec (or run) whose process made the connection (DESIGN: serve, library).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// The process that opened the connection (host pid), its thread's name, its uid and,
    /// while it lived, its executable: from the eBPF program, when it is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `allow`, `block`, or `error`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenUse>,
    /// Real values turned back into tokens in the response.
    #[serde(skip_serializing_if = "is_zero")]
    pub reflected: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    pub fn new(kind: &'static str, decision: &'static str) -> Self {
        Event {
            time: now_rfc3339(),
            kind,
            decision,
            ..Event::default()
        }
    }
}

/// The time now as audit lines carry it: RFC 3339, UTC, as many fraction digits as needed.
/// Every event takes one: the date and time of day are formatted once a second.
pub fn now_rfc3339() -> String {
    thread_local! {
        /// The Unix second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    let now = time::OffsetDateTime::now_utc();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != now.unix_timestamp() {
            let whole = now
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            *second = (now.unix_timestamp(), whole.trim_end_matches('Z').to_owned());
        }
        let mut text = String::with_capacity(32);
        text.push_str(&second.1);
        if now.nanosecond() != 0 {
            let fraction = format!("{:09}", now.nanosecond());
            text.push('.');
            text.push_str(fraction.trim_end_matches('0'));
        }
        text.push('Z');
        text
    })
}

/// Where audit lines go. Events are serialized and written by a thread of their own, so a
/// request never waits for the disk. The writer wakes for the first event after a quiet spell,
/// then collects for [`BATCH`] before it writes again: under load that is one write (and one
/// thread wake-up) per batch instead of per request, and no line waits longer than about
/// [`BATCH`]. [`AuditLog::flush`] wakes it at once and waits until everything sent so far is
/// written.
///
/// Under a flood: identical refusals are aggregated ([`Aggregator`]: the first line of each
/// second goes out, then one `summary` line with the count), and a file log is capped at
/// `[audit] max_bytes` by rotation ([`FileLog`]). The learner (`--learn`) and the counters
/// (`netcage status`) still see every event.
pub struct AuditLog {
    tx: Option<SyncSender<Msg>>,
    /// The writer thread, woken early by `flush` and on drop.
    writer: Option<std::thread::Thread>,
    /// Counters over every event logged (`netcage status`).
    stats: crate::stats::Stats,
}

enum Msg {
    Event(Box<Event>),
    Flush(SyncSender<()>),
}

/// Events queued before `log` waits for the writer (back-pressure: no line is ever dropped).
const QUEUE: usize = 8192;

/// How long the writer collects events after writing a batch (a line's longest wait).
pub const BATCH: std::time::Duration = std::time::Duration::from_millis(20);

/// The rotated log: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens a log file: never through a symbolic link (one planted where a sandboxed command
/// could write would have netcage append to a file of its choosing, e.g. a shell start-up
/// file: the request paths it controls would run as code), created 0600, a regular file.
fn open_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(format!(
                    "{} is a symbolic link; netcage does not write through links",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

impl AuditLog {
    /// Opens `path` for appending (created 0600), or stderr for `-`; no size cap.
    pub fn open(path: &str) -> std::io::Result<Self> {
        Self::open_with(path, 0, None)
    }

    /// Like [`AuditLog::open`], capped at `max_bytes` (0: no cap): past it the log is rotated
    /// to `<path>.1` (one kept; it is created now, so that a sandbox started later hides it
    /// too). The writer also hands every event to `learner` (`--learn`).
    pub fn open_with(
        path: &str,
        max_bytes: u64,
        learner: Option<Arc<Learner>>,
    ) -> std::io::Result<Self> {
        let out = if path == "-" {
            Out::Stream(Box::new(std::io::stderr()))
        } else {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = open_file(path)?;
            let rotated = (max_bytes > 0)
                .then(|| open_file(&rotated_path(path)))
                .transpose()?;
            Out::File(FileLog::new(path, file, rotated, max_bytes)?)
        };
        Self::start(Some(out), learner)
    }

    /// The writer thread: lines to `out` (if any), events to `learner` (if any).
    fn start(out: Option<Out>, learner: Option<Arc<Learner>>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        // The writer takes no signals: netcage's signal handling (sigwait in the Tier 1
        // launcher, tokio's handlers) must see them, and a new thread inherits this mask.
        let all = nix::sys::signal::SigSet::all();
        let previous = all.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
        let spawned = std::thread::Builder::new()
            .name("netcage-audit".into())
            .spawn(move || write_lines(rx, out, learner));
        if let Ok(previous) = previous {
            let _ = previous.thread_set_mask();
        }
        let writer = spawned?.thread().clone();
        Ok(AuditLog {
            tx: Some(tx),
            writer: Some(writer),
            stats: Default::default(),
        })
    }

    /// A log that drops everything (library use and tests that do not care).
    pub fn disabled() -> Self {
        AuditLog {
            tx: None,
            writer: None,
            stats: Default::default(),
        }
    }

    /// Writes nothing, but hands every event to `learner` (`--learn` without an audit log).
    pub fn disabled_with(learner: Option<Arc<Learner>>) -> std::io::Result<Self> {
        match learner {
            Some(learner) => Self::start(None, Some(learner)),
            None => Ok(Self::disabled()),
        }
    }

    /// Queues one event; it becomes one line (or is counted in a `summary` line).
    pub fn log(&self, event: Event) {
        self.stats.record(&event);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Event(Box::new(event)));
        }
    }

    /// Counters over every event logged so far.
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.stats
    }

    /// Waits until every event logged before this call is written out (and learned), the
    /// counts of lines left out so far included.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                if let Some(writer) = &self.writer {
                    writer.unpark();
                }
                let _ = done_rx.recv();
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // The writer notices the closed queue now rather than after its batch wait.
        drop(self.tx.take());
        if let Some(writer) = &self.writer {
            writer.unpark();
        }
    }
}

/// Where the writer puts lines.
enum Out {
    Stream(Box<dyn Write + Send>),
    File(FileLog),
}

impl Out {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stream(out) => out.write_all(line),
            Out::File(log) => log.write_line(line),
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Out::Stream(out) => out.flush(),
            Out::File(log) => log.file.flush(),
        };
    }
}

/// An audit log file with a size cap: a line that would take it past `max` first moves what
/// it holds to `<path>.1` (replacing the lines there) and empties it. Both files keep their
/// inodes (copy, then truncate; no rename), so a sandbox that hides them by mounting over
/// them keeps them hidden.
struct FileLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// `<path>.1`, when there is a cap.
    rotated: Option<File>,
    /// Bytes in the file.
    size: u64,
    /// 0: no cap.
    max: u64,
}

impl FileLog {
    fn new(path: &Path, file: File, rotated: Option<File>, max: u64) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(FileLog {
            path: path.to_owned(),
            file: BufWriter::with_capacity(64 * 1024, file),
            rotated,
            size,
            max,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.max > 0 && self.size > 0 && self.size + len > self.max {
            let discarded = self.rotate()?;
            let mut event = Event::new("rotate", "allow");
            event.reason = Some(format!(
                "the log reached [audit] max_bytes = {}: the lines before this one are in {} ({discarded} bytes of older lines there were discarded)",
                self.max,
                rotated_path(&self.path).display()
            ));
            let mut first = serde_json::to_vec(&event).unwrap_or_default();
            first.push(b'\n');
            self.file.write_all(&first)?;
            self.size += first.len() as u64;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    /// Moves the log's lines to `<path>.1`; returns how many bytes that file held before.
    fn rotate(&mut self) -> std::io::Result<u64> {
        self.file.flush()?;
        let Some(rotated) = &mut self.rotated else {
            return Ok(0);
        };
        let discarded = rotated.metadata()?.len();
        rotated.set_len(0)?;
        let mut from = self.file.get_ref();
        from.seek(SeekFrom::Start(0))?;
        // Appends (the file is opened for appending) to the now empty file.
        std::io::copy(&mut from, rotated)?;
        rotated.flush()?;
        self.file.get_ref().set_len(0)?;
        self.size = 0;
        Ok(discarded)
    }
}

/// How the reason of a line for a reached `[limits]` timeout starts (`limits.KEY: …`).
pub const LIMIT_REASON: &str = "limits.";

/// How many different lines of one kind (e.g. DNS refusals for different names) go out in
/// one second, per exec and decision, before the rest are only counted.
pub const DISTINCT_PER_SECOND: u32 = 1000;

/// Aggregates repeated lines under a flood: of identical refusals (same kind, decision, exec,
/// host, destination, method and reason; the client port and time may differ), the first of
/// each second goes out and the rest become one `summary` line with their count; and past
/// [`DISTINCT_PER_SECOND`] different ones of a kind, the rest become one `summary` line too.
///
/// Only lines that carry no secret decision are aggregated: DNS answers and refusals, dropped
/// packets, refused or failed connections. Every request line (each substitution, block and
/// strip), every exec line and every allowed connection is written as it is.
#[derive(Default)]
pub struct Aggregator {
    lines: HashMap<Key, Window>,
    kinds: HashMap<KindKey, KindWindow>,
}

/// What makes two lines identical.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: &'static str,
    decision: &'static str,
    exec: Option<String>,
    host: Option<String>,
    dst: Option<String>,
    sni: Option<String>,
    method: Option<String>,
    reason: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct KindKey {
    kind: &'static str,
    decision: &'static str,
    exec: Option<String>,
}

struct Window {
    /// `YYYY-MM-DDTHH:MM:SS` of the line that went out.
    second: String,
    left_out: u64,
    /// Time of the last line left out.
    last: String,
}

struct KindWindow {
    second: String,
    distinct: u32,
    left_out: u64,
    last: String,
}

/// The second an event's time falls in.
fn second_of(time: &str) -> &str {
    time.get(..19).unwrap_or(time)
}

impl Aggregator {
    /// Whether lines like `event` may be aggregated.
    fn applies(event: &Event) -> bool {
        event.tokens.is_empty()
            && event.reflected == 0
            // A connection a timeout closed keeps its own line (it held its place in the
            // connection cap for the whole timeout, so these cannot come in a flood).
            && !event.reason.as_deref().is_some_and(|r| r.starts_with(LIMIT_REASON))
            && match event.kind {
                "dns" | "packet" => true,
                "connection" => event.decision != "allow",
                _ => false,
            }
    }

    /// Takes one event; pushes onto `out` what is to be written now: the event, or nothing
    /// (it is counted), after the summary of an earlier second it ends.
    pub fn offer(&mut self, event: Event, out: &mut Vec<Event>) {
        if !Self::applies(&event) {
            out.push(event);
            return;
        }
        let second = second_of(&event.time).to_owned();
        let key = Key {
            kind: event.kind,
            decision: event.decision,
            exec: event.exec.clone(),
            host: event.host.clone(),
            dst: event.dst.clone(),
            sni: event.sni.clone(),
            method: event.method.clone(),
            reason: event.reason.clone(),
        };
        if let Some(window) = self.lines.get_mut(&key) {
            if window.second == second {
                window.left_out += 1;
                window.last = event.time;
                return;
            }
            let window = self.lines.remove(&key).expect("present");
            out.extend(line_summary(&key, &window));
        }
        let kind_key = KindKey {
            kind: event.kind,
            decision: event.decision,
            exec: event.exec.clone(),
        };
        let kind = self
            .kinds
            .entry(kind_key.clone())
            .or_insert_with(|| KindWindow {
                second: second.clone(),
                distinct: 0,
                left_out: 0,
                last: String::new(),
            });
        if kind.second != second {
            out.extend(kind_summary(&kind_key, kind));
            *kind = KindWindow {
                second: second.clone(),
                distinct: 0,
                left_out: 0,
                last: String::new(),
            };
        }
        if kind.distinct >= DISTINCT_PER_SECOND {
            kind.left_out += 1;
            kind.last = event.time;
            return;
        }
        kind.distinct += 1;
        self.lines.insert(
            key,
            Window {
                second,
                left_out: 0,
                last: String::new(),
            },
        );
        out.push(event);
    }

    /// The summaries of the seconds before `now` (a time as events carry it), which end.
    pub fn due(&mut self, now: &str, out: &mut Vec<Event>) {
        let now = second_of(now);
        self.lines.retain(|key, window| {
            if window.second.as_str() < now {
                out.extend(line_summary(key, window));
                false
            } else {
                true
            }
        });
        self.kinds.retain(|key, kind| {
            if kind.second.as_str() < now {
                out.extend(kind_summary(key, kind));
                false
            } else {
                true
            }
        });
    }

    /// The summaries of every line left out so far (at a flush, and at the end); the
    /// seconds go on, so later lines of them are still counted.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        for (key, window) in &mut self.lines {
            out.extend(line_summary(key, window));
            window.left_out = 0;
        }
        for (key, kind) in &mut self.kinds {
            out.extend(kind_summary(key, kind));
            kind.left_out = 0;
        }
    }

    /// Whether summaries may still be due.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.kinds.is_empty()
    }
}

fn line_summary(key: &Key, window: &Window) -> Option<Event> {
    (window.left_out > 0).then(|| Event {
        time: window.last.clone(),
        kind: "summary",
        of: Some(key.kind),
        count: Some(window.left_out),
        exec: key.exec.clone(),
        host: key.host.clone(),
        dst: key.dst.clone(),
        sni: key.sni.clone(),
        method: key.method.clone(),
        decision: key.decision,
        reason: key.reason.clone(),
        ..Event::default()
    })
}

fn kind_summary(key: &KindKey, kind: &KindWindow) -> Option<Event> {
    (kind.left_out > 0).then(|| Event {
        time: kind.last.clone(),
        kind: "summary",
        of: Some(key.kind),
        count: Some(kind.left_out),
        exec: key.exec.clone(),
        decision: key.decision,
        reason: Some(format!(
            "{} more {} lines ({}) of this second, each for another host, destination or reason, past {DISTINCT_PER_SECOND} different ones",
            kind.left_out, key.kind, key.decision
        )),
        ..Event::default()
    })
}

fn write_lines(rx: Receiver<Msg>, mut out: Option<Out>, learner: Option<Arc<Learner>>) {
    let mut failed = false;
    let mut line = Vec::with_capacity(512);
    let mut aggregator = Aggregator::default();
    let mut ready: Vec<Event> = Vec::new();
    let mut write = |out: &mut Option<Out>, ready: &mut Vec<Event>| {
        for event in ready.drain(..) {
            line.clear();
            if let Some(out) = out.as_mut()
                && serde_json::to_writer(&mut line, &event).is_ok()
            {
                line.push(b'\n');
                if let Err(e) = out.write_line(&line)
                    && !failed
                {
                    failed = true;
                    eprintln!("netcage: cannot write the audit log: {e}");
                }
            }
        }
    };
    let flush = |out: &mut Option<Out>| {
        if let Some(out) = out {
            out.flush();
        }
    };
    // Blocks (and is woken by the sender) only when the last look found nothing; after a batch
    // it parks for BATCH, during which senders wake nobody. While summaries may be due it
    // wakes each second for them.
    let mut wrote = false;
    loop {
        let next = if wrote {
            std::thread::park_timeout(BATCH);
            match rx.try_recv() {
                Ok(msg) => Ok(msg),
                Err(TryRecvError::Empty) => {
                    wrote = false;
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else if aggregator.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(until_next_second())
        };
        let mut msg = match next {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                aggregator.due(&now_rfc3339(), &mut ready);
                write(&mut out, &mut ready);
                flush(&mut out);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        wrote = true;
        loop {
            match msg {
                Msg::Event(event) => {
                    if let Some(learner) = &learner {
                        learner.observe(&event);
                    }
                    aggregator.offer(*event, &mut ready);
                    write(&mut out, &mut ready);
                }
                Msg::Flush(done) => {
                    aggregator.drain(&mut ready);
                    write(&mut out, &mut ready);
                    flush(&mut out);
                    let _ = done.send(());
                }
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        aggregator.due(&now_rfc3339(), &mut ready);
        write(&mut out, &mut ready);
        flush(&mut out);
    }
    aggregator.drain(&mut ready);
    write(&mut out, &mut ready);
    flush(&mut out);
}

/// From now to just past the start of the next wall-clock second.
fn until_next_second() -> std::time::Duration {
    let nanos = time::OffsetDateTime::now_utc().nanosecond();
    std::time::Duration::from_nanos(u64::from(1_000_000_000 - nanos.min(999_999_999)))
        + std::time::Duration::from_millis(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let log = AuditLog::open(path.to_str().unwrap()).unwrap();
        let mut e = Event::new("request", "block");
        e.host = Some("evil.com".into());
        e.tokens.push(TokenUse {
            fingerprint: "fp:0123".into(),
            action: "block",
            location: "header:authorization".into(),
            bound_hosts: vec!["api.github.com".into()],
        });
        log.log(e);
        log.log(Event::new("connection", "allow"));
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["tokens"][0]["where"], "header:authorization");
        assert_eq!(lines[0]["host"], "evil.com");
        assert!(lines[1].get("host").is_none());
    }

    #[test]
    fn lines_reach_the_file_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(path.to_str().unwrap()).unwrap();
        let lines = || {
            std::fs::read_to_string(&path)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        let wait_for = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while lines() < n && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            lines()
        };
        // The first line wakes the idle writer; the second lands while it collects a batch;
        // the third after it went back to waiting. None may stay queued.
        log.log(Event::new("request", "allow"));
        assert_eq!(wait_for(1), 1);
        log.log(Event::new("request", "allow"));
        assert_eq!(wait_for(2), 2);
        std::thread::sleep(BATCH * 3);
        log.log(Event::new("request", "allow"));
        assert_eq!(wait_for(3), 3);
    }

    #[test]
    fn the_learner_sees_every_event_before_flush_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let logged = Arc::new(Learner::new());
        let disabled = Arc::new(Learner::new());
        let logs = [
            AuditLog::open_with(path.to_str().unwrap(), 0, Some(logged.clone())).unwrap(),
            AuditLog::disabled_with(Some(disabled.clone())).unwrap(),
        ];
        for log in &logs {
            for i in 0..100 {
                let mut e = Event::new("request", "allow");
                e.host = Some(format!("h{i}.test"));
                log.log(e);
            }
            log.flush();
        }
        for learner in [&logged, &disabled] {
            assert_eq!(learner.counts().hosts, 100);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 100);
        AuditLog::disabled_with(None).unwrap().flush();
    }

    fn refusal(time: &str, exec: &str, host: Option<&str>) -> Event {
        let mut e = Event::new("dns", "block");
        e.time = time.into();
        e.exec = Some(exec.into());
        e.host = host.map(str::to_owned);
        e.client = Some("10.0.0.1:5353".into());
        e.reason = Some("over the rate: REFUSED".into());
        e
    }

    fn kinds(events: &[Event]) -> Vec<(&'static str, Option<u64>)> {
        events.iter().map(|e| (e.kind, e.count)).collect()
    }

    /// Identical refusals of one second: the first line, then one summary with the count of
    /// the rest, when the second is over. Another exec or host is another line.
    #[test]
    fn identical_refusals_of_a_second_become_one_line_and_a_count() {
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        for i in 0..10_000 {
            let t = format!("2026-12-01T10:00:00.{i:04}Z");
            agg.offer(refusal(&t, "exec-1", None), &mut out);
        }
        agg.offer(refusal("2026-12-01T10:00:00.9Z", "exec-2", None), &mut out);
        agg.offer(
            refusal("2026-12-01T10:00:00.9Z", "exec-1", Some("a.test")),
            &mut out,
        );
        assert_eq!(
            out.len(),
            3,
            "the first of each kind of line goes out at once"
        );
        agg.due("2026-12-01T10:00:00.99Z", &mut out);
        assert_eq!(out.len(), 3, "nothing is due while the second lasts");
        agg.due("2026-12-01T10:00:01.0Z", &mut out);
        assert_eq!(out.len(), 4, "{:?}", kinds(&out));
        let summary = &out[3];
        assert_eq!(
            (summary.kind, summary.of, summary.count),
            ("summary", Some("dns"), Some(9_999))
        );
        assert_eq!(summary.exec.as_deref(), Some("exec-1"));
        assert_eq!(summary.reason, out[0].reason);
        assert_eq!(summary.time, "2026-12-01T10:00:00.9999Z");
        assert!(agg.is_empty());
        // The next second starts over: its first line goes out again.
        agg.offer(refusal("2026-12-01T10:00:01.5Z", "exec-1", None), &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].kind, "dns");
    }

    /// Each connection a timeout closed keeps its line: it names the client a reader looks for.
    #[test]
    fn timed_out_connections_are_not_aggregated() {
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        for port in 0..5 {
            let mut e = Event::new("connection", "block");
            e.time = "2026-12-01T10:00:00.5Z".into();
            e.client = Some(format!("10.0.0.1:{port}"));
            e.reason = Some(crate::proxy::timeouts::reason(
                "idle_secs",
                "idle for",
                50.0,
            ));
            agg.offer(e, &mut out);
        }
        assert_eq!(out.len(), 5);
        assert!(agg.is_empty());
    }

    /// A line of a later second ends the earlier second's window at once.
    #[test]
    fn a_new_second_writes_the_summary_of_the_last() {
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        for t in [
            "2026-12-01T10:00:00.1Z",
            "2026-12-01T10:00:00.2Z",
            "2026-12-01T10:00:01.1Z",
        ] {
            agg.offer(refusal(t, "exec-1", None), &mut out);
        }
        assert_eq!(
            kinds(&out),
            [("dns", None), ("summary", Some(1)), ("dns", None)]
        );
    }

    /// Limit: [`DISTINCT_PER_SECOND`] different lines of one kind, exec and decision per
    /// second; the rest are counted in one summary.
    #[test]
    fn a_flood_of_different_refusals_is_cut_at_the_limit_and_counted() {
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        for i in 0..5_000 {
            let host = format!("n{i}.flood.test");
            agg.offer(
                refusal("2026-12-01T10:00:00.5Z", "exec-1", Some(&host)),
                &mut out,
            );
        }
        assert_eq!(out.len(), DISTINCT_PER_SECOND as usize);
        agg.drain(&mut out);
        let summaries: Vec<&Event> = out.iter().filter(|e| e.kind == "summary").collect();
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            summaries[0].count,
            Some(5_000 - u64::from(DISTINCT_PER_SECOND))
        );
        assert!(summaries[0].host.is_none());
        assert!(
            summaries[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("4000 more dns lines")
        );
    }

    /// Requests (every substitution and block), allowed connections and exec lines are never
    /// aggregated, however alike.
    #[test]
    fn decisions_about_secrets_are_never_aggregated() {
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        for _ in 0..100 {
            let mut e = Event::new("request", "block");
            e.time = "2026-12-01T10:00:00.5Z".into();
            e.host = Some("evil.test".into());
            e.reason = Some("token not bound".into());
            agg.offer(e, &mut out);
            let mut e = Event::new("connection", "block");
            e.time = "2026-12-01T10:00:00.5Z".into();
            e.tokens.push(TokenUse {
                fingerprint: "fp:1".into(),
                action: "block",
                location: "header:authorization".into(),
                bound_hosts: vec![],
            });
            agg.offer(e, &mut out);
            for (kind, decision) in [
                ("connection", "allow"),
                ("exec", "allow"),
                ("tunnel", "allow"),
            ] {
                let mut e = Event::new(kind, decision);
                e.time = "2026-12-01T10:00:00.5Z".into();
                agg.offer(e, &mut out);
            }
        }
        assert_eq!(out.len(), 500);
        assert!(agg.is_empty());
    }

    /// The writer: a flood of identical refusals is a few lines, its count is written within
    /// about a second without a flush, and the learner still sees every host.
    #[test]
    fn the_writer_aggregates_and_the_learner_sees_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let learner = Arc::new(Learner::new());
        let log = AuditLog::open_with(path.to_str().unwrap(), 0, Some(learner.clone())).unwrap();
        for i in 0..20_000 {
            let mut e = Event::new("connection", "block");
            e.host = Some(format!("h{}.test", i % 7));
            e.reason = Some("not allowed".into());
            log.log(e);
        }
        let lines = || -> Vec<serde_json::Value> {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let total = |lines: &[serde_json::Value]| -> u64 {
            lines.iter().map(|l| l["count"].as_u64().unwrap_or(1)).sum()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while total(&lines()) < 20_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let written = lines();
        assert_eq!(total(&written), 20_000, "every line is written or counted");
        assert!(written.len() <= 7 * 2 * 3, "{} lines", written.len());
        assert_eq!(learner.counts().blocked, 7);
        assert_eq!(log.stats().snapshot().blocks.values().sum::<u64>(), 20_000);
    }

    /// Limit: `max_bytes` = 20,000. The log never grows past it; the lines before are in
    /// `<path>.1` (one kept), and the first line after a rotation says so.
    #[test]
    fn the_log_is_capped_and_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = rotated_path(&path);
        let log = AuditLog::open_with(path.to_str().unwrap(), 20_000, None).unwrap();
        assert!(
            rotated.exists(),
            "made at the start, so a sandbox can hide it"
        );
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let (first, first_rotated) = (inode(&path), inode(&rotated));
        for i in 0..2_000 {
            let mut e = Event::new("request", "allow");
            e.path = Some(format!("/item/{i}"));
            log.log(e);
        }
        log.flush();
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&path) <= 20_000, "{}", size(&path));
        assert!(
            size(&rotated) <= 20_000 && size(&rotated) > 10_000,
            "{}",
            size(&rotated)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let head: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(head["kind"], "rotate", "{head}");
        assert!(
            head["reason"]
                .as_str()
                .unwrap()
                .contains("max_bytes = 20000"),
            "{head}"
        );
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["path"], "/item/1999");
        let old = std::fs::read_to_string(&rotated).unwrap();
        let old_last: serde_json::Value =
            serde_json::from_str(old.lines().last().unwrap()).unwrap();
        let new_first: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        let n = |v: &serde_json::Value| -> u64 {
            v["path"]
                .as_str()
                .unwrap()
                .trim_start_matches("/item/")
                .parse()
                .unwrap()
        };
        assert_eq!(
            n(&old_last) + 1,
            n(&new_first),
            "no line lost at the rotation"
        );
        assert_eq!(
            (inode(&path), inode(&rotated)),
            (first, first_rotated),
            "same files"
        );
        // 0 = no cap.
        let uncapped = dir.path().join("uncapped.jsonl");
        let log = AuditLog::open_with(uncapped.to_str().unwrap(), 0, None).unwrap();
        for _ in 0..2_000 {
            log.log(Event::new("request", "allow"));
        }
        log.flush();
        assert!(size(&uncapped) > 100_000);
        assert!(!rotated_path(&uncapped).exists());
    }

    #[test]
    fn times_are_rfc3339_as_before() {
        for _ in 0..1000 {
            let ours = now_rfc3339();
            let parsed =
                time::OffsetDateTime::parse(&ours, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{ours}: {e}"));
            let theirs = parsed
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(ours, theirs);
        }
    }
}
