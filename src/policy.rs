//! `netcage.toml` (DESIGN §6) and the decisions it drives. Pure: no I/O beyond reading the file.

use std::net::IpAddr;
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
    /// `aws = true` (the environment's keys, else the `AWS_PROFILE`/`default` profile) or
    /// `aws = "PROFILE"`: seal an AWS key for SigV4 re-signing, like `--seal-aws`.
    #[serde(default)]
    pub aws: Option<AwsSeal>,
    /// Hosts the sealed AWS key may also sign for (S3-compatible endpoints, VPC endpoints),
    /// besides `*.amazonaws.com` and `amazonaws.com`; like `--seal-aws-host`.
    #[serde(default)]
    pub aws_hosts: Vec<String>,
}

/// `[secrets] aws`: `true`/`false`, or a profile name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AwsSeal {
    On(bool),
    Profile(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: Option<String>,
    /// The log's size cap: past it the file is rotated (`<path>.1`). 0 = no cap.
    #[serde(default = "default_audit_max_bytes")]
    pub max_bytes: u64,
}

fn default_audit_max_bytes() -> u64 {
    100 * 1024 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_bytes: default_audit_max_bytes(),
        }
    }
}

/// `[limits]`: what one command may take of the proxy (DESIGN §1.6). Every key is optional;
/// the defaults are in [`Limits::default`] and README's "Limits".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// From a connection's first byte to a finished TLS handshake.
    pub tls_handshake_secs: f64,
    /// For a request's head (line and headers), from its first byte.
    pub request_head_secs: f64,
    /// A keep-alive connection (HTTP/1.1 or HTTP/2) with no request in flight.
    pub idle_secs: f64,
    /// A request body that stops sending.
    pub body_stall_secs: f64,
    /// An upstream that sends nothing while a response is awaited or streamed (long polls
    /// and server-sent events that keep sending are not idle).
    pub upstream_idle_secs: f64,
    /// All request bodies the proxy holds in memory at once (they are read whole before
    /// anything goes upstream, up to 8 MiB each).
    pub body_memory_mib: u64,
    /// How long a body waits for room in that budget before it is refused.
    pub body_wait_secs: f64,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2), bytes.
    pub max_header_bytes: u32,
    /// Open connections of one command (`run`, or one `exec` of a `serve`).
    pub connections_per_exec: u32,
    /// DNS queries per second of one sandbox (a burst of as many is allowed).
    pub dns_queries_per_sec: u32,
    /// The largest WebSocket message (reassembled from its frames), either way; a larger one
    /// closes the connection with 1009.
    pub websocket_message_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_secs: 15.0,
            request_head_secs: 30.0,
            idle_secs: 50.0,
            body_stall_secs: 50.0,
            upstream_idle_secs: 300.0,
            body_memory_mib: 64,
            body_wait_secs: 10.0,
            h2_max_streams: 100,
            max_header_bytes: 64 * 1024,
            connections_per_exec: 1024,
            dns_queries_per_sec: 500,
            websocket_message_mib: 16,
        }
    }
}

impl Limits {
    /// Every value that is not a usable number, so a user can fix them all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, v) in [
            ("tls_handshake_secs", self.tls_handshake_secs),
            ("request_head_secs", self.request_head_secs),
            ("idle_secs", self.idle_secs),
            ("body_stall_secs", self.body_stall_secs),
            ("upstream_idle_secs", self.upstream_idle_secs),
            ("body_wait_secs", self.body_wait_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                out.push(format!(
                    "limits.{key} = {v}: give seconds, more than 0 and at most 86400"
                ));
            }
        }
        for (key, v) in [
            ("body_memory_mib", self.body_memory_mib),
            ("h2_max_streams", u64::from(self.h2_max_streams)),
            ("max_header_bytes", u64::from(self.max_header_bytes)),
            ("connections_per_exec", u64::from(self.connections_per_exec)),
            ("dns_queries_per_sec", u64::from(self.dns_queries_per_sec)),
        ] {
            if v == 0 {
                out.push(format!("limits.{key} = 0: give a number above 0"));
            }
        }
        if !(1..=1024).contains(&self.websocket_message_mib) {
            out.push(format!(
                "limits.websocket_message_mib = {}: give MiB from 1 to 1024",
                self.websocket_message_mib
            ));
        }
        out
    }

    /// A limit in seconds as a duration.
    pub fn secs(v: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(v)
    }
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
    /// Credential files to show sealed (tokens in place of their secrets) besides the
    /// built-in ones: `PATH` or `PATH=FORMAT` (`credfiles`).
    #[serde(default)]
    pub seal: Vec<String>,
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
    #[serde(default)]
    pub limits: Limits,
}

