//! Response side: real secret values are turned back into their tokens, so the sandboxed
//! program never sees a value even when a server echoes it.

use aho_corasick::PatternID;
use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

use super::MIN_REFLECT_LEN;
use super::values::{Hit, ValueMatcher};

/// Replaces secret values with their tokens, in one-shot data or in a stream.
///
/// Matching is leftmost-longest and non-overlapping (`aho-corasick`: its packed SIMD searcher
/// when it can be built for the values, else an automaton), and a streamed value split across
/// chunks is still found: the output of `push`…`finish` is the same for every chunking, and equal
/// to [`Redactor::redact`] of the whole. Less than the length of the longest value is held back
/// between chunks. A chunk in which nothing is found and before which nothing is held is passed
/// on without copying (minus its held-back tail).
///
/// The bytes held back (which may be part of a value) are wiped when released or dropped.
/// The matcher keeps its own copy of the values (inside `aho-corasick`), which is not wiped.
pub struct Redactor {
    set: std::sync::Arc<RedactSet>,
    /// Stream bytes not yet released (fewer than `max_len`).
    held: Zeroizing<Vec<u8>>,
}

/// The compiled matcher for a set of (value, token) pairs: built once, shared by every
/// [`Redactor`] made from it (building it costs far more than redacting one response).
pub struct RedactSet {
    matcher: ValueMatcher,
    /// Token text for each pattern id.
    tokens: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for RedactSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactSet")
            .field("values", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl RedactSet {
    /// Compiles `pairs` (see [`Redactor::new`]); None if no pair is long enough to redact.
    pub fn new(pairs: &[(&[u8], &[u8])]) -> Option<std::sync::Arc<Self>> {
        Redactor::build(pairs, true).map(|r| r.set)
    }

    /// A fresh streaming redactor over this set.
    pub fn redactor(self: &std::sync::Arc<Self>) -> Redactor {
        Redactor {
            set: self.clone(),
            held: Zeroizing::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        f.debug_struct("Redactor")
            .field("values", &self.set.tokens.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// `pairs`: (secret value, token text). Values shorter than [`MIN_REFLECT_LEN`] are ignored
    /// (and of equal values, all but the first); `None` if no pair remains (or the matcher cannot
    /// be built).
    pub fn new(pairs: &[(&[u8], &[u8])]) -> Option<Self> {
        Self::build(pairs, true)
    }

    pub(crate) fn build(pairs: &[(&[u8], &[u8])], allow_packed: bool) -> Option<Self> {
        let mut kept: Vec<(&[u8], &[u8])> = Vec::new();
        for &(v, t) in pairs {
            if v.len() >= MIN_REFLECT_LEN && !kept.iter().any(|(k, _)| *k == v) {
                kept.push((v, t));
            }
        }
        if kept.is_empty() {
            return None;
        }
        let values: Vec<&[u8]> = kept.iter().map(|(v, _)| *v).collect();
        let matcher = ValueMatcher::new(&values, allow_packed)?;
        Some(Redactor {
            set: std::sync::Arc::new(RedactSet {
                matcher,
                tokens: kept.iter().map(|(_, t)| Box::<[u8]>::from(*t)).collect(),
            }),
            held: Zeroizing::new(Vec::new()),
        })
    }

    fn token(&self, id: PatternID) -> &[u8] {
        self.set
            .tokens
            .get(id.as_usize())
            .map_or(&[][..], |t| &t[..])
    }

    /// See [`ValueMatcher::matches`].
    fn matches(&self, data: &[u8], from: usize, stop: usize, hits: &mut Vec<Hit>) -> usize {
        self.set.matcher.matches(data, from, stop, hits)
    }

    fn max_len(&self) -> usize {
        self.set.matcher.max_len()
    }

    /// Append `data[from..end]` with the `hits` replaced by their tokens.
    fn render(&self, data: &[u8], from: usize, end: usize, hits: &[Hit], out: &mut Vec<u8>) {
        let mut pos = from;
        for &(s, e, id) in hits {
            out.extend_from_slice(data.get(pos..s).unwrap_or_default());
            out.extend_from_slice(self.token(id));
            pos = e;
        }
        out.extend_from_slice(data.get(pos..end).unwrap_or_default());
    }

    /// Where a stream that goes on after `len` bytes is decided up to (see `matches`).
    fn safe(&self, len: usize) -> usize {
        (len + 1).saturating_sub(self.max_len())
    }

    /// Replace every value in `data`. `None`: no value found.
    pub fn redact(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut hits = Vec::new();
        let end = self.matches(data, 0, data.len(), &mut hits);
        if hits.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(data.len());
        self.render(data, 0, end, &hits, &mut out);
        Some(out)
    }

    /// Feed one chunk of a stream; returns the bytes that are ready (may be empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return chunk;
        }
        let mut hits = Vec::new();
        let h = self.held.len();
        if h > 0 && chunk.len() <= self.max_len() {
            // A small chunk: join it to what is held (fewer than 2 * max_len bytes).
            self.hold(&chunk);
            let held = std::mem::take(&mut self.held);
            let end = self.matches(&held, 0, self.safe(held.len()), &mut hits);
            let mut out = Vec::with_capacity(end + 64);
            self.render(&held, 0, end, &hits, &mut out);
            self.held = held;
            self.drop_front(end);
            return Bytes::from(out);
        }
        let mut out = Vec::new();
        let mut from = 0;
        if h > 0 {
            // The junction: matches starting in the held bytes end within `max_len` bytes of the
            // chunk, so those suffice to decide them.
            let mut joint = Zeroizing::new(Vec::with_capacity(h + self.max_len()));
            joint.extend_from_slice(&self.held);
            joint.extend_from_slice(chunk.get(..self.max_len()).unwrap_or_default());
            let end = self.matches(&joint, 0, h, &mut hits);
            out.reserve(chunk.len() + h + 64);
            self.render(&joint, 0, end, &hits, &mut out);
            self.held.zeroize();
            from = end.saturating_sub(h);
            hits.clear();
        }
        let stop = self.safe(chunk.len()).max(from);
        let end = self.matches(&chunk, from, stop, &mut hits);
        self.hold(chunk.get(end..).unwrap_or_default());
        if h == 0 && hits.is_empty() {
            return chunk.slice(..end);
        }
        self.render(&chunk, from, end, &hits, &mut out);
        Bytes::from(out)
    }

    /// End of the stream: release what is held.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        let out = self.redact(&held).unwrap_or_else(|| held.to_vec());
        drop(held); // wiped
        Bytes::from(out)
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Append to the held bytes, growing by hand so that an old buffer is wiped, not just freed.
    fn hold(&mut self, data: &[u8]) {
        let need = self.held.len() + data.len();
        if need > self.held.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(2 * self.max_len())));
            bigger.extend_from_slice(&self.held);
            self.held = bigger;
        }
        self.held.extend_from_slice(data);
    }

