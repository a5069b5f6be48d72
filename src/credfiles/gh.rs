//! `~/.config/gh/hosts.yml` (the GitHub CLI): each top-level key is a host, and an
//! `oauth_token:` line anywhere below it (the host's own, or under `users: NAME:`) holds that
//! host's token, bound to the host and `api.` of it.
//!
//! A careful line-based rewrite, not a YAML library: `serde_yaml` is deprecated, its forks are
//! young, and none keeps the other bytes of a file exact. gh writes this file in one simple
//! block style; anything else that could hide a token (flow style, block scalars, anchors,
//! tags, tabs, a value continued on the next line, `oauth_token` in any other form) makes the
//! file refused, so no secret is ever left in place.

use zeroize::Zeroizing;

use super::{Encoding, Found, lines};

const KEY: &str = "oauth_token";

fn hosts_of(host: &str) -> Vec<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let api = format!("api.{host}");
    vec![host, api]
}

/// A value's span (start, end) within its line's rest and its text.
type Scalar = (usize, usize, Zeroizing<String>);

/// A plain or quoted scalar on one line (after `key:`): its span within `rest` and its text.
fn scalar(rest: &str) -> Result<Option<Scalar>, &'static str> {
    let lead = rest.len() - rest.trim_start().len();
    let body = &rest[lead..];
    if body.is_empty() || body.starts_with('#') {
        return Ok(None);
    }
    match body.as_bytes()[0] {
        b'\'' => {
            let inner = &body[1..];
            let mut value = Zeroizing::new(String::new());
            let mut chars = inner.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                        chars.next();
                        value.push('\'');
                        continue;
                    }
                    let tail = inner[i + 1..].trim_start();
                    if !(tail.is_empty() || tail.starts_with('#')) {
                        return Err("text after a quoted value");
                    }
                    return Ok(Some((lead, lead + 1 + i + 1, value)));
                }
                value.push(c);
            }
            Err("a quoted value that does not end on its line")
        }
        b'"' => {
            let inner = &body[1..];
            let close = inner
                .find('"')
                .ok_or("a quoted value that does not end on its line")?;
            if inner[..close].contains('\\') {
                return Err("a double-quoted value with escapes");
            }
            let tail = inner[close + 1..].trim_start();
            if !(tail.is_empty() || tail.starts_with('#')) {
                return Err("text after a quoted value");
            }
            Ok(Some((
                lead,
                lead + close + 2,
                Zeroizing::new(inner[..close].to_owned()),
            )))
        }
        b'|' | b'>' | b'&' | b'*' | b'!' | b'{' | b'[' | b'%' | b'@' | b'`' => {
            Err("a value in a YAML form netcage does not rewrite")
        }
        _ => {
            let end = body.find(" #").unwrap_or(body.len());
            let value = body[..end].trim_end();
            Ok(Some((
                lead,
                lead + value.len(),
                Zeroizing::new(value.to_owned()),
            )))
        }
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    let mut out = Vec::new();
    let mut host: Option<String> = None;
    // The indentation of the last `oauth_token:`: a deeper line after it continues its value.
    let mut after_token: Option<usize> = None;
    for (n, (start, line)) in lines(text).enumerate() {
        let n = n + 1;
        let bad = |why: &str| format!("line {n}: {why}");
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.trim_start_matches(' ').starts_with('\t') {
            return Err(bad("a tab in the indentation"));
        }
        let depth = indent(line);
        if let Some(d) = after_token.take()
            && depth > d
        {
            return Err(bad("a value continued on the next line"));
        }
        if depth == 0 {
            if trimmed == "---" {
                continue;
            }
            let Some(key) = trimmed.strip_suffix(':') else {
                return Err(bad("a top-level line that is not a host"));
            };
            let key = key.trim_matches(['"', '\'']);
            if key.is_empty() || key.contains([' ', ':', '{', '[', '&', '*', '!', '#']) {
                return Err(bad("a top-level line that is not a host"));
            }
            host = Some(key.to_owned());
            continue;
        }
        let body = &line[depth..];
        let Some(rest) = body.strip_prefix(KEY).and_then(|r| r.strip_prefix(':')) else {
            if body.contains(KEY) {
                return Err(bad("oauth_token in a form netcage does not rewrite"));
            }
            if body.starts_with(['{', '[', '|', '>', '&', '*', '!', '?']) {
                return Err(bad("YAML netcage does not rewrite"));
            }
            continue;
        };
        let Some(h) = &host else {
            return Err(bad("a token under no host"));
        };
        let Some((s, e, value)) = scalar(rest).map_err(bad)? else {
            continue;
        };
        after_token = Some(depth);
        if value.is_empty() {
            continue;
        }
        let at = start + depth + KEY.len() + 1;
        out.push(Found {
            start: at + s,
            end: at + e,
            value,
            hosts: hosts_of(h),
            encoding: Encoding::Raw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn tokens_are_sealed_for_the_host_and_its_api() {
        let text = "github.com:\n    users:\n        octocat:\n            oauth_token: gho_one\n    git_protocol: https\n    user: octocat\n    oauth_token: 'gho_o''ne' # mine\nghe.corp.test:\n    oauth_token: \"gho_two\"\n    user: me\n";
        let (out, seen) = run(Format::Gh, text).unwrap();
        assert_eq!(
            out,
            "github.com:\n    users:\n        octocat:\n            oauth_token: starpod:v1:T1+/=\n    git_protocol: https\n    user: octocat\n    oauth_token: starpod:v1:T2+/= # mine\nghe.corp.test:\n    oauth_token: starpod:v1:T3+/=\n    user: me\n"
        );
        assert_eq!(
            seen,
            vec![
                ("gho_one".into(), hosts(&["github.com", "api.github.com"])),
                ("gho_o'ne".into(), hosts(&["github.com", "api.github.com"])),
                (
                    "gho_two".into(),
                    hosts(&["ghe.corp.test", "api.ghe.corp.test"])
                ),
            ]
        );
    }

    #[test]
    fn other_yaml_is_refused() {
        for (text, why) in [
            ("secret = x\n", "line 1: a top-level line"),
            ("github.com: {oauth_token: x}\n", "line 1: a top-level line"),
            (
                "github.com:\n    oauth_token: |\n        x\n",
                "line 2: a value in a YAML form",
            ),
            (
                "github.com:\n    oauth_token: abc\n      def\n",
                "line 3: a value continued",
            ),
            (
                "github.com:\n    x: {oauth_token: y}\n",
                "line 2: oauth_token in a form",
            ),
            ("github.com:\n\toauth_token: y\n", "line 2: a tab"),
            (
                "github.com:\n    oauth_token: \"a\\x\"\n",
                "line 2: a double-quoted",
            ),
            ("  oauth_token: y\n", "line 1: a token under no host"),
        ] {
            let e = run(Format::Gh, text).unwrap_err();
            assert!(e.starts_with(why), "{text:?}: {e}");
        }
        assert!(run(Format::Gh, "github.com:\n    oauth_token:\n    user: x\n").is_ok());
    }
}
