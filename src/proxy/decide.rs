//! The decision for one token found in a request, by the token's bound hosts and the policy, and
//! the record of every decision for the audit line and for response redaction.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::audit::TokenUse;
use crate::policy::OnHostMismatch;
use crate::scan::Decision;
use crate::{hosts, token};

use super::Proxy;

/// Why a request was blocked, for the 403 body and the audit line.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    pub fingerprint: String,
    pub host: String,
    pub bound_hosts: Vec<String>,
    pub reason: String,
}

/// What the decisions of one request produced.
#[derive(Default)]
pub struct Record {
    pub uses: Vec<TokenUse>,
    pub block: Option<BlockInfo>,
    /// (real value, token) pairs substituted: the response must not show these values.
    pub substituted: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)>,
}

/// Decides for every token of one request bound for `host`. Cloned into streamed bodies.
#[derive(Clone)]
pub struct Decider {
    proxy: Arc<Proxy>,
    host: Arc<str>,
    tls: bool,
    pub record: Arc<Mutex<Record>>,
}

impl Decider {
    pub fn new(proxy: Arc<Proxy>, host: &str, tls: bool) -> Self {
        Decider {
            proxy,
            host: host.into(),
            tls,
            record: Arc::default(),
        }
    }

    pub fn blocked(&self) -> Option<BlockInfo> {
        self.lock().block.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decision for `token` found at `location` (`header:NAME`, `target`, `body`).
    pub fn decide(&self, location: &str, candidate: &str) -> Decision {
        let opened = open_with_head(&self.proxy.cfg.key, candidate);
        let head = opened.as_ref().and_then(|(_, head)| *head);
        let token_text = &candidate[..head.unwrap_or(candidate.len())];
        let fingerprint = token::fingerprint(token_text);
        let mut record = self.lock();
        let mut note = |action: &'static str, bound_hosts: Vec<String>| {
            record.uses.push(TokenUse {
                fingerprint: fingerprint.clone(),
                action,
                location: location.to_owned(),
                bound_hosts,
            });
        };
        let Some((secret, _)) = opened else {
            note("invalid", Vec::new());
            return Decision::Keep;
        };
        // Opened once, the value is guarded from now on.
        self.proxy
            .guard
            .learn(&secret.value, &secret.hosts, &fingerprint);
        let host_ok = hosts::allowed(&secret.hosts, &self.host);
        let plaintext_refused = !self.tls && !self.proxy.cfg.policy.secrets.plaintext_http;
        let reason = if plaintext_refused {
            Some(
                "a secret may not be sent over plaintext HTTP (policy secrets.plaintext_http = false); use https",
            )
        } else if !host_ok {
            Some("a token may not be sent to this host")
        } else {
            None
        };
        let replace = |value: Zeroizing<Vec<u8>>| match head {
            None => Decision::Substitute(value),
            Some(len) => Decision::SubstituteHead { value, len },
        };
        let Some(reason) = reason else {
            note("substitute", Vec::new());
            let value = Zeroizing::new(secret.value.as_bytes().to_vec());
            record
                .substituted
                .push((value.clone(), token_text.as_bytes().to_vec()));
            return replace(value);
        };
        if !plaintext_refused
            && self.proxy.cfg.policy.secrets.on_host_mismatch == OnHostMismatch::Strip
        {
            note("strip", secret.hosts.clone());
            return match head {
                None => Decision::Strip,
                Some(_) => replace(Zeroizing::default()),
            };
        }
        note("block", secret.hosts.clone());
        if record.block.is_none() {
            record.block = Some(BlockInfo {
                fingerprint,
                host: self.host.to_string(),
                bound_hosts: secret.hosts.clone(),
                reason: reason.to_owned(),
            });
        }
        Decision::Block
    }

