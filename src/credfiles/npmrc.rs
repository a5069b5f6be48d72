//! `~/.npmrc` (npm's `ini` format): `key = value` lines, `;`/`#` comments. Secrets:
//! `//HOST[:PORT]/PATH/:_authToken` (raw), `:_auth` (base64 of `user:password`: the token
//! goes in as base64 of `user:TOKEN`), `:_password` (base64 of the password: base64 of the
//! token), for the key's host; the same keys unscoped belong to the file's `registry=` host
//! (default `registry.npmjs.org`). A `${VAR}` value is a reference, not a secret, and stays.
//! Any other key whose name says it holds a credential makes the file refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::{Encoding, Found, credential_named, lines, url_host};

const DEFAULT_REGISTRY: &str = "registry.npmjs.org";

/// The value of a `key = value` line: its span in the line and its text (quotes removed).
fn value_span(line: &str, eq: usize) -> (usize, usize) {
    let after = &line[eq + 1..];
    let lead = after.len() - after.trim_start().len();
    let start = eq + 1 + lead;
    let rest = &line[start..];
    if let Some(inner) = rest.strip_prefix('"')
        && let Some(close) = inner.find('"')
    {
        return (start + 1, start + 1 + close);
    }
    let end = rest.find([';', '#']).unwrap_or(rest.len());
    let value = rest[..end].trim_end();
    (start, start + value.len())
}

pub(super) fn find(text: &str) -> Result<Vec<Found>, String> {
    // The default registry first: unscoped credentials belong to it wherever it is set.
    let mut registry = DEFAULT_REGISTRY.to_owned();
    for (_, line) in lines(text) {
        if let Some((key, _)) = line.split_once('=')
            && key.trim() == "registry"
        {
            let (s, e) = value_span(line, key.len());
            registry = url_host(&line[s..e]).unwrap_or(registry);
        }
    }
    let mut out = Vec::new();
    for (n, (start, line)) in lines(text).enumerate() {
        let n = n + 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with([';', '#', '[']) {
            continue;
        }
        let Some(eq) = line.find('=') else {
            continue; // a bare key (a flag set to true)
        };
        let key = line[..eq].trim();
        let (scope, name) = match key.rsplit_once(':') {
            Some((scope, name)) if scope.starts_with("//") => (Some(scope), name),
            _ => (None, key),
        };
        // Any case: a key npm would not read still holds the secret.
        let encoding = match name.to_ascii_lowercase().as_str() {
            "_authtoken" => Encoding::Raw,
            "_auth" => Encoding::BasicPair(String::new()),
            "_password" => Encoding::Base64,
            _ if credential_named(name) => {
                return Err(format!(
                    "line {n}: a credential netcage cannot bind to a registry"
                ));
            }
            _ => continue,
        };
        let (s, e) = value_span(line, eq);
        let raw = &line[s..e];
        if raw.is_empty() || raw.contains("${") {
            continue;
        }
        let host = match scope {
            Some(scope) => {
                url_host(scope).ok_or_else(|| format!("line {n}: a scope without a host"))?
            }
            None => registry.clone(),
        };
        let (value, encoding) = match encoding {
            Encoding::Raw => (Zeroizing::new(raw.to_owned()), Encoding::Raw),
            other => {
                let decoded = Zeroizing::new(
                    B64.decode(raw.trim())
                        .map_err(|_| format!("line {n}: {name} is not base64"))?,
                );
                let decoded = Zeroizing::new(
                    String::from_utf8(decoded.to_vec())
                        .map_err(|_| format!("line {n}: {name} is not UTF-8 once decoded"))?,
                );
                if other == Encoding::Base64 {
                    (decoded, Encoding::Base64)
                } else {
                    let (user, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| format!("line {n}: {name} is not user:password"))?;
                    (
                        Zeroizing::new(password.to_owned()),
                        Encoding::BasicPair(user.to_owned()),
                    )
                }
            }
        };
        if value.is_empty() {
            continue;
        }
        out.push(Found {
            start: start + s,
            end: start + e,
            value,
            hosts: vec![host],
            encoding,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::super::Format;
    use super::super::testing::{hosts, run};

    #[test]
    fn auth_keys_are_sealed_for_their_registry() {
        let auth = B64.encode("me:pa55");
        let pw = B64.encode("w0rd");
        let text = format!(
            "; comment\nregistry=https://npm.corp.test/\n//registry.npmjs.org/:_authToken = npm_abc ; note\n//npm.pkg.github.com:443/org/:_authToken=\"ghp_q\"\n_auth={auth}\n//x.test/:_password={pw}\n//x.test/:username=me\n//y.test/:_authToken=${{NPM_TOKEN}}\nemail=me@x.test\n"
        );
        let (out, seen) = run(Format::Npmrc, &text).unwrap();
        let basic = B64.encode("me:starpod:v1:T3+/=");
        let b64 = B64.encode("starpod:v1:T4+/=");
        assert_eq!(
            out,
            format!(
                "; comment\nregistry=https://npm.corp.test/\n//registry.npmjs.org/:_authToken = starpod:v1:T1+/= ; note\n//npm.pkg.github.com:443/org/:_authToken=\"starpod:v1:T2+/=\"\n_auth={basic}\n//x.test/:_password={b64}\n//x.test/:username=me\n//y.test/:_authToken=${{NPM_TOKEN}}\nemail=me@x.test\n"
            )
        );
        assert_eq!(
            seen,
            vec![
                ("npm_abc".into(), hosts(&["registry.npmjs.org"])),
                ("ghp_q".into(), hosts(&["npm.pkg.github.com"])),
                ("pa55".into(), hosts(&["npm.corp.test"])),
                ("w0rd".into(), hosts(&["x.test"])),
            ]
        );
    }

    #[test]
    fn unknown_credentials_and_bad_base64_are_refused() {
        assert!(
            run(Format::Npmrc, "secret = m\n")
                .unwrap_err()
                .starts_with("line 1: a credential")
        );
        assert!(
            run(Format::Npmrc, "//a.test/:_auth=!!\n")
                .unwrap_err()
                .contains("not base64")
        );
        let no_colon = format!("//a.test/:_auth={}\n", B64.encode("nocolon"));
        assert!(
            run(Format::Npmrc, &no_colon)
                .unwrap_err()
                .contains("user:password")
        );
    }

    #[test]
    fn auth_keys_in_any_case_are_sealed_and_flags_kept() {
        let (out, _) = run(
            Format::Npmrc,
            "//a.test/:_AUTHTOKEN=abc\nalways-auth=true\n",
        )
        .unwrap();
        assert_eq!(
            out,
            "//a.test/:_AUTHTOKEN=starpod:v1:T1+/=\nalways-auth=true\n"
        );
    }
}
