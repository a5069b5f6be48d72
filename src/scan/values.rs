//! The search for real secret values, shared by the response redactor ([`super::Redactor`])
//! and the request leak guard ([`super::LeakSet`]): `aho-corasick`'s packed SIMD searcher
//! (Teddy) when it can be built for the values, else its automaton; leftmost-longest,
//! non-overlapping.

use aho_corasick::packed;
use aho_corasick::{AhoCorasick, MatchKind, PatternID};

/// A compiled set of values. The values are found by pattern id: the position of the value in
/// the list it was built from. It keeps its own copy of the values (inside `aho-corasick`),
/// which is not wiped.
pub(crate) struct ValueMatcher {
    engine: Engine,
    /// Length of the longest value.
    max_len: usize,
}

enum Engine {
    /// Teddy: fast for the few values a proxy has.
    Packed(packed::Searcher),
    /// Any number of values.
    Automaton(AhoCorasick),
}

/// A match: start, end, pattern.
pub(crate) type Hit = (usize, usize, PatternID);

impl ValueMatcher {
    /// `None` if `values` is empty (or the automaton cannot be built). `allow_packed = false`
    /// forces the automaton (tests).
    pub(crate) fn new(values: &[&[u8]], allow_packed: bool) -> Option<Self> {
        let max_len = values.iter().map(|v| v.len()).max()?;
        let packed = if allow_packed {
            packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostLongest)
                .builder()
                .extend(values.iter().copied())
                .build()
        } else {
            None
        };
        let engine = match packed {
            Some(p) => Engine::Packed(p),
            None => Engine::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(values.iter().copied())
                    .ok()?,
            ),
        };
        Some(ValueMatcher {
            engine,
            max_len: max_len.max(1),
        })
    }

    /// Length of the longest value (at least 1).
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    #[cfg(test)]
    pub(crate) fn is_packed(&self) -> bool {
        matches!(self.engine, Engine::Packed(_))
    }

    /// The leftmost(-longest) match in `data`, if any value occurs in it.
    pub(crate) fn first(&self, data: &[u8]) -> Option<Hit> {
        let m = match &self.engine {
            Engine::Packed(p) => p.find(data),
            Engine::Automaton(a) => a.find(data),
        }?;
        Some((m.start(), m.end(), m.pattern()))
    }

    /// The leftmost-longest matches in `data` from `from` on that start before `stop`, into
    /// `hits`. Returns the end of what is decided: the end of the last match or `stop`, whichever
    /// is later (at most `data.len()`).
    ///
    /// With `stop <= data.len() + 1 - max_len`, every match starting before `stop` lies inside
    /// `data` whatever follows it, and so does every match that could compete with it: the
    /// result does not depend on what follows `data`.
    pub(crate) fn matches(
        &self,
        data: &[u8],
        from: usize,
        stop: usize,
        hits: &mut Vec<Hit>,
    ) -> usize {
        let hay = data.get(from..).unwrap_or_default();
        let mut end = from;
        let mut take = |m: aho_corasick::Match| {
            let s = from + m.start();
            if s >= stop {
                return false;
            }
            end = from + m.end();
            hits.push((s, end, m.pattern()));
            true
        };
        match &self.engine {
            Engine::Packed(p) => {
                for m in p.find_iter(hay) {
                    if !take(m) {
                        break;
                    }
                }
            }
            Engine::Automaton(a) => {
                for m in a.find_iter(hay) {
                    if !take(m) {
                        break;
                    }
                }
            }
        }
        end.max(stop).min(data.len())
    }
}
