//! Locating tokens: the prefix search, the body grammar (resumable, so the streaming scanner and
//! the one-shot scanners share it), canonical texts and the rewriting of a complete buffer.

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem;
use zeroize::Zeroizing;

use super::{Blocked, Decision, MAX_TOKEN_LEN, PREFIX};

/// The part both prefixes share; searched for with `memmem`.
const STEM: &[u8] = b"starpod";
/// What follows the stem in the raw form.
const RAW_TAIL: &[u8] = b":v1:";
/// What follows the stem in the percent form (the `A`s are hex digits: any case).
const PCT_TAIL: &[u8] = b"%3Av1%3A";

/// Length of the raw-form prefix `starpod:v1:`.
const RAW_PREFIX_LEN: usize = STEM.len() + RAW_TAIL.len();
/// Length of the percent-form prefix `starpod%3Av1%3A`.
const PCT_PREFIX_LEN: usize = STEM.len() + PCT_TAIL.len();

static STEM_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(STEM));

/// How a token was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// `starpod:v1:<base64>`
    Raw,
    /// `starpod%3Av1%3A<percent-encoded base64>`
    Percent,
}

/// One token in a complete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where the token text is in the buffer.
    pub range: Range<usize>,
    /// How it was written.
    pub form: Form,
    /// `starpod:v1:<base64>`, percent-decoded if it was percent-encoded.
    pub canonical: String,
}

/// The tokens of a complete buffer, in order. Over-long runs (canonical text longer than
/// [`MAX_TOKEN_LEN`](super::MAX_TOKEN_LEN)) are skipped; a prefix cut off by the end of `data` is
/// not a token.
pub fn find_tokens(data: &[u8]) -> impl Iterator<Item = Found> {
    find_tokens_limit(data, MAX_TOKEN_LEN)
}

pub(crate) fn find_tokens_limit(data: &[u8], limit: usize) -> impl Iterator<Item = Found> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        loop {
            let Candidate::Start { at, form, body } = next_candidate(data, pos) else {
                pos = data.len();
                return None;
            };
            let rest = data.get(body..).unwrap_or_default();
            let mut st = Body::new(form, limit);
            let end = match st.step(rest) {
                // `back` is always 0 here: the body started inside `rest`.
                Step::End { end, .. } => body + end,
                Step::More => body + st.finish_len(rest.len()),
            };
            pos = end;
            if st.overlong {
                continue;
            }
            let text = data.get(at..end).unwrap_or_default();
            return Some(Found {
                range: at..end,
                form,
                canonical: canonical(form, text),
            });
        }
    })
}

/// Result of looking for the start of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// No token starts in `data[from..]`, and `data` does not end with a partial prefix.
    None,
    /// No token starts before this position, and `data[p..]` is a proper prefix of a token
    /// prefix: more data is needed to tell.
    Partial(usize),
    /// A complete prefix of the given form starts at `at`; its body starts at `body`.
    Start { at: usize, form: Form, body: usize },
}

enum TailMatch {
    Full,
    Partial,
    No,
}

fn match_tail(rest: &[u8], tail: &[u8], hex_letter: &[bool]) -> TailMatch {
    for (i, (&a, &t)) in rest.iter().zip(tail).enumerate() {
        let ok = if hex_letter.get(i).copied().unwrap_or(false) {
            a.eq_ignore_ascii_case(&t)
        } else {
            a == t
        };
        if !ok {
            return TailMatch::No;
        }
    }
    if rest.len() >= tail.len() {
        TailMatch::Full
    } else {
        TailMatch::Partial
    }
}

const RAW_HEX: [bool; 4] = [false; 4];
const PCT_HEX: [bool; 8] = [false, false, true, false, false, false, false, true];

