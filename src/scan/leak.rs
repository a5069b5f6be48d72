//! Request side, defense in depth: real secret values in what the client sends. The sandboxed
//! program should only ever hold tokens; if a real value reached it anyway, the proxy finds the
//! value itself in the request (before substituting anything) and the caller refuses to send it
//! where it may not go.

use std::sync::Arc;

use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

use super::MIN_REFLECT_LEN;
use super::find::percent_encode_into;
use super::header::decode_basic;
use super::values::ValueMatcher;

/// A compiled set of values to look for, each with the caller's id for it.
///
/// A value is looked for as it is and percent-encoded (every byte except
/// `ALPHA / DIGIT / - . _ ~` as `%XX`, upper-case hex, a space as `%20` or `+`: what URL and
/// form encoders write).
/// Values shorter than [`MIN_REFLECT_LEN`] are not looked for: they would match everywhere.
/// The matcher is the redactor's ([`super::Redactor`]); like it, it keeps its own copy of the
/// values, which is not wiped.
pub struct LeakSet {
    matcher: ValueMatcher,
    /// The caller's id for each pattern.
    ids: Vec<usize>,
    /// The patterns, for [`LeakSet::partial_suffix`] (wiped on drop).
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// Whether some pattern starts with this byte.
    first: [bool; 256],
}

impl std::fmt::Debug for LeakSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        f.debug_struct("LeakSet")
            .field("patterns", &self.ids.len())
            .finish_non_exhaustive()
    }
}

/// A guarded value was found: the caller's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request carries a real secret value")]
pub struct Leak(pub usize);

impl LeakSet {
    /// `values`: (value, id). `None` if no value is long enough to look for.
    pub fn new(values: &[(&[u8], usize)]) -> Option<Arc<Self>> {
        Self::build(values, true).map(Arc::new)
    }

    pub(crate) fn build(values: &[(&[u8], usize)], allow_packed: bool) -> Option<Self> {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut ids = Vec::new();
        for &(value, id) in values {
            if value.len() < MIN_REFLECT_LEN {
                continue;
            }
            for p in [
                Zeroizing::new(value.to_vec()),
                encoded(value, false),
                encoded(value, true),
            ] {
                if !patterns.iter().any(|q| **q == *p) {
                    patterns.push(p);
                    ids.push(id);
                }
            }
        }
        let refs: Vec<&[u8]> = patterns.iter().map(|p| p.as_slice()).collect();
        let matcher = ValueMatcher::new(&refs, allow_packed)?;
        let mut first = [false; 256];
        for p in &patterns {
            if let Some(&b) = p.first() {
                first[usize::from(b)] = true;
            }
        }
        Some(LeakSet {
            matcher,
            ids,
            patterns,
            first,
        })
    }

    /// The length of the longest suffix of `data` that is a proper prefix of a pattern: the
    /// bytes a stream must hold back, as they may be the start of a value (fewer than the
    /// longest pattern, and almost always none).
    fn partial_suffix(&self, data: &[u8]) -> usize {
        let from = data.len().saturating_sub(self.matcher.max_len() - 1);
        let tail = data.get(from..).unwrap_or_default();
        for (i, &b) in tail.iter().enumerate() {
            if !self.first[usize::from(b)] {
                continue;
            }
            let rest = tail.get(i..).unwrap_or_default();
            if self
                .patterns
                .iter()
                .any(|p| p.len() > rest.len() && p.starts_with(rest))
            {
                return rest.len();
            }
        }
        0
    }

    fn id(&self, pattern: aho_corasick::PatternID) -> usize {
        self.ids
            .get(pattern.as_usize())
            .copied()
            .unwrap_or_default()
    }

    /// The id of a value in `data` (the leftmost one found), if there is one.
    pub fn find(&self, data: &[u8]) -> Option<usize> {
        self.matcher.first(data).map(|(_, _, p)| self.id(p))
    }

