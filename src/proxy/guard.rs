//! The leak guard (defense in depth): the real values this proxy holds, and which of them may
//! go to which host. A request whose headers, target or body carry one of them as it is (not as
//! a token) is refused unless the host is one its token is bound to, whatever
//! `on_host_mismatch` says: a value that reached the command by any path still cannot leave
//! for the wrong host.
//!
//! Guarded: every value sealed for this proxy (`--seal`, [`crate::SandboxBuilder::seal`]), and
//! every value the proxy has opened from a token since (once opened, guarded too). Not guarded:
//! values shorter than [`scan::MIN_REFLECT_LEN`], and values a token lets go to any host.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderMap;
use http::header;
use lru::LruCache;
use zeroize::Zeroizing;

use crate::hosts;
use crate::scan::{self, LeakSet};
use crate::token;

/// A real value the proxy holds, with the hosts its token is bound to and the token's
/// fingerprint. The value is wiped on drop and never printed.
pub struct SealedValue {
    value: Zeroizing<Vec<u8>>,
    /// Host patterns; empty means any host.
    hosts: Vec<String>,
    fingerprint: String,
}

impl SealedValue {
    /// `value` as sealed into `token`, bound to `hosts` (empty: any host).
    pub fn new(value: &str, hosts: &[String], token: &str) -> Self {
        SealedValue {
            value: Zeroizing::new(value.as_bytes().to_vec()),
            hosts: hosts.to_vec(),
            fingerprint: token::fingerprint(token),
        }
    }
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("value", &"<redacted>")
            .field("hosts", &self.hosts)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Hosts whose compiled sets are kept.
const CACHED_HOSTS: NonZeroUsize = NonZeroUsize::new(256).expect("not zero");

/// The guarded values and, per host, the compiled set of those that may not go there.
pub struct Guard {
    state: Mutex<State>,
    /// Whether any value is guarded (a proxy without any takes no lock per request).
    active: AtomicBool,
}

struct State {
    /// One entry per distinct value; append-only, so an index names the same value for good.
    values: Vec<SealedValue>,
    /// Fingerprints of the tokens already taken in.
    seen: HashSet<String>,
    /// Bumped whenever `values` changes: cached sets of an older generation are stale.
    generation: u64,
    /// Host → (generation, the values that may not go there).
    cache: LruCache<String, (u64, Option<Arc<LeakSet>>)>,
}

impl Guard {
    pub fn new(sealed: Vec<SealedValue>) -> Self {
        let guard = Guard {
            state: Mutex::new(State {
                values: Vec::new(),
                seen: HashSet::new(),
                generation: 0,
                cache: LruCache::new(CACHED_HOSTS),
            }),
            active: AtomicBool::new(false),
        };
        for v in sealed {
            guard.add(v);
        }
        guard
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guards a value the proxy has just opened from the token with `fingerprint`.
    pub fn learn(&self, value: &str, hosts: &[String], fingerprint: &str) {
        if value.len() < scan::MIN_REFLECT_LEN || self.lock().seen.contains(fingerprint) {
            return;
        }
        self.add(SealedValue {
            value: Zeroizing::new(value.as_bytes().to_vec()),
            hosts: hosts.to_vec(),
            fingerprint: fingerprint.to_owned(),
        });
    }

    fn add(&self, new: SealedValue) {
        let mut state = self.lock();
        if !state.seen.insert(new.fingerprint.clone()) || new.value.len() < scan::MIN_REFLECT_LEN {
            return;
        }
        // Tokens can only be made with the key, so this grows only with what the key's
        // holder sealed.
        match state.values.iter_mut().find(|v| v.value == new.value) {
            // The same value in another token: it may go where either token lets it.
            Some(old) if old.hosts.is_empty() => return,
            Some(old) if new.hosts.is_empty() => old.hosts.clear(),
            Some(old) => {
                let more: Vec<String> = new
                    .hosts
                    .into_iter()
                    .filter(|h| !old.hosts.contains(h))
                    .collect();
                if more.is_empty() {
                    return;
                }
                old.hosts.extend(more);
            }
            None => state.values.push(new),
        }
        state.generation += 1;
        self.active.store(true, Ordering::Release);
    }

    /// The guarded values that may not go to `host`; `None` if there are none.
    pub fn for_host(&self, host: &str) -> Option<Arc<LeakSet>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        let generation = state.generation;
        if let Some((g, set)) = state.cache.get(host)
            && *g == generation
        {
            return set.clone();
        }
        let forbidden: Vec<(&[u8], usize)> = state
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| !hosts::allowed(&v.hosts, host))
            .map(|(i, v)| (v.value.as_slice(), i))
            .collect();
        let set = LeakSet::new(&forbidden);
        state.cache.put(host.to_owned(), (generation, set.clone()));
        set
    }

