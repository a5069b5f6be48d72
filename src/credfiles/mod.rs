//! Sealed credential files: a copy of a credential file (`~/.git-credentials`, `~/.npmrc`, …)
//! in which every secret is replaced by a `starpod:v1` token bound to the host the file itself
//! associates with that secret, everything else kept byte for byte. Tier 1 mounts the copy
//! (built in memory) where the program expects the file; the real values go to the proxy's
//! leak guard.
//!
//! One small module per format finds the secrets ([`Found`]: a byte span, the real value, its
//! hosts, how the token must be written there); [`rewrite`] puts the tokens in. Both are pure
//! (the sealer is a closure), so they are unit-tested without a key. A file whose shape a
//! parser does not fully understand is refused (it then stays hidden): a secret left in place
//! would be readable.

mod cargo;
mod docker;
mod gh;
mod git_credentials;
mod json;
mod netrc;
mod npmrc;
mod pypirc;

#[cfg(test)]
mod props;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::proxy::SealedValue;
use crate::token::{self, Key};

pub use cargo::registry_indexes;

/// The formats netcage can seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    GitCredentials,
    Netrc,
    Npmrc,
    Docker,
    Gh,
    Pypirc,
    Cargo,
}

impl Format {
    pub const ALL: &[Format] = &[
        Format::GitCredentials,
        Format::Netrc,
        Format::Npmrc,
        Format::Docker,
        Format::Gh,
        Format::Pypirc,
        Format::Cargo,
    ];

    /// The name `--seal-file PATH=FORMAT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::GitCredentials => "git-credentials",
            Format::Netrc => "netrc",
            Format::Npmrc => "npmrc",
            Format::Docker => "docker",
            Format::Gh => "gh",
            Format::Pypirc => "pypirc",
            Format::Cargo => "cargo",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The format a file's name says (`.npmrc`, `hosts.yml`, `.docker/config.json`, …).
    pub fn infer(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        let parent = path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("");
        Some(match name {
            ".git-credentials" | "git-credentials" => Format::GitCredentials,
            "credentials" if parent == "git" => Format::GitCredentials,
            ".netrc" | "_netrc" | "netrc" => Format::Netrc,
            ".npmrc" | "npmrc" => Format::Npmrc,
            "config.json" if parent == ".docker" || parent == "docker" => Format::Docker,
            "hosts.yml" | "hosts.yaml" => Format::Gh,
            ".pypirc" | "pypirc" => Format::Pypirc,
            "credentials.toml" => Format::Cargo,
            "credentials" if parent == ".cargo" || parent == "cargo" => Format::Cargo,
            // `ci.netrc`, `work.npmrc`, …
            _ => {
                let ext = name.rsplit_once('.')?.1;
                return Format::ALL.iter().copied().find(|f| {
                    matches!(
                        f,
                        Format::Netrc | Format::Npmrc | Format::Pypirc | Format::GitCredentials
                    ) && f.name() == ext
                });
            }
        })
    }
}

/// The credential files of `credentials::HOME_SECRETS` that are sealed by default (Tier 1).
/// `~/.aws/credentials` is SigV4's (a stand-in key pair, not a token), not this module's.
pub const DEFAULTS: &[(&str, Format)] = &[
    ("~/.git-credentials", Format::GitCredentials),
    ("~/.config/git/credentials", Format::GitCredentials),
    ("~/.netrc", Format::Netrc),
    ("~/.npmrc", Format::Npmrc),
    ("~/.docker/config.json", Format::Docker),
    ("~/.config/gh/hosts.yml", Format::Gh),
    ("~/.pypirc", Format::Pypirc),
    ("~/.cargo/credentials.toml", Format::Cargo),
    ("~/.cargo/credentials", Format::Cargo),
];

/// `PATH` or `PATH=FORMAT` (`--seal-file`, `[files] seal`): the path and the format, given
/// or inferred from the name.
pub fn parse_spec(spec: &str) -> Result<(String, Format), String> {
    if let Some((path, name)) = spec.rsplit_once('=')
        && let Some(format) = Format::from_name(name)
    {
        return Ok((path.to_owned(), format));
    }
    let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
    if spec.trim().is_empty() {
        return Err("an empty path".into());
    }
    match Format::infer(Path::new(spec)) {
        Some(format) => Ok((spec.to_owned(), format)),
        None => Err(format!(
            "{spec}: cannot tell the format from the name; write {spec}=FORMAT with FORMAT one of {}",
            names.join(", ")
        )),
    }
}

/// What a format's parser needs besides the file.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Cargo's alternative registries: (name, index URL), from `~/.cargo/config.toml`.
    pub cargo_indexes: Vec<(String, String)>,
}

