//! `--learn`: every host a run reached, turned into a `netcage.toml` egress section with
//! `default = "deny"` that allows exactly those hosts (and the raw `host:port` pairs that were
//! relayed). Fed by the audit writer with every [`Event`]; holds host names only, never secrets.
//!
//! What counts:
//! - `request`/`connection` events with decision `allow` and a host → `allow`;
//! - `tunnel` events (raw TCP relayed by `[egress] tcp`) with decision `allow` → `tcp`;
//! - anything `block`ed or failed (`error`) with a host → a comment, so the operator sees it
//!   without it being allowed. DNS lookups and dropped packets add nothing to the lists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::audit::Event;
use crate::hosts;

/// Hosts seen during a run. Thread-safe; cheap to feed.
#[derive(Default)]
pub struct Learner {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    allow: BTreeSet<String>,
    tcp: BTreeSet<(String, u16)>,
    /// Host → the first reason it was refused.
    blocked: BTreeMap<String, String>,
    /// Host → the first reason a connection to it failed.
    failed: BTreeMap<String, String>,
    /// Hosts that cannot be written as a policy pattern (should not happen; kept visible).
    unusable: BTreeSet<String>,
}

/// How many hosts and `host:port` pairs a learned policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub hosts: usize,
    pub tcp: usize,
    pub blocked: usize,
}