/// The first token start (or partial prefix at the end) in `data[from..]`.
pub(crate) fn next_candidate(data: &[u8], from: usize) -> Candidate {
    let mut pos = from;
    loop {
        let Some(hay) = data.get(pos..) else {
            return Candidate::None;
        };
        let Some(i) = STEM_FINDER.find(hay) else {
            // A partial stem can only be at the very end.
            return match partial_stem_len(hay) {
                0 => Candidate::None,
                k => Candidate::Partial(data.len() - k),
            };
        };
        let at = pos + i;
        let rest = data.get(at + STEM.len()..).unwrap_or_default();
        let raw = match_tail(rest, RAW_TAIL, &RAW_HEX);
        let pct = match_tail(rest, PCT_TAIL, &PCT_HEX);
        match (raw, pct) {
            (TailMatch::Full, _) => {
                return Candidate::Start {
                    at,
                    form: Form::Raw,
                    body: at + RAW_PREFIX_LEN,
                };
            }
            (_, TailMatch::Full) => {
                return Candidate::Start {
                    at,
                    form: Form::Percent,
                    body: at + PCT_PREFIX_LEN,
                };
            }
            (TailMatch::Partial, _) | (_, TailMatch::Partial) => return Candidate::Partial(at),
            (TailMatch::No, TailMatch::No) => pos = at + 1,
        }
    }
}

/// Length of the longest proper prefix of the stem that `hay` ends with (0 if none).
fn partial_stem_len(hay: &[u8]) -> usize {
    (1..STEM.len())
        .rev()
        .find(|&k| hay.ends_with(&STEM[..k]))
        .unwrap_or(0)
}

/// Byte classes of the token body grammar.
const B64: u8 = 1; // [A-Za-z0-9+/]: a body character in the raw form
const PCTCH: u8 = 2; // [A-Za-z0-9/]: a literal body character in the percent form

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'/' {
            t[b] = B64 | PCTCH;
        } else if c == b'+' {
            t[b] = B64;
        }
        b += 1;
    }
    t
};

/// The state of a token body being parsed; can be fed data in pieces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Body {
    pub(crate) form: Form,
    /// Length of the canonical text so far (prefix included).
    canon: usize,
    /// Largest canonical length that is still a token.
    limit: usize,
    /// Pads (`=`) seen.
    pads: u8,
    /// Bytes of an unfinished percent escape seen (0, 1 = `%`, 2 = `%` + hex digit).
    esc: u8,
    /// The first hex digit of the unfinished escape when `esc == 2`.
    esc_hi: u8,
    /// The canonical text exceeded the limit: this run is not a token.
    pub(crate) overlong: bool,
}

/// Result of feeding data to a [`Body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// All of the data belongs to the body (possibly tentatively: an unfinished escape); the
    /// token may go on.
    More,
    /// The token ends `back` bytes before the start of this data if `back > 0` (those bytes were
    /// an unfinished escape that turned out not to be part of it; then `end == 0`), else at
    /// `data[end]`.
    End { end: usize, back: usize },
}

impl Body {
    pub(crate) fn new(form: Form, limit: usize) -> Self {
        Body {
            form,
            canon: PREFIX.len(),
            limit,
            pads: 0,
            esc: 0,
            esc_hi: 0,
            overlong: false,
        }
    }

    /// Bytes held for an unfinished escape: when the data ends here, the token ends that many
    /// bytes earlier.
    pub(crate) fn pending(&self) -> usize {
        usize::from(self.esc)
    }

    /// Where the token ends if the data ends after `len` bytes fed in the last call.
    fn finish_len(&self, len: usize) -> usize {
        len.saturating_sub(self.pending())
    }

    fn element(&mut self) {
        if self.canon >= self.limit {
            self.overlong = true;
        } else {
            self.canon += 1;
        }
    }

    /// Where the token ends, given that the escape which started `esc` bytes before `data[i]`
    /// is not part of it.
    fn end_before_escape(&self, i: usize) -> Step {
        let e = usize::from(self.esc);
        if i >= e {
            Step::End {
                end: i - e,
                back: 0,
            }
        } else {
            Step::End {
                end: 0,
                back: e - i,
            }
        }
    }

    /// Feed the next bytes of the body.
    pub(crate) fn step(&mut self, data: &[u8]) -> Step {
        match self.form {
            Form::Raw => self.step_raw(data),
            Form::Percent => self.step_pct(data),
        }
    }