/// How a token is written where the secret was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// As it is (the span is the bare value).
    Raw,
    /// Percent-encoded (URL userinfo).
    Percent,
    /// Base64 of the token (npm's `_password`).
    Base64,
    /// Base64 of `user:token` (docker's and npm's `auth`: Basic credentials the client sends
    /// as they are; the proxy finds the token inside decoded Basic credentials).
    BasicPair(String),
    /// A TOML basic string, quotes included (the span is the whole literal).
    TomlString,
}

/// One secret of a file.
pub(crate) struct Found {
    /// Byte span of the secret as written (encoded) in the file.
    pub start: usize,
    pub end: usize,
    pub value: Zeroizing<String>,
    /// Host patterns the value belongs to.
    pub hosts: Vec<String>,
    pub encoding: Encoding,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("span", &(self.start..self.end))
            .field("hosts", &self.hosts)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

fn find(format: Format, text: &str, ctx: &Context) -> Result<Vec<Found>, String> {
    match format {
        Format::GitCredentials => git_credentials::find(text),
        Format::Netrc => netrc::find(text),
        Format::Npmrc => npmrc::find(text),
        Format::Docker => docker::find(text),
        Format::Gh => gh::find(text),
        Format::Pypirc => pypirc::find(text),
        Format::Cargo => cargo::find(text, ctx),
    }
}

const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(token: &str, encoding: &Encoding) -> String {
    match encoding {
        Encoding::Raw => token.to_owned(),
        Encoding::Percent => percent_encoding::utf8_percent_encode(token, USERINFO).to_string(),
        Encoding::Base64 => B64.encode(token),
        Encoding::BasicPair(user) => B64.encode(format!("{user}:{token}")),
        Encoding::TomlString => format!("\"{token}\""),
    }
}

/// `content` with every secret replaced by `seal(value, hosts)` (a token), written the way
/// the file writes that secret. An error (one line, never a value) when the file does not
/// parse or holds a secret netcage cannot bind to a host.
pub fn rewrite(
    format: Format,
    content: &[u8],
    ctx: &Context,
    seal: &mut dyn FnMut(&str, &[String]) -> String,
) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(content).map_err(|e| {
        format!(
            "not UTF-8 text (at byte {}), so netcage cannot read it",
            e.valid_up_to()
        )
    })?;
    let mut found = find(format, text, ctx)?;
    found.sort_by_key(|f| f.start);
    let mut out = Vec::with_capacity(content.len() + found.len() * 160);
    let mut at = 0;
    for f in &found {
        if f.start < at || f.end < f.start || f.end > content.len() {
            return Err("two secrets overlap; netcage cannot rewrite this file".into());
        }
        if f.hosts.is_empty() {
            return Err("a secret belongs to no host".into());
        }
        out.extend_from_slice(&content[at..f.start]);
        let token = seal(&f.value, &f.hosts);
        out.extend_from_slice(encode(&token, &f.encoding).as_bytes());
        at = f.end;
    }
    out.extend_from_slice(&content[at..]);
    Ok(out)
}

/// A sealed file: what the command sees, and the real values for the proxy's leak guard.
pub struct Sealed {
    pub contents: Vec<u8>,
    pub values: Vec<SealedValue>,
    /// How many secrets were replaced.
    pub secrets: usize,
}

/// Reads `path` and seals it with `key` (the same (value, hosts) gets the same token).
pub fn seal_file(path: &Path, format: Format, ctx: &Context, key: &Key) -> Result<Sealed, String> {
    let content = Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?);
    let mut values = Vec::new();
    let mut tokens: Vec<(Zeroizing<String>, Vec<String>, String)> = Vec::new();
    let mut secrets = 0;
    let contents = rewrite(format, &content, ctx, &mut |value, hosts| {
        secrets += 1;
        if let Some((_, _, t)) = tokens
            .iter()
            .find(|(v, h, _)| v.as_str() == value && h.as_slice() == hosts)
        {
            return t.clone();
        }
        let t = token::seal(key, value, hosts);
        values.push(SealedValue::new(value, hosts, &t));
        tokens.push((Zeroizing::new(value.to_owned()), hosts.to_vec(), t.clone()));
        t
    })?;
    Ok(Sealed {
        contents,
        values,
        secrets,
    })
}