impl Learner {
    pub fn new() -> Self {
        Learner::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes note of one audit event.
    pub fn observe(&self, event: &Event) {
        let Some(raw) = event.host.as_deref() else {
            return;
        };
        let Some(host) = canonical_host(raw) else {
            let mut seen = self.lock();
            if event.decision == "allow" && matches!(event.kind, "request" | "connection") {
                seen.unusable.insert(printable(raw));
            }
            return;
        };
        let reason = || printable(event.reason.as_deref().unwrap_or("no reason given"));
        let mut seen = self.lock();
        match (event.kind, event.decision) {
            ("request" | "connection", "allow") => {
                seen.allow.insert(host);
            }
            ("tunnel", "allow") => {
                let port = event
                    .dst
                    .as_deref()
                    .and_then(|d| d.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok());
                if let Some(port) = port {
                    seen.tcp.insert((host, port));
                }
            }
            ("request" | "connection" | "tunnel" | "dns", "block") => {
                seen.blocked.entry(host).or_insert_with(reason);
            }
            ("request" | "connection" | "tunnel", "error") => {
                seen.failed.entry(host).or_insert_with(reason);
            }
            _ => {}
        }
    }

    /// How much was learned.
    pub fn counts(&self) -> Counts {
        let seen = self.lock();
        Counts {
            hosts: seen.allow.len(),
            tcp: seen.tcp.len(),
            blocked: seen
                .blocked
                .keys()
                .filter(|h| !seen.allow.contains(*h))
                .count(),
        }
    }

    /// A complete `netcage.toml` allowing exactly the hosts learned so far: sorted,
    /// deduplicated, `default = "deny"`. Refused and failed hosts follow as comments.
    pub fn policy_toml(&self) -> String {
        let seen = self.lock();
        let mut out = String::from(
            "# Learned by `netcage --learn`: the hosts this run reached. Anything else is blocked.\n\
             [egress]\ndefault = \"deny\"\n",
        );
        out.push_str(&toml_array("allow", seen.allow.iter().cloned()));
        if !seen.tcp.is_empty() {
            let entries = seen.tcp.iter().map(|(host, port)| match host.parse() {
                Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
                _ => format!("{host}:{port}"),
            });
            out.push_str(&toml_array("tcp", entries));
        }
        for (host, reason) in &seen.blocked {
            if !seen.allow.contains(host) {
                out.push_str(&format!("# blocked during learning: {host} ({reason})\n"));
            }
        }
        for (host, reason) in &seen.failed {
            if !seen.allow.contains(host) && !seen.blocked.contains_key(host) {
                out.push_str(&format!(
                    "# failed during learning, not allowed: {host} ({reason})\n"
                ));
            }
        }
        for host in &seen.unusable {
            out.push_str(&format!(
                "# reached during learning but not a usable host pattern: {host}\n"
            ));
        }
        out
    }
}

/// `key = [ "a", "b" ]`, one entry a line (entries are already plain: names, IPs, ports).
fn toml_array(key: &str, entries: impl Iterator<Item = String>) -> String {
    let entries: Vec<String> = entries.collect();
    if entries.is_empty() {
        return format!("{key} = []\n");
    }
    let mut out = format!("{key} = [\n");
    for entry in entries {
        out.push_str(&format!("    \"{entry}\",\n"));
    }
    out.push_str("]\n");
    out
}

/// The host as the policy will match it: lower case, no trailing dot or brackets, an IP
/// literal in its standard form. None when it is not a valid exact host pattern.
fn canonical_host(raw: &str) -> Option<String> {
    let host = hosts::normalize(raw);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    if host.starts_with("*.") || hosts::validate_pattern(&host).is_err() {
        return None;
    }
    Some(host)
}

/// Text safe inside a one-line TOML comment.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn event(kind: &'static str, decision: &'static str, host: &str) -> Event {
        let mut e = Event::new(kind, decision);
        e.host = Some(host.into());
        e
    }

    fn parse(text: &str) -> Policy {
        let policy: Policy = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            policy.problems().is_empty(),
            "{:?}\n{text}",
            policy.problems()
        );
        policy
    }

    #[test]
    fn renders_sorted_deduplicated_default_deny() {
        let l = Learner::new();
        for host in ["b.test", "A.test.", "a.test", "b.test"] {
            l.observe(&event("request", "allow", host));
        }
        l.observe(&event("dns", "allow", "dns-only.test"));
        l.observe(&Event::new("request", "allow"));
        let text = l.policy_toml();
        assert_eq!(
            text,
            "# Learned by `netcage --learn`: the hosts this run reached. Anything else is blocked.\n\
             [egress]\ndefault = \"deny\"\nallow = [\n    \"a.test\",\n    \"b.test\",\n]\n"
        );
        assert_eq!(
            l.counts(),
            Counts {
                hosts: 2,
                tcp: 0,
                blocked: 0
            }
        );
    }

    #[test]
    fn round_trips_through_the_policy() {
        let l = Learner::new();
        let allowed = [
            "api.github.com",
            "pypi.org",
            "203.0.113.7",
            "2001:db8::1",
            "[2001:DB8:0::2]",
            "::ffff:192.0.2.1",
            "under_score.test",
        ];
        for host in allowed {
            l.observe(&event("request", "allow", host));
        }
        let p = parse(&l.policy_toml());
        for host in allowed {
            let v = p.egress(host);
            assert!(v.allowed, "{host}: {v:?}");
        }
        for host in [
            "github.com",
            "x.pypi.org",
            "203.0.113.8",
            "192.0.2.1",
            "2001:db8::3",
        ] {
            let v = p.egress(host);
            assert_eq!(
                (v.allowed, v.rule.as_str()),
                (false, "egress.default deny"),
                "{host}"
            );
        }
    }

    #[test]
    fn exactly_allowed_loopback_and_metadata_stay_allowed() {
        let l = Learner::new();
        for host in ["127.0.0.1", "169.254.169.254", "metadata.google.internal"] {
            l.observe(&event("request", "allow", host));
        }
        let p = parse(&l.policy_toml());
        for host in ["127.0.0.1", "169.254.169.254", "metadata.google.internal"] {
            assert!(p.egress(host).allowed, "{host}");
        }
        assert!(!p.egress("127.0.0.2").allowed);
    }

    #[test]
    fn raw_tcp_passes_become_tcp_entries() {
        let l = Learner::new();
        let tunnel = |host: &str, dst: &str| {
            let mut e = event("tunnel", "allow", host);
            e.dst = Some(dst.into());
            l.observe(&e);
        };
        tunnel("github.com", "github.com:22");
        tunnel("github.com", "github.com:22");
        tunnel("2001:db8::9", "2001:db8::9:5432");
        tunnel("db.test", "db.test:notaport");
        let text = l.policy_toml();
        assert!(
            text.contains("tcp = [\n    \"[2001:db8::9]:5432\",\n    \"github.com:22\",\n]\n"),
            "{text}"
        );
        assert!(text.contains("allow = []\n"), "{text}");
        let p = parse(&text);
        assert!(p.raw_tcp_allowed("github.com", 22));
        assert!(p.raw_tcp_allowed("2001:db8::9", 5432));
        assert!(!p.raw_tcp_allowed("github.com", 23));
        assert!(!p.egress("github.com").allowed);
        assert_eq!(l.counts().tcp, 2);
    }

    #[test]
    fn blocked_and_failed_hosts_are_comments_only() {
        let l = Learner::new();
        let mut blocked = event("request", "block", "evil.example");
        blocked.reason = Some("evil.example is not allowed (egress.deny evil.example)".into());
        l.observe(&blocked);
        let mut again = event("connection", "block", "evil.example");
        again.reason = Some("second reason".into());
        l.observe(&again);
        let mut dns = event("dns", "block", "nx.example");
        dns.reason = Some("line\nbreak".into());
        l.observe(&dns);
        let mut failed = event("request", "error", "down.example");
        failed.reason = Some("down.example:443 refused the connection".into());
        l.observe(&failed);
        // Blocked once, allowed later: allowed, no comment.
        l.observe(&event("request", "block", "ok.example"));
        l.observe(&event("request", "allow", "ok.example"));
        l.observe(&event("packet", "block", "ignored.example"));

        let text = l.policy_toml();
        assert!(
            text.contains(
                "# blocked during learning: evil.example (evil.example is not allowed (egress.deny evil.example))\n"
            ),
            "{text}"
        );
        assert!(!text.contains("second reason"), "{text}");
        assert!(
            text.contains("# blocked during learning: nx.example (line?break)\n"),
            "{text}"
        );
        assert!(text.contains("# failed during learning, not allowed: down.example"));
        assert!(!text.contains("ignored.example"), "{text}");
        assert!(
            !text.contains("# blocked during learning: ok.example"),
            "{text}"
        );
        let p = parse(&text);
        assert_eq!(p.egress.allow, ["ok.example"]);
        assert_eq!(l.counts().blocked, 2);
    }

    #[test]
    fn unusable_hosts_are_never_patterns() {
        let l = Learner::new();
        for host in ["*.wild.test", "a b", "x\"y", "bad\nhost"] {
            l.observe(&event("request", "allow", host));
        }
        let text = l.policy_toml();
        let p = parse(&text);
        assert!(p.egress.allow.is_empty(), "{text}");
        assert!(
            text.contains("not a usable host pattern: *.wild.test\n"),
            "{text}"
        );
        assert!(text.contains("bad?host"), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("usable")).count(), 4);
    }
}