    /// The fingerprint and bound hosts of the value a [`LeakSet`] from here named `id`.
    pub fn describe(&self, id: usize) -> (String, Vec<String>) {
        self.lock()
            .values
            .get(id)
            .map(|v| (v.fingerprint.clone(), v.hosts.clone()))
            .unwrap_or_default()
    }
}

/// Where a guarded value is in a request head (`header:NAME` or `target`), and its id.
///
/// The `Host` header is not looked at: it names the destination, which every decision is made
/// for (and which must agree with the TLS server name).
pub fn find_in_head(set: &LeakSet, headers: &HeaderMap, target: &[u8]) -> Option<(String, usize)> {
    for (name, value) in headers {
        if name == header::HOST {
            continue;
        }
        if let Some(id) = set.find_in_header(value.as_bytes()) {
            return Some((format!("header:{name}"), id));
        }
    }
    set.find_in_target(target)
        .map(|id| ("target".to_owned(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(value: &str, hosts: &[&str], token: &str) -> SealedValue {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        SealedValue::new(value, &hosts, token)
    }

    #[test]
    fn values_forbidden_per_host() {
        let guard = Guard::new(vec![
            sealed("ghp_github_value", &["api.github.com", "github.com"], "t1"),
            sealed("sk-openai-value", &["api.openai.com"], "t2"),
            sealed("anywhere-value", &[], "t3"),
            sealed("short", &["x.example"], "t4"),
        ]);
        let github = guard.for_host("api.github.com").unwrap();
        assert_eq!(github.find(b"ghp_github_value"), None);
        assert_eq!(github.find(b"anywhere-value"), None);
        let id = github.find(b"x=sk-openai-value").unwrap();
        assert_eq!(
            guard.describe(id),
            (token::fingerprint("t2"), vec!["api.openai.com".to_owned()])
        );
        let other = guard.for_host("other.example").unwrap();
        assert!(other.find(b"ghp_github_value").is_some());
        assert!(other.find(b"sk-openai-value").is_some());
        assert_eq!(other.find(b"short anywhere-value"), None);
        // Cached until the values change.
        assert!(Arc::ptr_eq(
            &other,
            &guard.for_host("other.example").unwrap()
        ));
    }

    #[test]
    fn nothing_guarded() {
        let guard = Guard::new(vec![sealed("anywhere-value", &[], "t")]);
        assert!(guard.for_host("other.example").is_none());
        assert!(Guard::new(Vec::new()).for_host("x").is_none());
    }

    #[test]
    fn learned_values_and_the_same_value_in_two_tokens() {
        let guard = Guard::new(Vec::new());
        assert!(guard.for_host("b.example").is_none());
        guard.learn("opened-value", &["a.example".into()], "fp:1");
        let b = guard.for_host("b.example").unwrap();
        assert!(b.find(b"opened-value").is_some());
        assert!(guard.for_host("a.example").is_none());
        // Another token for the same value, bound to b: now it may go to b too.
        guard.learn("opened-value", &["b.example".into()], "fp:2");
        assert!(guard.for_host("b.example").is_none());
        assert!(guard.for_host("c.example").is_some());
        assert_eq!(guard.describe(0).1, ["a.example", "b.example"]);
        // And a token that lets it go anywhere.
        guard.learn("opened-value", &[], "fp:3");
        assert!(guard.for_host("c.example").is_none());
        // Too short to guard.
        guard.learn("short", &["a.example".into()], "fp:4");
        assert!(guard.for_host("c.example").is_none());
    }

    #[test]
    fn head_headers_basic_and_target() {
        let guard = Guard::new(vec![sealed("ghp_github_value", &["api.github.com"], "t")]);
        let set = guard.for_host("other.example").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "ghp_github_value.example".parse().unwrap());
        headers.insert("x-a", "nothing".parse().unwrap());
        assert_eq!(find_in_head(&set, &headers, b"/a?b=c"), None);
        assert_eq!(
            find_in_head(&set, &headers, b"/a?b=%67hp_github_value"),
            Some(("target".into(), 0))
        );
        headers.insert(
            header::AUTHORIZATION,
            "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX2dpdGh1Yl92YWx1ZQ=="
                .parse()
                .unwrap(),
        );
        assert_eq!(
            find_in_head(&set, &headers, b"/"),
            Some(("header:authorization".into(), 0))
        );
    }

    #[test]
    fn debug_does_not_print_values() {
        let s = format!("{:?}", sealed("ghp_github_value", &["a"], "t"));
        assert!(!s.contains("ghp_"), "{s}");
    }
}
