//! Audit events and the JSONL sink: one line per request, refused connection and decision.
//! Secrets appear only as token fingerprints, never as values.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

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
    /// `request`, `connection`, `tunnel`, `dns`, `packet`, `run`.
    pub kind: &'static str,
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

/// Where audit lines go.
pub struct AuditLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl AuditLog {
    /// Opens `path` for appending (created 0600), or stderr for `-`.
    pub fn open(path: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stderr())
        } else {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Box::new(LineWriter::new(file))
        };
        Ok(AuditLog {
            out: Some(Mutex::new(out)),
        })
    }

    /// A log that drops everything (library use and tests that do not care).
    pub fn disabled() -> Self {
        AuditLog { out: None }
    }

    /// Writes one event as one line. Failures to write are reported once on stderr.
    pub fn log(&self, event: &Event) {
        let Some(out) = &self.out else { return };
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&line) {
            eprintln!("netcage: cannot write the audit log: {e}");
        }
    }
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
        log.log(&e);
        log.log(&Event::new("connection", "allow"));
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
}
