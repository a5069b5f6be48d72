//! Response side: real secret values are turned back into their tokens, so the sandboxed
//! program never sees a value even when a server echoes it.

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

use super::MIN_REFLECT_LEN;

/// Replaces secret values with their tokens, in one-shot data or in a stream.
///
/// Matching is leftmost-longest and non-overlapping, and a streamed value split across chunks
/// is still found: the output of `push`…`finish` is the same for every chunking, and equal to
/// [`Redactor::redact`] of the whole. At most the length of the longest value minus one byte is
/// held back between chunks.
///
/// The bytes held back (which may be part of a value) are wiped when released or dropped.
/// The matcher keeps its own copy of the values (inside `aho-corasick`), which is not wiped.
pub struct Redactor {
    ac: AhoCorasick,
    /// Token text for each pattern id.
    tokens: Vec<Box<[u8]>>,
    /// Length of the longest value.
    max_len: usize,
    /// Stream bytes not yet released.
    held: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        f.debug_struct("Redactor")
            .field("values", &self.tokens.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// `pairs`: (secret value, token text). Values shorter than [`MIN_REFLECT_LEN`] are ignored;
    /// `None` if no pair remains (or the matcher cannot be built).
    pub fn new(pairs: &[(&[u8], &[u8])]) -> Option<Self> {
        let kept: Vec<&(&[u8], &[u8])> = pairs
            .iter()
            .filter(|(v, _)| v.len() >= MIN_REFLECT_LEN)
            .collect();
        if kept.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(kept.iter().map(|(v, _)| *v))
            .ok()?;
        Some(Redactor {
            ac,
            tokens: kept.iter().map(|(_, t)| Box::<[u8]>::from(*t)).collect(),
            max_len: kept.iter().map(|(v, _)| v.len()).max().unwrap_or(0),
            held: Zeroizing::new(Vec::new()),
        })
    }

    fn token(&self, id: aho_corasick::PatternID) -> &[u8] {
        self.tokens.get(id.as_usize()).map_or(&[][..], |t| &t[..])
    }

    /// Replace every value in `data`. `None`: no value found.
    pub fn redact(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        for m in self.ac.find_iter(data) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            o.extend_from_slice(data.get(last..m.start()).unwrap_or_default());
            o.extend_from_slice(self.token(m.pattern()));
            last = m.end();
        }
        out.map(|mut o| {
            o.extend_from_slice(data.get(last..).unwrap_or_default());
            o
        })
    }

    /// Feed one chunk of a stream; returns the bytes that are ready (may be empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return chunk;
        }
        if self.held.is_empty() {
            // Work on the chunk itself; only its tail is copied (to be held).
            let (out, release) = self.process(&chunk, false);
            self.held
                .extend_from_slice(chunk.get(release..).unwrap_or_default());
            return match out {
                None => chunk.slice(..release.min(chunk.len())),
                Some(o) => Bytes::from(o),
            };
        }
        let need = self.held.len() + chunk.len();
        if need > self.held.capacity() {
            // Grow by hand so the old buffer is wiped, not just freed.
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(2 * self.held.capacity())));
            bigger.extend_from_slice(&self.held);
            self.held = bigger;
        }
        self.held.extend_from_slice(&chunk);
        let held = std::mem::take(&mut self.held);
        let (out, release) = self.process(&held, false);
        let out = out.unwrap_or_else(|| held.get(..release).unwrap_or_default().to_vec());
        self.held = held;
        self.drop_front(release);
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

    /// Redact `data` up to the point where the result cannot depend on what follows. Returns
    /// the output (`None`: it is `data[..release]` unchanged) and `release`.
    fn process(&self, data: &[u8], last: bool) -> (Option<Vec<u8>>, usize) {
        // A match starting before `safe` lies entirely inside `data`, whatever follows, and so
        // does every match that could compete with it.
        let safe = if last {
            data.len()
        } else {
            (data.len() + 1).saturating_sub(self.max_len)
        };
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        for m in self.ac.find_iter(data) {
            if m.start() >= safe {
                break;
            }
            let o = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            o.extend_from_slice(data.get(pos..m.start()).unwrap_or_default());
            o.extend_from_slice(self.token(m.pattern()));
            pos = m.end();
        }
        let release = pos.max(safe).min(data.len());
        if let Some(o) = out.as_mut() {
            o.extend_from_slice(data.get(pos..release).unwrap_or_default());
        }
        (out, release)
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
    fn debug_does_not_print_values() {
        let s = format!("{:?}", r());
        assert!(!s.contains("secret"), "{s}");
    }
}
