//! AWS access keys sealed for SigV4 re-signing (`--seal-aws`): the command gets a stand-in
//! access key id and `starpod:v1` tokens; the proxy (`proxy/sigv4/`) re-signs requests that
//! carry the stand-in with the real key, for the hosts the stand-in is bound to.
//!
//! ```text
//! mod.rs      the real keys, their stand-ins, and what the command's environment holds
//! source.rs   where the real keys come from: netcage's environment or a profile
//! ini.rs      the shared credentials and config files' INI dialect
//! ```
//!
//! The token the command gets as `AWS_SECRET_ACCESS_KEY` holds no secret (its value is the
//! stand-in key id): a secret access key never travels, so substituting it anywhere could only
//! leak it. The real key stays in netcage's memory (zeroed on drop). The session token does
//! travel (`X-Amz-Security-Token`), so its token holds the real value, substituted like any.

pub(crate) mod ini;
mod source;

use zeroize::Zeroizing;

use crate::env::SealedVar;
use crate::token::{self, Key};

pub use source::{Source, load, profiles};

/// The hosts a stand-in is bound to unless told otherwise.
pub const DEFAULT_HOSTS: &[&str] = &["*.amazonaws.com", "amazonaws.com"];

/// Stand-in key ids start with this (after `AKIA`/`ASIA`): recognisable in a request or log.
pub const STANDIN_MARK: &str = "NETC";

/// A real AWS access key (zeroed on drop; `Debug` shows only the key id's first characters).
#[derive(Clone)]
pub struct AwsKeys {
    pub access_key_id: Zeroizing<String>,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys").finish_non_exhaustive()
    }
}

/// What the proxy knows of one sealed key: the stand-in id it recognises, the real key it
/// signs with, the hosts it may sign for, and the fingerprint its audit lines name.
pub struct AwsCredential {
    pub standin_id: String,
    pub real: AwsKeys,
    pub hosts: Vec<String>,
    /// The fingerprint of the secret-key token (`fp:…`).
    pub fingerprint: String,
}

impl std::fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredential")
            .field("standin_id", &self.standin_id)
            .field("hosts", &self.hosts)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A sealed key: the proxy's side and the command's variables.
pub struct Sealed {
    pub credential: AwsCredential,
    /// `AWS_ACCESS_KEY_ID` (the stand-in), `AWS_SECRET_ACCESS_KEY` (a token) and, with a
    /// session, `AWS_SESSION_TOKEN` (a token), each with the real value it stands for (so the
    /// same value elsewhere in the environment is replaced too).
    pub vars: Vec<SealedVar>,
    /// The session token's token, for the leak guard.
    pub session_token: Option<String>,
}

/// Seals `real` for `hosts` (empty: [`DEFAULT_HOSTS`]).
pub fn seal(key: &Key, real: AwsKeys, hosts: &[String]) -> Sealed {
    let hosts: Vec<String> = if hosts.is_empty() {
        DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect()
    } else {
        hosts.to_vec()
    };
    let session = real.session_token.is_some();
    // The token's value only has to be unique to the token; the stand-in is made from the
    // token's fingerprint, so seal a random placeholder first.
    let mut nonce = [0u8; 8];
    rand::fill(&mut nonce);
    let placeholder: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let secret_token = token::seal(key, &format!("netcage-sigv4-{placeholder}"), &hosts);
    let fingerprint = token::fingerprint(&secret_token);
    let standin_id = standin_id(&fingerprint, session);
    let mut vars = vec![
        SealedVar {
            name: "AWS_ACCESS_KEY_ID".into(),
            token: standin_id.clone(),
            value: Some(real.access_key_id.clone()),
        },
        SealedVar {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            token: secret_token,
            value: Some(real.secret_access_key.clone()),
        },
    ];
    let session_token = real.session_token.as_ref().map(|value| {
        let token = token::seal(key, value, &hosts);
        vars.push(SealedVar {
            name: "AWS_SESSION_TOKEN".into(),
            token: token.clone(),
            value: Some(value.clone()),
        });
        token
    });
    Sealed {
        credential: AwsCredential {
            standin_id,
            real,
            hosts,
            fingerprint,
        },
        vars,
        session_token,
    }
}

/// The stand-in key id for a token fingerprint: 20 characters, shaped like a real key id
/// (`AKIA`, or `ASIA` for temporary credentials, then 16 of `A-Z0-9`) so SDKs accept it.
pub fn standin_id(fingerprint: &str, session: bool) -> String {
    let hex = fingerprint.strip_prefix("fp:").unwrap_or(fingerprint);
    let mut id = String::from(if session { "ASIA" } else { "AKIA" });
    id.push_str(STANDIN_MARK);
    id.extend(
        hex.chars()
            .chain(std::iter::repeat('0'))
            .take(12)
            .map(|c| c.to_ascii_uppercase()),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(session: bool) -> AwsKeys {
        AwsKeys {
            access_key_id: Zeroizing::new("AKIAREALREALREAL0000".into()),
            secret_access_key: Zeroizing::new("realsecretrealsecretrealsecret0000000000".into()),
            session_token: session.then(|| Zeroizing::new("realsession".into())),
        }
    }

    #[test]
    fn standins_look_like_key_ids_and_name_their_fingerprint() {
        let key = Key::from_bytes([7u8; 32]);
        let sealed = seal(&key, keys(false), &[]);
        let id = &sealed.credential.standin_id;
        assert_eq!(id.len(), 20, "{id}");
        assert!(id.starts_with("AKIANETC"), "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        let fp = sealed.credential.fingerprint.trim_start_matches("fp:");
        assert_eq!(id[8..], fp.to_ascii_uppercase());
        assert_eq!(sealed.credential.hosts, DEFAULT_HOSTS);
        let names: Vec<&str> = sealed.vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        // The secret's token opens to no secret at all.
        let opened = token::open(&key, &sealed.vars[1].token).unwrap();
        assert!(!opened.value.contains("realsecret"));
        assert_eq!(opened.hosts, DEFAULT_HOSTS);
        assert_eq!(
            token::fingerprint(&sealed.vars[1].token),
            sealed.credential.fingerprint
        );
    }

    #[test]
    fn a_session_gets_an_asia_standin_and_a_token_holding_the_real_session_token() {
        let key = Key::from_bytes([7u8; 32]);
        let hosts = vec!["minio.example".to_string()];
        let sealed = seal(&key, keys(true), &hosts);
        assert!(sealed.credential.standin_id.starts_with("ASIANETC"));
        let session = sealed
            .vars
            .iter()
            .find(|v| v.name == "AWS_SESSION_TOKEN")
            .unwrap();
        assert_eq!(Some(&session.token), sealed.session_token.as_ref());
        let opened = token::open(&key, &session.token).unwrap();
        assert_eq!(opened.value.as_str(), "realsession");
        assert_eq!(opened.hosts, hosts);
        assert!(!format!("{:?}", sealed.credential).contains("realsecret"));
    }
}