    fn step_raw(&mut self, data: &[u8]) -> Step {
        let mut i = 0;
        // Fast loop over the base64 characters before any padding.
        if self.pads == 0 {
            while let Some(&b) = data.get(i) {
                if CLASS[usize::from(b)] & B64 == 0 {
                    break;
                }
                if self.canon >= self.limit {
                    self.overlong = true;
                } else {
                    self.canon += 1;
                }
                i += 1;
            }
        }
        while let Some(&b) = data.get(i) {
            if b == b'=' {
                self.pads += 1;
                self.element();
                if self.pads >= 2 {
                    return Step::End {
                        end: i + 1,
                        back: 0,
                    };
                }
            } else {
                // A base64 character after a pad, or any other byte.
                return Step::End { end: i, back: 0 };
            }
            i += 1;
        }
        Step::More
    }

    fn step_pct(&mut self, data: &[u8]) -> Step {
        for (i, &b) in data.iter().enumerate() {
            match self.esc {
                0 => {
                    if b == b'%' {
                        self.esc = 1;
                    } else if b == b'=' {
                        if let Some(step) = self.pad(i + 1) {
                            return step;
                        }
                    } else if self.pads == 0 && CLASS[usize::from(b)] & PCTCH != 0 {
                        self.element();
                    } else {
                        return Step::End { end: i, back: 0 };
                    }
                }
                1 => {
                    if b == b'2' || b == b'3' {
                        self.esc = 2;
                        self.esc_hi = b;
                    } else {
                        return self.end_before_escape(i);
                    }
                }
                _ => {
                    let lo = b.to_ascii_uppercase();
                    let char_ok =
                        self.pads == 0 && self.esc_hi == b'2' && (lo == b'B' || lo == b'F');
                    let pad_ok = self.pads < 2 && self.esc_hi == b'3' && lo == b'D';
                    if char_ok {
                        self.esc = 0;
                        self.element();
                    } else if pad_ok {
                        self.esc = 0;
                        if let Some(step) = self.pad(i + 1) {
                            return step;
                        }
                    } else {
                        return self.end_before_escape(i);
                    }
                }
            }
        }
        Step::More
    }

    /// Count a pad that ends before `data[next]`; the token ends there after the second one.
    fn pad(&mut self, next: usize) -> Option<Step> {
        self.pads += 1;
        self.element();
        (self.pads >= 2).then_some(Step::End { end: next, back: 0 })
    }
}

/// The canonical text of a complete token text of the given form.
pub(crate) fn canonical(form: Form, text: &[u8]) -> String {
    match form {
        // All ASCII: the grammar only admits ASCII bytes.
        Form::Raw => text.iter().map(|&b| char::from(b)).collect(),
        Form::Percent => {
            let body = text.get(PCT_PREFIX_LEN..).unwrap_or_default();
            let mut s = String::with_capacity(PREFIX.len() + body.len());
            s.push_str(PREFIX);
            let mut i = 0;
            while let Some(&b) = body.get(i) {
                if b == b'%' {
                    let hi = body.get(i + 1).copied().unwrap_or(0);
                    let lo = body.get(i + 2).copied().unwrap_or(0).to_ascii_uppercase();
                    s.push(match (hi, lo) {
                        (b'2', b'B') => '+',
                        (b'2', b'F') => '/',
                        _ => '=',
                    });
                    i += 3;
                } else {
                    s.push(char::from(b));
                    i += 1;
                }
            }
            s
        }
    }
}

/// Append `value` percent-encoded: every byte except `ALPHA / DIGIT / - . _ ~` becomes `%XX`
/// (upper-case hex).
pub fn percent_encode_into(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(value.len());
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
        }
    }
}

/// How a substituted value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Like the token was: raw form as is, percent form percent-encoded.
    LikeToken,
    /// Always percent-encoded (request targets).
    AlwaysPercent,
}

/// Write a substituted value for a token of form `form`.
pub(crate) fn write_value(value: &[u8], form: Form, enc: Encoding, out: &mut Vec<u8>) {
    if form == Form::Percent || enc == Encoding::AlwaysPercent {
        percent_encode_into(value, out);
    } else {
        out.extend_from_slice(value);
    }
}

