//! Counters for `netcage status`: connections, requests, substitutions, blocks by reason,
//! bytes. Fed from the audit events (every decision is one), so they agree with the log.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::audit::Event;

#[derive(Default)]
pub struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
    substitutions: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    blocks: Mutex<BTreeMap<&'static str, u64>>,
}

/// A snapshot, as `status` prints it (JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub connections: u64,
    pub requests: u64,
    pub substitutions: u64,
    pub blocks: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Stats {
    /// One client connection accepted by the proxy.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, event: &Event) {
        if event.kind == "request" {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        let substituted = event
            .tokens
            .iter()
            .filter(|t| t.action == "substitute")
            .count() as u64;
        if substituted > 0 {
            self.substitutions.fetch_add(substituted, Ordering::Relaxed);
        }
        self.bytes_up.fetch_add(event.bytes_up, Ordering::Relaxed);
        self.bytes_down
            .fetch_add(event.bytes_down, Ordering::Relaxed);
        if event.decision == "block" {
            let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            *blocks.entry(block_class(event)).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> Counters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            connections: load(&self.connections),
            requests: load(&self.requests),
            substitutions: load(&self.substitutions),
            blocks: self
                .blocks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            bytes_up: load(&self.bytes_up),
            bytes_down: load(&self.bytes_down),
        }
    }
}

/// A short, fixed name for why something was blocked (the audit line has the details).
pub fn block_class(event: &Event) -> &'static str {
    let reason = event.reason.as_deref().unwrap_or("");
    if event.tokens.iter().any(|t| t.action == "block") {
        return "token not bound to the host";
    }
    if event.tokens.iter().any(|t| t.action == "invalid") {
        return "invalid token";
    }
    if reason.contains("connections_per_exec") {
        return "connection cap";
    }
    if reason.contains("dns_queries_per_sec") {
        return "DNS over the rate";
    }
    match event.kind {
        "packet" => return "non-TCP traffic",
        "dns" => return "DNS name denied",
        _ => {}
    }
    let has = |s: &str| reason.contains(s);
    if has("plaintext") {
        "secret over plaintext HTTP"
    } else if has("metadata") {
        "cloud metadata address"
    } else if has("loopback") || has("this machine") {
        "this machine's addresses"
    } else if has("egress policy") || has("egress.") {
        "egress policy"
    } else if has("non-HTTP TCP") {
        "raw TCP not allowed"
    } else if has("synthetic") {
        "unknown synthetic address"
    } else if has("SNI") || has("Host") || has("match") {
        "host mismatch"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::TokenUse;

    #[test]
    fn counts_requests_substitutions_bytes_and_blocks_by_class() {
        let stats = Stats::default();
        let mut ok = Event::new("request", "allow");
        ok.bytes_up = 10;
        ok.bytes_down = 20;
        ok.tokens.push(TokenUse {
            fingerprint: "fp:1".into(),
            action: "substitute",
            location: "header:authorization".into(),
            bound_hosts: vec![],
        });
        stats.record(&ok);
        let mut denied = Event::new("request", "block");
        denied.reason =
            Some("evil.com is not allowed by the egress policy (egress.default deny)".into());
        stats.record(&denied);
        let mut wrong_host = Event::new("request", "block");
        wrong_host.tokens.push(TokenUse {
            fingerprint: "fp:2".into(),
            action: "block",
            location: "header:authorization".into(),
            bound_hosts: vec!["api.github.com".into()],
        });
        stats.record(&wrong_host);
        stats.record(&Event::new("packet", "block"));
        let mut capped = Event::new("connection", "block");
        capped.reason = Some(
            "exec-1 has 1024 connections open, the most [limits] connections_per_exec allows: reset"
                .into(),
        );
        stats.record(&capped);
        let mut over = Event::new("dns", "block");
        over.reason = Some("more than [limits] dns_queries_per_sec = 500 …: REFUSED".into());
        stats.record(&over);
        stats.connection();
        let c = stats.snapshot();
        assert_eq!((c.connections, c.requests, c.substitutions), (1, 3, 1));
        assert_eq!((c.bytes_up, c.bytes_down), (10, 20));
        assert_eq!(c.blocks["egress policy"], 1);
        assert_eq!(c.blocks["token not bound to the host"], 1);
        assert_eq!(c.blocks["non-TCP traffic"], 1);
        assert_eq!(c.blocks["connection cap"], 1);
        assert_eq!(c.blocks["DNS over the rate"], 1);
    }
}