    /// [`LeakSet::find`] in a request header value and, for `Basic <base64(user:password)>`,
    /// in the decoded credentials too.
    pub fn find_in_header(&self, value: &[u8]) -> Option<usize> {
        self.find(value).or_else(|| {
            let (_, _, decoded) = decode_basic(value)?;
            self.find(&decoded)
        })
    }

    /// [`LeakSet::find`] in a request target (path and query): as it is, percent-decoded, and
    /// percent-decoded with `+` as a space (form encoding).
    pub fn find_in_target(&self, target: &[u8]) -> Option<usize> {
        if let Some(id) = self.find(target) {
            return Some(id);
        }
        if !target.contains(&b'%') && !target.contains(&b'+') {
            return None;
        }
        let decoded = Zeroizing::new(percent_decode(target, false));
        if let Some(id) = self.find(&decoded) {
            return Some(id);
        }
        if !target.contains(&b'+') {
            return None;
        }
        let form = Zeroizing::new(percent_decode(target, true));
        self.find(&form)
    }

    /// A streaming guard over this set.
    pub fn scanner(self: &Arc<Self>) -> LeakScanner {
        LeakScanner {
            set: self.clone(),
            held: Zeroizing::new(Vec::new()),
        }
    }
}

/// `value` percent-encoded; `form`: a space as `+` (what form encoders write).
pub(crate) fn encoded(value: &[u8], form: bool) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(3 * value.len()));
    if !form {
        percent_encode_into(value, &mut out);
        return out;
    }
    for (i, part) in value.split(|&b| b == b' ').enumerate() {
        if i > 0 {
            out.push(b'+');
        }
        percent_encode_into(part, &mut out);
    }
    out
}

/// `%XX` decoded (an escape that is not two hex digits stays as it is); `plus`: `+` is a space.
fn percent_decode(data: &[u8], plus: bool) -> Vec<u8> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        let escape = (b == b'%')
            .then(|| Some((hex(*data.get(i + 1)?)? << 4) | hex(*data.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if plus && b == b'+' { b' ' } else { b });
                i += 1;
            }
        }
    }
    out
}

