//! Audit events and the JSONL sink: one line per request, refused connection and decision.
//! Secrets appear only as token fingerprints, never as values.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use serde::Serialize;

use crate::learn::Learner;

/// What happened to one token in a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenUse {
    pub fingerprint: String,
    /// `substitute`, `block`, `strip`, or `invalid`.
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
    /// `request`, `connection`, `tunnel`, `dns`, `packet`, `exec`.
    pub kind: &'static str,
    /// The exec (or run) whose process made the connection (DESIGN: serve, library).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
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

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where audit lines go. Events are serialized and written by a thread of their own, so a
/// request never waits for the disk. The writer wakes for the first event after a quiet spell,
/// then collects for [`BATCH`] before it writes again: under load that is one write (and one
/// thread wake-up) per batch instead of per request, and no line waits longer than about
/// [`BATCH`]. [`AuditLog::flush`] wakes it at once and waits until everything sent so far is
/// written.
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

impl AuditLog {
    /// Opens `path` for appending (created 0600), or stderr for `-`.
    pub fn open(path: &str) -> std::io::Result<Self> {
        Self::open_with(path, None)
    }

    /// Like [`AuditLog::open`]; the writer also hands every event to `learner` (`--learn`).
    pub fn open_with(path: &str, learner: Option<Arc<Learner>>) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stderr())
        } else {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            // Never through a symbolic link: one planted where a sandboxed command could
            // write would have netcage append to a file of its choosing (a shell start-up
            // file: the request paths it controls would run as code).
            let file = OpenOptions::new()
                .create(true)
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
            Box::new(BufWriter::with_capacity(64 * 1024, file))
        };
        Self::start(Some(out), learner)
    }

    /// The writer thread: lines to `out` (if any), events to `learner` (if any).
    fn start(
        out: Option<Box<dyn Write + Send>>,
        learner: Option<Arc<Learner>>,
    ) -> std::io::Result<Self> {
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

    /// Queues one event; it becomes one line.
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

    /// Waits until every event logged before this call is written out (and learned).
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

fn write_lines(
    rx: Receiver<Msg>,
    mut out: Option<Box<dyn Write + Send>>,
    learner: Option<Arc<Learner>>,
) {
    let mut failed = false;
    let mut line = Vec::with_capacity(512);
    let flush = |out: &mut Option<Box<dyn Write + Send>>| {
        if let Some(out) = out {
            let _ = out.flush();
        }
    };
    // Blocks (and is woken by the sender) only when the last look found nothing; after a batch
    // it parks for BATCH, during which senders wake nobody.
    let mut wrote = false;
    loop {
        let next = if wrote {
            std::thread::park_timeout(BATCH);
            match rx.try_recv() {
                Ok(msg) => Ok(msg),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    wrote = false;
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            rx.recv()
        };
        let Ok(mut msg) = next else { break };
        wrote = true;
        loop {
            match msg {
                Msg::Event(event) => {
                    if let Some(learner) = &learner {
                        learner.observe(&event);
                    }
                    line.clear();
                    if let Some(out) = &mut out
                        && serde_json::to_writer(&mut line, &event).is_ok()
                    {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line)
                            && !failed
                        {
                            failed = true;
                            eprintln!("netcage: cannot write the audit log: {e}");
                        }
                    }
                }
                Msg::Flush(done) => {
                    flush(&mut out);
                    let _ = done.send(());
                }
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        flush(&mut out);
    }
    flush(&mut out);
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
            AuditLog::open_with(path.to_str().unwrap(), Some(logged.clone())).unwrap(),
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
}