/// Cloud metadata and credential endpoints: refused unless the allow list names one exactly
/// (by the same name, or by the same address). An entry is an address, a prefix (`ADDR/LEN`)
/// or a name; addresses also count in their IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// and NAT64 (`64:ff9b::a.b.c.d`) forms. A name that only *resolves* to one of these addresses
/// (`2852039166` is 169.254.169.254 to getaddrinfo) is caught where the proxy resolves it
/// (`proxy::upstream`).
pub const METADATA_HOSTS: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "IPv4 link-local: the metadata services of AWS, Azure, GCP, Oracle, DigitalOcean, \
         OpenStack (169.254.169.254), ECS task credentials (169.254.170.2), EKS Pod Identity \
         (169.254.170.23), Tencent (169.254.0.23)",
    ),
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254", "AWS instance metadata over IPv6"),
    ("fd00:ec2::23", "EKS Pod Identity over IPv6"),
    ("fd20:ce::254", "GCP metadata over IPv6"),
    ("100.100.100.200", "Alibaba Cloud metadata"),
    ("192.0.0.192", "Oracle Cloud metadata (older instances)"),
    (
        "168.63.129.16",
        "Azure WireServer: VM agent configuration and certificates",
    ),
    ("metadata.google.internal", "GCP"),
    ("metadata.goog", "GCP"),
    (
        "metadata",
        "GCP's short name (through the resolv.conf search list)",
    ),
    ("instance-data", "AWS"),
    ("instance-data.ec2.internal", "AWS"),
    ("metadata.tencentyun.com", "Tencent Cloud"),
    ("metadata.platformequinix.com", "Equinix Metal"),
    ("metadata.packet.net", "Equinix Metal (old name)"),
];

/// Whether `host` (a name, or an IP literal with or without `[]`) is in [`METADATA_HOSTS`].
pub fn is_metadata(host: &str) -> bool {
    let host = hosts::normalize(host);
    // An IPv6 zone (`fe80::1%eth0`, `%25eth0` in a URL) does not change the address.
    let address = host.split('%').next().unwrap_or(&host);
    match address.parse::<IpAddr>() {
        Ok(ip) => is_metadata_ip(ip),
        Err(_) => METADATA_HOSTS.iter().any(|(entry, _)| *entry == host),
    }
}

/// Whether `ip` is a metadata address of [`METADATA_HOSTS`], in any of its IPv6 forms.
pub fn is_metadata_ip(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    METADATA_HOSTS.iter().any(|(entry, _)| in_prefix(ip, entry))
}

/// An IPv4 address written as IPv6 (mapped, compatible, or NAT64 `64:ff9b::/96`) as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let compatible = s[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified());
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        let o = v6.octets();
        return IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    ip
}