/// Looks for the values of a [`LeakSet`] in a request body that arrives in chunks, and passes
/// the body on only as far as it is known to hold no value.
///
/// A value split across chunks at any byte is found. Between chunks only the bytes that may be
/// the start of a value are held back (the longest end of the data that begins a pattern: fewer
/// than the longest pattern, and almost always none, so an interactive stream is not stalled),
/// so when `push` returns `Err(`[`Leak`]`)` no byte of the value has been released: everything
/// released before lies before the first occurrence of any value. After `Err` the body must not
/// go on; the scanner is reset. A chunk is passed on without copying (minus its held-back end)
/// when nothing is held before it. The held bytes are wiped when released or dropped.
pub struct LeakScanner {
    set: Arc<LeakSet>,
    /// Stream bytes not yet released: a proper prefix of a pattern.
    held: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for LeakScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakScanner")
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl LeakScanner {
    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Feed one chunk; returns the bytes that are ready (may be empty).
    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, Leak> {
        if chunk.is_empty() {
            return Ok(chunk);
        }
        let set = Arc::clone(&self.set);
        if self.held.is_empty() {
            if let Some(id) = set.find(&chunk) {
                return Err(Leak(id));
            }
            let release = chunk.len() - set.partial_suffix(&chunk);
            self.hold(chunk.get(release..).unwrap_or_default());
            return Ok(chunk.slice(..release));
        }
        // A value starting in the held bytes ends within `keep` bytes of the chunk.
        let keep = set.matcher.max_len() - 1;
        let h = self.held.len();
        let mut joint = Zeroizing::new(Vec::with_capacity(self.held.len() + keep));
        joint.extend_from_slice(&self.held);
        joint.extend_from_slice(chunk.get(..keep).unwrap_or(&chunk));
        if let Some(id) = set.find(&joint).or_else(|| set.find(&chunk)) {
            self.held.zeroize();
            return Err(Leak(id));
        }
        self.held.zeroize();
        if chunk.len() <= keep {
            // The joint is everything not yet released.
            let release = joint.len() - set.partial_suffix(&joint);
            self.hold(joint.get(release..).unwrap_or_default());
            return Ok(Bytes::copy_from_slice(
                joint.get(..release).unwrap_or_default(),
            ));
        }
        // Longer than any pattern: what may begin a value lies in the chunk.
        let release = chunk.len() - set.partial_suffix(&chunk);
        let mut out = Vec::with_capacity(h + release);
        out.extend_from_slice(joint.get(..h).unwrap_or_default());
        out.extend_from_slice(chunk.get(..release).unwrap_or_default());
        self.hold(chunk.get(release..).unwrap_or_default());
        Ok(Bytes::from(out))
    }

    /// End of the body: release what is held (it was searched with what came before it).
    pub fn finish(&mut self) -> Bytes {
        let out = Bytes::copy_from_slice(&self.held);
        self.held.zeroize();
        out
    }

    /// Append to the held bytes (fewer than the longest pattern; the buffer is reserved once, so
    /// it never moves and leaves an unwiped copy behind).
    fn hold(&mut self, data: &[u8]) {
        if self.held.capacity() == 0 {
            self.held = Zeroizing::new(Vec::with_capacity(2 * self.set.matcher.max_len()));
        }
        self.held.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn set() -> Arc<LeakSet> {
        LeakSet::new(&[
            (b"ghp_secret1", 10),
            (b"ghp_secret1_longer", 11),
            (b"short", 12),
            (b"p@ss/w rd+1", 13),
        ])
        .unwrap()
    }

    #[test]
    fn short_values_are_not_guarded() {
        assert!(LeakSet::new(&[(b"short", 1)]).is_none());
        assert!(LeakSet::new(&[]).is_none());
        assert_eq!(set().find(b"a short text"), None);
    }

    #[test]
    fn finds_values_and_their_percent_encoding() {
        let s = set();
        assert_eq!(s.find(b"x ghp_secret1 y"), Some(10));
        assert_eq!(s.find(b"x ghp_secret1_longer y"), Some(11));
        assert_eq!(s.find(b"{\"p\":\"p@ss/w rd+1\"}"), Some(13));
        assert_eq!(s.find(b"p=p%40ss%2Fw%20rd%2B1&x=1"), Some(13));
        assert_eq!(s.find(b"p=p%40ss%2Fw+rd%2B1&x=1"), Some(13));
        // Lower-case hex is not looked for in bodies (targets are decoded).
        assert_eq!(s.find(b"p=p%40ss%2fw%20rd%2b1&x=1"), None);
        assert_eq!(s.find(b"ghp_secret nothing p@ss/w rd"), None);
    }

    #[test]
    fn header_values_and_basic_credentials() {
        let s = set();
        assert_eq!(s.find_in_header(b"Bearer ghp_secret1"), Some(10));
        let basic = |creds: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            )
        };
        assert_eq!(
            s.find_in_header(basic("x-access-token:ghp_secret1").as_bytes()),
            Some(10)
        );
        assert_eq!(
            s.find_in_header(basic("user:p@ss/w rd+1").as_bytes()),
            Some(13)
        );
        assert_eq!(s.find_in_header(basic("user:password").as_bytes()), None);
        assert_eq!(s.find_in_header(b"Basic not-base64!"), None);
    }

    #[test]
    fn targets_raw_percent_decoded_and_form_decoded() {
        let s = set();
        assert_eq!(s.find_in_target(b"/a/ghp_secret1/b"), Some(10));
        assert_eq!(s.find_in_target(b"/q?k=ghp_secret1&x"), Some(10));
        // Lower-case hex and needless escapes: only decoding finds these.
        assert_eq!(s.find_in_target(b"/q?k=%67hp_secret1"), Some(10));
        assert_eq!(s.find_in_target(b"/q?k=p%40ss%2fw%20rd%2b1"), Some(13));
        // Form encoding: `+` for the space.
        assert_eq!(s.find_in_target(b"/q?k=p%40ss%2Fw+rd%2B1"), Some(13));
        assert_eq!(s.find_in_target(b"/q?k=ghp_secre%ZZ1+%"), None);
        assert_eq!(percent_decode(b"a%2x%41%4", false), b"a%2xA%4");
        assert_eq!(percent_decode(b"a+b%2B", true), b"a b+");
    }

