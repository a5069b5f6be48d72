//! Host patterns and matching (DESIGN §2): an exact name, or `*.suffix` matching any depth of
//! subdomain but not `suffix` itself. ASCII case-insensitive; a trailing dot is ignored. An IP
//! literal matches only an identical IP-literal pattern (never a wildcard).

use std::net::IpAddr;

/// Lower-cases, drops one trailing dot and IPv6 brackets.
pub fn normalize(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The host as an IP address, if it is an IP literal (`[v6]` brackets allowed).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    normalize(host).parse().ok()
}

/// Whether one pattern matches `host`.
pub fn pattern_matches(pattern: &str, host: &str) -> bool {
    let host_n = normalize(host);
    if host_n.is_empty() {
        return false;
    }
    if let Ok(ip) = host_n.parse::<IpAddr>() {
        return ip_literal(pattern) == Some(ip);
    }
    let pattern = normalize(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() => host_n
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        Some(_) => false,
        None => !pattern.is_empty() && pattern == host_n,
    }
}

/// Whether a token bound to `patterns` may be sent to `host`. No patterns = any host.
pub fn allowed(patterns: &[String], host: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| pattern_matches(p, host))
}

/// Checks a pattern given on the command line or in a policy; returns why it is unusable.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let ok = !name.is_empty()
        && (ip_literal(name).is_some() && !pattern.starts_with("*.")
            || name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad host pattern {pattern:?}: use a host name like api.github.com, a wildcard like *.github.com, or an IP address"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        assert!(pattern_matches("api.github.com", "API.GitHub.com."));
        assert!(!pattern_matches("api.github.com", "xapi.github.com"));
        assert!(pattern_matches("*.github.com", "a.b.github.com"));
        assert!(!pattern_matches("*.github.com", "github.com"));
        assert!(!pattern_matches("*.github.com", "evilgithub.com"));
        assert!(!pattern_matches("*.github.com", ".github.com"));
        assert!(!pattern_matches("*.", "a.b"));
        assert!(!pattern_matches("", ""));
        assert!(!pattern_matches("*", "github.com"));
    }

    #[test]
    fn ip_literals_match_only_identical_ip_patterns() {
        assert!(pattern_matches("127.0.0.1", "127.0.0.1"));
        assert!(pattern_matches("::1", "[0:0::1]"));
        assert!(!pattern_matches("*.0.0.1", "127.0.0.1"));
        assert!(!pattern_matches("localhost", "127.0.0.1"));
        assert!(!pattern_matches("140.82.112.6", "api.github.com"));
        assert!(allowed(&[], "10.0.0.1"));
    }

    #[test]
    fn validation() {
        assert!(validate_pattern("api.github.com").is_ok());
        assert!(validate_pattern("*.github.com").is_ok());
        assert!(validate_pattern("10.0.0.1").is_ok());
        assert!(validate_pattern("*").is_err());
        assert!(validate_pattern("a..b").is_err());
        assert!(validate_pattern("https://x").is_err());
    }
}