/// Whether `ip` is the address `entry` or inside the prefix `entry` (`ADDR/LEN`). A name never
/// matches.
fn in_prefix(ip: IpAddr, entry: &str) -> bool {
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr, len.parse::<u32>().ok()),
        None => (entry, None),
    };
    match (ip, addr.parse::<IpAddr>()) {
        (IpAddr::V4(ip), Ok(IpAddr::V4(net))) => {
            let len = len.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), Ok(IpAddr::V6(net))) => {
            let len = len.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The same host: the same address (in any IPv6 form of an IPv4 one), or the same name.
fn same_host(a: &str, b: &str) -> bool {
    match (hosts::ip_literal(a), hosts::ip_literal(b)) {
        (Some(a), Some(b)) => canonical_ip(a) == canonical_ip(b),
        (None, None) => hosts::normalize(a) == hosts::normalize(b),
        _ => false,
    }
}

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
        for pattern in &self.secrets.aws_hosts {
            if let Err(e) = hosts::validate_pattern(pattern) {
                out.push(format!("secrets.aws_hosts: {e}"));
            }
        }
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
        out.extend(self.limits.problems());
        let files = &self.files;
        for entry in &files.seal {
            if let Err(e) = crate::credfiles::parse_spec(entry) {
                out.push(format!("bad files.seal entry: {e}"));
            }
        }
        for (key, entry) in (files.write.iter().map(|e| ("write", e)))
            .chain(files.hide.iter().map(|e| ("hide", e)))
            .chain(files.show.iter().map(|e| ("show", e)))
            .chain(files.seal.iter().map(|e| ("seal", e)))
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
        let is_metadata = is_metadata(&host_n);
        let exact_allow = self.egress.allow.iter().find(|p| same_host(p, &host_n));
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
    fn secrets_aws_is_a_switch_or_a_profile() {
        let on: Policy =
            toml::from_str("[secrets]\naws = true\naws_hosts = [\"minio.example\"]").unwrap();
        assert_eq!(on.secrets.aws, Some(AwsSeal::On(true)));
        assert_eq!(on.secrets.aws_hosts, ["minio.example"]);
        let named: Policy = toml::from_str("[secrets]\naws = \"work\"").unwrap();
        assert_eq!(named.secrets.aws, Some(AwsSeal::Profile("work".into())));
        assert!(toml::from_str::<Policy>("[secrets]\naws = 3").is_err());
        let bad: Policy = toml::from_str("[secrets]\naws_hosts = [\"bad host\"]").unwrap();
        assert!(
            bad.problems()
                .iter()
                .any(|p| p.starts_with("secrets.aws_hosts"))
        );
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
    fn every_metadata_endpoint_is_refused_by_default() {
        let p = Policy::default();
        for host in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "169.254.0.23",
            "169.254.0.0",
            "169.254.255.255",
            "[fe80::1]",
            "fe80::a:b:c:d",
            "febf:ffff::1",
            "fe80::1%eth0",
            "[fe80::1%25lo]",
            "fd00:ec2::254",
            "[fd00:ec2::23]",
            "fd20:ce::254",
            "100.100.100.200",
            "192.0.0.192",
            "168.63.129.16",
            "::ffff:169.254.170.2",
            "[::ffff:a9fe:a9fe]",
            "[::169.254.169.254]",
            "64:ff9b::169.254.169.254",
            "metadata.google.internal",
            "METADATA.google.internal.",
            "metadata.goog",
            "metadata",
            "instance-data",
            "instance-data.ec2.internal",
            "metadata.tencentyun.com",
        ] {
            let v = p.egress(host);
            assert!(
                !v.allowed && v.rule.contains("cloud metadata"),
                "{host}: {v:?}"
            );
        }
        for host in [
            "169.253.255.255",
            "169.255.0.0",
            "fec0::1",
            "fe7f::1",
            "100.100.100.201",
            "192.0.0.193",
            "fd00:ec2::255",
            "[::ffff:8.8.8.8]",
            "metadata.example.com",
            "my-metadata",
            "api.github.com",
        ] {
            assert!(p.egress(host).allowed, "{host}");
        }
    }

    #[test]
    fn a_metadata_endpoint_is_reached_only_by_an_exact_allow() {
        let p = policy(
            r#"[egress]
allow = ["*", "*.internal", "169.254.170.2", "metadata.goog"]"#,
        );
        assert!(p.egress("169.254.170.2").allowed);
        assert!(p.egress("[::ffff:169.254.170.2]").allowed);
        assert!(p.egress("metadata.goog").allowed);
        assert!(!p.egress("169.254.169.254").allowed);
        assert!(!p.egress("metadata.google.internal").allowed);
        assert!(!p.egress("[fe80::1]").allowed);
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
    fn limits_have_defaults_and_bad_values_are_reported() {
        let p = Policy::default();
        assert_eq!(p.limits.idle_secs, 50.0);
        assert_eq!(p.audit.max_bytes, 100 * 1024 * 1024);
        let p = policy("[limits]\nidle_secs = 5\n");
        assert_eq!(p.limits.idle_secs, 5.0);
        assert_eq!(p.limits.tls_handshake_secs, 15.0);
        let p = policy("[limits]\nidle_secs = -1\nh2_max_streams = 0\n");
        let problems = p.problems();
        assert!(
            problems.iter().any(|e| e.contains("idle_secs")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|e| e.contains("h2_max_streams")),
            "{problems:?}"
        );
        assert_eq!(Policy::default().limits.websocket_message_mib, 16);
        assert!(
            policy("[limits]\nwebsocket_message_mib = 1\n")
                .problems()
                .is_empty()
        );
        for bad in [0, 1025] {
            let p = policy(&format!("[limits]\nwebsocket_message_mib = {bad}\n"));
            let problems = p.problems();
            assert!(
                problems
                    .iter()
                    .any(|e| e.contains("websocket_message_mib") && e.contains("1 to 1024")),
                "{problems:?}"
            );
        }
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
