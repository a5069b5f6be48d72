//! `~/.aws/credentials` and `~/.aws/config`: each profile's static key becomes the SigV4
//! stand-ins of `--seal-aws` (`aws.rs`): `aws_access_key_id` the stand-in key id,
//! `aws_secret_access_key` a token that holds no secret, `aws_session_token` a token of the
//! real one. The proxy re-signs requests carrying a stand-in with the real key, for the AWS
//! hosts only. Everything else in the file (regions, roles, comments) is kept byte for byte.
//!
//! A profile with only part of a key (an id without a secret, a session token without a key)
//! makes the file refused: a secret left in place would be readable.

use zeroize::Zeroizing;

use std::ops::Range;

use crate::aws::ini::{self, Line};
use crate::aws::{AwsCredential, AwsKeys};
use crate::proxy::SealedValue;
use crate::token::Key;

const ID: &str = "aws_access_key_id";
const SECRET: &str = "aws_secret_access_key";
const SESSION: &str = "aws_session_token";

/// The key settings of one profile, by the spans of their values.
#[derive(Default)]
struct Profile {
    id: Option<Span>,
    secret: Option<Span>,
    session: Option<Span>,
}

/// A value's byte range in the file.
type Span = Range<usize>;

/// A key sealed already (its real id and session token, wiped on drop) and what stands in
/// for it: the stand-in id, the secret's token, the session token's token.
struct Made {
    id: Zeroizing<String>,
    session: Option<Zeroizing<String>>,
    standins: (String, String, Option<String>),
}

/// The sealed file: what the command sees, the proxy's credentials, the leak guard's values.
pub struct SealedAws {
    pub contents: Vec<u8>,
    pub credentials: Vec<AwsCredential>,
    pub values: Vec<SealedValue>,
    pub secrets: usize,
}

/// Every profile's key settings, by profile, in file order; an error names the line.
fn find(text: &str) -> Result<Vec<(String, Profile)>, String> {
    let mut profiles: Vec<(String, Profile)> = Vec::new();
    let mut current: Option<usize> = None;
    for (start, line) in ini::lines(text) {
        let line_no = super::line_of(text, start);
        let (key, value, nested) = match line {
            Line::Blank => continue,
            Line::Header(name) => {
                current = Some(match profiles.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        profiles.push((name, Profile::default()));
                        profiles.len() - 1
                    }
                });
                continue;
            }
            // Anything but `key = value` is a shape netcage does not know: refused, so that
            // nothing it did not understand is shown.
            Line::Other => return Err(format!("line {line_no}: not a `key = value` setting")),
            Line::Setting { key, value, nested } => (key, value, nested),
        };
        let Some(at) = current else {
            return Err(format!("line {line_no}: a setting outside a profile"));
        };
        // Indented lines belong to a nested setting (`s3 =` then `  addressing_style = …`).
        if nested || ![ID, SECRET, SESSION].contains(&key.as_str()) {
            if super::credential_named(&key) {
                return Err(format!(
                    "line {line_no}: {key} looks like a credential netcage cannot seal"
                ));
            }
            continue;
        }
        if value.is_empty() {
            continue;
        }
        let profile = &mut profiles[at].1;
        let slot = match key.as_str() {
            ID => &mut profile.id,
            SECRET => &mut profile.secret,
            _ => &mut profile.session,
        };
        if slot.is_some() {
            return Err(format!("line {line_no}: {key} given twice in one profile"));
        }
        *slot = Some(value);
    }
    Ok(profiles)
}