/// The host of a URL (`https://user@host:port/path`, `//host/path`, `host:port`), lowercased;
/// `None` when there is none.
pub(crate) fn url_host(url: &str) -> Option<String> {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => url.strip_prefix("//").unwrap_or(url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    ok.then_some(host)
}

/// Does a key's name say it holds a credential (the environment's rule, `env::WITHHELD`)?
pub(crate) fn credential_named(key: &str) -> bool {
    let name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = name.trim_matches('_');
    crate::env::withheld_by(name).is_some()
}

/// The 1-based line of byte `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Lines of `text` with the byte offset each starts at (line endings not included; a `\r`
/// before the `\n` is not part of the line either).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n').map(move |raw| {
        let start = at;
        at += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        (start, line.strip_suffix('\r').unwrap_or(line))
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The rewritten text and each (value, hosts) sealed, in order.
    pub type Outcome = Result<(String, Vec<(String, Vec<String>)>), String>;

    /// A sealer for tests: `starpod:v1:T<n>` with the (value, hosts) recorded.
    pub fn run(format: Format, text: &str) -> Outcome {
        run_with(format, text, &Context::default())
    }

    pub fn run_with(format: Format, text: &str, ctx: &Context) -> Outcome {
        let mut seen = Vec::new();
        let out = rewrite(format, text.as_bytes(), ctx, &mut |v, h| {
            seen.push((v.to_owned(), h.to_vec()));
            format!("starpod:v1:T{}+/=", seen.len())
        })?;
        Ok((String::from_utf8(out).unwrap(), seen))
    }

    pub fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_inferred_from_names() {
        for (entry, format) in DEFAULTS {
            assert_eq!(Format::infer(Path::new(entry)), Some(*format), "{entry}");
        }
        assert_eq!(Format::infer(Path::new("/x/notes.txt")), None);
        assert_eq!(Format::infer(Path::new("/x/ci.netrc")), Some(Format::Netrc));
        assert_eq!(
            Format::infer(Path::new("/x/work.npmrc")),
            Some(Format::Npmrc)
        );
        assert_eq!(Format::infer(Path::new("/x/a.docker")), None);
        assert_eq!(
            parse_spec("/x/creds=netrc").unwrap(),
            ("/x/creds".into(), Format::Netrc)
        );
        assert_eq!(
            parse_spec("/x/a=b/.npmrc").unwrap(),
            ("/x/a=b/.npmrc".into(), Format::Npmrc)
        );
        let e = parse_spec("/x/creds").unwrap_err();
        assert!(
            e.contains("=FORMAT") && e.contains("git-credentials"),
            "{e}"
        );
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(*f));
        }
    }

    #[test]
    fn defaults_are_hidden_locations() {
        use crate::sandbox::credentials::HOME_SECRETS;
        for (entry, _) in DEFAULTS {
            assert!(
                HOME_SECRETS
                    .iter()
                    .any(|(h, _)| entry == h || entry.starts_with(&format!("{h}/"))),
                "{entry} is not hidden by default"
            );
        }
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://u:p@Git.Example:8443/x").unwrap(),
            "git.example"
        );
        assert_eq!(
            url_host("//registry.npmjs.org/").unwrap(),
            "registry.npmjs.org"
        );
        assert_eq!(url_host("registry.test:5000").unwrap(), "registry.test");
        assert_eq!(url_host("sparse+https://r.test/index/").unwrap(), "r.test");
        assert_eq!(url_host("http://[::1]:80/").unwrap(), "::1");
        assert_eq!(url_host("https:///x"), None);
        assert_eq!(url_host("https://a b/"), None);
    }

    #[test]
    fn encodings() {
        let t = "starpod:v1:ab+/=";
        assert_eq!(encode(t, &Encoding::Percent), "starpod%3Av1%3Aab%2B%2F%3D");
        assert_eq!(
            B64.decode(encode(t, &Encoding::BasicPair("u".into())))
                .unwrap(),
            b"u:starpod:v1:ab+/="
        );
        assert_eq!(encode(t, &Encoding::TomlString), "\"starpod:v1:ab+/=\"");
    }

    #[test]
    fn seal_file_seals_each_value_once_and_guards_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".netrc");
        std::fs::write(
            &path,
            "machine a.test login x password s3cr3t-one\nmachine a.test login y password s3cr3t-one\n",
        )
        .unwrap();
        let key = Key::generate();
        let sealed = seal_file(&path, Format::Netrc, &Context::default(), &key).unwrap();
        let text = String::from_utf8(sealed.contents).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!((sealed.secrets, sealed.values.len()), (2, 1));
        let tok = text.split_whitespace().nth(5).unwrap();
        let opened = token::open(&key, tok).unwrap();
        assert_eq!(
            (opened.value.as_str(), opened.hosts),
            ("s3cr3t-one", vec!["a.test".to_owned()])
        );
    }

    #[test]
    fn not_utf8_is_refused() {
        let e = rewrite(
            Format::Netrc,
            b"machine a password \xff\xfe",
            &Context::default(),
            &mut |_, _| String::new(),
        )
        .unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