    /// A SigV4 stand-in key id (its token's `fingerprint`, bound to `hosts`) signs a request
    /// found at `location`: `Ok` when this host may get it signed with the real key (audit
    /// action `sigv4`), else the block (the same rules as a token; never stripped: the
    /// signature would not hold without it).
    pub fn sigv4(
        &self,
        location: &str,
        fingerprint: &str,
        hosts: &[String],
    ) -> Result<(), BlockInfo> {
        let plaintext_refused = !self.tls && !self.proxy.cfg.policy.secrets.plaintext_http;
        let reason = if plaintext_refused {
            Some(
                "a request signed with a sealed AWS key may not be sent over plaintext HTTP (policy secrets.plaintext_http = false); use https",
            )
        } else if !hosts::allowed(hosts, &self.host) {
            Some("a sealed AWS key (SigV4 stand-in) may not sign requests to this host")
        } else {
            None
        };
        let mut record = self.lock();
        record.uses.push(TokenUse {
            fingerprint: fingerprint.to_owned(),
            action: if reason.is_some() { "block" } else { "sigv4" },
            location: location.to_owned(),
            bound_hosts: if reason.is_some() {
                hosts.to_vec()
            } else {
                Vec::new()
            },
        });
        let Some(reason) = reason else { return Ok(()) };
        Err(record
            .block
            .get_or_insert_with(|| BlockInfo {
                fingerprint: fingerprint.to_owned(),
                host: self.host.to_string(),
                bound_hosts: hosts.to_vec(),
                reason: reason.to_owned(),
            })
            .clone())
    }

    /// The leak guard found the guarded value `id` (a real value, not its token) at
    /// `location`, and this host is not one it may go to: the request is blocked, whatever
    /// `on_host_mismatch` says.
    pub fn leak(&self, location: &str, id: usize) -> BlockInfo {
        let (fingerprint, bound_hosts) = self.proxy.guard.describe(id);
        let mut record = self.lock();
        record.uses.push(TokenUse {
            fingerprint: fingerprint.clone(),
            action: "block",
            location: location.to_owned(),
            bound_hosts: bound_hosts.clone(),
        });
        record
            .block
            .get_or_insert_with(|| BlockInfo {
                fingerprint,
                host: self.host.to_string(),
                bound_hosts,
                reason: LEAK_REASON.to_owned(),
            })
            .clone()
    }
}

/// Why a request carrying a guarded value is blocked.
pub const LEAK_REASON: &str = "the request carries the real value of a secret (not its token), which may not be sent to this host";

/// Opens a candidate token. A token without `=` padding runs on into base64 characters that
/// follow it (`/bot<token>/getMe`): then the longest prefix cut at a `/` that opens is the
/// token, and its length is returned too.
fn open_with_head(key: &token::Key, text: &str) -> Option<(token::Secret, Option<usize>)> {
    if let Ok(secret) = token::open(key, text) {
        return Some((secret, None));
    }
    let body_start = token::PREFIX.len();
    text.get(body_start..)?
        .rmatch_indices('/')
        .map(|(i, _)| body_start + i)
        .find_map(|cut| Some((token::open(key, text.get(..cut)?).ok()?, Some(cut))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_running_into_a_path_is_found_by_its_longest_opening_prefix() {
        let key = token::Key::from_bytes([3u8; 32]);
        // Find a token without padding (its base64 runs straight into what follows).
        let tok = (0..64)
            .map(|i| token::seal(&key, &format!("bot{i}"), &["api.telegram.org".into()]))
            .find(|t| !t.ends_with('='))
            .unwrap();
        let candidate = format!("{tok}/getMe");
        let (secret, head) = open_with_head(&key, &candidate).unwrap();
        assert_eq!(head, Some(tok.len()));
        assert!(secret.value.starts_with("bot"));
        assert!(open_with_head(&key, &tok).unwrap().1.is_none());
        assert!(open_with_head(&key, "starpod:v1:AAAA/BBBB").is_none());
        assert!(open_with_head(&key, "starpod:v1:").is_none());
    }
}