/// Rewrite a complete buffer: ask `decide` about every token. `None` if nothing changed.
pub(crate) fn rewrite(
    data: &[u8],
    enc: Encoding,
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<Option<Vec<u8>>, Blocked> {
    // The output may hold secret values: wipe it if it is not handed out.
    let mut out: Option<Zeroizing<Vec<u8>>> = None;
    let mut last = 0usize;
    for found in find_tokens(data) {
        let (value, rest) = match decide(&found.canonical) {
            Decision::Keep => continue,
            Decision::Block => return Err(Blocked),
            Decision::Strip => (None, 0..0),
            Decision::Substitute(v) => (Some(v), 0..0),
            Decision::SubstituteHead { value, len } if found.form == Form::Raw => (
                Some(value),
                (found.range.start + len).min(found.range.end)..found.range.end,
            ),
            Decision::SubstituteHead { .. } => continue,
        };
        let o = out.get_or_insert_with(|| Zeroizing::new(Vec::with_capacity(data.len() + 64)));
        o.extend_from_slice(data.get(last..found.range.start).unwrap_or_default());
        if let Some(v) = value {
            write_value(&v, found.form, enc, o);
        }
        o.extend_from_slice(data.get(rest).unwrap_or_default());
        last = found.range.end;
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(data.get(last..).unwrap_or_default());
        std::mem::take(&mut *o)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(data: &[u8]) -> Vec<(Range<usize>, Form, String)> {
        find_tokens(data)
            .map(|f| (f.range, f.form, f.canonical))
            .collect()
    }

    #[test]
    fn raw_token() {
        let d = b"Bearer starpod:v1:QUJD+/9= tail";
        assert_eq!(
            toks(d),
            vec![(7..26, Form::Raw, "starpod:v1:QUJD+/9=".to_string())]
        );
    }

    #[test]
    fn raw_padding_variants() {
        assert_eq!(toks(b"starpod:v1:QQ==")[0].2, "starpod:v1:QQ==");
        assert_eq!(toks(b"starpod:v1:QQ===")[0].2, "starpod:v1:QQ==");
        assert_eq!(toks(b"starpod:v1:QQ=x")[0].2, "starpod:v1:QQ=");
        assert_eq!(toks(b"starpod:v1:QQ=A")[0].2, "starpod:v1:QQ=");
        assert_eq!(toks(b"starpod:v1:QQ")[0].2, "starpod:v1:QQ");
        // Padding right after the prefix is still the grammar.
        assert_eq!(toks(b"starpod:v1:==")[0].2, "starpod:v1:==");
        // An empty body is a token too (the callback decides it is not valid).
        assert_eq!(toks(b"starpod:v1:")[0].2, "starpod:v1:");
    }

    #[test]
    fn percent_token_upper_and_lower_hex() {
        let d = b"a=starpod%3Av1%3AQUJD%2B%2f9%3d&b=1";
        assert_eq!(
            toks(d),
            vec![(2..31, Form::Percent, "starpod:v1:QUJD+/9=".to_string())]
        );
        let d = b"starpod%3av1%3aAB%2b";
        assert_eq!(toks(d)[0].2, "starpod:v1:AB+");
        // `v1` itself is not hex: it must be lower case.
        assert!(toks(b"starpod%3AV1%3AAB").is_empty());
    }

    #[test]
    fn percent_python_quote_keeps_slash_and_eq() {
        let d = b"/x?t=starpod%3Av1%3Aab/cd%2Bef==";
        assert_eq!(toks(d)[0].2, "starpod:v1:ab/cd+ef==");
        assert_eq!(toks(d)[0].0, 5..d.len());
        assert_eq!(toks(b"starpod%3Av1%3Aab%3D=x")[0].2, "starpod:v1:ab==");
        assert_eq!(toks(b"starpod%3Av1%3Aab%3D%3D%3D")[0].0, 0..23);
    }

    #[test]
    fn percent_form_ends_at_plus_and_other_escapes() {
        assert_eq!(toks(b"starpod%3Av1%3Aab+cd")[0].2, "starpod:v1:ab");
        assert_eq!(toks(b"starpod%3Av1%3Aab%20cd")[0].2, "starpod:v1:ab");
        assert_eq!(toks(b"starpod%3Av1%3Aab%2")[0].2, "starpod:v1:ab");
        assert_eq!(toks(b"starpod%3Av1%3Aab%")[0].2, "starpod:v1:ab");
        assert_eq!(toks(b"starpod%3Av1%3Aab%2Cx")[0].0, 0..17);
        // A character after a pad ends the token before it.
        assert_eq!(toks(b"starpod%3Av1%3Aab%3Dcd")[0].2, "starpod:v1:ab=");
        assert_eq!(toks(b"starpod%3Av1%3Aab=%2B")[0].2, "starpod:v1:ab=");
    }

    #[test]
    fn stem_without_version_is_not_a_token() {
        assert!(toks(b"starpod starpod: starpod:v2:abc starpod%3Av2").is_empty());
        assert!(toks(b"starpod:v1").is_empty());
        assert!(toks(b"xx starpod%3Av1%3").is_empty());
        assert!(toks(b"star").is_empty());
    }

    #[test]
    fn adjacent_and_at_edges() {
        let d = b"starpod:v1:AA==starpod:v1:BB starpod%3Av1%3ACC%3D%3Dstarpod:v1:DD";
        let t = toks(d);
        let c: Vec<&str> = t.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(
            c,
            [
                "starpod:v1:AA==",
                "starpod:v1:BB",
                "starpod:v1:CC==",
                "starpod:v1:DD"
            ]
        );
        assert_eq!(t[0].0.start, 0);
        assert_eq!(t[3].0.end, d.len());
        // Without padding between them, the second stem is part of the first body.
        assert_eq!(
            toks(b"starpod:v1:AAstarpod:v1:BB")[0].2,
            "starpod:v1:AAstarpod"
        );
    }

    #[test]
    fn overlong_run_is_skipped() {
        let mut d = b"x starpod:v1:".to_vec();
        d.resize(2 + MAX_TOKEN_LEN, b'A');
        assert_eq!(toks(&d).len(), 1, "exactly MAX_TOKEN_LEN is a token");
        d.push(b'A');
        d.extend_from_slice(b" starpod:v1:ok");
        let t = toks(&d);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].2, "starpod:v1:ok");
        // Percent form: the canonical length counts, not the encoded length.
        let mut p = b"starpod%3Av1%3A".to_vec();
        for _ in 0..(MAX_TOKEN_LEN - PREFIX.len()) {
            p.extend_from_slice(b"%2B");
        }
        assert_eq!(toks(&p).len(), 1);
        p.extend_from_slice(b"%2B");
        assert!(toks(&p).is_empty());
    }

    #[test]
    fn percent_encoding() {
        let mut o = Vec::new();
        percent_encode_into(b"aZ9-._~ +/=:%\xff", &mut o);
        assert_eq!(o, b"aZ9-._~%20%2B%2F%3D%3A%25%FF");
    }

    #[test]
    fn rewrite_actions() {
        let mut n = 0;
        let r = rewrite(
            b"a starpod:v1:AA b starpod%3Av1%3ABB c starpod:v1:CC",
            Encoding::LikeToken,
            &mut |t| {
                n += 1;
                match t {
                    "starpod:v1:AA" => Decision::Substitute(Zeroizing::new(b"s e/c".to_vec())),
                    "starpod:v1:BB" => Decision::Substitute(Zeroizing::new(b"s e/c".to_vec())),
                    _ => Decision::Strip,
                }
            },
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(r.unwrap(), b"a s e/c b s%20e%2Fc c ");
        let r = rewrite(b"a starpod:v1:AA", Encoding::LikeToken, &mut |_| {
            Decision::Keep
        });
        assert_eq!(r, Ok(None));
        let r = rewrite(b"a starpod:v1:AA", Encoding::LikeToken, &mut |_| {
            Decision::Block
        });
        assert_eq!(r, Err(Blocked));
    }
}