/// Seals every profile's key of `content` for `hosts`.
pub fn seal(content: &[u8], key: &Key, hosts: &[String]) -> Result<SealedAws, String> {
    let text = std::str::from_utf8(content).map_err(|e| {
        format!(
            "not UTF-8 text (at byte {}), so netcage cannot read it",
            e.valid_up_to()
        )
    })?;
    let value = |s: &Span| Zeroizing::new(text[s.clone()].to_owned());
    let mut replace: Vec<(Span, String)> = Vec::new();
    let mut credentials = Vec::new();
    let mut values = Vec::new();
    // The same key in two profiles gets the same stand-in.
    let mut made: Vec<Made> = Vec::new();
    for (name, profile) in find(text)? {
        let (id, secret) = match (profile.id, profile.secret) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) if profile.session.is_none() => continue,
            _ => {
                return Err(format!(
                    "profile [{name}] has only part of a key ({ID}, {SECRET}{})",
                    if profile.session.is_some() {
                        format!(", {SESSION}")
                    } else {
                        String::new()
                    }
                ));
            }
        };
        let real = AwsKeys {
            access_key_id: value(&id),
            secret_access_key: value(&secret),
            session_token: profile.session.as_ref().map(value),
        };
        let same = |m: &&Made| {
            m.id == real.access_key_id && m.session.as_deref() == real.session_token.as_deref()
        };
        let (standin, secret_token, session_token) = match made.iter().find(same) {
            Some(done) => done.standins.clone(),
            None => {
                let secret_value = real.secret_access_key.clone();
                let session_value = real.session_token.clone();
                let sealed = crate::aws::seal(key, real, hosts);
                let secret_token = sealed.vars[1].token.clone();
                values.push(SealedValue::new(&secret_value, hosts, &secret_token));
                if let (Some(v), Some(t)) = (&session_value, &sealed.session_token) {
                    values.push(SealedValue::new(v, hosts, t));
                }
                let done = (
                    sealed.credential.standin_id.clone(),
                    secret_token,
                    sealed.session_token.clone(),
                );
                made.push(Made {
                    id: sealed.credential.real.access_key_id.clone(),
                    session: sealed.credential.real.session_token.clone(),
                    standins: done.clone(),
                });
                credentials.push(sealed.credential);
                done
            }
        };
        replace.push((id, standin));
        replace.push((secret, secret_token));
        if let (Some(span), Some(token)) = (profile.session, session_token) {
            replace.push((span, token));
        }
    }
    replace.sort_by_key(|(s, _)| s.start);
    let mut out = Vec::with_capacity(content.len() + replace.len() * 160);
    let mut at = 0;
    for (span, with) in &replace {
        out.extend_from_slice(&content[at..span.start]);
        out.extend_from_slice(with.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&content[at..]);
    Ok(SealedAws {
        contents: out,
        secrets: replace.len(),
        credentials,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# mine\n[default]\naws_access_key_id = AKIAREALKEY000000001\naws_secret_access_key=realSecretKeyValue0000000000000000000001\nregion = eu-west-1\n\n[work]\naws_access_key_id = AKIAREALKEY000000002\naws_secret_access_key = realSecretKeyValue0000000000000000000002\naws_session_token = realSessionTokenValue02\ns3 =\n  addressing_style = path\n\n[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = work\n";

    fn hosts() -> Vec<String> {
        crate::aws::DEFAULT_HOSTS
            .iter()
            .map(|h| h.to_string())
            .collect()
    }

    #[test]
    fn every_key_becomes_stand_ins_and_the_rest_stays() {
        let key = Key::from_bytes([3; 32]);
        let sealed = seal(FILE.as_bytes(), &key, &hosts()).unwrap();
        let out = String::from_utf8(sealed.contents).unwrap();
        for real in [
            "AKIAREALKEY000000001",
            "realSecretKeyValue0000000000000000000001",
            "AKIAREALKEY000000002",
            "realSecretKeyValue0000000000000000000002",
            "realSessionTokenValue02",
        ] {
            assert!(!out.contains(real), "{real} left in:\n{out}");
        }
        assert_eq!(sealed.credentials.len(), 2);
        assert_eq!(sealed.secrets, 5);
        let default_id = &sealed.credentials[0].standin_id;
        assert!(
            out.contains(&format!("aws_access_key_id = {default_id}\n")),
            "{out}"
        );
        assert!(sealed.credentials[1].standin_id.starts_with("ASIANETC"));
        for kept in [
            "# mine\n[default]\n",
            "region = eu-west-1\n",
            "s3 =\n  addressing_style = path\n",
            "[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = work\n",
            "aws_secret_access_key=starpod:v1:",
        ] {
            assert!(out.contains(kept), "{kept:?} lost:\n{out}");
        }
        assert_eq!(
            sealed.credentials[1]
                .real
                .session_token
                .as_deref()
                .map(|s| s.as_str()),
            Some("realSessionTokenValue02")
        );
    }

    #[test]
    fn part_of_a_key_is_refused() {
        let key = Key::from_bytes([3; 32]);
        for text in [
            "[a]\naws_access_key_id = AKIA1\n",
            "[a]\naws_secret_access_key = s\n",
            "[a]\naws_session_token = t\n",
            "aws_access_key_id = AKIA1\n",
            "secret = x\n",
            "[a]\nsecret = x\n",
            "[a]\ns3 =\n  client_secret = x\n",
            "[a]\njust words\n",
            "[a]\naws_access_key_id = A\naws_access_key_id = B\naws_secret_access_key = s\n",
        ] {
            assert!(seal(text.as_bytes(), &key, &hosts()).is_err(), "{text}");
        }
        // No keys at all (a config with regions only) seals to itself.
        let text = "[default]\nregion = us-east-1\n";
        let sealed = seal(text.as_bytes(), &key, &hosts()).unwrap();
        assert_eq!(sealed.contents, text.as_bytes());
        assert!(sealed.credentials.is_empty());
    }
}