    /// Remove the first `n` held bytes, wiping the vacated tail.
    fn drop_front(&mut self, n: usize) {
        let len = self.held.len();
        let n = n.min(len);
        self.held.copy_within(n.., 0);
        if let Some(tail) = self.held.get_mut(len - n..) {
            tail.zeroize();
        }
        self.held.truncate(len - n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(&[
            (b"ghp_secret1", b"starpod:v1:AAA"),
            (b"ghp_secret1_longer", b"starpod:v1:BBB"),
            (b"short", b"starpod:v1:CCC"),
            (b"other-secret", b"starpod:v1:DDD"),
        ])
        .unwrap()
    }

    fn stream(r: &mut Redactor, data: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(n.max(1)) {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(c)));
            assert!(r.held() < 18);
        }
        out.extend_from_slice(&r.finish());
        assert_eq!(r.held(), 0);
        out
    }

    #[test]
    fn short_values_ignored() {
        assert!(Redactor::new(&[(b"short", b"t")]).is_none());
        assert!(Redactor::new(&[]).is_none());
        assert_eq!(r().redact(b"a short text"), None);
    }

    #[test]
    fn one_shot_leftmost_longest() {
        let out = r().redact(b"x ghp_secret1_longer y ghp_secret1 z other-secretother-secret");
        assert_eq!(
            out.unwrap(),
            b"x starpod:v1:BBB y starpod:v1:AAA z starpod:v1:DDDstarpod:v1:DDD"
        );
    }

    #[test]
    fn streamed_at_every_chunk_size() {
        let data =
            b"{\"token\":\"ghp_secret1_longer\",\"b\":\"ghp_secret1\"} other-secre other-secret";
        let want = r().redact(data).unwrap();
        assert_eq!(
            want,
            b"{\"token\":\"starpod:v1:BBB\",\"b\":\"starpod:v1:AAA\"} other-secre starpod:v1:DDD"
        );
        let mut red = r();
        for n in 1..=data.len() {
            assert_eq!(stream(&mut red, data, n), want, "chunk size {n}");
        }
    }

    #[test]
    fn value_at_stream_end_and_no_match_zero_copy() {
        let mut red = r();
        let c = Bytes::from_static(b"nothing to see here, really");
        let o = red.push(c.clone());
        assert_eq!(o.as_ptr(), c.as_ptr());
        assert_eq!(o.len() + red.held(), c.len());
        let mut out = o.to_vec();
        out.extend_from_slice(&red.push(Bytes::from_static(b" ghp_secret1")));
        out.extend_from_slice(&red.finish());
        assert_eq!(out, b"nothing to see here, really starpod:v1:AAA");
    }

    #[test]
    fn both_engines() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"secret-one", b"T1"), (b"secret-one-two", b"T2")];
        let packed = Redactor::build(&pairs, true).unwrap();
        let automaton = Redactor::build(&pairs, false).unwrap();
        assert!(!automaton.set.matcher.is_packed());
        let data = b"secret-one-two secret-one-tw secret-onesecret-one";
        for r in [packed, automaton] {
            assert_eq!(r.redact(data).unwrap(), b"T2 T1-tw T1T1");
        }
    }

    #[test]
    fn long_chunks_junction() {
        // Chunks longer than the longest value: the junction path.
        let mut data = vec![b'.'; 100];
        data.extend_from_slice(b"ghp_secret1_longer");
        data.extend_from_slice(&[b'.'; 100]);
        data.extend_from_slice(b"other-secret");
        let want = r().redact(&data).unwrap();
        let mut red = r();
        for n in [19, 20, 50, 101, 105, 117, 118, 119, 200, 230] {
            assert_eq!(stream(&mut red, &data, n), want, "chunk size {n}");
        }
    }

    #[test]
    fn debug_does_not_print_values() {
        let s = format!("{:?}", r());
        assert!(!s.contains("secret"), "{s}");
    }
}
