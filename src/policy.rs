//! `netcage.toml` (DESIGN §6) and the decisions it drives. Pure: no I/O beyond reading the file.

use std::path::Path;

use serde::Deserialize;

use crate::hosts;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHostMismatch {
    #[default]
    Block,
    Strip,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub default: DefaultAction,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// `host:port` pairs that may pass as raw TCP.
    #[serde(default)]
    pub tcp: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    #[serde(default)]
    pub on_host_mismatch: OnHostMismatch,
    #[serde(default)]
    pub plaintext_http: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: Option<String>,
}

/// `[files]`: what the command may write, and which credential locations it does not see
/// (Tier 1). Paths may start with `~/` (netcage's `$HOME`); relative ones are taken from the
/// working directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Writable besides the working directory and `/tmp`.
    #[serde(default)]
    pub write: Vec<String>,
    /// Hidden besides the built-in credential list.
    #[serde(default)]
    pub hide: Vec<String>,
    /// Built-in entries to show after all (as written in the list, e.g. `~/.npmrc`).
    #[serde(default)]
    pub show: Vec<String>,
}

/// The whole policy. `Policy::default()` is what runs without a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub files: FilesConfig,
}

/// Addresses of cloud metadata services: denied unless the allow list names them exactly.
pub const METADATA_HOSTS: &[&str] = &[
    "169.254.169.254",
    "fd00:ec2::254",
    "metadata.google.internal",
];

/// Whether a connection may go to a host, and which rule said so (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub rule: String,
}

impl Policy {
    /// Reads and checks a policy file; the error names the file and every problem found.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
        let policy: Policy = toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_owned();
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            match line {
                Some(line) => format!("policy file {}:{line}: {msg}", path.display()),
                None => format!("policy file {}: {msg}", path.display()),
            }
        })?;
        let problems = policy.problems();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(format!(
                "policy file {}: {}",
                path.display(),
                problems.join("; ")
            ))
        }
    }

    /// Every bad pattern or `host:port` entry, so a user can fix them all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pattern in self.egress.allow.iter().chain(&self.egress.deny) {
            if let Err(e) = hosts::validate_pattern(pattern) {
                out.push(e);
            }
        }
        for entry in &self.egress.tcp {
            if parse_host_port(entry).is_none() {
                out.push(format!(
                    "bad tcp entry {entry:?}: use host:port, e.g. github.com:22"
                ));
            }
        }
        let files = &self.files;
        for (key, entry) in (files.write.iter().map(|e| ("write", e)))
            .chain(files.hide.iter().map(|e| ("hide", e)))
            .chain(files.show.iter().map(|e| ("show", e)))
        {
            if entry.trim().is_empty() || (entry.starts_with('~') && !entry.starts_with("~/")) {
                out.push(format!(
                    "bad files.{key} entry {entry:?}: use a path, ~/PATH or an absolute path"
                ));
            }
        }
        out
    }

    /// Adds `--allow`/`--deny` shorthands. `--allow` narrows egress to the listed hosts.
    pub fn add_cli(&mut self, allow: &[String], deny: &[String]) -> Result<(), String> {
        for pattern in allow.iter().chain(deny) {
            hosts::validate_pattern(pattern)?;
        }
        if !allow.is_empty() {
            self.egress.default = DefaultAction::Deny;
            self.egress.allow.extend(allow.iter().cloned());
        }
        self.egress.deny.extend(deny.iter().cloned());
        Ok(())
    }

    /// May a connection go to `host`? Deny wins over allow; metadata needs an exact allow.
    pub fn egress(&self, host: &str) -> Verdict {
        let deny = |rule: String| Verdict {
            allowed: false,
            rule,
        };
        if let Some(p) = self
            .egress
            .deny
            .iter()
            .find(|p| hosts::pattern_matches(p, host))
        {
            return deny(format!("egress.deny {p}"));
        }
        let host_n = hosts::normalize(host);
        let is_metadata = METADATA_HOSTS
            .iter()
            .any(|m| hosts::pattern_matches(m, &host_n));
        let exact_allow = self
            .egress
            .allow
            .iter()
            .find(|p| hosts::normalize(p) == host_n);
        if is_metadata || is_loopback(&host_n) {
            let what = if is_metadata {
                "cloud metadata address"
            } else {
                "loopback address of the host running netcage"
            };
            return match exact_allow {
                Some(p) => Verdict {
                    allowed: true,
                    rule: format!("egress.allow {p}"),
                },
                None => deny(format!("{what} (allow it by exact address to reach it)")),
            };
        }
        if let Some(p) = self
            .egress
            .allow
            .iter()
            .find(|p| hosts::pattern_matches(p, host))
        {
            return Verdict {
                allowed: true,
                rule: format!("egress.allow {p}"),
            };
        }
        match self.egress.default {
            DefaultAction::Allow => Verdict {
                allowed: true,
                rule: "egress.default allow".into(),
            },
            DefaultAction::Deny => deny("egress.default deny".into()),
        }
    }

    /// May raw (non-HTTP) TCP go to `host:port`?
    pub fn raw_tcp_allowed(&self, host: &str, port: u16) -> bool {
        self.egress.tcp.iter().any(|entry| {
            parse_host_port(entry)
                .is_some_and(|(h, p)| p == port && hosts::pattern_matches(h, host))
        })
    }
}