    #[test]
    fn both_engines() {
        let values: [(&[u8], usize); 2] = [(b"secret-one", 1), (b"secret-one-two", 2)];
        let packed = LeakSet::build(&values, true).unwrap();
        let automaton = LeakSet::build(&values, false).unwrap();
        assert!(packed.matcher.is_packed());
        assert!(!automaton.matcher.is_packed());
        for s in [packed, automaton] {
            assert_eq!(s.find(b"xx secret-one-two"), Some(2));
            assert_eq!(s.find(b"xx secret-one-tw"), Some(1));
            assert_eq!(s.find(b"xx secret-on"), None);
        }
    }

    /// Feeds `data` in pieces of `n`; `Ok(output)` or `Err((released before, leak))`.
    fn stream(data: &[u8], n: usize) -> Result<Vec<u8>, (usize, Leak)> {
        let mut g = set().scanner();
        let mut out = Vec::new();
        for c in data.chunks(n) {
            match g.push(Bytes::copy_from_slice(c)) {
                Ok(b) => out.extend_from_slice(&b),
                Err(leak) => {
                    assert_eq!(g.held(), 0);
                    return Err((out.len(), leak));
                }
            }
            assert!(g.held() < 3 * 11);
        }
        out.extend_from_slice(&g.finish());
        assert_eq!(g.held(), 0);
        Ok(out)
    }

    #[test]
    fn streamed_value_found_at_every_chunk_size_before_it_leaves() {
        let mut data = vec![b'.'; 100];
        data.extend_from_slice(b"p%40ss%2Fw%20rd%2B1");
        data.extend_from_slice(&[b'.'; 50]);
        for n in 1..=data.len() {
            let (released, leak) = stream(&data, n).unwrap_err();
            assert_eq!(leak, Leak(13), "chunk size {n}");
            assert!(released <= 100, "chunk size {n}: {released} bytes released");
        }
        let clean = b"ghp_secret nothing to see, ghp_secret_ p@ss/w rd".repeat(3);
        for n in 1..=clean.len() {
            assert_eq!(stream(&clean, n).unwrap(), clean, "chunk size {n}");
        }
    }

    #[test]
    fn only_what_may_begin_a_value_is_held_and_clean_chunks_are_zero_copy() {
        let mut g = set().scanner();
        let c = Bytes::from(vec![b'x'; 1000]);
        let o = g.push(c.clone()).unwrap();
        assert_eq!(o.as_ptr(), c.as_ptr());
        assert_eq!((o.len(), g.held()), (1000, 0));
        // The end of this chunk may begin a value: held.
        let c = Bytes::from_static(b"...ghp_se");
        let o = g.push(c.clone()).unwrap();
        assert_eq!((o.as_ptr(), &o[..], g.held()), (c.as_ptr(), &b"..."[..], 6));
        // It did not: released with the next chunk, which again ends like a value (`p%4`).
        let o = g.push(Bytes::from_static(b"xp%4")).unwrap();
        assert_eq!((&o[..], g.held()), (&b"ghp_sex"[..], 3));
        let o = g.push(Bytes::from(vec![b'.'; 100])).unwrap();
        assert_eq!((o.len(), g.held()), (103, 0));
        assert_eq!(&g.finish()[..], b"");
    }

    #[test]
    fn debug_does_not_print_values() {
        let s = format!("{:?} {:?}", set(), set().scanner());
        assert!(!s.contains("secret"), "{s}");
    }
}