/// `127.0.0.0/8`, `::1`, `0.0.0.0`, `::` and `localhost`: the proxy runs on the host, so these
/// would reach the host's own services.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || hosts::ip_literal(host).is_some_and(|ip| {
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6.to_canonical(),
                v4 => v4,
            };
            ip.is_loopback() || ip.is_unspecified()
        })
}

fn parse_host_port(entry: &str) -> Option<(&str, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    hosts::validate_pattern(host).ok()?;
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn default_allows_but_not_metadata() {
        let p = Policy::default();
        assert!(p.egress("api.github.com").allowed);
        assert!(!p.egress("169.254.169.254").allowed);
        assert!(!p.egress("[fd00:ec2::254]").allowed);
        assert!(!p.egress("METADATA.google.internal.").allowed);
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "localhost",
        ] {
            let v = p.egress(host);
            assert!(!v.allowed && v.rule.contains("loopback"), "{host}: {v:?}");
        }
    }

    #[test]
    fn deny_wins_and_default_deny() {
        let p = policy(
            r#"[egress]
default = "deny"
allow = ["*.github.com", "pypi.org", "169.254.169.254"]
deny = ["gist.github.com"]
tcp = ["github.com:22"]"#,
        );
        assert!(p.egress("api.github.com").allowed);
        assert!(p.egress("pypi.org").allowed);
        let v = p.egress("gist.github.com");
        assert_eq!(
            (v.allowed, v.rule.as_str()),
            (false, "egress.deny gist.github.com")
        );
        assert_eq!(p.egress("evil.com").rule, "egress.default deny");
        assert!(p.egress("169.254.169.254").allowed);
        assert!(p.raw_tcp_allowed("github.com", 22));
        assert!(!p.raw_tcp_allowed("github.com", 23));
        assert!(!p.raw_tcp_allowed("gitlab.com", 22));
    }

    #[test]
    fn bad_files_report_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netcage.toml");
        std::fs::write(&path, "[egress]\nallow = [\"a b\"]\ntcp = [\"nope\"]\n").unwrap();
        let err = Policy::load(&path).unwrap_err();
        assert!(err.contains("\"a b\"") && err.contains("\"nope\""), "{err}");
        std::fs::write(&path, "[egress]\ndefualt = \"deny\"\n").unwrap();
        let err = Policy::load(&path).unwrap_err();
        assert!(err.contains("defualt") && err.contains(":2"), "{err}");
        std::fs::write(&path, "[secrets]\non_host_mismatch = \"maybe\"\n").unwrap();
        assert!(Policy::load(&path).is_err());
    }

    #[test]
    fn cli_allow_narrows() {
        let mut p = Policy::default();
        p.add_cli(&["api.github.com".into()], &[]).unwrap();
        assert!(p.egress("api.github.com").allowed);
        assert!(!p.egress("example.com").allowed);
        assert!(p.add_cli(&["bad host".into()], &[]).is_err());
    }
}
